//! Pool exhaustion (`exhaustion::<service>::<case>[<adapter>]`, tags chaos,
//! layer_3 and the service; any pool with a size, Postgres or Redis), the
//! catalogue's seven cases:
//!
//! - `saturation_detected`: as checkouts are taken one by one, the pool's
//!   status reports in use / size / waiters correctly, and size matches what
//!   the server sees (skipped for pools without status).
//! - `queue_management`: waiters on an exhausted pool time out cleanly
//!   (`acquire_timeout`, on time, none left behind) and a queue drains in
//!   arrival order.
//! - `backpressure_signal`: a tiny service using the pool answers "busy"
//!   quickly when the pool is exhausted: no hang, no crash.
//! - `leak_detection`: a [`LeakDetector`] wrapper records where each
//!   checkout was taken (`#[track_caller]`); a caller that never releases is
//!   reported with its `file:line`.
//! - `degrades_gracefully_under_sustained_load`: open loop at 1.2x the
//!   pool's measured capacity (30 s nightly, 2 s quick): ≥ 80 % succeed,
//!   p99 < 8 s, the excess fails fast with `acquire_timeout` only.
//! - `multi_service_isolation`: two pools ("services") on one server; A is
//!   exhausted and hammered; B's error rate and latency stay within budget.
//! - `auto_heals`: the tasks holding every connection are cancelled; the
//!   pool is healthy again on its own (no manual step) within 60 s.

use std::{
    collections::HashMap,
    panic::Location,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure};
use futures::future::BoxFuture;
use parking_lot::Mutex;
use poolstress_fixtures::{
    fault::{TaskKiller, Victims},
    pool::{Adapter, Checkout, Knob, Op, Pool, PoolConfig, PoolError, Service},
};
use poolstress_harness::{
    load::{Limit, OpTimer, Phase},
    tag, Classify, ErrorClass, Metric, Registry, TestCtx,
};

use crate::kit::{
    ledger::{note_plan, pool_capacity_intact, pool_serves_again, watchdog},
    mark, wait_until, Finding, Needs, Provided, ServiceFixture,
};

type Body<S> = fn(TestCtx, Adapter<S>) -> BoxFuture<'static, anyhow::Result<()>>;

struct Case<S: Service> {
    name: &'static str,
    /// The fault plan, noted with the seed (printed if the test fails).
    plan: &'static str,
    needs: &'static [Knob],
    /// Loads the shared server enough to disturb other tests' timings.
    exclusive: bool,
    body: Body<S>,
}

fn cases<S: ServiceFixture>() -> Vec<Case<S>> {
    vec![
        Case {
            name: "saturation_detected",
            plan: "take max_size checkouts one by one, then two waiters; release",
            needs: &[Knob::MaxSize, Knob::StatusSize, Knob::StatusIdle],
            exclusive: false,
            body: |c, a| Box::pin(saturation_detected(c, a)),
        },
        Case {
            name: "queue_management",
            plan: "hold both of 2 connections; 4 waiters time out; then 5 queued on a pool of 1 drain",
            needs: &[Knob::MaxSize, Knob::AcquireTimeout],
            exclusive: false,
            body: |c, a| Box::pin(queue_management(c, a)),
        },
        Case {
            name: "backpressure_signal",
            plan: "hold all 3 connections; 5 requests to the service; release",
            needs: &[Knob::MaxSize, Knob::AcquireTimeout],
            exclusive: false,
            body: |c, a| Box::pin(backpressure_signal(c, a)),
        },
        Case {
            name: "leak_detection",
            plan: "one checkout never released; detector threshold 200ms",
            needs: &[],
            exclusive: false,
            body: |c, a| Box::pin(leak_detection(c, a)),
        },
        Case {
            name: "degrades_gracefully_under_sustained_load",
            plan: "open loop at 1.2x the measured capacity",
            needs: &[],
            exclusive: true,
            body: |c, a| Box::pin(degrades_gracefully(c, a)),
        },
        Case {
            name: "multi_service_isolation",
            plan: "pool A fully held and hammered while pool B serves",
            needs: &[Knob::MaxSize, Knob::AcquireTimeout],
            exclusive: false,
            body: |c, a| Box::pin(multi_service_isolation(c, a)),
        },
        Case {
            name: "auto_heals",
            plan: "tasks hold every connection, then are cancelled; nothing done to the pool",
            needs: &[Knob::MaxSize, Knob::AcquireTimeout],
            exclusive: false,
            body: |c, a| Box::pin(auto_heals(c, a)),
        },
    ]
}

