//! Peer benchmarks: each pool beside the service's own load tool on the same
//! server in the same test (`peer::<service>::<workload>[<pool>]`, tags
//! `benchmark`, `layer_3` and the service; exclusive, as every benchmark is).
//!
//! | service | workload | native tool | clients |
//! |---|---|---|---|
//! | Redis | `get` (`Op::Read`), `set` (`Op::Write`, nightly) | `redis-benchmark -t get` / `-t set` | 50 |
//! | Postgres | `select1` (`Op::Ping`), `point_select` (`Op::Read`, nightly) | `pgbench -M extended` and `-M prepared`, the same statement as a script | 20 |
//!
//! Four loads, interleaved in rounds (quick 3 rounds of 0.25 s, nightly 5 of
//! 1 s; the order rotates each round), so a busy machine moves all of them:
//! 1. the native tool (redis-benchmark's C client, pgbench's libpq);
//! 2. the driver alone: one redis-rs / tokio-postgres connection per worker,
//!    no pool, through the harness's closed loop;
//! 3. the pool: `max_size` = clients, as many workers;
//! 4. the harness with a no-op op (once), its own cost per op.
//!
//! Every gap is attributed per op (µs of the machine per op, 1e6 / ops/s):
//! `attr.harness_us` (the no-op loop), `attr.runtime_driver_us` (the driver
//! alone minus the native tool minus the harness) and `attr.pool_us` (the
//! pool minus the driver), and the client side's CPU per call
//! (`cpu_us.native` — the tool's process —, `cpu_us.driver`, `cpu_us.pool` —
//! this process —, from /proc): on two cores shared with the server, a
//! client that burns more CPU per call leaves the server less. Gated (medians of the rounds, 30 % tolerance: a C
//! tool and a tokio runtime share two cores differently when the machine is
//! busy): `<workload>.driver_vs_native` (the harness + runtime + driver are
//! not the bottleneck) and `<workload>.pool_vs_driver` (what the pool costs;
//! recorded only for a pool that opens a connection per checkout). The
//! whole table is printed on the console as one `peer:` line per workload.
//!
//! The tools come with the servers' Debian packages (`redis-tools`,
//! `postgresql-client`); without one the test is skipped and says what to
//! install.

use std::{sync::Arc, time::Duration};

use anyhow::{ensure, Context};
use futures::future::BoxFuture;
use poolstress_fixtures::pool::{Adapter, Knob, Op, PoolConfig, PoolError};
use poolstress_harness::{
    load::{Limit, OpError, OpTimer, Phase},
    metrics::PhaseStats,
    Direction, Metric, Registry, TestCtx,
};

use crate::{kit::NetService, zoo::ZooDriver};

/// One workload: the op our loops run and the native tool's equivalent.
pub struct Workload {
    /// `get`, `select1`: the test's name.
    pub name: &'static str,
    /// What the server runs, for people.
    pub what: &'static str,
    /// The op of the `seq`-th call.
    pub op: fn(u64) -> Op,
    /// The native tool's modes; the first is the reference the ratios use.
    pub modes: &'static [&'static str],
    /// Run in the quick profile too (the others are nightly only).
    pub quick: bool,
}

/// A service with a native load tool.
pub trait Peer: NetService + ZooDriver {
    /// Clients of every load (the native tool's `-c`).
    const CLIENTS: usize;
    /// The native tool's binary.
    const TOOL: &'static str;
    /// Where the tool comes from, for the skip message.
    const INSTALL: &'static str;
    /// The workloads.
    const WORKLOADS: &'static [Workload];
    /// One run of the native tool doing about `ops` calls in `mode`: ops/s.
    fn native<'a>(
        target: &'a Self::Target,
        w: &'a Workload,
        mode: &'a str,
        ops: u64,
    ) -> BoxFuture<'a, anyhow::Result<(f64, u64)>>;
}

