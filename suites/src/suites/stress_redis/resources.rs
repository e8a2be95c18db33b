//! Memory and resources (catalogue 16–20). Exclusive: they read this
//! process's RSS and open fds (the harness's resource monitor, docs/load.md),
//! which another test running at the same time would move. The server-side
//! client count (`CLIENT LIST`, filtered to the test's client name) and the
//! fds are hard invariants; RSS budgets are generous (they catch leaks, not
//! allocator noise).
//!
//! "Kept" below is what a pool may keep open after its ops: `max_size`
//! connections for a pool that reuses them, none for a new connection per op.
//!
//! - `client_memory_bounded`: 1000 ops of 1 KiB SETs: RSS grows < 100 MiB.
//! - `socket_cleanup`: 200 ops: fds and server clients vary < 30 (variance);
//!   afterwards no more fds than before plus what the pool keeps.
//! - `memory_plateaus`: 5 phases × 200 ops: RSS grows < 150 MiB in all and
//!   is flat after phase 1; fds and server clients do not grow after phase 1.
//! - `no_connection_leak`: 500 ops: server client count varies < 25 and does
//!   not grow from the first half to the second.
//! - `cleanup_on_close`: 100 ops, then `close()` (the pool object still
//!   alive): the server sees none of the test's clients and this process is
//!   back to the fds it had before the pool was built.

