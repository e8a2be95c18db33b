//! Performance (catalogue 6–10), tagged `benchmark` (exclusive): numbers go
//! to metrics and baselines; gates only far past the catalogue's budgets,
//! except what does not depend on machine speed (every op accounted for,
//! reuse, pooled faster than a new connection per op).
//!
//! - `acquire_latency`: PINGs through acquire, one caller: p50 1 ms, p95 5 ms.
//! - `set_latency`: SETs likewise: p50 2 ms, p95 10 ms.
//! - `throughput`: open loop 10 000 ops/s: ≥ 8000 ops/s, p95 50 ms (on a
//!   segment of a fleet load, `--segment i/n`, its share of each).
//! - `connection_reuse`: 500 ops from 4 callers on max 10: ≥ 90 % of ops on
//!   a reused connection (client ids), never more connections than max_size.
//! - `pool_vs_direct`: 100 ops through the pool vs 100 on a new connection
//!   each (`direct-redis`): both recorded, and their ratio.

use std::{collections::HashSet, sync::Arc, time::Duration};

use anyhow::{anyhow, ensure};
use parking_lot::Mutex;
use poolstress_fixtures::pool::{Adapter, DirectRedis, Knob, Op, PoolConfig, Redis};
use poolstress_harness::{
    load::{Limit, OpTimer, Phase},
    tag, ErrorClass, Metric, TestCtx,
};

use crate::kit::{
    support::{accounted, budget_max, budget_min, build, check_server_peak, monitor, pool_op, setup},
    Scenario, Tune,
};

const BENCH: &[&str] = &[tag::BENCHMARK];

pub(super) fn scenarios() -> Vec<Scenario<Redis>> {
    vec![
        Scenario::new("performance::acquire_latency", &[], |c, a| Box::pin(acquire_latency(c, a))).tags(BENCH),
        Scenario::new("performance::set_latency", &[], |c, a| Box::pin(set_latency(c, a))).tags(BENCH),
        Scenario::new("performance::throughput", &[Knob::Reuse], |c, a| Box::pin(throughput(c, a))).tags(BENCH),
        Scenario::new("performance::connection_reuse", &[Knob::Reuse], |c, a| Box::pin(connection_reuse(c, a)))
            .tags(BENCH),
        Scenario::new("performance::pool_vs_direct", &[Knob::Reuse], |c, a| Box::pin(pool_vs_direct(c, a))).tags(BENCH),
    ]
}

/// One caller, `n` ops of `op` through acquire: the latency of the pool's
/// fast path. Budgets (target, gate) for p50 and p95.
async fn latency(
    ctx: TestCtx,
    a: Adapter<Redis>,
    label: &str,
    op: Op,
    p50: (f64, f64),
    p95: (f64, f64),
) -> anyhow::Result<()> {
    let n = ctx.profile().pick(500, 1000);
    let cfg = Tune::new(&a.capabilities(), 4).acquire_timeout(Duration::from_secs(5)).done();
    let (_fx, pool) = setup(&ctx, &a, cfg).await?;
    let name = a.name();
    pool.run(&op).await.map_err(|e| anyhow!("{name}: warm-up {label} failed: {e}"))?;
    ctx.step(format!("{n} {label}s through acquire, one caller"));
    let s = Phase::closed(label, 1, Limit::new(n, Duration::from_secs(60)))
        .run(&ctx, pool_op(&pool, op, Duration::ZERO))
        .await?;
    s.record_into(&ctx, label);
    accounted(name, &s, n)?;
    ensure!(s.errors.is_empty(), "{name}: {} of {n} {label}s failed: {}", s.errors.total(), s.errors);
    budget_max(&ctx, name, &format!("{label}_p50_ms"), s.latency.p50_ms, p50.0, p50.1, "ms")?;
    budget_max(&ctx, name, &format!("{label}_p95_ms"), s.latency.p95_ms, p95.0, p95.1, "ms")
}

async fn acquire_latency(ctx: TestCtx, a: Adapter<Redis>) -> anyhow::Result<()> {
    latency(ctx, a, "ping", Op::Ping, (1.0, 10.0), (5.0, 50.0)).await
}