#[cfg_attr(not(any(feature = "redis", feature = "postgres")), allow(dead_code))]
/// Runs `cmd` (bounded: 120 s, killed on drop) and returns its stdout.
async fn output(mut cmd: tokio::process::Command, what: &str) -> anyhow::Result<String> {
    cmd.kill_on_drop(true).stdin(std::process::Stdio::null());
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .with_context(|| format!("{what}: still running after 120 s"))?
        .with_context(|| format!("{what}: could not start it"))?;
    ensure!(
        out.status.success(),
        "{what}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg_attr(not(feature = "redis"), allow(dead_code))]
/// requests/s of `test` in redis-benchmark's `--csv` output (Redis 6 prints
/// `"GET","83333.33"`, Redis 7 a header line and more columns).
fn parse_redis_benchmark(out: &str, test: &str) -> Option<f64> {
    out.lines().find_map(|l| {
        let mut f = l.split(',').map(|x| x.trim().trim_matches('"'));
        (f.next()?.eq_ignore_ascii_case(test)).then_some(())?;
        f.next()?.parse().ok()
    })
}

#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
/// tps of pgbench's summary (`tps = 61234.5 (without initial connection time)`).
fn parse_pgbench(out: &str) -> Option<f64> {
    out.lines()
        .filter(|l| l.starts_with("tps = "))
        .find_map(|l| l["tps = ".len()..].split_whitespace().next()?.parse().ok())
}

#[cfg(feature = "redis")]
impl Peer for poolstress_fixtures::pool::Redis {
    const CLIENTS: usize = 50;
    const TOOL: &'static str = "redis-benchmark";
    const INSTALL: &'static str = "redis-tools (Debian/Ubuntu: apt-get install redis-tools)";
    const WORKLOADS: &'static [Workload] = &[
        Workload {
            name: "get",
            what: "GET",
            op: |seq| Op::Read { key: seq % 64 },
            modes: &["redis-benchmark"],
            quick: true,
        },
        Workload {
            name: "set",
            what: "SET",
            op: |seq| Op::Write { key: seq % 64, value: "v".to_string() },
            modes: &["redis-benchmark"],
            quick: false,
        },
    ];

    fn native<'a>(
        t: &'a poolstress_fixtures::RedisTarget,
        w: &'a Workload,
        _mode: &'a str,
        ops: u64,
    ) -> BoxFuture<'a, anyhow::Result<(f64, u64)>> {
        Box::pin(async move {
            let mut cmd = tokio::process::Command::new(Self::TOOL);
            cmd.args(["-h", &t.host, "-p", &t.port.to_string(), "--dbnum", &t.db.to_string()]).args([
                "-c",
                &Self::CLIENTS.to_string(),
                "-n",
                &ops.to_string(),
                "-t",
                w.name,
                "--csv",
            ]);
            let out = output(cmd, "redis-benchmark").await?;
            let rate = parse_redis_benchmark(&out, w.what)
                .with_context(|| format!("redis-benchmark printed no {} rate: {}", w.what, out.trim()))?;
            Ok((rate, ops))
        })
    }
}

#[cfg(feature = "postgres")]
impl Peer for poolstress_fixtures::pool::Postgres {
    const CLIENTS: usize = 20;
    const TOOL: &'static str = "pgbench";
    const INSTALL: &'static str = "postgresql-client (Debian/Ubuntu: apt-get install postgresql-client)";
    const WORKLOADS: &'static [Workload] = &[
        Workload {
            name: "select1",
            what: "SELECT 1;",
            op: |_| Op::Ping,
            modes: &["extended", "prepared"],
            quick: true,
        },
        Workload {
            name: "point_select",
            what: "\\set k random(0, 63)\nSELECT v FROM poolstress_kv WHERE k = :k;",
            op: |seq| Op::Read { key: seq % 64 },
            modes: &["extended", "prepared"],
            quick: false,
        },
    ];

    fn native<'a>(
        t: &'a poolstress_fixtures::PgTarget,
        w: &'a Workload,
        mode: &'a str,
        ops: u64,
    ) -> BoxFuture<'a, anyhow::Result<(f64, u64)>> {
        Box::pin(async move {
            let dir = tempfile::tempdir().context("a temp dir for pgbench's script")?;
            let script = dir.path().join(format!("{}.sql", w.name));
            std::fs::write(&script, format!("{}\n", w.what)).context("writing pgbench's script")?;
            let per_client = (ops / Self::CLIENTS as u64).max(50);
            let mut cmd = tokio::process::Command::new(Self::TOOL);
            cmd.env("PGPASSWORD", &t.password)
                .args(["-n", "-h", &t.host, "-p", &t.port.to_string(), "-U", &t.user])
                .args(["-c", &Self::CLIENTS.to_string(), "-j", "2", "-t", &per_client.to_string(), "-M", mode])
                .arg("-f")
                .arg(&script)
                .arg(&t.dbname);
            let out = output(cmd, &format!("pgbench -M {mode} ({})", w.name)).await?;
            let rate = parse_pgbench(&out).with_context(|| format!("pgbench printed no tps: {}", out.trim()))?;
            Ok((rate, per_client * Self::CLIENTS as u64))
        })
    }
}

