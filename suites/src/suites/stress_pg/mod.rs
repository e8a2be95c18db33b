//! The Postgres pool stress catalogue (`stress::postgres::<group>::<name>[<adapter>]`):
//! the 20 scenarios of the scenario catalogue, run against every Postgres pool
//! adapter on a real Postgres, each test on a database of its own.
//!
//! - [`exhaustion`]: `max_size_enforced`, `exhaustion_waiters_all_served`,
//!   `exhaustion_timeout_then_recovers`, `graceful_degradation_normal_heavy_overload`,
//!   `exhaustion_error_is_actionable`.
//! - [`recovery`]: `recovers_after_connection_failures` (30 % of the pool's
//!   backends terminated server side under load), `validation_on_acquire`,
//!   `stale_connection_after_idle`, `reconnects_with_retries` (backends
//!   terminated mid-query, [`crate::util::retry`]), `recovers_after_server_restart`
//!   (the real server restarted under the same pool object; exclusive).
//! - [`concurrency`]: `hundred_concurrent_acquisitions`, `sustained_1000_ops_per_s`,
//!   `release_race`, `no_connection_leak`, `fifo_fairness`.
//! - [`configuration`]: `min_idle_maintained`, `max_size_never_exceeded`,
//!   `idle_timeout_closes`, `max_lifetime_recycles`, `warmup_on_init`.
//!
//! Correctness invariants fail the test: the server never sees more than
//! `max_size` of the test's connections (sampled during load), every started
//! operation is accounted for, errors are of the expected
//! [`ErrorClass`], recovery happens, nothing leaks. Latency and throughput
//! budgets of the catalogue are recorded as metrics and checked with slack
//! ([`LATENCY_SLACK`], [`RATE_SLACK`]) on pools that reuse connections; for a
//! connection per operation (`direct-postgres`) they only measure this
//! machine's connect speed and are recorded, not gated.
//!
//! Every body is a plain `async fn(TestCtx, Adapter<Postgres>) -> anyhow::Result<()>`,
//! so other suites run them too (the deliberately broken pools of
//! [`crate::suites::broken`] must make them fail).

pub mod broken_pools;
pub mod concurrency;
pub mod configuration;
pub mod exhaustion;
pub mod recovery;

