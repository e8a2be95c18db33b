//! Failover and recovery (catalogue 11–15), every fault real.
//!
//! - `recovers_after_server_restart` (exclusive: it restarts the shared
//!   server): the SAME pool object serves again after Redis really restarts;
//!   the time from the restart to the first success is recorded.
//! - `ping_validation_latency`: 200 checkouts validated with a PING.
//! - `retries_transient_failures`: 20 % of the test's clients are killed
//!   (`CLIENT KILL`) while 50 ops run, each retried up to 3 times
//!   (`util::retry`): ≥ 40 succeed, and the kill really reached the load.
//! - `circuit_breaker`: `util::CircuitBreaker` around the pool, Redis made
//!   unreachable by the fault proxy's `down` (only this test's path): after 5
//!   consecutive failures callers fail fast (far below the acquire / connect
//!   timeout, without reaching the pool); the breaker closes once Redis is back.
//! - `fallback_when_cache_down`: `util::cache_or_compute` over the pool with
//!   Redis unreachable (proxy `down`): all 50 calls return the computed value.

use std::{
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context};
use futures::StreamExt;
use poolstress_fixtures::{
    fault::{kill_redis_clients, FaultKind, FaultProxy, ServerFaults, Victims},
    pool::{Adapter, Knob, Op, Pool, PoolError, Redis, Validation},
    service,
};
use poolstress_harness::{
    load::{Limit, Phase},
    Classify, Metric, TestCtx,
};

use crate::{
    kit::{
        support::{accounted, budget_max, build, ms, pool_op, setup},
        wait_until, Scenario, ServiceFixture, Tune,
    },
    util::{cache_or_compute, retry, BreakerError, BreakerState, CircuitBreaker, Fallback, Retry},
};

pub(super) fn scenarios() -> Vec<Scenario<Redis>> {
    vec![
        Scenario::new("recovery::recovers_after_server_restart", &[], |c, a| Box::pin(server_restart(c, a)))
            .exclusive(),
        Scenario::new("recovery::ping_validation_latency", &[Knob::ValidatePing], |c, a| {
            Box::pin(ping_validation(c, a))
        }),
        Scenario::new("recovery::retries_transient_failures", &[], |c, a| Box::pin(retries(c, a))),
        Scenario::new("recovery::circuit_breaker", &[], |c, a| Box::pin(circuit_breaker(c, a))),
        Scenario::new("recovery::fallback_when_cache_down", &[], |c, a| Box::pin(fallback(c, a))),
    ]
}

async fn server_restart(ctx: TestCtx, a: Adapter<Redis>) -> anyhow::Result<()> {
    let cfg = Tune::new(&a.capabilities(), 4)
        .acquire_timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(1))
        .done();
    let (_fx, pool) = setup(&ctx, &a, cfg).await?;
    let name = a.name();
    ctx.step("4 connections in use before the restart");
    let before = Phase::burst("before", 4, Duration::from_secs(10))
        .run(&ctx, pool_op(&pool, Op::Ping, Duration::from_millis(10)))
        .await?;
    accounted(name, &before, 4)?;
    ensure!(before.errors.is_empty(), "{name}: ops failed before any fault: {}", before.errors);

    ctx.step("restarting redis");
    let server = service::redis().await?;
    let t = Instant::now();
    ServerFaults::for_test(&ctx, server).restart().await.map_err(|e| e.into_test_error(&ctx))?;
    let restart_ms = ms(t.elapsed());
    let restarted = Instant::now();
    ctx.record(Metric::lower("restart_ms", restart_ms));

    ctx.step("the same pool object, until it answers again");
    let deadline = Duration::from_secs(15);
    let failures: parking_lot::Mutex<Vec<String>> = Default::default();
    let served = wait_until(&format!("{name}: the same pool to serve again after the restart"), deadline, || async {
        let r = tokio::time::timeout(Duration::from_secs(3), pool.run(&Op::Ping)).await;
        match r {
            Ok(Ok(_)) => return Ok(true),
            Ok(Err(e)) => failures.lock().push(format!("[{}] {e}", e.class())),
            Err(_) => failures.lock().push("hung for 3 s".into()),
        }
        Ok(false)
    })
    .await;
    let failures = failures.into_inner();
    served.with_context(|| {
        format!(
            "{name}: {} failed attempts; first: {}; last: {}",
            failures.len(),
            failures.first().map(String::as_str).unwrap_or("-"),
            failures.last().map(String::as_str).unwrap_or("-")
        )
    })?;
    let recovery_ms = ms(restarted.elapsed());
    ctx.record(Metric::lower("failed_attempts_after_restart", failures.len() as f64));
    ctx.note(format!(
        "{name}: restart took {restart_ms:.0} ms; first success {recovery_ms:.0} ms after it, after {} failed attempts{}",
        failures.len(),
        failures.first().map(|f| format!(" (first: {f})")).unwrap_or_default()
    ));

    ctx.step("steady again: 40 ops from 4 callers, all on the same pool");
    let after = Phase::closed("after", 4, Limit::new(40, Duration::from_secs(10)))
        .run(&ctx, pool_op(&pool, Op::Write { key: 1, value: "after".into() }, Duration::ZERO))
        .await?;
    after.record_into(&ctx, "after");
    accounted(name, &after, 40)?;
    ensure!(
        after.errors.is_empty(),
        "{name}: once recovered, {} of 40 ops still failed: {}",
        after.errors.total(),
        after.errors
    );
    budget_max(&ctx, name, "recovery_ms", recovery_ms, 1_000.0, 10_000.0, "ms")
}