/// Known findings in real pools: `(case, pool, reason)`.
pub const FINDINGS: &[Finding] = &[];

/// Registers the seven cases as `exhaustion::<service>::<case>[<pool>]`
/// for `adapters` (any pool with a size; a user's pool too).
pub fn register_adapters<S: ServiceFixture>(r: &mut Registry, adapters: Vec<Adapter<S>>) {
    let tags = [tag::CHAOS, tag::LAYER_3, S::NAME];
    for case in cases::<S>() {
        for a in &adapters {
            let name = format!("exhaustion::{}::{}[{}]", S::NAME, case.name, a.name());
            let (body, adapter, plan) = (case.body, a.clone(), case.plan);
            let def = r.test(name, &tags, move |ctx| {
                note_plan(&ctx, &[plan.to_string()]);
                body(ctx, adapter.clone())
            });
            def.exclusive(case.exclusive);
            let skip = Needs::all(case.needs).missing(a.name(), &a.capabilities());
            mark(def, case.name, a.name(), skip, FINDINGS);
        }
    }
}

/// `cfg` with the acquire timeout when the pool has it.
fn config<S: Service>(a: &Adapter<S>, max: usize, acquire: Duration) -> PoolConfig {
    let cfg = PoolConfig::new(max);
    if a.capabilities().supports(Knob::AcquireTimeout) {
        cfg.acquire_timeout(acquire)
    } else {
        cfg
    }
}

async fn setup<S: ServiceFixture>(
    ctx: &TestCtx,
    a: &Adapter<S>,
    cfg: &PoolConfig,
) -> anyhow::Result<(Provided<S>, Pool)> {
    ctx.step(format!("providing the {} server", S::NAME));
    let fx = S::provide(ctx).await?;
    ctx.step(format!("building {} with {cfg:?}", a.name()));
    let pool = a.build(cfg, &fx.target).await.map_err(|e| anyhow!("building {} ({}): {e}", a.name(), a.version()))?;
    ctx.note(format!("{} ({}) with {cfg:?}", a.name(), a.version()));
    Ok((fx, pool))
}

async fn hold(pool: &Pool, n: usize) -> anyhow::Result<Vec<Checkout>> {
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let c = watchdog(&format!("checkout {i} of {n}"), Duration::from_secs(10), pool.acquire())
            .await?
            .map_err(|e| anyhow!("{}: could not take checkout {} of {n} [{}]: {e}", pool.name(), i + 1, e.class()))?;
        v.push(c);
    }
    Ok(v)
}

// ---------------------------------------------------------------- saturation