use std::{
    any::Any,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use futures::future::BoxFuture;
use poolstress_fixtures::{
    pool::{self, Adapter, Capabilities, Checkout, Knob, Op, Pool, PoolConfig, PoolError, Postgres},
    service::{self, PgServer},
    PgTarget,
};
use poolstress_harness::{
    metrics::{check_at_least, check_at_most, ResourceMonitor},
    tag, ConnectionCounter, Metric, Registry, TestCtx,
};

pub(crate) use crate::kit::support::{check_idle_timeout, served_order, start_queued};
use crate::kit::{wait_until, ServiceFixture};

/// Tags of every scenario.
pub const TAGS: &[&str] = &[tag::STRESS, tag::LAYER_3, tag::POSTGRES];
/// Tags of the performance scenarios (benchmark: exclusive, numbers to baselines).
pub const BENCH_TAGS: &[&str] = &[tag::STRESS, tag::LAYER_3, tag::POSTGRES, tag::BENCHMARK];

/// A latency budget of the catalogue fails only past this many times itself:
/// the budgets were set on dedicated machines, this one is a shared 2-core box.
pub const LATENCY_SLACK: f64 = 3.0;
/// A throughput floor of the catalogue fails only under this fraction of itself.
pub const RATE_SLACK: f64 = 0.5;

/// A known finding: `(scenario, adapter, reason with the pool version)`; the
/// test stays registered, marked ignored with the reason (see docs/findings.md).
pub const FINDINGS: &[(&str, &str, &str)] = &[];

/// A scenario body.
pub type Body = fn(TestCtx, Adapter<Postgres>) -> BoxFuture<'static, anyhow::Result<()>>;

/// One scenario of the catalogue.
#[derive(Clone, Copy)]
pub struct Scenario {
    /// `exhaustion`, `recovery`, `concurrency`, `configuration`.
    pub group: &'static str,
    /// `max_size_enforced`, ...
    pub name: &'static str,
    /// Knobs the pool must have; without them the test is registered skipped.
    pub needs: &'static [Knob],
    /// A performance scenario: also tagged benchmark (exclusive).
    pub benchmark: bool,
    /// Restarts the shared server: registered exclusive.
    pub restarts_server: bool,
    /// The body.
    pub body: Body,
}

impl Scenario {
    /// `stress::postgres::<group>::<name>[<adapter>]`.
    pub fn test_name(&self, adapter: &str) -> String {
        format!("stress::postgres::{}::{}[{adapter}]", self.group, self.name)
    }
}

macro_rules! scenario {
    ($group:ident :: $name:ident, needs $needs:expr $(, $flag:ident)*) => {{
        #[allow(unused_mut)]
        let mut s = Scenario {
            group: stringify!($group),
            name: stringify!($name),
            needs: $needs,
            benchmark: false,
            restarts_server: false,
            body: |c, a| Box::pin($group::$name(c, a)),
        };
        $(s.$flag = true;)*
        s
    }};
}

/// The 20 scenarios, in catalogue order.
pub fn scenarios() -> Vec<Scenario> {
    use Knob::*;
    vec![
        scenario!(exhaustion::max_size_enforced, needs & [MaxSize, AcquireTimeout]),
        scenario!(exhaustion::exhaustion_waiters_all_served, needs & [MaxSize]),
        scenario!(exhaustion::exhaustion_timeout_then_recovers, needs & [MaxSize, AcquireTimeout]),
        scenario!(exhaustion::graceful_degradation_normal_heavy_overload, needs & [MaxSize, AcquireTimeout]),
        scenario!(exhaustion::exhaustion_error_is_actionable, needs & [MaxSize, AcquireTimeout]),
        scenario!(recovery::recovers_after_connection_failures, needs & [MaxSize]),
        scenario!(recovery::validation_on_acquire, needs & [ValidatePing, Reuse], benchmark),
        scenario!(recovery::stale_connection_after_idle, needs & [Reuse]),
        scenario!(recovery::reconnects_with_retries, needs & []),
        scenario!(recovery::recovers_after_server_restart, needs & [], restarts_server),
        scenario!(concurrency::hundred_concurrent_acquisitions, needs & [], benchmark),
        scenario!(concurrency::sustained_1000_ops_per_s, needs & [], benchmark),
        scenario!(concurrency::release_race, needs & [MaxSize]),
        scenario!(concurrency::no_connection_leak, needs & []),
        scenario!(concurrency::fifo_fairness, needs & [MaxSize]),
        scenario!(configuration::min_idle_maintained, needs & [MinIdle]),
        scenario!(configuration::max_size_never_exceeded, needs & [MaxSize]),
        scenario!(configuration::idle_timeout_closes, needs & [IdleTimeout, MaxSize]),
        scenario!(configuration::max_lifetime_recycles, needs & [MaxLifetime, MaxSize]),
        scenario!(configuration::warmup_on_init, needs & [MinIdle]),
    ]
}

/// The scenario called `name`.
pub fn scenario(name: &str) -> Option<Scenario> {
    scenarios().into_iter().find(|s| s.name == name)
}

/// Registers the catalogue for `adapters` (a user's pool too). A scenario
/// needing a knob an adapter lacks is registered skipped with its reason.
pub fn register_adapters(r: &mut Registry, adapters: Vec<Adapter<Postgres>>) {
    for sc in scenarios() {
        for a in &adapters {
            let tags = if sc.benchmark { BENCH_TAGS } else { TAGS };
            let (adapter, body) = (a.clone(), sc.body);
            let def = r.test(sc.test_name(a.name()), tags, move |ctx| body(ctx, adapter.clone()));
            if sc.restarts_server {
                // Like the fault suite's restarts (chaos, exclusive by tag): a
                // restart of the shared server must not hit other tests.
                def.exclusive(true);
            }
            if let Some((knob, why)) = a.capabilities().missing(sc.needs) {
                def.skip(format!("{} lacks {knob}: {why}", a.name()));
            } else if let Some((_, _, reason)) = FINDINGS.iter().find(|(s, p, _)| *s == sc.name && *p == a.name()) {
                def.ignore(*reason);
            }
        }
    }
}

// ---------------------------------------------------------------- fixture

/// Terminates one backend by its pid and returns once the server no longer has it.
pub(crate) type Killer = Arc<dyn Fn(i64) -> BoxFuture<'static, anyhow::Result<()>> + Send + Sync>;

/// What a scenario works with: its own database, a server-side counter of
/// its connections, a killer, the shared server and the pool under test.
pub(crate) struct Fx {
    pub(crate) pool: Pool,
    /// The adapter's name.
    pub(crate) name: String,
    pub(crate) caps: Capabilities,
    pub(crate) target: PgTarget,
    pub(crate) counter: Arc<dyn ConnectionCounter>,
    pub(crate) kill: Killer,
    pub(crate) server: Arc<PgServer>,
    /// When the pool's build started (warm-up is timed from here).
    pub(crate) build_started: Instant,
    /// How long the build took.
    pub(crate) build_took: Duration,
    /// The test database; dropped last (in a mutex only to make `Fx` `Sync`).
    _keep: std::sync::Mutex<Box<dyn Any + Send>>,
}

impl Fx {
    /// The test's connections as the server sees them now.
    pub(crate) async fn count(&self) -> anyhow::Result<u64> {
        self.counter.count().await
    }

    /// Whether the pool keeps connections (a pool, not a connection per checkout).
    pub(crate) fn reuses(&self) -> bool {
        self.caps.supports(Knob::Reuse)
    }

    /// Most connections the server may see from this pool: `max_size` where
    /// the pool has one, else two per concurrent checkout (a connection per
    /// checkout: a closed one's backend stays in pg_stat_activity for a few
    /// ms while the next one opens).
    pub(crate) fn bound(&self, busy: usize) -> u64 {
        if self.caps.supports(Knob::MaxSize) {
            self.pool.config().max_size as u64
        } else {
            2 * busy as u64
        }
    }

    /// A server-side connection sampler (every 10 ms), series `connections.postgres`.
    pub(crate) fn monitor(&self, ctx: &TestCtx) -> ResourceMonitor {
        ResourceMonitor::builder(ctx)
            .interval(Duration::from_millis(10))
            .counter("postgres", self.counter.clone())
            .start()
    }

    /// The test's application_name (what server-side kills select on).
    pub(crate) fn app(&self) -> &str {
        &self.target.application_name
    }
}

/// `config` plus `acquire_timeout` when the adapter has one (so a broken pool
/// fails instead of hanging), else `config` unchanged.
pub(crate) fn with_acquire_timeout(a: &Adapter<Postgres>, config: PoolConfig, d: Duration) -> PoolConfig {
    if a.capabilities().supports(Knob::AcquireTimeout) {
        config.acquire_timeout(d)
    } else {
        config
    }
}

/// A database of the test's own and the pool built on it with `cfg`.
pub(crate) async fn setup(ctx: &TestCtx, a: &Adapter<Postgres>, cfg: PoolConfig) -> anyhow::Result<Fx> {
    ctx.step("providing a postgres server and a database");
    let provided = Postgres::provide(ctx).await?;
    let server = service::postgres().await?;
    ctx.step(format!("building {} with {cfg:?}", a.name()));
    // The schema first, so the build is timed alone (warm-up).
    pool::pg::ensure_schema(&provided.target).await.context("creating the test table")?;
    // The setup connection's backend outlives its client by a few ms: every
    // server-side count below must see the pool's connections only.
    let counter = provided.counter.clone();
    wait_until("the setup connection to leave pg_stat_activity", Duration::from_secs(5), || async {
        Ok(counter.count().await? == 0)
    })
    .await?;
    let build_started = Instant::now();
    let pool = a
        .build(&cfg, &provided.target)
        .await
        .with_context(|| format!("building {} ({}) with {cfg:?}", a.name(), a.version()))?;
    let build_took = build_started.elapsed();
    ctx.note(format!("{} ({}) with {cfg:?}", a.name(), a.version()));
    Ok(Fx {
        pool,
        name: a.name().to_string(),
        caps: a.capabilities(),
        target: provided.target,
        counter: provided.counter,
        kill: provided.kill,
        server,
        build_started,
        build_took,
        _keep: std::sync::Mutex::new(provided.keep),
    })
}

// ---------------------------------------------------------------- helpers

/// Takes `n` checkouts at once and runs a ping on each (so each is a real
/// server connection); fails naming the first error.
pub(crate) async fn hold(pool: &Pool, n: usize, within: Duration) -> anyhow::Result<Vec<Checkout>> {
    let all = futures::future::join_all((0..n).map(|_| async {
        let mut c = pool.acquire().await?;
        c.run(&Op::Ping).await?;
        Ok::<_, PoolError>(c)
    }));
    let res = tokio::time::timeout(within, all).await.map_err(|_| {
        anyhow::anyhow!("{}: taking {n} connections at once did not finish within {within:?}", pool.name())
    })?;
    let mut held = Vec::with_capacity(n);
    for r in res {
        held.push(r.with_context(|| format!("{}: taking {n} connections at once", pool.name()))?);
    }
    Ok(held)
}

/// How long released connections get to be back in the pool (or closed,
/// without a pool) before it counts as a leak: sqlx returns them from a
/// spawned task, a closed backend leaves pg_stat_activity a few ms later.
pub(crate) const SETTLE: Duration = Duration::from_millis(1500);

/// After every checkout the test took was released, the pool must report
/// none in use (where it reports size and idle): otherwise checkouts are
/// never returned — a leak.
pub(crate) async fn check_released(fx: &Fx, when: &str) -> anyhow::Result<()> {
    if !(fx.caps.supports(Knob::StatusSize) && fx.caps.supports(Knob::StatusIdle)) {
        return Ok(());
    }
    let settled = wait_until("the pool to report nothing in use", SETTLE, || async {
        Ok(fx.pool.status().and_then(|s| s.in_use()) == Some(0))
    })
    .await;
    if settled.is_err() {
        let st = fx.pool.status().unwrap_or_default();
        bail!(
            "{}: {when}, the pool still reports {} connection(s) checked out {SETTLE:?} later ({st}): \
             released checkouts never come back to the pool — a connection leak",
            fx.name,
            st.in_use().unwrap_or(0)
        );
    }
    Ok(())
}

/// After every checkout was released the server must see at most what the
/// pool keeps idle (`max_size` for a pool, none for a connection per
/// checkout) within [`SETTLE`]: otherwise connections leak.
pub(crate) async fn check_server_settles(fx: &Fx, when: &str) -> anyhow::Result<()> {
    let bound = if fx.reuses() { fx.pool.config().max_size as u64 } else { 0 };
    let settled =
        wait_until("the server-side count to settle", SETTLE, || async { Ok(fx.count().await? <= bound) }).await;
    if settled.is_err() {
        let n = fx.count().await?;
        let keeps = if fx.reuses() { format!("max_size {bound} idle") } else { "none (it has no pool)".to_string() };
        bail!(
            "{}: {when}, the server still sees {n} of the test's connections {SETTLE:?} later, where the pool keeps {keeps}: \
             connections leak",
            fx.name
        );
    }
    Ok(())
}

/// The peak of the server-side count the monitor saw (one last sample taken now).
pub(crate) async fn server_peak(ctx: &TestCtx, mon: &ResourceMonitor) -> anyhow::Result<u64> {
    mon.sample_now().await;
    let s = mon.connections("postgres");
    let (errors, last) = mon.errors();
    if s.is_empty() {
        bail!("the server-side connection count was never sampled ({errors} failed samples; last: {last:?})");
    }
    let peak = s.max() as u64;
    ctx.record(Metric::lower("server_connections_peak", peak as f64));
    Ok(peak)
}

/// Fails when the server saw more of the test's connections than `max` at once.
pub(crate) async fn check_server_peak(
    ctx: &TestCtx,
    fx: &Fx,
    mon: &ResourceMonitor,
    max: u64,
    during: &str,
) -> anyhow::Result<()> {
    let peak = server_peak(ctx, mon).await?;
    let n = mon.connections("postgres").len();
    anyhow::ensure!(
        peak <= max,
        "{}: the server saw {peak} of the test's connections at once {during} (sampled {n} times); at most {max} allowed",
        fx.name
    );
    Ok(())
}

/// Why a number is recorded but not gated, or `None` when it is gated.
pub(crate) fn ungated(fx: &Fx) -> Option<&'static str> {
    (!fx.reuses()).then_some("a new connection per operation: the number measures this machine's connect speed")
}

