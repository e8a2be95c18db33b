//! Load that comes and goes.
//!
//! - `connection_spike`: the load generator's spike plan, 20 → 200 → 20
//!   ops/s (each op holding its connection 40 ms, so the spike needs ~8
//!   connections and the baseline ~1): error rate < 10 % in every phase, the
//!   spike really grew the pool, and after it the pool shrinks back to its
//!   baseline size (idle_timeout; pools that grow but cannot shrink are
//!   skipped with the adapter's reason).
//! - `connection_churn`: 500 acquire/release cycles (200 in quick): no error,
//!   p95 budget 50 ms, never more server connections than max_size, and
//!   afterwards no more than the pool keeps.

use std::time::Duration;

use anyhow::{anyhow, ensure, Context};
use poolstress_fixtures::pool::{Adapter, Knob, Op};
use poolstress_harness::{
    load::{Limit, Phase, Plan, Spike},
    Metric, TestCtx,
};

use crate::kit::{
    support::{accounted, budget_max, monitor, pool_op, setup},
    wait_until, NetService, Tune,
};

/// Pools that grow with load but have no idle timeout never return to their
/// baseline size by themselves.
pub(super) fn cannot_shrink<S: NetService>(a: &Adapter<S>) -> Option<String> {
    let caps = a.capabilities();
    match caps.unsupported_reason(Knob::IdleTimeout) {
        Some(why) if caps.supports(Knob::MaxSize) => Some(format!(
            "{} lacks idle_timeout: {why} (after a spike it keeps its peak size, so \"back to baseline size\" cannot hold)",
            a.name()
        )),
        _ => None,
    }
}

pub(super) async fn connection_spike<S: NetService>(ctx: TestCtx, a: Adapter<S>) -> anyhow::Result<()> {
    let (base, peak, hold, idle) = (20.0, 200.0, Duration::from_millis(40), Duration::from_millis(500));
    let each = ctx.profile().pick(Duration::from_millis(300), Duration::from_secs(5));
    let caps = a.capabilities();
    let cfg = Tune::new(&caps, 20).acquire_timeout(Duration::from_secs(2)).idle_timeout(idle).done();
    let (fx, pool) = setup(&ctx, &a, cfg).await?;
    let name = a.name();
    let mon = monitor(&ctx, &fx, Duration::from_millis(10));

    ctx.step(format!("spike {base} -> {peak} -> {base} ops/s, {each:?} each, ops holding {hold:?}"));
    let plan = Plan::spike(Spike { base_per_s: base, spike_per_s: peak, baseline: each, spike: each, recovery: each });
    let due: Vec<u64> = plan.phases().iter().map(|p| p.limit().max_ops).collect();
    let report = plan.run(&ctx, pool_op(&pool, Op::Ping, hold)).await?;
    mon.sample_now().await;
    report.record_into(&ctx, "spike");
    for (p, due) in report.phases.iter().zip(due) {
        p.check_accounted(None).map_err(|e| anyhow!("{name}: {e}"))?;
        ensure!(
            p.started + p.missed == due && p.missed == 0,
            "{name}: phase {}: {} started + {} missed of {due} arrivals due",
            p.name,
            p.started,
            p.missed
        );
        p.check_error_rate(0.10).with_context(|| format!("{name}: phase {}", p.name))?;
    }
    let conns = mon.connections(S::NAME);
    let during = |phase: &str| -> anyhow::Result<f64> {
        let s = conns.during(report.phase(phase)?);
        Ok(if s.is_empty() { 0.0 } else { s.max() })
    };
    let (baseline, spiked) = (during("baseline")?, during("spike")?);
    ctx.record(Metric::lower("baseline_connections", baseline));
    ctx.record(Metric::lower("spike_connections", spiked));
    if caps.supports(Knob::MaxSize) {
        ensure!(
            spiked > baseline,
            "{name}: the server saw at most {spiked} connections during the spike and {baseline} during the baseline: the spike did not grow the pool"
        );
    }

    ctx.step("back to the baseline size");
    let target = baseline.max(1.0) as u64;
    let t = std::time::Instant::now();
    wait_until(
        &format!("{name}: server connections back to the baseline's {target} (peak {spiked}, idle_timeout {idle:?})"),
        Duration::from_secs(10),
        || async { Ok(fx.counter.count().await? <= target) },
    )
    .await?;
    ctx.record(Metric::lower("shrink_ms", t.elapsed().as_secs_f64() * 1e3));
    Ok(())
}

pub(super) async fn connection_churn<S: NetService>(ctx: TestCtx, a: Adapter<S>) -> anyhow::Result<()> {
    let (max, n) = (4, ctx.profile().pick(200, 500));
    let caps = a.capabilities();
    let cfg = Tune::new(&caps, max).acquire_timeout(Duration::from_secs(5)).done();
    let (fx, pool) = setup(&ctx, &a, cfg).await?;
    let name = a.name();
    let mon = monitor(&ctx, &fx, Duration::from_millis(10));
    ctx.step(format!("{n} acquire/release cycles from 4 callers on max {max}"));
    let s = Phase::closed("churn", 4, Limit::new(n, Duration::from_secs(60)))
        .run(&ctx, pool_op(&pool, Op::Ping, Duration::ZERO))
        .await?;
    mon.sample_now().await;
    s.record_into(&ctx, "churn");
    accounted(name, &s, n)?;
    ensure!(s.errors.is_empty(), "{name}: {} of {n} cycles failed: {}", s.errors.total(), s.errors);
    let peak = mon.connections(S::NAME).max();
    ctx.record(Metric::lower("server_connections_peak", peak));
    if caps.supports(Knob::MaxSize) {
        ensure!(peak <= max as f64, "{name}: the server saw {peak} connections during the churn; max_size is {max}");
    }
    let kept = if caps.supports(Knob::Reuse) { max as u64 } else { 0 };
    wait_until(
        &format!("{name}: at most {kept} server connections after the churn"),
        Duration::from_secs(5),
        || async { Ok(fx.counter.count().await? <= kept) },
    )
    .await?;
    budget_max(&ctx, name, "p95_ms", s.latency.p95_ms, 50.0, 500.0, "ms")
}