async fn saturation_detected<S: ServiceFixture>(ctx: TestCtx, a: Adapter<S>) -> anyhow::Result<()> {
    let max = 4;
    let cfg = config(&a, max, Duration::from_secs(3));
    let (fx, pool) = setup(&ctx, &a, &cfg).await?;
    let name = a.name().to_string();
    let waiters_known = a.capabilities().supports(Knob::StatusWaiters);
    let mut held = Vec::new();
    for k in 1..=max {
        ctx.step(format!("{k} of {max} checked out"));
        held.extend(hold(&pool, 1).await?);
        wait_until(
            &format!("{name}: status to show {k} in use, size {k} (it shows {:?})", pool.status()),
            Duration::from_secs(3),
            || async {
                let s = pool.status();
                Ok(s.and_then(|s| s.in_use()) == Some(k) && s.and_then(|s| s.size) == Some(k))
            },
        )
        .await?;
        let server = fx.counter.count().await?;
        ensure!(server == k as u64, "{name}: status says size {k}, the server sees {server} of the test's connections");
        let s = pool.status().unwrap_or_default();
        ctx.record(Metric::lower(
            format!("utilisation_pct.{k}_held"),
            s.in_use().unwrap_or(0) as f64 / max as f64 * 100.0,
        ));
    }
    ensure!(
        pool.status().and_then(|s| s.idle) == Some(0),
        "{name}: full pool reports idle {:?}",
        pool.status().and_then(|s| s.idle)
    );

    if waiters_known {
        ctx.step("two callers waiting");
        let mut waiting = Vec::new();
        for _ in 0..2usize {
            let p = pool.clone();
            waiting.push(tokio::spawn(async move { p.acquire().await }));
        }
        wait_until(&format!("{name}: status to count 2 waiters"), Duration::from_secs(3), || async {
            Ok(pool.status().and_then(|s| s.waiters) == Some(2))
        })
        .await?;
        drop(held.pop());
        // Whichever queued first is served first.
        let (first, _, mut waiting) =
            watchdog("a waiter to be served", Duration::from_secs(5), futures::future::select_all(waiting)).await?;
        let first = first?;
        // The served waiter keeps its connection: one waiter is left.
        let _served = first.map_err(|e| anyhow!("{name}: a waiter failed after a release [{}]: {e}", e.class()))?;
        wait_until(
            &format!("{name}: status to count 1 waiter after one was served"),
            Duration::from_secs(3),
            || async { Ok(pool.status().and_then(|s| s.waiters) == Some(1)) },
        )
        .await?;
        drop(held.pop());
        let _second = watchdog("the second waiter", Duration::from_secs(5), waiting.remove(0))
            .await??
            .map_err(|e| anyhow!("{name}: second waiter failed: {e}"))?;
        wait_until(
            &format!("{name}: status to count no waiter once both were served"),
            Duration::from_secs(3),
            || async { Ok(pool.status().and_then(|s| s.waiters) == Some(0)) },
        )
        .await?;
    } else {
        ctx.note(format!(
            "{name} reports no waiter count: {}",
            a.capabilities().unsupported_reason(Knob::StatusWaiters).unwrap_or("")
        ));
    }
    drop(held);
    wait_until(&format!("{name}: status to show nothing in use after release"), Duration::from_secs(3), || async {
        let s = pool.status();
        Ok(s.and_then(|s| s.in_use()) == Some(0) && s.and_then(|s| s.waiters).unwrap_or(0) == 0)
    })
    .await?;
    Ok(())
}

// ---------------------------------------------------------------- queue