/// Records `metric` (lower is better) and checks it against the catalogue's
/// `budget` with [`LATENCY_SLACK`], unless `ungated` says why not.
pub(crate) fn latency_budget(
    ctx: &TestCtx,
    metric: &str,
    value_ms: f64,
    budget_ms: f64,
    ungated: Option<&str>,
    context: &str,
) -> anyhow::Result<()> {
    ctx.record(Metric::lower(metric, value_ms));
    let verdict = if value_ms <= budget_ms { "within" } else { "OVER" };
    ctx.note(format!("{metric} {value_ms:.2} ms: {verdict} the catalogue's budget of {budget_ms} ms {context}"));
    match ungated {
        Some(why) => {
            ctx.note(format!("{metric} not gated: {why}"));
            Ok(())
        }
        None => check_at_most(
            metric,
            value_ms,
            budget_ms * LATENCY_SLACK,
            "ms",
            &format!(
                "{context} (catalogue budget {budget_ms} ms, failing past {LATENCY_SLACK}x on this shared machine)"
            ),
        ),
    }
}

/// Records `metric` (higher is better) and checks it against the catalogue's
/// `floor` with [`RATE_SLACK`], unless `ungated` says why not.
pub(crate) fn rate_floor(
    ctx: &TestCtx,
    metric: &str,
    value: f64,
    floor: f64,
    ungated: Option<&str>,
    context: &str,
) -> anyhow::Result<()> {
    ctx.record(Metric::higher(metric, value));
    let verdict = if value >= floor { "within" } else { "UNDER" };
    ctx.note(format!("{metric} {value:.1} ops/s: {verdict} the catalogue's floor of {floor} ops/s {context}"));
    match ungated {
        Some(why) => {
            ctx.note(format!("{metric} not gated: {why}"));
            Ok(())
        }
        None => check_at_least(
            metric,
            value,
            floor * RATE_SLACK,
            "ops/s",
            &format!("{context} (catalogue floor {floor} ops/s, failing under {RATE_SLACK}x on this shared machine)"),
        ),
    }
}

/// Milliseconds of `d`.
pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The `q` quantile of `v` (sorted here), nearest rank.
pub(crate) fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}