async fn set_latency(ctx: TestCtx, a: Adapter<Redis>) -> anyhow::Result<()> {
    let op = Op::Write { key: 1, value: "x".repeat(64) };
    latency(ctx, a, "set", op, (2.0, 20.0), (10.0, 100.0)).await
}

async fn throughput(ctx: TestCtx, a: Adapter<Redis>) -> anyhow::Result<()> {
    let rate = 10_000.0;
    let secs = ctx.profile().pick(Duration::from_secs(1), Duration::from_secs(5));
    let cfg = Tune::new(&a.capabilities(), 50).acquire_timeout(Duration::from_secs(5)).done();
    let (_fx, pool) = setup(&ctx, &a, cfg).await?;
    let name = a.name();
    ctx.step("warming up");
    Phase::closed("warmup", 50, Limit::new(2_000, Duration::from_secs(5)))
        .run(&ctx, pool_op(&pool, Op::Ping, Duration::ZERO))
        .await?;
    ctx.step(format!("open loop {rate} PINGs/s for {secs:?}"));
    let phase = Phase::open("throughput", rate, secs).in_flight(256);
    let due = phase.limit().max_ops;
    let s = phase.run(&ctx, pool_op(&pool, Op::Ping, Duration::ZERO)).await?;
    s.record_into(&ctx, "throughput");
    s.check_accounted(None).map_err(|e| anyhow!("{name}: {e}"))?;
    ensure!(
        s.started + s.missed == due,
        "{name}: {} started + {} missed != {due} arrivals due in {secs:?} at {rate} ops/s",
        s.started,
        s.missed
    );
    // Overload may time out; a broken connection or a wrong answer may not.
    s.check_only(&[ErrorClass::AcquireTimeout, ErrorClass::OpTimeout]).map_err(|e| anyhow!("{name}: {e}"))?;
    budget_max(&ctx, name, "error_rate_pct", s.error_rate() * 100.0, 0.0, 5.0, "%")?;
    // On one segment of a fleet load (`--segment i/n`) this process sends
    // its share of the rate; `--merge` gives the fleet's.
    let share = s.target_rate_ops_s.unwrap_or(rate);
    let part = share / rate;
    budget_min(&ctx, name, "achieved_ops_s", s.throughput_ops_s, 8_000.0 * part, 1_000.0 * part, "ops/s")?;
    // Latency is measured from each op's slot: when this machine cannot
    // send the rate at all, the queue of late sends is the p95, whatever
    // the pool does. Gate it only where the rate was (nearly) sustained;
    // otherwise it stays a metric for the baselines.
    if s.throughput_ops_s < 0.8 * share {
        ctx.note(format!(
            "{name}: achieved {:.0} of {share:.0} ops/s: p95 {:.1} ms is queueing behind an unsustained rate; not gated (recorded)",
            s.throughput_ops_s, s.latency.p95_ms
        ));
        return Ok(());
    }
    budget_max(&ctx, name, "p95_ms", s.latency.p95_ms, 50.0, 1_000.0, "ms")
}