/// CPU seconds used so far by this process and by its reaped children (the
/// native tools), from /proc/self/stat; `None` off Linux.
fn cpu_times() -> Option<(f64, f64)> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    let f: Vec<&str> = s.get(s.rfind(')')? + 2..)?.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok());
    const USER_HZ: f64 = 100.0; // the clock tick of every Linux build
    Some(((t(11)? + t(12)?) / USER_HZ, (t(13)? + t(14)?) / USER_HZ))
}

/// µs of CPU per call between two [`cpu_times`] readings (`child`: the children's).
fn cpu_us(before: Option<(f64, f64)>, after: Option<(f64, f64)>, child: bool, calls: u64) -> Option<f64> {
    let (b, a) = (before?, after?);
    let secs = if child { a.1 - b.1 } else { a.0 - b.0 };
    (calls > 0).then(|| secs * 1e6 / calls as f64)
}

/// Whether `tool` is on the PATH.
fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file())).unwrap_or(false)
}

fn clean(name: &str, s: &PhaseStats) -> anyhow::Result<()> {
    s.check_accounted(None)?;
    s.check_only(&[])?;
    ensure!(s.ok > 0, "{name}: no call succeeded ({})", s.summary());
    Ok(())
}

#[derive(Clone, Copy)]
enum Leg {
    Native,
    Driver,
    Pool,
}

