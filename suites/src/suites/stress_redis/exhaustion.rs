//! Exhaustion (catalogue 1–5): more callers than connections.
//!
//! - `max_connections_limit`: 100 concurrent ops on max 50: the server never
//!   sees more than 50, error rate < 5 %, p95 budget 100 ms.
//! - `queueing_long_ops`: 60 concurrent 50 ms ops on max 50: ≥ 55 succeed,
//!   and the extra ones really queued (their acquire waited for a release).
//! - `no_timeouts_under_normal_load`: 20 ops, all succeed, p95 budget 50 ms.
//! - `extreme_oversubscription`: 150 concurrent 100 ms ops on max 50 with a
//!   250 ms acquire timeout: ≥ 100 succeed, the rest fail as acquire
//!   timeouts within their timeout (no hang, no other class), and the pool
//!   serves again afterwards.
//! - `backlog_drains`: open loop 500 ops/s (each holding its connection
//!   9 ms, just past what 4 connections serve): error rate < 10 %, every op
//!   ends, and the pool's queue drains after the load.

use std::time::Duration;

use anyhow::{ensure, Context};
use poolstress_fixtures::pool::{Adapter, Knob, Op, Redis};
use poolstress_harness::{
    load::{Limit, Phase},
    metrics::{PhaseStats, Quantile},
    ErrorClass, Metric, TestCtx,
};

use crate::kit::{
    support::{accounted, budget_max, check_server_peak, monitor, ms, pool_op, setup, wait_drained},
    Scenario, Tune,
};

pub(super) fn scenarios() -> Vec<Scenario<Redis>> {
    vec![
        Scenario::new("exhaustion::max_connections_limit", &[Knob::MaxSize], |c, a| {
            Box::pin(max_connections_limit(c, a))
        }),
        Scenario::new("exhaustion::queueing_long_ops", &[Knob::MaxSize], |c, a| Box::pin(queueing_long_ops(c, a))),
        Scenario::new("exhaustion::no_timeouts_under_normal_load", &[], |c, a| Box::pin(normal_load(c, a))),
        Scenario::new("exhaustion::extreme_oversubscription", &[Knob::MaxSize, Knob::AcquireTimeout], |c, a| {
            Box::pin(extreme_oversubscription(c, a))
        }),
        Scenario::new("exhaustion::backlog_drains", &[], |c, a| Box::pin(backlog_drains(c, a))),
    ]
}

const SAMPLE: Duration = Duration::from_millis(10);

fn first_errors(s: &PhaseStats) -> String {
    s.error_samples.iter().take(3).map(|e| format!("[{}] {}", e.class, e.message)).collect::<Vec<_>>().join(" | ")
}

async fn max_connections_limit(ctx: TestCtx, a: Adapter<Redis>) -> anyhow::Result<()> {
    let (max, n) = (50, 100);
    let cfg = Tune::new(&a.capabilities(), max).acquire_timeout(Duration::from_secs(5)).done();
    let (fx, pool) = setup(&ctx, &a, cfg).await?;
    let name = a.name();
    let mon = monitor(&ctx, &fx, SAMPLE);
    ctx.step(format!("{n} concurrent PINGs (each holding its connection 5 ms) on a pool of {max}"));
    let s = Phase::burst("burst", n, Duration::from_secs(30))
        .run(&ctx, pool_op(&pool, Op::Ping, Duration::from_millis(5)))
        .await?;
    mon.sample_now().await;
    s.record_into(&ctx, "burst");
    accounted(name, &s, n)?;
    check_server_peak::<Redis>(&ctx, name, &mon, &pool, max)?;
    s.check_error_rate(0.05).with_context(|| format!("{name}: {n} concurrent ops on max {max}"))?;
    budget_max(&ctx, name, "p95_ms", s.latency.p95_ms, 100.0, 1_000.0, "ms")
}

async fn queueing_long_ops(ctx: TestCtx, a: Adapter<Redis>) -> anyhow::Result<()> {
    let (max, n, d) = (50, 60, Duration::from_millis(50));
    let cfg = Tune::new(&a.capabilities(), max).acquire_timeout(Duration::from_secs(5)).done();
    let (fx, pool) = setup(&ctx, &a, cfg).await?;
    let name = a.name();
    let mon = monitor(&ctx, &fx, SAMPLE);
    ctx.step(format!("{n} concurrent slow({d:?}) ops on a pool of {max}"));
    let s = Phase::burst("burst", n, Duration::from_secs(30))
        .run(&ctx, pool_op(&pool, Op::Slow(d), Duration::ZERO))
        .await?;
    mon.sample_now().await;
    s.record_into(&ctx, "burst");
    accounted(name, &s, n)?;
    check_server_peak::<Redis>(&ctx, name, &mon, &pool, max)?;
    ensure!(
        s.ok >= 55,
        "{name}: only {} of {n} slow({d:?}) ops on max {max} succeeded (need >= 55); errors {}: {}",
        s.ok,
        s.errors,
        first_errors(&s)
    );
    // The ops past max_size had to wait for a release: at least one acquire
    // took most of an op's duration. Without that, nothing queued.
    let waited = s.acquire.map(|l| l.max_ms).unwrap_or(0.0);
    ensure!(
        waited >= ms(d) * 0.8,
        "{name}: the longest acquire took {waited:.1} ms; with {n} ops of {d:?} on {max} connections some must wait ~{d:?} for a release"
    );
    ctx.record(Metric::lower("longest_wait_ms", waited));
    Ok(())
}

