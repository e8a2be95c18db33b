//! Exhaustion: what a pool does when every connection is taken.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context};
use futures::FutureExt;
use poolstress_fixtures::pool::{Adapter, Knob, Op, PoolConfig, PoolError, Postgres, Stage};
use poolstress_harness::{
    load::{Limit, OpTimer, Phase, Plan},
    metrics::Quantile,
    Classify, ErrorClass, Metric, TestCtx,
};

use super::{check_released, check_server_peak, hold, ms, setup, start_queued, with_acquire_timeout, Fx};

/// Acquires with everything held: must fail with the pool's acquire timeout,
/// no earlier than `timeout`. Returns the error and how long it took.
async fn acquire_must_time_out(fx: &Fx, timeout: Duration, held: usize) -> anyhow::Result<(PoolError, Duration)> {
    let started = Instant::now();
    let r = tokio::time::timeout(timeout + Duration::from_secs(10), fx.pool.acquire()).await;
    let took = started.elapsed();
    let e = match r {
        Err(_) => bail!(
            "{}: an acquire with all {held} connections held and acquire_timeout {timeout:?} was still waiting after {took:?}",
            fx.name
        ),
        Ok(Ok(_)) => bail!(
            "{}: handed out another connection with all {held} of max_size {} held (after {took:?})",
            fx.name,
            fx.pool.config().max_size
        ),
        Ok(Err(e)) => e,
    };
    ensure!(
        e.class() == ErrorClass::AcquireTimeout,
        "{}: with every connection held, an acquire failed with [{}] in phase {:?} instead of an acquire timeout: {e}",
        fx.name,
        e.class(),
        e.phase()
    );
    ensure!(
        took + Duration::from_millis(1) >= timeout,
        "{}: the acquire timed out after {took:?}, before its acquire_timeout of {timeout:?}",
        fx.name
    );
    Ok((e, took))
}

/// Catalogue #1: A pool of max N never has more than N server connections; extra
/// acquirers queue and are served as connections are released; an acquire
/// past its timeout fails with the pool's timeout error.
pub async fn max_size_enforced(ctx: TestCtx, a: Adapter<Postgres>) -> anyhow::Result<()> {
    let max = ctx.profile().pick(10, 20);
    let extra = max / 2;
    let timeout = ctx.profile().pick(Duration::from_millis(500), Duration::from_secs(1));
    let fx = setup(&ctx, &a, PoolConfig::new(max).acquire_timeout(timeout)).await?;
    let name = fx.name.clone();
    let mon = fx.monitor(&ctx);

    ctx.step(format!("holding all {max} connections"));
    let mut held = hold(&fx.pool, max, Duration::from_secs(10)).await?;
    let n = fx.count().await?;
    ensure!(n <= max as u64, "{name}: {n} server connections with {max} checkouts held on a pool of max {max}");

    ctx.step(format!("{extra} more acquirers queue"));
    let mut waiters = Vec::with_capacity(extra);
    for i in 0..extra {
        let pool = fx.pool.clone();
        match start_queued(async move { pool.acquire().await }.boxed()).await {
            Ok(w) => waiters.push(w),
            Err(Ok(_)) => bail!("{name}: acquirer {i} got a connection at once with all {max} of max_size {max} held"),
            Err(Err(e)) => bail!("{name}: acquirer {i} failed at once with every connection held: {e}"),
        }
    }
    if fx.caps.supports(Knob::StatusWaiters) {
        super::wait_until(&format!("{name}: status to report {extra} waiters"), Duration::from_secs(2), || async {
            Ok(fx.pool.status().and_then(|s| s.waiters).unwrap_or(0) >= extra)
        })
        .await?;
    }
    let n = fx.count().await?;
    ensure!(n <= max as u64, "{name}: {n} server connections while {extra} acquirers queued on a full pool of {max}");

    ctx.step("releasing connections to the queue");
    let released = Instant::now();
    held.truncate(max - extra);
    for (i, w) in waiters.into_iter().enumerate() {
        let c = tokio::time::timeout(timeout + Duration::from_secs(5), w)
            .await
            .with_context(|| {
                format!("{name}: queued acquirer {i} was not served after {extra} connections were released")
            })?
            .context("a queued acquirer panicked")?
            .with_context(|| format!("{name}: queued acquirer {i} failed after {extra} connections were released"))?;
        held.push(c);
    }
    ctx.record(Metric::lower("queue_served_ms", ms(released.elapsed())));

    ctx.step(format!("one more acquire with all {max} held again (acquire_timeout {timeout:?})"));
    let (e, took) = acquire_must_time_out(&fx, timeout, max).await?;
    ctx.record(Metric::lower("acquire_timeout_overshoot_ms", ms(took.saturating_sub(timeout))));
    ctx.note(format!("the extra acquire failed after {took:?}: {e}"));
    drop(held);
    check_server_peak(&ctx, &fx, &mon, max as u64, "while the pool was exhausted").await
}