async fn workload<S: Peer>(ctx: TestCtx, a: Adapter<S>, w: &'static Workload) -> anyhow::Result<()> {
    if !on_path(S::TOOL) {
        return Err(ctx.skip(format!("{} is not on the PATH: install {}", S::TOOL, S::INSTALL)));
    }
    let (rounds, secs) =
        (ctx.profile().pick(3, 5), ctx.profile().pick(Duration::from_millis(250), Duration::from_secs(1)));
    let clients = S::CLIENTS;
    ctx.step(format!("providing a {} server", S::NAME));
    let fx = S::provide(&ctx).await?;
    let target = fx.target.clone();
    let mut cfg = PoolConfig::new(clients);
    if a.capabilities().supports(Knob::AcquireTimeout) {
        cfg = cfg.acquire_timeout(Duration::from_secs(10));
    }
    let pool = a.build(&cfg, &target).await.with_context(|| format!("building {} ({})", a.name(), a.version()))?;
    ctx.step("seeding 64 keys");
    for key in 0..64 {
        pool.run(&Op::Write { key, value: format!("v{key}") }).await?;
    }
    ctx.step(format!("opening {clients} driver connections, one per worker (no pool)"));
    let mut conns = Vec::new();
    for _ in 0..clients {
        let c = S::connect(&target, &PoolConfig::new(clients)).await.context("opening a driver connection")?;
        conns.push(tokio::sync::Mutex::new(c));
    }
    let conns = Arc::new(conns);
    let op = w.op;
    let limit = || Limit::new(100_000_000, secs);
    let c = &ctx;
    let pool_leg = |name: &'static str| {
        let p = pool.clone();
        async move {
            let phase = Phase::closed(name, clients, limit());
            phase
                .run(c, move |mut t: OpTimer| {
                    let pool = p.clone();
                    async move {
                        let mut c = pool.acquire().await?;
                        t.acquired();
                        c.run(&op(t.seq())).await?;
                        Ok::<_, PoolError>(t)
                    }
                })
                .await
        }
    };
    let driver_leg = |name: &'static str| {
        let (conns, target) = (conns.clone(), target.clone());
        async move {
            let phase = Phase::closed(name, clients, limit());
            phase
                .run(c, move |mut t: OpTimer| {
                    let (conns, target) = (conns.clone(), target.clone());
                    async move {
                        let mut c = conns[t.worker() % conns.len()].lock().await;
                        t.acquired();
                        S::run(&mut c, &target, &op(t.seq())).await?;
                        Ok::<_, PoolError>(t)
                    }
                })
                .await
        }
    };
    ctx.step("warming up the pool and the driver");
    clean("warm.pool", &pool_leg("warm.pool").await?)?;
    clean("warm.driver", &driver_leg("warm.driver").await?)?;
    ctx.step(format!("calibrating {}", S::TOOL));
    // A first run sizes the tool's request count to about `secs`.
    let mut guess = S::native(&target, w, w.modes[0], 2_000).await?.0;
    let mut native: Vec<Vec<f64>> = vec![Vec::new(); w.modes.len()];
    let (mut driver, mut pooled) = (Vec::new(), Vec::new());
    let (mut d_vs_n, mut p_vs_d, mut p_vs_n) = (Vec::new(), Vec::new(), Vec::new());
    // Client-side CPU per call: the native tool (its process), the driver and the pool (this process).
    let (mut cpu_n, mut cpu_d, mut cpu_p) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..rounds {
        ctx.step(format!(
            "round {}/{rounds}: {}, the driver alone and {} ({clients} clients, {secs:?} each)",
            i + 1,
            S::TOOL,
            a.name()
        ));
        let mut order = [Leg::Native, Leg::Driver, Leg::Pool];
        order.rotate_left(i % 3);
        let (mut n, mut d, mut p) = (0.0, 0.0, 0.0);
        for leg in order {
            match leg {
                Leg::Native => {
                    for (k, mode) in w.modes.iter().enumerate() {
                        let ops = (guess * secs.as_secs_f64()).max(1_000.0) as u64;
                        let before = cpu_times();
                        let (r, calls) = S::native(&target, w, mode, ops).await?;
                        native[k].push(r);
                        if k == 0 {
                            (n, guess) = (r, r);
                            cpu_n.extend(cpu_us(before, cpu_times(), true, calls));
                        }
                    }
                }
                Leg::Driver => {
                    let before = cpu_times();
                    let s = driver_leg("driver").await?;
                    cpu_d.extend(cpu_us(before, cpu_times(), false, s.ok));
                    clean("driver", &s)?;
                    d = s.throughput_ops_s;
                }
                Leg::Pool => {
                    let before = cpu_times();
                    let s = pool_leg("pool").await?;
                    cpu_p.extend(cpu_us(before, cpu_times(), false, s.ok));
                    clean("pool", &s)?;
                    p = s.throughput_ops_s;
                }
            }
        }
        driver.push(d);
        pooled.push(p);
        d_vs_n.push(d / n.max(f64::MIN_POSITIVE));
        p_vs_d.push(p / d.max(f64::MIN_POSITIVE));
        p_vs_n.push(p / n.max(f64::MIN_POSITIVE));
    }
    ctx.step("the harness with a no-op op");
    let noop = Phase::closed("noop", clients, limit()).run(&ctx, |_t: OpTimer| async { Ok::<(), OpError>(()) }).await?;
    let h = noop.throughput_ops_s;

    let wn = w.name;
    let gated = |name: String, v: Vec<f64>| Metric::gated(name, Direction::HigherIsBetter, v).tolerance(0.3);
    let reuses = a.capabilities().supports(Knob::Reuse);
    let d_ratio = gated(format!("{wn}.driver_vs_native"), d_vs_n);
    let p_ratio = if reuses {
        gated(format!("{wn}.pool_vs_driver"), p_vs_d)
    } else {
        Metric::from_samples(format!("{wn}.pool_vs_driver"), Direction::HigherIsBetter, p_vs_d)
    };
    let pn_ratio = Metric::from_samples(format!("{wn}.pool_vs_native"), Direction::HigherIsBetter, p_vs_n);
    let natives: Vec<Metric> = w
        .modes
        .iter()
        .zip(native)
        .map(|(mode, v)| Metric::from_samples(format!("{wn}.native_{mode}_ops_s"), Direction::HigherIsBetter, v))
        .collect();
    let (n, d, p) = (natives[0].value, poolstress_harness::median(&driver), poolstress_harness::median(&pooled));
    let us = |rate: f64| 1e6 / rate.max(f64::MIN_POSITIVE);
    let (harness_us, runtime_driver_us, pool_us) = (us(h), us(d) - us(n) - us(h), us(p) - us(d));
    let others: String =
        w.modes[1..].iter().zip(&natives[1..]).map(|(mode, m)| format!(", {mode} {:.0}/s", m.value)).collect();
    let cpu = |name: &str, v: Vec<f64>| {
        (!v.is_empty()).then(|| Metric::from_samples(format!("{wn}.cpu_us.{name}"), Direction::LowerIsBetter, v))
    };
    let cpus: Vec<Metric> =
        [cpu("native", cpu_n), cpu("driver", cpu_d), cpu("pool", cpu_p)].into_iter().flatten().collect();
    let cpu_line = if cpus.is_empty() {
        "not measured (no /proc/self/stat)".to_string()
    } else {
        cpus.iter()
            .map(|m| format!("{} {:.1} µs", m.name.rsplit('.').next().unwrap_or_default(), m.value))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let tool = if w.modes[0] == S::TOOL { S::TOOL.to_string() } else { format!("{} {}", S::TOOL, w.modes[0]) };
    let line = format!(
        "peer: {} {wn}, {clients} clients: {tool} {n:.0}/s{others}; driver alone {d:.0}/s ({:.2}x native); {} {p:.0}/s \
         ({:.2}x the driver, {:.2}x native); harness no-op {h:.0}/s. Per op: native {:.1} µs, harness {harness_us:.2} µs, \
         runtime+driver {runtime_driver_us:.1} µs, pool {pool_us:.1} µs. Client CPU per op: {} (medians of {rounds} rounds)",
        S::NAME,
        d_ratio.value,
        a.name(),
        p_ratio.value,
        pn_ratio.value,
        us(n),
        cpu_line,
    );
    println!("{line}");
    ctx.note(line);
    ctx.key_metric(format!("{wn}.pool_vs_native"));
    for m in [d_ratio, p_ratio, pn_ratio].into_iter().chain(natives) {
        ctx.record(m);
    }
    ctx.record(Metric::from_samples(format!("{wn}.driver_ops_s"), Direction::HigherIsBetter, driver));
    ctx.record(Metric::from_samples(format!("{wn}.pool_ops_s"), Direction::HigherIsBetter, pooled));
    ctx.record(Metric::higher("noop.ops_s", h));
    for m in cpus {
        ctx.record(m);
    }
    ctx.record(Metric::lower(format!("{wn}.attr.harness_us"), harness_us));
    ctx.record(Metric::lower(format!("{wn}.attr.runtime_driver_us"), runtime_driver_us));
    ctx.record(Metric::lower(format!("{wn}.attr.pool_us"), pool_us));
    drop(conns);
    pool.close().await;
    Ok(())
}