async fn ping_validation(ctx: TestCtx, a: Adapter<Redis>) -> anyhow::Result<()> {
    let n = 200;
    let cfg = Tune::new(&a.capabilities(), 4)
        .acquire_timeout(Duration::from_secs(5))
        .with(Knob::ValidatePing, |c| c.validation(Validation::Ping))
        .done();
    let (_fx, pool) = setup(&ctx, &a, cfg).await?;
    let name = a.name();
    pool.run(&Op::Ping).await.with_context(|| format!("{name}: warm-up"))?;
    ctx.step(format!("{n} PINGs, each checkout validated with a PING"));
    let s = Phase::closed("validated", 1, Limit::new(n, Duration::from_secs(30)))
        .run(&ctx, pool_op(&pool, Op::Ping, Duration::ZERO))
        .await?;
    s.record_into(&ctx, "validated");
    accounted(name, &s, n)?;
    ensure!(s.errors.is_empty(), "{name}: {} of {n} validated ops failed: {}", s.errors.total(), s.errors);
    // Not exclusive: other tests share the 2 cores, so the gates are far past the targets.
    budget_max(&ctx, name, "p50_ms", s.latency.p50_ms, 2.0, 20.0, "ms")?;
    budget_max(&ctx, name, "p95_ms", s.latency.p95_ms, 5.0, 100.0, "ms")
}