async fn queue_management<S: ServiceFixture>(ctx: TestCtx, a: Adapter<S>) -> anyhow::Result<()> {
    let timeout = Duration::from_millis(300);
    let cfg = config(&a, 2, timeout);
    let (fx, pool) = setup(&ctx, &a, &cfg).await?;
    let name = a.name().to_string();
    let held = hold(&pool, 2).await?;

    ctx.step("4 waiters on an exhausted pool time out");
    let mut waiters = Vec::new();
    for _ in 0..4 {
        let p = pool.clone();
        waiters.push(tokio::spawn(async move {
            let t = Instant::now();
            (p.acquire().await.map(drop), t.elapsed())
        }));
    }
    let mut worst = Duration::ZERO;
    for w in waiters {
        let (r, took) = watchdog("a waiter on an exhausted pool", Duration::from_secs(10), w).await??;
        let e = r.err().ok_or_else(|| anyhow!("{name}: a waiter got a connection while both were held"))?;
        ensure!(
            e.class() == ErrorClass::AcquireTimeout,
            "{name}: a waiter failed [{}], not acquire_timeout: {e}",
            e.class()
        );
        ensure!(
            took + Duration::from_millis(20) >= timeout,
            "{name}: a waiter gave up after {took:?}, before the {timeout:?} timeout"
        );
        ensure!(
            took <= timeout + Duration::from_secs(1),
            "{name}: a waiter gave up after {took:?} ({timeout:?} timeout): not on time"
        );
        worst = worst.max(took);
    }
    ctx.record(Metric::lower("timeout_overshoot_ms", (worst.saturating_sub(timeout)).as_secs_f64() * 1e3));
    if a.capabilities().supports(Knob::StatusWaiters) {
        wait_until(&format!("{name}: no waiter left behind after the timeouts"), Duration::from_secs(2), || async {
            Ok(pool.status().and_then(|s| s.waiters) == Some(0))
        })
        .await?;
    }
    drop(held);
    pool_serves_again(&pool, &name, Duration::from_secs(5), 3, Duration::from_secs(5)).await?;

    ctx.step("a queue of 5 on a pool of 1 drains in arrival order");
    let one = a.build(&config(&a, 1, Duration::from_secs(10)), &fx.target).await?;
    let ordered = a.capabilities().supports(Knob::StatusWaiters);
    let gate = hold(&one, 1).await?;
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut queue = Vec::new();
    for i in 0..5usize {
        let (p, order) = (one.clone(), order.clone());
        queue.push(tokio::spawn(async move {
            let mut c = p.acquire().await?;
            order.lock().push(i);
            c.run(&Op::Ping).await?;
            Ok::<_, PoolError>(())
        }));
        if ordered {
            wait_until(&format!("{name}: waiter {i} to be queued"), Duration::from_secs(3), || async {
                Ok(one.status().and_then(|s| s.waiters) == Some(i + 1))
            })
            .await?;
        }
    }
    drop(gate);
    for (i, q) in queue.into_iter().enumerate() {
        watchdog(&format!("queued waiter {i}"), Duration::from_secs(15), q)
            .await??
            .map_err(|e| anyhow!("{name}: queued waiter {i} failed [{}]: {e}", e.class()))?;
    }
    let order = order.lock().clone();
    if ordered {
        ensure!(order == [0, 1, 2, 3, 4], "{name}: the queue drained as {order:?}, not in arrival order");
    } else {
        ctx.note(format!(
            "{name}: arrival order not checked (no waiter count to confirm each waiter queued); drained as {order:?}"
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------- backpressure

/// What the tiny service answers.
#[derive(Debug, thiserror::Error)]
enum ServiceError {
    /// The pool is exhausted: try again later (HTTP 503).
    #[error("busy: no database connection within {0:?}; try again later")]
    Busy(Duration),
    /// Anything else.
    #[error("failed: {0}")]
    Failed(PoolError),
}

/// A request handler using the pool: reads a key, answers "busy" when no
/// connection comes within the pool's acquire timeout.
async fn handle(pool: &Pool, key: u64) -> Result<Option<String>, ServiceError> {
    let t = Instant::now();
    let mut c = pool.acquire().await.map_err(|e| match e.class() {
        ErrorClass::AcquireTimeout => ServiceError::Busy(t.elapsed()),
        _ => ServiceError::Failed(e),
    })?;
    Ok(c.run(&Op::Read { key }).await.map_err(ServiceError::Failed)?.value().map(str::to_string))
}

async fn backpressure_signal<S: ServiceFixture>(ctx: TestCtx, a: Adapter<S>) -> anyhow::Result<()> {
    let timeout = Duration::from_millis(250);
    let (_fx, pool) = setup(&ctx, &a, &config(&a, 3, timeout)).await?;
    let name = a.name().to_string();
    pool.run(&Op::Write { key: 1, value: "v".into() }).await?;
    let held = hold(&pool, 3).await?;

    ctx.step("requests to the service while its pool is exhausted");
    let mut reqs = Vec::new();
    for _ in 0..5 {
        let p = pool.clone();
        reqs.push(tokio::spawn(async move { handle(&p, 1).await }));
    }
    let mut slowest = Duration::ZERO;
    for r in reqs {
        let answer = watchdog("a request to the exhausted service (a hang instead of busy)", Duration::from_secs(5), r)
            .await?
            .map_err(|e| anyhow!("{name}: the service crashed: {e}"))?;
        match answer {
            Err(ServiceError::Busy(after)) => {
                ensure!(
                    after <= timeout + Duration::from_secs(1),
                    "{name}: busy came after {after:?} ({timeout:?} acquire timeout)"
                );
                slowest = slowest.max(after);
            }
            Err(ServiceError::Failed(e)) => {
                bail!("{name}: the exhausted service failed [{}] instead of answering busy: {e}", e.class())
            }
            Ok(v) => bail!("{name}: the service answered {v:?} with every connection held"),
        }
    }
    ctx.record(Metric::lower("busy_after_ms", slowest.as_secs_f64() * 1e3));
    drop(held);
    let v = watchdog("a request after the release", Duration::from_secs(5), handle(&pool, 1)).await?;
    ensure!(matches!(&v, Ok(Some(s)) if s == "v"), "{name}: after the release the service answered {v:?}");
    Ok(())
}

// ---------------------------------------------------------------- leak detection

/// A leak reported by [`LeakDetector::report`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct Leak {
    /// Where the checkout was taken: `file:line:column`.
    pub location: String,
    /// How long it has been held.
    pub held_for_ms: f64,
}

/// Wraps a pool; remembers where each live checkout was taken.
#[derive(Clone)]
pub struct LeakDetector {
    pool: Pool,
    open: Arc<Mutex<HashMap<u64, (&'static Location<'static>, Instant)>>>,
    next: Arc<AtomicU64>,
}

/// A checkout known to the detector; forgotten when dropped.
pub struct Tracked {
    /// The checkout.
    pub conn: Checkout,
    id: u64,
    open: Arc<Mutex<HashMap<u64, (&'static Location<'static>, Instant)>>>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.open.lock().remove(&self.id);
    }
}

impl LeakDetector {
    /// Watches `pool`.
    pub fn new(pool: Pool) -> Self {
        LeakDetector { pool, open: Arc::default(), next: Arc::default() }
    }

    /// Acquires, remembering the caller's location.
    #[track_caller]
    pub fn acquire(&self) -> impl std::future::Future<Output = Result<Tracked, PoolError>> + '_ {
        let at = Location::caller();
        async move {
            let conn = self.pool.acquire().await?;
            let id = self.next.fetch_add(1, Ordering::Relaxed);
            self.open.lock().insert(id, (at, Instant::now()));
            Ok(Tracked { conn, id, open: self.open.clone() })
        }
    }

    /// Checkouts held longer than `threshold`, oldest first.
    pub fn report(&self, threshold: Duration) -> Vec<Leak> {
        let mut v: Vec<(Instant, Leak)> = self
            .open
            .lock()
            .values()
            .filter(|(_, since)| since.elapsed() > threshold)
            .map(|(at, since)| {
                (*since, Leak { location: at.to_string(), held_for_ms: since.elapsed().as_secs_f64() * 1e3 })
            })
            .collect();
        v.sort_by_key(|(since, _)| *since);
        v.into_iter().map(|(_, l)| l).collect()
    }
}

/// A caller that forgets to release: returns its checkout and the line it
/// was taken on.
async fn careless(d: &LeakDetector) -> Result<(Tracked, u32), PoolError> {
    let (taken, line) = (d.acquire(), line!());
    Ok((taken.await?, line))
}

async fn leak_detection<S: ServiceFixture>(ctx: TestCtx, a: Adapter<S>) -> anyhow::Result<()> {
    let threshold = Duration::from_millis(200);
    let (_fx, pool) = setup(&ctx, &a, &config(&a, 3, Duration::from_secs(2))).await?;
    let name = a.name().to_string();
    let d = LeakDetector::new(pool);

    ctx.step("well-behaved checkouts, then a leak");
    for _ in 0..5 {
        let mut c = d.acquire().await?;
        c.conn.run(&Op::Ping).await?;
    }
    let t = Instant::now();
    let (leaked, line) = careless(&d).await?;
    let want = format!("{}:{line}:", file!());
    let mut short = d.acquire().await?; // taken after the leak, released before the threshold
    short.conn.run(&Op::Ping).await?;
    drop(short);
    wait_until(
        &format!("{name}: the detector to report the leak past {threshold:?}"),
        Duration::from_secs(5),
        || async { Ok(!d.report(threshold).is_empty()) },
    )
    .await?;
    let detected = t.elapsed();
    let report = d.report(threshold);
    ctx.attach("leaks", &report);
    ensure!(report.len() == 1, "{name}: expected exactly the one leak, the detector reported {report:?}");
    ensure!(
        report[0].location.starts_with(&want),
        "{name}: the leak was reported at {}, but it was taken at {want}..",
        report[0].location
    );
    ensure!(detected >= threshold, "{name}: reported after {detected:?}, before the {threshold:?} threshold");
    ctx.note(format!("leak reported: held {:.0} ms, taken at {}", report[0].held_for_ms, report[0].location));
    ctx.record(Metric::lower("leak_detected_after_ms", detected.as_secs_f64() * 1e3));
    drop(leaked);
    ensure!(d.report(Duration::ZERO).is_empty(), "{name}: a released checkout is still reported");
    Ok(())
}

// ---------------------------------------------------------------- sustained overload

/// Offered load over the measured capacity: the excess the pool must shed
/// (at 1.2x, about 83 % can succeed once the queue is full).
const OVERLOAD: f64 = 1.2;

async fn degrades_gracefully<S: ServiceFixture>(ctx: TestCtx, a: Adapter<S>) -> anyhow::Result<()> {
    let max = 4;
    let query = Duration::from_millis(20);
    let dur = ctx.profile().pick(Duration::from_secs(2), Duration::from_secs(30));
    let (_fx, pool) = setup(&ctx, &a, &config(&a, max, Duration::from_secs(1))).await?;
    let name = a.name().to_string();
    let op = {
        let pool = pool.clone();
        move |mut t: OpTimer| {
            let pool = pool.clone();
            async move {
                let mut c = pool.acquire().await?;
                t.acquired();
                c.run(&Op::Slow(query)).await?;
                Ok::<_, PoolError>(t)
            }
        }
    };

    ctx.step("measuring the pool's capacity");
    let cap =
        Phase::closed("capacity", max, Limit::new(1_000_000, Duration::from_millis(700))).run(&ctx, op.clone()).await?;
    ensure!(cap.errors.total() == 0, "{name}: {} errors at capacity: {}", cap.errors.total(), cap.summary());
    let capacity = cap.throughput_ops_s;
    let offered = capacity * OVERLOAD;
    ctx.record(Metric::higher("capacity_ops_s", capacity));

    ctx.step(format!("{offered:.0} ops/s ({OVERLOAD}x capacity) for {dur:?}"));
    let stats = Phase::open("overload", offered, dur).in_flight(256).run(&ctx, op).await?;
    stats.record_into(&ctx, "overload");
    let success = stats.ok as f64 / stats.started.max(1) as f64;
    let p99 = stats.quantile(0.99);
    ctx.record(Metric::higher("success_pct", success * 100.0));
    ensure!(
        stats.started == stats.ok + stats.errors.total() + stats.cancelled,
        "{name}: ops unaccounted for: {}",
        stats.summary()
    );
    ensure!(
        success >= 0.8,
        "{name}: {:.1} % of ops succeeded at {OVERLOAD}x capacity (budget >= 80 %): {}",
        success * 100.0,
        stats.summary()
    );
    ensure!(p99 < Duration::from_secs(8), "{name}: p99 {p99:?} at {OVERLOAD}x capacity (budget < 8 s)");
    let other: Vec<_> = stats.errors.nonzero().filter(|(c, _)| *c != ErrorClass::AcquireTimeout).collect();
    ensure!(
        other.is_empty(),
        "{name}: the excess failed with {other:?}, not only acquire_timeout (fast, clear failure)"
    );
    pool_serves_again(&pool, &name, Duration::from_secs(5), 5, Duration::from_secs(10)).await?;
    Ok(())
}

// ---------------------------------------------------------------- isolation

async fn multi_service_isolation<S: ServiceFixture>(ctx: TestCtx, a: Adapter<S>) -> anyhow::Result<()> {
    let max = 3;
    let window = ctx.profile().pick(Duration::from_millis(800), Duration::from_secs(10));
    let (fx, pool_a) = setup(&ctx, &a, &config(&a, max, Duration::from_millis(150))).await?;
    let pool_b = a.build(&config(&a, max, Duration::from_secs(2)), &fx.target).await?;
    let name = a.name().to_string();
    let ping = |pool: Pool| {
        move |mut t: OpTimer| {
            let pool = pool.clone();
            async move {
                let mut c = pool.acquire().await?;
                t.acquired();
                c.run(&Op::Ping).await?;
                Ok::<_, PoolError>(t)
            }
        }
    };

    ctx.step("service B alone");
    let base = Phase::closed("b_alone", max, Limit::new(1_000_000, window / 2)).run(&ctx, ping(pool_b.clone())).await?;
    base.record_into(&ctx, "b_alone");

    ctx.step("service A exhausted and hammered; B measured");
    let held = hold(&pool_a, max).await?;
    let hammer_ctx = ctx.clone();
    let hammer_op = ping(pool_a.clone());
    let hammer = tokio::spawn(async move {
        Phase::closed("a_hammer", 3 * max, Limit::new(1_000_000, window)).run(&hammer_ctx, hammer_op).await
    });
    let during = Phase::closed("b_during", max, Limit::new(1_000_000, window)).run(&ctx, ping(pool_b.clone())).await?;
    let a_stats = hammer.await??;
    drop(held);
    during.record_into(&ctx, "b_during");
    a_stats.record_into(&ctx, "a_hammer");

    ensure!(
        a_stats.ok == 0 && a_stats.errors.get(ErrorClass::AcquireTimeout) > 0,
        "{name}: A was not exhausted: {}",
        a_stats.summary()
    );
    ensure!(
        during.errors.total() == 0,
        "{name}: B failed {} ops while A was exhausted: {}",
        during.errors.total(),
        during.summary()
    );
    let (p99_base, p99_during) = (base.quantile(0.99), during.quantile(0.99));
    let budget = (p99_base * 10).max(Duration::from_millis(250));
    ensure!(
        p99_during <= budget,
        "{name}: B's p99 went from {p99_base:?} alone to {p99_during:?} while A was exhausted (budget {budget:?})"
    );
    ensure!(during.throughput_ops_s > 0.0 && during.ok > 0, "{name}: B served nothing while A was exhausted");
    ctx.record(Metric::lower("b_p99_ratio", p99_during.as_secs_f64() / p99_base.as_secs_f64().max(1e-6)));
    Ok(())
}

// ---------------------------------------------------------------- auto heal

async fn auto_heals<S: ServiceFixture>(ctx: TestCtx, a: Adapter<S>) -> anyhow::Result<()> {
    let max = 4;
    let exhausted = ctx.profile().pick(Duration::from_millis(500), Duration::from_secs(5));
    let (fx, pool) = setup(&ctx, &a, &config(&a, max, Duration::from_millis(200))).await?;
    let name = a.name().to_string();

    ctx.step("tasks take every connection and sit on them");
    let killer = TaskKiller::new(ctx.seed());
    for _ in 0..max {
        let p = pool.clone();
        killer.spawn(move |hold| async move {
            let mut c = p.acquire().await?;
            let _h = hold.enter();
            c.run(&Op::Ping).await?;
            std::future::pending::<()>().await;
            Ok::<_, PoolError>(())
        });
    }
    wait_until(&format!("{name}: all {max} holders holding"), Duration::from_secs(10), || async {
        Ok(killer.holding() == max)
    })
    .await?;
    let e = pool.acquire().await.err().ok_or_else(|| anyhow!("{name}: got a connection with all {max} held"))?;
    ensure!(e.class() == ErrorClass::AcquireTimeout, "{name}: an exhausted pool failed [{}]: {e}", e.class());
    tokio::time::sleep(exhausted).await; // how long the exhaustion lasts

    ctx.step("the holders are cancelled; nothing is done to the pool");
    let n = killer.kill(Victims::All);
    ensure!(n == max, "{name}: cancelled {n} holders of {max}");
    let t = Instant::now();
    wait_until(&format!("{name}: healthy again on its own"), Duration::from_secs(60), || async {
        let status_ok = pool.status().is_none_or(|s| s.in_use() == Some(0) && s.waiters.unwrap_or(0) == 0);
        Ok(status_ok
            && tokio::time::timeout(Duration::from_secs(1), pool.run(&Op::Ping)).await.is_ok_and(|r| r.is_ok()))
    })
    .await?;
    let healed = t.elapsed();
    ctx.record(Metric::lower("heal_ms", healed.as_secs_f64() * 1e3));
    pool_capacity_intact(&pool, &name, Duration::from_secs(3), max, 7).await?;
    let server = fx.counter.count().await?;
    ensure!(
        server <= max as u64,
        "{name}: the server sees {server} of the test's connections after healing (max_size {max})"
    );
    Ok(())
}
