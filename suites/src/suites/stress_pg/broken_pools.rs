//! Deliberately broken Postgres pools, as test fixtures: proof that the
//! stress scenarios catch what they claim to (`stress::broken::<fault>::<scenario>[<inner adapter>]`).
//!
//! [`Broken`] wraps any real adapter ([`PoolAdapter`] over an inner
//! [`Adapter<Postgres>`]) and gets one thing wrong ([`Fault`]):
//!
//! - [`Fault::Leak`]: never returns a connection to the pool. Every checkout
//!   leaks: its server connection stays open and its slot stays taken.
//! - [`Fault::Unvalidated`]: keeps released connections in a cache of its own
//!   and hands them out again without any check (validation disabled), so a
//!   connection killed server side is handed out.
//!
//! Each test runs a scenario body of [`crate::suites::stress_pg`] against a
//! broken pool and passes only if the scenario FAILS with a message naming
//! the problem ("leak", "killed").

use std::sync::Arc;

use anyhow::bail;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use poolstress_fixtures::{
    pool::{
        self, Adapter, BuildError, Capabilities, Checkout, Connection, Knob, Op, OpOutput, Pool, PoolAdapter,
        PoolConfig, PoolError, PoolStatus, PoolUnderTest, Postgres,
    },
    PgTarget,
};
use poolstress_harness::{tag, FixtureFailure, Registry, Skipped, TestCtx};

use super::{self as stress_pg, Scenario};

/// What a [`Broken`] pool gets wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Never returns a connection to the pool (every checkout leaks).
    Leak,
    /// Hands cached connections out again without any check, killed ones too.
    Unvalidated,
}

impl Fault {
    /// `leak`, `unvalidated`: the group in test names.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Leak => "leak",
            Fault::Unvalidated => "unvalidated",
        }
    }

    /// What is wrong, for messages.
    pub fn problem(self) -> &'static str {
        match self {
            Fault::Leak => "never returns a connection to the pool",
            Fault::Unvalidated => "hands out connections killed server side (no validation)",
        }
    }
}

/// A deliberately broken pool over a real adapter.
pub struct Broken {
    inner: Adapter<Postgres>,
    fault: Fault,
    name: String,
}

impl Broken {
    /// `inner` with `fault`, named `<inner>+<fault>`.
    pub fn new(inner: Adapter<Postgres>, fault: Fault) -> Self {
        let name = format!("{}+{}", inner.name(), fault.name());
        Broken { inner, fault, name }
    }

    /// The same, as an [`Adapter`] the scenarios take.
    pub fn adapter(inner: Adapter<Postgres>, fault: Fault) -> Adapter<Postgres> {
        Adapter::new(Broken::new(inner, fault))
    }
}

impl PoolAdapter for Broken {
    type Service = Postgres;

    fn name(&self) -> &str {
        &self.name
    }

    fn version(&self) -> String {
        format!("{}, deliberately broken: {}", self.inner.version(), self.fault.problem())
    }

    fn capabilities(&self) -> Capabilities {
        let caps = self.inner.capabilities();
        match self.fault {
            Fault::Leak => caps,
            Fault::Unvalidated => {
                const WHY: &str = "deliberately broken: hands cached connections out without any check";
                caps.without(Knob::ValidatePing, WHY).without(Knob::ValidateReset, WHY)
            }
        }
    }

    fn build<'a>(
        &'a self,
        config: &'a PoolConfig,
        target: &'a PgTarget,
    ) -> BoxFuture<'a, Result<Box<dyn PoolUnderTest>, BuildError>> {
        Box::pin(async move {
            let inner = self.inner.build(config, target).await?;
            Ok(match self.fault {
                Fault::Leak => Box::new(LeakingPool { inner }) as Box<dyn PoolUnderTest>,
                Fault::Unvalidated => Box::new(UnvalidatedPool { inner, cache: Arc::default() }),
            })
        })
    }
}

/// Every checkout is forgotten instead of returned.
struct LeakingPool {
    inner: Pool,
}

impl PoolUnderTest for LeakingPool {
    fn acquire(&self) -> BoxFuture<'_, Result<Checkout, PoolError>> {
        Box::pin(async move { Ok(Checkout::new(Leaked(Some(self.inner.acquire().await?)))) })
    }

    fn status(&self) -> Option<PoolStatus> {
        self.inner.status()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.inner.close())
    }
}

/// A checkout that is never released: dropping it forgets the inner one.
struct Leaked(Option<Checkout>);

impl Connection for Leaked {
    fn run<'a>(&'a mut self, op: &'a Op) -> BoxFuture<'a, Result<OpOutput, PoolError>> {
        Box::pin(async move { self.0.as_mut().expect("present until dropped").run(op).await })
    }
}

impl Drop for Leaked {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            std::mem::forget(c); // the bug: the connection never goes back
        }
    }
}

type Cache = Arc<Mutex<Vec<Checkout>>>;