async fn retries(ctx: TestCtx, a: Adapter<Redis>) -> anyhow::Result<()> {
    let (max, workers, n, hold) = (10, 10, 50u64, Duration::from_millis(40));
    let cfg = Tune::new(&a.capabilities(), max)
        .acquire_timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(1))
        .done();
    let (fx, pool) = setup(&ctx, &a, cfg).await?;
    let name = a.name().to_string();
    let admin = service::redis().await?.admin_target();
    ctx.step(format!("{workers} connections open"));
    let warm = Phase::burst("warm", workers as u64, Duration::from_secs(10))
        .run(&ctx, pool_op(&pool, Op::Ping, Duration::from_millis(5)))
        .await?;
    ensure!(warm.errors.is_empty(), "{name}: warm-up failed: {}", warm.errors);

    let done = Arc::new(AtomicU64::new(0));
    let (retried_ops, extra_tries) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let policy = Retry::transient(4); // the first try and up to 3 retries

    ctx.step("killing 20 % of the test's clients while ops hold them");
    let killer = {
        let (done, client, ctx2) = (done.clone(), fx.target.client_name.clone(), ctx.clone());
        tokio::spawn(async move {
            wait_until("10 ops done before the kill", Duration::from_secs(10), || async {
                Ok(done.load(Ordering::SeqCst) >= 10)
            })
            .await?;
            let mut rng = ctx2.rng();
            let mut report = kill_redis_clients(&admin, &client, Victims::Fraction(0.2), &mut rng).await?;
            if report.killed.is_empty() && report.seen > 0 {
                // 20 % of fewer than 3 connections rounds to none: kill one.
                report = kill_redis_clients(&admin, &client, Victims::Count(1), &mut rng).await?;
            }
            ctx2.event(format!("CLIENT KILL: {} of {} clients", report.killed.len(), report.seen));
            anyhow::Ok(report)
        })
    };

    let op = {
        let (pool, done, retried_ops, extra_tries) =
            (pool.clone(), done.clone(), retried_ops.clone(), extra_tries.clone());
        move |_t| {
            let (pool, done, retried_ops, extra_tries, policy) =
                (pool.clone(), done.clone(), retried_ops.clone(), extra_tries.clone(), policy.clone());
            async move {
                let out = retry(&policy, || async {
                    let mut c = pool.acquire().await?;
                    tokio::time::sleep(hold).await; // the caller's work while holding the connection
                    c.run(&Op::Ping).await
                })
                .await;
                if out.tries > 1 {
                    retried_ops.fetch_add(1, Ordering::SeqCst);
                    extra_tries.fetch_add(u64::from(out.tries - 1), Ordering::SeqCst);
                }
                done.fetch_add(1, Ordering::SeqCst);
                out.result.map(|_| ())
            }
        }
    };
    let s = Phase::closed("load", workers, Limit::new(n, Duration::from_secs(30))).run(&ctx, op).await?;
    let report = killer.await?.with_context(|| format!("{name}: the kill during the load"))?;
    s.record_into(&ctx, "load");
    accounted(&name, &s, n)?;
    let (retried, extra) = (retried_ops.load(Ordering::SeqCst), extra_tries.load(Ordering::SeqCst));
    ctx.record(Metric::lower("ops_retried", retried as f64));
    ctx.record(Metric::lower("retries", extra as f64));
    ctx.note(format!(
        "{name}: killed {} of {} clients; {} of {n} ops succeeded, {retried} needed retries ({extra} retries in all)",
        report.killed.len(),
        report.seen,
        s.ok
    ));
    ensure!(!report.killed.is_empty(), "{name}: CLIENT KILL found none of the test's clients to kill ({report:?})");
    ensure!(
        retried >= 1,
        "{name}: {} clients were killed while ops held them, yet no op needed a retry: the fault did not reach the load",
        report.killed.len()
    );
    ensure!(
        s.ok >= 40,
        "{name}: only {} of {n} ops succeeded with up to 3 retries after {} of {} clients were killed (need >= 40); errors {}",
        s.ok,
        report.killed.len(),
        report.seen,
        s.errors
    );
    Ok(())
}

/// A call that failed: the pool's own error, or the caller's deadline
/// passed first (what a service puts around every remote call).
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error("no answer within the caller's deadline of {0:?}")]
    Deadline(Duration),
}

impl CallError {
    fn what(&self) -> &'static str {
        match self {
            CallError::Pool(e) => e.class().name(),
            CallError::Deadline(_) => "caller_deadline",
        }
    }
}

/// `fut` under the caller's `deadline`.
async fn within<T>(
    deadline: Duration,
    fut: impl std::future::Future<Output = Result<T, PoolError>>,
) -> Result<T, CallError> {
    match tokio::time::timeout(deadline, fut).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(CallError::Deadline(deadline)),
    }
}

/// The pool's acquire / connect timeout with Redis unreachable, and the
/// caller's deadline around each call (a pool may take longer than its
/// timeouts to give up: redis-rs's ConnectionManager waits for its whole
/// reconnect schedule).
const TIMEOUT: Duration = Duration::from_millis(250);
const DEADLINE: Duration = Duration::from_millis(400);

/// A pool on a proxy in front of the test's Redis, so `down` cuts only this test.
async fn proxied(
    ctx: &TestCtx,
    a: &Adapter<Redis>,
) -> anyhow::Result<(FaultProxy, Pool, Box<dyn std::any::Any + Send>)> {
    ctx.step("providing a redis server behind a fault proxy");
    let fx = Redis::provide(ctx).await?;
    let (proxy, via) = FaultProxy::for_redis(ctx, &fx.target).await?;
    let cfg = Tune::new(&a.capabilities(), 4).acquire_timeout(TIMEOUT).connect_timeout(TIMEOUT).done();
    let pool = build(ctx, a, &cfg, &via).await?;
    Ok((proxy, pool, fx.keep))
}