use std::{
    any::Any,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{ensure, Context};
use poolstress_fixtures::pool::{Adapter, Knob, Op, Pool, Redis};
use poolstress_harness::{
    load::{Limit, Phase},
    metrics::{process_snapshot, PhaseStats, ResourceMonitor, Series},
    ConnectionCounter, Metric, TestCtx,
};

use crate::kit::{
    support::{accounted, build, fd_listing, fds_added, monitor, pool_op},
    wait_until, Scenario, ServiceFixture, Tune,
};

pub(super) fn scenarios() -> Vec<Scenario<Redis>> {
    vec![
        Scenario::new("resources::client_memory_bounded", &[], |c, a| Box::pin(memory_bounded(c, a))).exclusive(),
        Scenario::new("resources::socket_cleanup", &[], |c, a| Box::pin(socket_cleanup(c, a))).exclusive(),
        Scenario::new("resources::memory_plateaus", &[], |c, a| Box::pin(memory_plateaus(c, a))).exclusive(),
        Scenario::new("resources::no_connection_leak", &[], |c, a| Box::pin(no_connection_leak(c, a))).exclusive(),
        Scenario::new("resources::cleanup_on_close", &[], |c, a| Box::pin(cleanup_on_close(c, a))).exclusive(),
    ]
}

const MIB: f64 = 1024.0 * 1024.0;
const WORKERS: usize = 8;
const HOLD: Duration = Duration::from_millis(2);

/// A pool of `WORKERS` connections on a target of the test's own, and the
/// monitor, started (with the fds counted) before the pool was built.
struct Env {
    name: String,
    counter: Arc<dyn ConnectionCounter>,
    pool: Pool,
    mon: ResourceMonitor,
    base_fds: u64,
    /// What the fds pointed at before the pool was built.
    base_listing: Vec<String>,
    kept: u64,
}

/// The environment, and what must live as long as the test (its Redis database).
async fn env(ctx: &TestCtx, a: &Adapter<Redis>) -> anyhow::Result<(Env, Box<dyn Any + Send>)> {
    ctx.step("providing a redis server");
    let fx = Redis::provide(ctx).await?;
    let mon = monitor(ctx, &fx, Duration::from_millis(10));
    // The counter's own connection is open once a sample has counted (a
    // sample reads /proc before it counts): only then is the baseline taken.
    mon.sample_now().await;
    let base_fds = process_snapshot().context("could not read /proc/self: no fd count")?.fds;
    let base_listing = fd_listing();
    let cfg = Tune::new(&a.capabilities(), WORKERS).acquire_timeout(Duration::from_secs(5)).done();
    let pool = build(ctx, a, &cfg, &fx.target).await?;
    let kept = if a.capabilities().supports(Knob::Reuse) { WORKERS as u64 } else { 0 };
    let e = Env { name: a.name().to_string(), counter: fx.counter.clone(), pool, mon, base_fds, base_listing, kept };
    Ok((e, fx.keep))
}

impl Env {
    /// `n` ops of `op` from `WORKERS` callers, each holding its connection
    /// 2 ms (so the monitor, every 10 ms, sees the load); all must succeed.
    async fn load(&self, ctx: &TestCtx, phase: &str, n: u64, op: Op) -> anyhow::Result<PhaseStats> {
        ctx.step(format!("{phase}: {n} ops from {WORKERS} callers"));
        let s = Phase::closed(phase, WORKERS, Limit::new(n, Duration::from_secs(60)))
            .run(ctx, pool_op(&self.pool, op, HOLD))
            .await?;
        s.record_into(ctx, phase);
        accounted(&self.name, &s, n)?;
        ensure!(s.errors.is_empty(), "{}: {} of {n} ops failed in {phase}: {}", self.name, s.errors.total(), s.errors);
        Ok(s)
    }

    async fn server(&self) -> anyhow::Result<u64> {
        self.counter.count().await
    }

    /// Waits until the server sees at most what the pool keeps (closing
    /// sockets is asynchronous), then samples.
    async fn settle(&self, what: &str) -> anyhow::Result<(u64, u64, u64)> {
        let kept = self.kept;
        wait_until(&format!("{}: at most {kept} server clients {what}", self.name), Duration::from_secs(5), || async {
            Ok(self.server().await? <= kept)
        })
        .await?;
        let s = self.mon.sample_now().await;
        let p = s.process.context("could not read /proc/self")?;
        Ok((p.rss_bytes, p.fds, s.connections.get("redis").copied().unwrap_or(0)))
    }

    /// Waits until this process has at most `bound` fds open; fails naming
    /// the count, the baseline and what the pool may keep.
    async fn fds_at_most(&self, bound: u64, what: &str) -> anyhow::Result<u64> {
        let last = AtomicU64::new(0);
        let r = wait_until(&format!("fds back to {bound}"), Duration::from_secs(5), || async {
            let fds = self.mon.sample_now().await.process.map(|p| p.fds).unwrap_or(u64::MAX);
            last.store(fds, Ordering::SeqCst);
            Ok(fds <= bound)
        })
        .await;
        let last = last.load(Ordering::SeqCst);
        r.with_context(|| {
            format!(
                "{}: {last} fds open {what}; before the pool there were {} (bound {bound}): leaked {:?}",
                self.name,
                self.base_fds,
                fds_added(&self.base_listing, &fd_listing())
            )
        })?;
        Ok(last)
    }
}

fn record_growth(ctx: &TestCtx, metric: &str, from: f64, to: f64) {
    ctx.record(Metric::lower(metric, (to - from) / MIB));
}

async fn memory_bounded(ctx: TestCtx, a: Adapter<Redis>) -> anyhow::Result<()> {
    let (e, _keep) = env(&ctx, &a).await?;
    let n = 1000;
    let (rss0, ..) = e.settle("before the load").await?;
    let s = e.load(&ctx, "load", n, Op::Write { key: 1, value: "m".repeat(1024) }).await?;
    let (rss1, ..) = e.settle("after the load").await?;
    e.mon.record_into(&ctx, "resources");
    record_growth(&ctx, "rss_growth_mib", rss0 as f64, rss1 as f64);
    let rss = e.mon.rss();
    let before = rss.window(0.0, s.at_ms);
    let after = rss.after(s.at_ms + s.elapsed_ms);
    before
        .growth_to(&after)
        .check_at_most(100.0 * MIB, &format!("before and after {n} ops (budget 100 MiB)"))
        .with_context(|| format!("{}: client memory", e.name))?;
    Ok(())
}

fn check_variance(name: &str, s: &Series, max: f64, what: &str) -> anyhow::Result<()> {
    ensure!(s.len() >= 3, "{name}: only {} samples of {what}: cannot tell whether it was stable", s.len());
    let v = s.variance();
    ensure!(
        v < max,
        "{name}: {what} varied with variance {v:.1} >= {max} over {} samples (range {}..{})",
        s.len(),
        s.min(),
        s.max()
    );
    Ok(())
}

async fn socket_cleanup(ctx: TestCtx, a: Adapter<Redis>) -> anyhow::Result<()> {
    let (e, _keep) = env(&ctx, &a).await?;
    let s = e.load(&ctx, "load", 200, Op::Ping).await?;
    e.settle("after the load").await?;
    let fds = e.fds_at_most(e.base_fds + e.kept, &format!("after 200 ops (the pool may keep {})", e.kept)).await?;
    e.mon.record_into(&ctx, "resources");
    let window = |x: Series| x.window(s.at_ms, s.at_ms + s.elapsed_ms + 1.0);
    let conns = window(e.mon.connections("redis"));
    let fd_series = window(e.mon.fds());
    ctx.record(Metric::lower("fds_variance", fd_series.variance()));
    ctx.record(Metric::lower("server_clients_variance", conns.variance()));
    ctx.note(format!(
        "{}: fds {} before the pool, {fds} after 200 ops; during: {}..{}",
        e.name,
        e.base_fds,
        fd_series.min(),
        fd_series.max()
    ));
    check_variance(&e.name, &fd_series, 30.0, "open fds during 200 ops")?;
    check_variance(&e.name, &conns, 30.0, "server-side clients during 200 ops")?;
    Ok(())
}

async fn memory_plateaus(ctx: TestCtx, a: Adapter<Redis>) -> anyhow::Result<()> {
    let (e, _keep) = env(&ctx, &a).await?;
    let (rss0, ..) = e.settle("before the load").await?;
    let mut after = Vec::new();
    for i in 1..=5 {
        e.load(&ctx, &format!("phase_{i}"), 200, Op::Write { key: i, value: "p".repeat(1024) }).await?;
        after.push(e.settle(&format!("after phase {i}")).await?);
    }
    e.mon.record_into(&ctx, "resources");
    let (rss1, fds1, conns1) = after[0];
    let (rss5, fds5, conns5) = after[4];
    record_growth(&ctx, "rss_growth_mib", rss0 as f64, rss5 as f64);
    record_growth(&ctx, "rss_growth_after_phase_1_mib", rss1 as f64, rss5 as f64);
    let mib = |b: u64| b as f64 / MIB;
    ctx.note(format!(
        "{}: rss {:.1} MiB before, {:?} MiB after each phase; fds {:?}",
        e.name,
        mib(rss0),
        after.iter().map(|x| (mib(x.0) * 10.0).round() / 10.0).collect::<Vec<_>>(),
        after.iter().map(|x| x.1).collect::<Vec<_>>()
    ));
    ensure!(
        mib(rss5) - mib(rss0) < 150.0,
        "{}: rss grew {:.1} MiB over 5 phases of 200 ops (budget 150 MiB)",
        e.name,
        mib(rss5) - mib(rss0)
    );
    ensure!(
        mib(rss5) - mib(rss1) <= 16.0,
        "{}: rss grew {:.1} MiB from phase 1 to phase 5 ({:.1} -> {:.1} MiB): not flat (budget 16 MiB)",
        e.name,
        mib(rss5) - mib(rss1),
        mib(rss1),
        mib(rss5)
    );
    if fds5 > fds1 {
        // A connection closed in the background (a no-pool adapter's last
        // one, a driver task) may hold its fd a moment longer: growth is
        // what does not go away.
        e.fds_at_most(fds1, &format!("after phase 5 (after phase 1: {fds1}, sampled {fds5})")).await?;
    }
    ensure!(
        conns5 <= conns1.max(e.kept),
        "{}: server clients grew from {conns1} after phase 1 to {conns5} after phase 5",
        e.name
    );
    Ok(())
}

async fn no_connection_leak(ctx: TestCtx, a: Adapter<Redis>) -> anyhow::Result<()> {
    let (e, _keep) = env(&ctx, &a).await?;
    let n = 500;
    let s = e.load(&ctx, "load", n, Op::Ping).await?;
    e.settle("after the load").await?;
    e.mon.record_into(&ctx, "resources");
    let conns = e.mon.connections("redis").window(s.at_ms, s.at_ms + s.elapsed_ms + 1.0);
    ctx.record(Metric::lower("server_clients_variance", conns.variance()));
    check_variance(&e.name, &conns, 25.0, &format!("server-side clients during {n} ops"))?;
    let mid = s.at_ms + s.elapsed_ms / 2.0;
    let (first, second) = (conns.window(s.at_ms, mid), conns.after(mid));
    // A new connection per op opens and closes all the time: its count is
    // noise around the callers in flight; its leak check is the settle above.
    if a.capabilities().supports(Knob::Reuse) && !first.is_empty() && !second.is_empty() {
        ensure!(
            second.median() <= first.median() + 1.0,
            "{}: server clients grew from a median of {} in the first half of {n} ops to {} in the second",
            e.name,
            first.median(),
            second.median()
        );
    }
    if a.capabilities().supports(Knob::MaxSize) {
        ensure!(
            conns.max() <= WORKERS as f64,
            "{}: the server saw {} clients with max_size {WORKERS}",
            e.name,
            conns.max()
        );
    }
    Ok(())
}

async fn cleanup_on_close(ctx: TestCtx, a: Adapter<Redis>) -> anyhow::Result<()> {
    let (e, _keep) = env(&ctx, &a).await?;
    e.load(&ctx, "load", 100, Op::Ping).await?;
    ctx.step("closing the pool (the pool object stays alive)");
    e.pool.close().await;
    let closed = std::time::Instant::now();
    wait_until(
        &format!("{}: the server to see none of the test's clients after close()", e.name),
        Duration::from_secs(5),
        || async { Ok(e.server().await? == 0) },
    )
    .await
    .with_context(|| format!("{}: close() left clients open server side", e.name))?;
    e.fds_at_most(e.base_fds, "after close()").await?;
    ctx.record(Metric::lower("close_released_ms", closed.elapsed().as_secs_f64() * 1e3));
    e.mon.record_into(&ctx, "resources");
    Ok(())
}