/// Released connections stay checked out of the inner pool, in a cache
/// handed out again first, unchecked (so the inner pool's validation never runs).
struct UnvalidatedPool {
    inner: Pool,
    cache: Cache,
}

impl PoolUnderTest for UnvalidatedPool {
    fn acquire(&self) -> BoxFuture<'_, Result<Checkout, PoolError>> {
        Box::pin(async move {
            let cached = self.cache.lock().pop();
            let c = match cached {
                Some(c) => c, // the bug: no liveness check
                None => self.inner.acquire().await?,
            };
            Ok(Checkout::new(Cached { conn: Some(c), cache: self.cache.clone() }))
        })
    }

    fn status(&self) -> Option<PoolStatus> {
        let cached = self.cache.lock().len();
        self.inner.status().map(|s| PoolStatus { idle: s.idle.map(|i| i + cached), ..s })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        self.cache.lock().clear();
        Box::pin(self.inner.close())
    }
}

/// A checkout that goes back to the unchecked cache when dropped.
struct Cached {
    conn: Option<Checkout>,
    cache: Cache,
}

impl Connection for Cached {
    fn run<'a>(&'a mut self, op: &'a Op) -> BoxFuture<'a, Result<OpOutput, PoolError>> {
        Box::pin(async move { self.conn.as_mut().expect("present until dropped").run(op).await })
    }
}

impl Drop for Cached {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            self.cache.lock().push(c);
        }
    }
}

/// A broken pool and a scenario that must catch it.
struct Case {
    fault: Fault,
    scenario: &'static str,
    /// The failure message must contain one of these (lowercase).
    names: &'static [&'static str],
    /// Over every inner adapter it applies to, or only the first (a costly
    /// case whose detection does not depend on the pool).
    every_adapter: bool,
}

const CASES: &[Case] = &[
    Case { fault: Fault::Leak, scenario: "no_connection_leak", names: &["leak"], every_adapter: true },
    Case { fault: Fault::Leak, scenario: "exhaustion_waiters_all_served", names: &["leak"], every_adapter: true },
    Case {
        fault: Fault::Unvalidated,
        scenario: "stale_connection_after_idle",
        names: &["killed"],
        every_adapter: true,
    },
    Case { fault: Fault::Unvalidated, scenario: "reconnects_with_retries", names: &["killed"], every_adapter: false },
    Case {
        fault: Fault::Unvalidated,
        scenario: "recovers_after_connection_failures",
        names: &["killed"],
        every_adapter: false,
    },
];

const TAGS: &[&str] = &[tag::STRESS, tag::LAYER_3, tag::POSTGRES];

/// Registers the broken-pool checks over every built-in Postgres adapter.
pub fn register(r: &mut Registry) {
    register_adapters(r, pool::postgres_adapters());
}

/// Registers them over `inners` (the costlier cases over the first one they
/// apply to); a scenario needing a knob the broken pool lacks is not
/// registered for it (there is nothing to prove there).
pub fn register_adapters(r: &mut Registry, inners: Vec<Adapter<Postgres>>) {
    for case in CASES {
        let sc = stress_pg::scenario(case.scenario).expect("CASES names catalogue scenarios");
        for inner in &inners {
            let broken = Broken::adapter(inner.clone(), case.fault);
            if broken.capabilities().missing(sc.needs).is_some() {
                continue;
            }
            let name = format!("stress::broken::{}::{}[{}]", case.fault.name(), sc.name, inner.name());
            let (fault, names) = (case.fault, case.names);
            r.test(name, TAGS, move |ctx| must_fail(ctx, sc, broken.clone(), fault, names));
            if !case.every_adapter {
                break;
            }
        }
    }
}

/// Runs `sc` against the broken pool: passes when the scenario fails naming the problem.
async fn must_fail(
    ctx: TestCtx,
    sc: Scenario,
    broken: Adapter<Postgres>,
    fault: Fault,
    names: &'static [&'static str],
) -> anyhow::Result<()> {
    let problem = fault.problem();
    ctx.step(format!("running {} against {} ({problem})", sc.name, broken.name()));
    match ctx.with_violations((sc.body)(ctx.clone(), broken.clone()).await) {
        Ok(()) => {
            bail!("{} PASSED against {}, which {problem}: the scenario does not detect it", sc.name, broken.name())
        }
        Err(e) if e.chain().any(|c| c.is::<FixtureFailure>()) => Err(e),
        Err(e) if e.downcast_ref::<Skipped>().is_some() => {
            bail!("{} was skipped against {}: it cannot prove anything: {e}", sc.name, broken.name())
        }
        Err(e) => {
            let msg = format!("{e:#}");
            let lower = msg.to_lowercase();
            if !names.iter().any(|w| lower.contains(w)) {
                bail!(
                    "{} failed against {} ({problem}) but its message names none of {names:?}: {msg}",
                    sc.name,
                    broken.name()
                );
            }
            ctx.note(format!("{} caught that {} {problem}: {msg}", sc.name, broken.name()));
            Ok(())
        }
    }
}