/// Notes calls the caller's deadline cut: the pool did not fail by itself in time.
fn note_deadlines(ctx: &TestCtx, name: &str, what: &str, hits: usize) {
    ctx.record(Metric::lower("caller_deadline_hits", hits as f64));
    if hits > 0 {
        ctx.note(format!(
            "{name}: {hits} {what} with Redis unreachable did not fail by themselves within {DEADLINE:?} \
             (acquire/connect timeout {TIMEOUT:?}); the caller's deadline cut them"
        ));
    }
}

async fn circuit_breaker(ctx: TestCtx, a: Adapter<Redis>) -> anyhow::Result<()> {
    let (threshold, cool_down) = (5, Duration::from_millis(300));
    let (proxy, pool, _keep) = proxied(&ctx, &a).await?;
    let name = a.name();
    let breaker = CircuitBreaker::new(threshold, cool_down);
    let reached = AtomicU32::new(0);
    let call = || {
        breaker.call(|| {
            reached.fetch_add(1, Ordering::SeqCst);
            within(DEADLINE, pool.run(&Op::Ping))
        })
    };

    ctx.step("healthy: calls go through");
    for i in 0..10 {
        call().await.map_err(|e| anyhow::anyhow!("{name}: healthy call {i} through the breaker failed: {e}"))?;
    }
    ensure!(breaker.state() == BreakerState::Closed, "{name}: breaker {:?} after 10 successes", breaker.state());

    ctx.step("redis unreachable (proxy down): the breaker opens after 5 failures");
    let down = proxy.add(FaultKind::down())?;
    let mut failing = Vec::new();
    for i in 0..threshold {
        let t = Instant::now();
        match call().await {
            Err(BreakerError::Inner(e)) => failing.push((ms(t.elapsed()), e.what())),
            Err(BreakerError::Open { .. }) => {
                bail!("{name}: the breaker opened after {i} failures (threshold {threshold})")
            }
            Ok(_) => bail!("{name}: call {i} succeeded with Redis unreachable: the fault did not apply"),
        }
    }
    ensure!(
        breaker.state() == BreakerState::Open,
        "{name}: the breaker is {:?} after {threshold} consecutive failures",
        breaker.state()
    );
    let slowest = failing.iter().map(|f| f.0).fold(0.0, f64::max);
    ctx.record(Metric::lower("failing_call_max_ms", slowest));
    note_deadlines(&ctx, name, "calls", failing.iter().filter(|f| f.1 == "caller_deadline").count());

    ctx.step("open: callers fail fast without reaching the pool");
    let before = reached.load(Ordering::SeqCst);
    let mut fast = Vec::new();
    for i in 0..20 {
        let t = Instant::now();
        match call().await {
            Err(BreakerError::Open { .. }) => fast.push(t.elapsed()),
            Err(BreakerError::Inner(e)) => bail!("{name}: call {i} reached the pool while the breaker was open: {e}"),
            Ok(_) => bail!("{name}: call {i} succeeded while Redis was unreachable"),
        }
    }
    let fast_max = fast.iter().max().copied().unwrap_or_default();
    ctx.record(Metric::lower("fail_fast_max_us", fast_max.as_secs_f64() * 1e6));
    ensure!(
        reached.load(Ordering::SeqCst) == before,
        "{name}: {} calls reached the pool while the breaker was open",
        reached.load(Ordering::SeqCst) - before
    );
    ensure!(
        fast_max * 10 <= TIMEOUT,
        "{name}: failing fast took up to {fast_max:?}; it must be far below the {TIMEOUT:?} acquire/connect timeout (bound {:?})",
        TIMEOUT / 10
    );
    ctx.note(format!(
        "{name}: failures before opening took up to {slowest:.1} ms ({:?}); open-breaker calls at most {fast_max:?}",
        failing.iter().map(|f| f.1).collect::<Vec<_>>()
    ));

    ctx.step("redis back: the breaker closes");
    down.heal()?;
    let healed = Instant::now();
    wait_until(&format!("{name}: the breaker to close after Redis came back"), Duration::from_secs(10), || async {
        let _ = call().await;
        Ok(breaker.state() == BreakerState::Closed)
    })
    .await?;
    let close_ms = ms(healed.elapsed());
    for i in 0..10 {
        call().await.map_err(|e| anyhow::anyhow!("{name}: call {i} after the breaker closed failed: {e}"))?;
    }
    budget_max(&ctx, name, "time_to_close_ms", close_ms, ms(cool_down) + 100.0, 5_000.0, "ms")
}