async fn normal_load(ctx: TestCtx, a: Adapter<Redis>) -> anyhow::Result<()> {
    let n = 20;
    let cfg = Tune::new(&a.capabilities(), 10).acquire_timeout(Duration::from_secs(5)).done();
    let (_fx, pool) = setup(&ctx, &a, cfg).await?;
    let name = a.name();
    ctx.step(format!("{n} SETs from 4 workers"));
    let op = Op::Write { key: 1, value: ctx.slug() };
    let s = Phase::closed("normal", 4, Limit::new(n, Duration::from_secs(30)))
        .run(&ctx, pool_op(&pool, op, Duration::ZERO))
        .await?;
    s.record_into(&ctx, "normal");
    accounted(name, &s, n)?;
    ensure!(
        s.errors.is_empty(),
        "{name}: {} of {n} ops failed under normal load ({}); first: {}",
        s.errors.total(),
        s.errors,
        first_errors(&s)
    );
    budget_max(&ctx, name, "p95_ms", s.latency.p95_ms, 50.0, 500.0, "ms")
}

async fn extreme_oversubscription(ctx: TestCtx, a: Adapter<Redis>) -> anyhow::Result<()> {
    let (max, n, d, timeout) = (50, 150, Duration::from_millis(100), Duration::from_millis(250));
    let cfg = Tune::new(&a.capabilities(), max).acquire_timeout(timeout).done();
    let (fx, pool) = setup(&ctx, &a, cfg).await?;
    let name = a.name();
    let mon = monitor(&ctx, &fx, SAMPLE);
    ctx.step(format!("{n} concurrent slow({d:?}) ops on a pool of {max} with a {timeout:?} acquire timeout"));
    let s = Phase::burst("burst", n, Duration::from_secs(30))
        .run(&ctx, pool_op(&pool, Op::Slow(d), Duration::ZERO))
        .await?;
    mon.sample_now().await;
    s.record_into(&ctx, "burst");
    accounted(name, &s, n)?;
    check_server_peak::<Redis>(&ctx, name, &mon, &pool, max)?;
    ensure!(
        s.ok >= 100,
        "{name}: only {} of {n} ops succeeded on max {max} (need >= 100); errors {}: {}",
        s.ok,
        s.errors,
        first_errors(&s)
    );
    s.check_only(&[ErrorClass::AcquireTimeout])
        .with_context(|| format!("{name}: ops past capacity must fail cleanly, as acquire timeouts"))?;
    if let Some(e) = s.error_latency.filter(|l| l.count > 0) {
        // From the burst's release: the acquire timeout plus scheduling slack.
        let bound = ms(timeout) + 400.0;
        ensure!(
            e.max_ms <= bound,
            "{name}: a failed op took {:.0} ms to fail with an acquire timeout of {timeout:?} (bound {bound:.0} ms): it hung",
            e.max_ms
        );
        ctx.record(Metric::lower("failed_op_max_ms", e.max_ms));
    }
    ctx.note(format!("{name}: {} ok, {} failed as acquire timeouts", s.ok, s.errors.total()));

    ctx.step("the pool serves again after the overload");
    wait_drained(name, &pool, Duration::from_secs(5)).await?;
    let again = tokio::time::timeout(Duration::from_secs(2), pool.run(&Op::Ping)).await;
    ensure!(matches!(again, Ok(Ok(_))), "{name}: after the overload a PING did not succeed within 2 s: {again:?}");
    Ok(())
}

async fn backlog_drains(ctx: TestCtx, a: Adapter<Redis>) -> anyhow::Result<()> {
    let (max, rate, hold) = (4, 500.0, Duration::from_millis(9));
    let secs = ctx.profile().pick(Duration::from_secs(1), Duration::from_secs(3));
    let cfg = Tune::new(&a.capabilities(), max).acquire_timeout(Duration::from_secs(2)).done();
    let (fx, pool) = setup(&ctx, &a, cfg).await?;
    let name = a.name();
    let mon = monitor(&ctx, &fx, SAMPLE);
    ctx.step(format!("open loop {rate} ops/s for {secs:?}, each holding its connection {hold:?}, on max {max}"));
    let phase = Phase::open("backlog", rate, secs).in_flight(256);
    let due = phase.limit().max_ops;
    let s = phase.run(&ctx, pool_op(&pool, Op::Ping, hold)).await?;
    mon.sample_now().await;
    s.record_into(&ctx, "backlog");
    ensure!(
        s.missed == 0 && s.cancelled == 0,
        "{name}: the backlog did not drain: {} arrivals never started and {} ops were still running 5 s after the load ended",
        s.missed,
        s.cancelled
    );
    accounted(name, &s, due)?;
    if a.capabilities().supports(Knob::MaxSize) {
        check_server_peak::<Redis>(&ctx, name, &mon, &pool, max)?;
    }
    s.check_error_rate(0.10).with_context(|| format!("{name}: open loop {rate} ops/s"))?;
    let drain_ms = (s.elapsed_ms - ms(secs)).max(0.0);
    ctx.record(Metric::lower("drain_ms", drain_ms));
    ctx.record(Metric::lower("backlog.latency_p99_ms", s.latency.get(Quantile::P99)));

    ctx.step("the queue drains after the load");
    wait_drained(name, &pool, Duration::from_secs(2)).await?;
    let t = std::time::Instant::now();
    pool.run(&Op::Ping).await.with_context(|| format!("{name}: a PING after the backlog"))?;
    budget_max(&ctx, name, "ping_after_backlog_ms", ms(t.elapsed()), 10.0, 500.0, "ms")
}