async fn connection_reuse(ctx: TestCtx, a: Adapter<Redis>) -> anyhow::Result<()> {
    let (max, n) = (10, ctx.profile().pick(300, 500));
    let cfg = Tune::new(&a.capabilities(), max).acquire_timeout(Duration::from_secs(5)).done();
    let (fx, pool) = setup(&ctx, &a, cfg).await?;
    let name = a.name();
    let mon = monitor(&ctx, &fx, Duration::from_millis(10));
    let ids: Arc<Mutex<HashSet<i64>>> = Arc::default();
    let (p, seen) = (pool.clone(), ids.clone());
    ctx.step(format!("{n} CLIENT IDs from 4 callers on max {max}"));
    let s = Phase::closed("reuse", 4, Limit::new(n, Duration::from_secs(60)))
        .run(&ctx, move |mut t: OpTimer| {
            let (p, seen) = (p.clone(), seen.clone());
            async move {
                let mut c = p.acquire().await?;
                t.acquired();
                if let Some(id) = c.run(&Op::WhoAmI).await?.id() {
                    seen.lock().insert(id);
                }
                Ok::<_, poolstress_fixtures::pool::PoolError>(t)
            }
        })
        .await?;
    mon.sample_now().await;
    s.record_into(&ctx, "reuse");
    accounted(name, &s, n)?;
    ensure!(s.errors.is_empty(), "{name}: {} of {n} ops failed: {}", s.errors.total(), s.errors);
    let distinct = ids.lock().len();
    let reuse = 1.0 - distinct as f64 / n as f64;
    ctx.record(Metric::higher("reuse_pct", reuse * 100.0));
    ctx.record(Metric::lower("distinct_connections", distinct as f64));
    ctx.note(format!("{name}: {n} ops on {distinct} server connections (reuse {:.1} %)", reuse * 100.0));
    ensure!(
        reuse >= 0.90,
        "{name}: {n} ops ran on {distinct} different server connections: reuse {:.1} % < 90 %",
        reuse * 100.0
    );
    if a.capabilities().supports(Knob::MaxSize) {
        ensure!(
            distinct <= max,
            "{name}: {n} ops without any fault ran on {distinct} server connections; max_size is {max} (connections were replaced)"
        );
        check_server_peak::<Redis>(&ctx, name, &mon, &pool, max)?;
    }
    let conns = mon.connections("redis");
    ctx.record(Metric::lower("server_connections_variance", conns.variance()));
    Ok(())
}

async fn pool_vs_direct(ctx: TestCtx, a: Adapter<Redis>) -> anyhow::Result<()> {
    let n = 100;
    let cfg = Tune::new(&a.capabilities(), 4).acquire_timeout(Duration::from_secs(5)).done();
    let (fx, pool) = setup(&ctx, &a, cfg).await?;
    let name = a.name();
    let direct = build(&ctx, &Adapter::new(DirectRedis), &PoolConfig::new(1), &fx.target).await?;
    pool.run(&Op::Ping).await.map_err(|e| anyhow!("{name}: warm-up failed: {e}"))?;
    let limit = Limit::new(n, Duration::from_secs(60));
    ctx.step(format!("{n} PINGs on a new connection each (direct-redis)"));
    let d = Phase::closed("direct", 1, limit).run(&ctx, pool_op(&direct, Op::Ping, Duration::ZERO)).await?;
    ctx.step(format!("{n} PINGs through {name}"));
    let p = Phase::closed("pooled", 1, limit).run(&ctx, pool_op(&pool, Op::Ping, Duration::ZERO)).await?;
    d.record_into(&ctx, "direct");
    p.record_into(&ctx, "pooled");
    accounted("direct-redis", &d, n)?;
    accounted(name, &p, n)?;
    ensure!(d.errors.is_empty() && p.errors.is_empty(), "failed ops: direct {}, {name} {}", d.errors, p.errors);
    let ratio = p.latency.mean_ms / d.latency.mean_ms;
    ctx.note(format!(
        "mean per op: {name} {:.3} ms, direct {:.3} ms (pooled takes {:.0} % of direct)",
        p.latency.mean_ms,
        d.latency.mean_ms,
        ratio * 100.0
    ));
    // Not a hard "pooled is faster": on loopback a new connection costs about
    // as many round trips as a validated checkout (bb8 pings on every
    // checkout), so under load the two cross (bb8-redis 0.139 ms vs 0.076 ms
    // with a CPU hog). Whether a pool reuses its connections is judged server
    // side by `connection_reuse`; this ratio is a number for the baselines,
    // failing only when a pooled op costs 3x a fresh connection.
    if ratio >= 1.0 {
        ctx.note(format!(
            "{name}: a pooled op took {:.0} % of a fresh connection's (validation round trips)",
            ratio * 100.0
        ));
    }
    budget_max(&ctx, name, "pooled_to_direct_ratio", ratio, 0.5, 3.0, "x")
}