/// Catalogue #2: 2x max_size concurrent requests, each holding its connection for a
/// while, all succeed eventually.
pub async fn exhaustion_waiters_all_served(ctx: TestCtx, a: Adapter<Postgres>) -> anyhow::Result<()> {
    let max = ctx.profile().pick(10, 20);
    let requests = 2 * max;
    let op_hold = ctx.profile().pick(Duration::from_millis(50), Duration::from_millis(200));
    let within = ctx.profile().pick(Duration::from_secs(2), Duration::from_secs(10));
    let fx = setup(&ctx, &a, with_acquire_timeout(&a, PoolConfig::new(max), within)).await?;
    let name = fx.name.clone();
    let mon = fx.monitor(&ctx);

    ctx.step(format!("{requests} requests at once on a pool of {max}, each holding its connection {op_hold:?}"));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (pool, fl, pk) = (fx.pool.clone(), in_flight.clone(), peak.clone());
    let stats = Phase::burst("waiters", requests as u64, within)
        .grace(Duration::from_secs(3))
        .run(&ctx, move |mut t: OpTimer| {
            let (pool, fl, pk) = (pool.clone(), fl.clone(), pk.clone());
            async move {
                let mut c = pool.acquire().await?;
                t.acquired();
                pk.fetch_max(fl.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                let r = c.run(&Op::Slow(op_hold)).await;
                fl.fetch_sub(1, Ordering::SeqCst);
                r?;
                Ok::<_, PoolError>(t)
            }
        })
        .await?;
    stats.record_into(&ctx, "waiters");
    ctx.note(stats.summary());

    // The most specific diagnosis first: connections that never came back.
    check_released(&fx, &format!("after all {requests} requests ended")).await?;
    ensure!(
        stats.cancelled == 0,
        "{name}: {} of {requests} requests were still waiting {within:?} (+3 s grace) after they started: never served",
        stats.cancelled
    );
    stats.check_accounted(Some(requests as u64))?;
    if stats.errors.total() > 0 {
        let first = stats.error_samples.first().map(|s| s.message.clone()).unwrap_or_default();
        let why = if stats.errors.get(ErrorClass::AcquireTimeout) > 0 {
            format!(
                "; each served request released its connection after {op_hold:?}, so {within:?} was plenty: \
                 released connections did not come back to the waiters (leak?)"
            )
        } else {
            String::new()
        };
        bail!("{name}: {} of {requests} requests failed ({}){why}; first: {first}", stats.errors.total(), stats.errors);
    }
    let p = peak.load(Ordering::SeqCst);
    ensure!(p <= max, "{name}: {p} requests held a connection at once on a pool of max {max}");
    if let Some(acq) = &stats.acquire {
        ctx.record(Metric::lower("waiter_wait_max_ms", acq.max_ms));
    }
    check_server_peak(&ctx, &fx, &mon, max as u64, &format!("while {requests} requests shared {max} connections")).await
}

/// Catalogue #3: With every connection held an acquire times out with the acquire
/// timeout error; after the release the pool serves again at once.
pub async fn exhaustion_timeout_then_recovers(ctx: TestCtx, a: Adapter<Postgres>) -> anyhow::Result<()> {
    let max = ctx.profile().pick(3, 5);
    let timeout = ctx.profile().pick(Duration::from_millis(300), Duration::from_secs(1));
    let fx = setup(&ctx, &a, PoolConfig::new(max).acquire_timeout(timeout)).await?;
    let name = fx.name.clone();

    ctx.step(format!("holding all {max}"));
    let held = hold(&fx.pool, max, Duration::from_secs(10)).await?;
    ctx.step("acquiring with everything held");
    let (e, took) = acquire_must_time_out(&fx, timeout, max).await?;
    ctx.note(format!("timed out after {took:?}: {e}"));

    ctx.step("releasing everything and acquiring again");
    drop(held);
    let released = Instant::now();
    let first = tokio::time::timeout(Duration::from_secs(5), fx.pool.run(&Op::Ping)).await;
    match first {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => bail!("{name}: the first acquire after a timeout and a full release failed: {e}"),
        Err(_) => bail!("{name}: the first acquire after a timeout and a full release hung for 5 s"),
    }
    ctx.record(Metric::lower("first_op_after_release_ms", ms(released.elapsed())));
    let again = hold(&fx.pool, max, Duration::from_secs(5))
        .await
        .with_context(|| format!("{name}: the pool did not serve all {max} connections again after a timeout"))?;
    let n = fx.count().await?;
    ensure!(n <= max as u64, "{name}: {n} server connections with {max} held on a pool of max {max}");
    drop(again);
    check_released(&fx, "after every checkout was released").await
}

/// Catalogue #4: Normal, heavy and overload phases (closed loop, 0.5x, 2x and 5x
/// max_size workers): latency grows with load, no phase collapses (error
/// rate under budget, nothing hangs).
pub async fn graceful_degradation_normal_heavy_overload(ctx: TestCtx, a: Adapter<Postgres>) -> anyhow::Result<()> {
    let max = ctx.profile().pick(5, 10);
    let phase_len = ctx.profile().pick(Duration::from_millis(400), Duration::from_secs(3));
    let grace = Duration::from_secs(5);
    let op = Op::Slow(Duration::from_millis(2));
    // Far above any queueing wait here (5x max_size workers on 2 ms ops): only
    // a pool that stops serving (or a machine stalled for seconds) times out.
    let timeout = Duration::from_secs(3);
    let fx = setup(&ctx, &a, PoolConfig::new(max).acquire_timeout(timeout)).await?;
    let name = fx.name.clone();
    let mon = fx.monitor(&ctx);

    // (phase, workers, error-rate budget)
    let phases = [("normal", (max / 2).max(1), 0.01), ("heavy", 2 * max, 0.01), ("overload", 5 * max, 0.10)];
    let plan = phases.iter().fold(Plan::new(), |p, (n, w, _)| {
        p.then(
            Phase::closed(*n, *w, Limit::new(1_000_000, phase_len))
                .grace(grace)
                .timeline_bucket(Duration::from_millis(100)),
        )
    });
    ctx.step("normal, heavy and overload phases");
    let pool = fx.pool.clone();
    let report = plan
        .run(&ctx, move |mut t: OpTimer| {
            let (pool, op) = (pool.clone(), op.clone());
            async move {
                let mut c = pool.acquire().await?;
                t.acquired();
                c.run(&op).await?;
                Ok::<_, PoolError>(t)
            }
        })
        .await?;
    report.record_into(&ctx, "degradation");
    for (phase, workers, budget) in phases {
        let s = report.phase(phase)?;
        ctx.note(s.summary());
        ensure!(
            s.cancelled == 0,
            "{name}: {} ops hung past {grace:?} of grace in phase {phase} ({workers} workers)",
            s.cancelled
        );
        s.check_accounted(None)?;
        ensure!(
            s.ok > 0,
            "{name}: nothing succeeded in phase {phase} ({workers} workers on {max}): the pool collapsed"
        );
        s.check_only(&[ErrorClass::AcquireTimeout])?;
        s.check_error_rate(budget)
            .with_context(|| format!("{name}: phase {phase} ({workers} workers on a pool of {max})"))?;
    }
    let (normal, overload) = (report.phase("normal")?, report.phase("overload")?);
    // The mean, not the median: in a closed loop the mean is workers / throughput
    // (Little's law), so queueing must show in it; a pool that lets releasing
    // callers re-acquire first keeps its median flat and pushes the wait into
    // the tail (recorded as p99 / p50).
    let (m0, m1) = (normal.latency.mean_ms, overload.latency.mean_ms);
    ctx.record(Metric::lower("overload_vs_normal_mean_ratio", m1 / m0.max(1e-3)));
    ctx.record(Metric::lower("overload_p99_vs_p50", overload.latency.p99_ms / overload.latency.p50_ms.max(1e-3)));
    ensure!(
        m1 > m0,
        "{name}: latency did not grow with load: mean {m0:.2} ms with {} workers, {m1:.2} ms with {} workers on a pool of {max} \
         (queueing for a connection must show)",
        phases[0].1,
        phases[2].1
    );
    if let Some(acq) = &overload.acquire {
        ctx.record(Metric::lower("overload_acquire_p95_ms", acq.get(Quantile::P95)));
    }
    check_server_peak(&ctx, &fx, &mon, max as u64, "across normal, heavy and overload").await
}

/// Catalogue #5: The timeout error says what timed out (waiting for a slot, not
/// creating or checking a connection), with the pool's state and what to do.
pub async fn exhaustion_error_is_actionable(ctx: TestCtx, a: Adapter<Postgres>) -> anyhow::Result<()> {
    let max = 2;
    let timeout = ctx.profile().pick(Duration::from_millis(250), Duration::from_millis(500));
    let fx = setup(&ctx, &a, PoolConfig::new(max).acquire_timeout(timeout)).await?;
    let name = fx.name.clone();
    let held = hold(&fx.pool, max, Duration::from_secs(10)).await?;
    ctx.step("acquiring with everything held");
    let (e, _) = acquire_must_time_out(&fx, timeout, max).await?;
    let msg = e.to_string();
    ctx.note(format!("the error: {msg}"));
    ctx.attach(
        "acquire_timeout_error",
        serde_json::json!({ "message": msg, "phase": e.phase(), "status": e.status() }),
    );
    drop(held);

    // What timed out: nothing was being opened or checked, so it is the wait
    // for a slot (or one acquire timeout, for pools that report only that).
    ensure!(
        matches!(e.phase(), Stage::Wait | Stage::Acquire),
        "{name}: with every connection held and none being opened or checked, the timeout names phase {:?} ({}): \
         it should be waiting for a free slot (or acquiring, for pools that report a single timeout). Message: {msg}",
        e.phase(),
        e.phase()
    );
    let phase = e.phase().to_string();
    ensure!(msg.contains(&phase), "{name}: the message does not say what timed out ({phase:?}): {msg}");
    ensure!(msg.contains(&name), "{name}: the message does not name the pool: {msg}");
    ensure!(msg.contains("[acquire_timeout]"), "{name}: the message does not classify the error: {msg}");
    ensure!(
        msg.contains("max_size"),
        "{name}: the message does not say what to do (raise max_size or acquire_timeout): {msg}"
    );
    if fx.caps.supports(Knob::StatusSize) {
        let st = e
            .status()
            .with_context(|| format!("{name}: the pool reports its size but the error carries no status: {msg}"))?;
        ensure!(
            st.size == Some(max) && st.max_size == Some(max),
            "{name}: the error's status says size {:?} of {:?}; all {max} of {max} were held: {msg}",
            st.size,
            st.max_size
        );
        if fx.caps.supports(Knob::StatusIdle) {
            ensure!(
                st.in_use() == Some(max),
                "{name}: the error's status says {:?} in use; all {max} were: {msg}",
                st.in_use()
            );
        }
        let state = format!("size {max}/{max}");
        ensure!(
            msg.contains("pool status:") && msg.contains(&state),
            "{name}: the message does not show the pool's state ({state}): {msg}"
        );
    } else {
        ctx.note(format!("{name} reports no status: the message cannot show the pool's state"));
    }
    Ok(())
}