/// Registers `peer::<service>::<workload>[<pool>]` for `adapters` (a user's pool too).
pub fn register_adapters<S: Peer>(r: &mut Registry, adapters: Vec<Adapter<S>>) {
    for a in adapters {
        for w in S::WORKLOADS {
            let name = format!("peer::{}::{}[{}]", S::NAME, w.name, a.name());
            let a = a.clone();
            r.test(name, S::BENCH_TAGS, move |ctx| {
                let a = a.clone();
                async move {
                    if !w.quick && ctx.profile() == poolstress_harness::Profile::Quick {
                        return Err(ctx.skip(format!(
                            "nightly only ({} beside {}; the quick profile runs the first workload)",
                            w.name,
                            S::TOOL
                        )));
                    }
                    workload(ctx, a, w).await
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_tool_outputs_parse() {
        let v7 = "\"test\",\"rps\",\"avg_latency_ms\"\n\"GET\",\"83333.34\",\"0.318\"\n";
        assert_eq!(parse_redis_benchmark(v7, "GET"), Some(83333.34));
        assert_eq!(parse_redis_benchmark("\"SET\",\"61000.00\"\n", "SET"), Some(61000.0));
        assert_eq!(parse_redis_benchmark(v7, "SET"), None);
        let pg = "number of failed transactions: 0 (0.000%)\nlatency average = 0.3 ms\n\
                  tps = 61234.567890 (without initial connection time)\n";
        assert_eq!(parse_pgbench(pg), Some(61234.56789));
        assert_eq!(parse_pgbench("pgbench: error: connection refused"), None);
    }
}