async fn fallback(ctx: TestCtx, a: Adapter<Redis>) -> anyhow::Result<()> {
    let n = 50u64;
    let (proxy, pool, _keep) = proxied(&ctx, &a).await?;
    let name = a.name();
    let computed = |k: u64| format!("computed-{k}");
    let deadline_hits = AtomicU32::new(0);
    let lookup = |k: u64| {
        let (reader, writer, hits) = (pool.clone(), pool.clone(), &deadline_hits);
        async move {
            cache_or_compute(
                || async move {
                    let r = within(DEADLINE, async {
                        let mut c = reader.acquire().await?;
                        Ok(c.run(&Op::Read { key: k }).await?.value().map(str::to_string))
                    })
                    .await;
                    if matches!(r, Err(CallError::Deadline(_))) {
                        hits.fetch_add(1, Ordering::SeqCst);
                    }
                    r
                },
                || async move { computed(k) },
                |v| {
                    within(DEADLINE, async move {
                        writer.acquire().await?.run(&Op::Write { key: k, value: v }).await.map(|_| ())
                    })
                },
            )
            .await
        }
    };

    ctx.step("cache up: a miss fills it, then it hits");
    let key = 10_000;
    let (v, f) = lookup(key).await;
    ensure!(
        (v.as_str(), f) == (computed(key).as_str(), Fallback::Miss),
        "{name}: first lookup gave {v:?} ({f:?}), want a miss"
    );
    let (v, f) = lookup(key).await;
    ensure!(
        (v.as_str(), f) == (computed(key).as_str(), Fallback::Hit),
        "{name}: second lookup gave {v:?} ({f:?}), want a hit"
    );

    ctx.step(format!("redis unreachable (proxy down): {n} lookups, 25 at a time"));
    let down = proxy.add(FaultKind::down())?;
    // (key, value and where it came from unless it hung, time taken)
    type Lookup = (u64, Option<(String, Fallback)>, Duration);
    let results: Vec<Lookup> = futures::stream::iter(0..n)
        .map(|k| {
            let lookup = &lookup;
            async move {
                let t = Instant::now();
                // Bounded, so a hang shows as a failure rather than the test's deadline.
                let r = tokio::time::timeout(Duration::from_secs(10), lookup(k)).await.ok();
                (k, r, t.elapsed())
            }
        })
        .buffer_unordered(25)
        .collect()
        .await;
    let mut slowest = Duration::ZERO;
    for (k, r, took) in &results {
        slowest = slowest.max(*took);
        match r {
            None => bail!("{name}: lookup {k} with Redis unreachable hung for 10 s"),
            Some((v, _)) if *v != computed(*k) => bail!("{name}: lookup {k} returned {v:?}, want {:?}", computed(*k)),
            Some((_, f)) if *f != Fallback::CacheDown => {
                bail!("{name}: lookup {k} was a cache {f:?} while Redis was unreachable: the fault did not apply")
            }
            Some(_) => {}
        }
    }
    ensure!(results.len() as u64 == n, "{name}: {} of {n} lookups accounted for", results.len());
    ctx.record(Metric::lower("fallback_max_ms", ms(slowest)));
    note_deadlines(&ctx, name, "lookups", deadline_hits.load(Ordering::SeqCst) as usize);
    ctx.note(format!("{name}: all {n} lookups answered by the fallback; slowest {slowest:?}"));

    ctx.step("redis back: lookups reach the cache again");
    down.heal()?;
    wait_until(&format!("{name}: a lookup to reach the cache after the heal"), Duration::from_secs(10), || async {
        Ok(lookup(key).await.1 != Fallback::CacheDown)
    })
    .await?;
    Ok(())
}
