//! Deliberately broken adapters, as fixtures proving the chaos suite catches
//! what it claims to catch (`chaos::broken::<scenario>[<adapter>]`):
//!
//! - [`LosesCapacity`]: a wrapper whose checkout, dropped while an operation
//!   is in flight (the task was cancelled), forgets its slot instead of
//!   returning it. `cancel_holding` must fail naming "lost capacity".
//! - [`NeverReconnects`]: a wrapper that keeps handing out the first
//!   connection it got, dead or alive. `kill_60pct_workers` must fail naming
//!   "never reconnected".
//! - [`Oversubscribes`]: a wrapper that, when its pool is exhausted, opens
//!   connections past max_size from a second pool (a create race, in
//!   effect). `gradual_exhaustion` must fail, and the test bed's always-on
//!   watch names it: "above max_size".
//!
//! Each runs at layer_1 (over the mock) and layer_2 (over deadpool-postgres
//! and deadpool-redis on the stand-ins), so no server is needed. With
//! `POOLSTRESS_CHAOS_RAW_BROKEN=1` the raw scenarios are registered too
//! (`chaos::broken::raw::*`), failing as a real finding would: the replay
//! test runs one in a child process to check what a failure prints.

use std::sync::Arc;

use anyhow::{bail, ensure};
use futures::future::BoxFuture;
use poolstress_fixtures::pool::{
    self, Adapter, Capabilities, Checkout, Connection, Op, OpOutput, PoolAdapter, PoolConfig, PoolError, PoolStatus,
    PoolUnderTest, Service,
};
use poolstress_harness::{tag, Registry, TestCtx};

use super::{cancel::cancel_holding, kills::kill_60pct_workers, leak::gradual_exhaustion};
use crate::kit::{NetService, Rig};

/// Set to register the raw (failing) broken scenarios.
pub const RAW_ENV: &str = "POOLSTRESS_CHAOS_RAW_BROKEN";

/// An adapter wrapping `inner`, broken in one of two ways.
pub struct Broken<S: Service> {
    inner: Adapter<S>,
    how: How,
    name: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum How {
    LosesCapacity,
    NeverReconnects,
    Oversubscribes,
}

/// A pool that hands out connections past max_size when exhausted.
pub struct Oversubscribes;

impl Oversubscribes {
    /// Wraps `inner`.
    pub fn wrap<S: Service>(inner: Adapter<S>) -> Adapter<S> {
        let name = format!("oversubscribes({})", inner.name());
        Adapter::new(Broken { inner, how: How::Oversubscribes, name })
    }
}

/// A pool that loses a slot whenever a checkout is dropped mid-operation.
pub struct LosesCapacity;
/// A pool that hands out its first connection forever.
pub struct NeverReconnects;

impl LosesCapacity {
    /// Wraps `inner`.
    pub fn wrap<S: Service>(inner: Adapter<S>) -> Adapter<S> {
        let name = format!("loses-capacity-on-cancel({})", inner.name());
        Adapter::new(Broken { inner, how: How::LosesCapacity, name })
    }
}

impl NeverReconnects {
    /// Wraps `inner`.
    pub fn wrap<S: Service>(inner: Adapter<S>) -> Adapter<S> {
        let name = format!("never-reconnects({})", inner.name());
        Adapter::new(Broken { inner, how: How::NeverReconnects, name })
    }
}

impl<S: Service> PoolAdapter for Broken<S> {
    type Service = S;

    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn version(&self) -> String {
        format!("deliberately broken wrapper over {}", self.inner.version())
    }

    fn build<'a>(
        &'a self,
        config: &'a PoolConfig,
        target: &'a S::Target,
    ) -> BoxFuture<'a, Result<Box<dyn PoolUnderTest>, pool::BuildError>> {
        Box::pin(async move {
            let inner = self.inner.build(config, target).await?;
            Ok(match self.how {
                How::LosesCapacity => Box::new(Forgetful(inner)) as Box<dyn PoolUnderTest>,
                How::NeverReconnects => Box::new(Sticky { inner, conn: Arc::new(tokio::sync::Mutex::new(None)) }),
                How::Oversubscribes => {
                    // Acquires on the first pool must give up quickly to fall over.
                    let quick =
                        PoolConfig { acquire_timeout: Some(std::time::Duration::from_millis(20)), ..config.clone() };
                    let first = self.inner.build(&quick, target).await?;
                    Box::new(Overflowing { first, overflow: inner })
                }
            })
        })
    }
}

/// Hands out checkouts that forget their slot when dropped mid-operation.
struct Forgetful(pool::Pool);

impl PoolUnderTest for Forgetful {
    fn acquire(&self) -> BoxFuture<'_, Result<Checkout, PoolError>> {
        Box::pin(async move { Ok(Checkout::new(ForgetfulConn { inner: Some(self.0.acquire().await?), busy: false })) })
    }

    fn status(&self) -> Option<PoolStatus> {
        self.0.status()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.0.close())
    }
}

struct ForgetfulConn {
    inner: Option<Checkout>,
    busy: bool,
}

impl Connection for ForgetfulConn {
    fn run<'a>(&'a mut self, op: &'a Op) -> BoxFuture<'a, Result<OpOutput, PoolError>> {
        Box::pin(async move {
            self.busy = true;
            let r = self.inner.as_mut().expect("present until drop").run(op).await;
            self.busy = false;
            r
        })
    }
}

impl Drop for ForgetfulConn {
    fn drop(&mut self) {
        if self.busy {
            // THE BUG: cancelled mid-operation, the slot is never given back.
            std::mem::forget(self.inner.take());
        }
    }
}

/// When the first pool has no connection free, takes one from a second.
struct Overflowing {
    first: pool::Pool,
    overflow: pool::Pool,
}

impl PoolUnderTest for Overflowing {
    fn acquire(&self) -> BoxFuture<'_, Result<Checkout, PoolError>> {
        Box::pin(async move {
            match self.first.acquire().await {
                Ok(c) => Ok(Checkout::new(Wrapped(c))),
                // THE BUG: exhausted, it opens more instead of waiting.
                Err(_) => Ok(Checkout::new(Wrapped(self.overflow.acquire().await?))),
            }
        })
    }
}

struct Wrapped(Checkout);

impl Connection for Wrapped {
    fn run<'a>(&'a mut self, op: &'a Op) -> BoxFuture<'a, Result<OpOutput, PoolError>> {
        Box::pin(self.0.run(op))
    }
}

/// Keeps the first connection it got and hands it out forever.
struct Sticky {
    inner: pool::Pool,
    conn: Arc<tokio::sync::Mutex<Option<Checkout>>>,
}

impl PoolUnderTest for Sticky {
    fn acquire(&self) -> BoxFuture<'_, Result<Checkout, PoolError>> {
        Box::pin(async move {
            let mut g = self.conn.clone().lock_owned().await;
            if g.is_none() {
                // THE BUG: taken once, never replaced, even when it is dead.
                *g = Some(self.inner.acquire().await?);
            }
            Ok(Checkout::new(StickyConn(g)))
        })
    }
}

struct StickyConn(tokio::sync::OwnedMutexGuard<Option<Checkout>>);

impl Connection for StickyConn {
    fn run<'a>(&'a mut self, op: &'a Op) -> BoxFuture<'a, Result<OpOutput, PoolError>> {
        Box::pin(async move { self.0.as_mut().expect("set at acquire").run(op).await })
    }
}

type Body = fn(TestCtx, Rig) -> BoxFuture<'static, anyhow::Result<()>>;

/// Registers `chaos::broken::*` (and the raw ones when [`RAW_ENV`] is set).
pub fn register(r: &mut Registry) {
    let raw = std::env::var_os(RAW_ENV).is_some();
    let mock = pool::mock_adapters().remove(0);
    let over = Rig::mock(Oversubscribes::wrap(mock.clone()));
    r.test("chaos::broken::oversubscribes_when_exhausted[mock]", &[tag::CHAOS, tag::LAYER_1], move |ctx| {
        let rig = over.clone();
        async move { must_fail(ctx, rig, |c, r| Box::pin(gradual_exhaustion(c, r)), "above max_size").await }
    })
    .exclusive(false);
    let mut rigs: Vec<(Rig, Rig, Vec<&'static str>)> = vec![(
        Rig::mock(LosesCapacity::wrap(mock.clone())),
        Rig::mock(NeverReconnects::wrap(mock.clone())),
        vec![tag::CHAOS, tag::LAYER_1],
    )];
    #[cfg(feature = "postgres")]
    if let Some(pg) = pool::postgres_adapters().into_iter().next() {
        rigs.push(standin_pair(pg, tag::POSTGRES));
    }
    #[cfg(feature = "redis")]
    if let Some(redis) = pool::redis_adapters().into_iter().next() {
        rigs.push(standin_pair(redis, tag::REDIS));
    }
    for (lossy, sticky, tags) in rigs {
        let cases: [(&str, Rig, Body, &str); 2] = [
            ("loses_capacity_on_cancel", lossy, |c, r| Box::pin(cancel_holding(c, r)), "lost capacity"),
            ("never_reconnects_after_kill", sticky, |c, r| Box::pin(kill_60pct_workers(c, r)), "never reconnected"),
        ];
        for (name, rig, body, must) in cases {
            let inner = inner_name(&rig.adapter);
            let rig2 = rig.clone();
            r.test(format!("chaos::broken::{name}[{inner}]"), &tags, move |ctx| {
                let rig = rig2.clone();
                async move { must_fail(ctx, rig, body, must).await }
            })
            .exclusive(false);
            if raw {
                r.test(format!("chaos::broken::raw::{name}[{inner}]"), &tags, move |ctx| body(ctx, rig.clone()))
                    .exclusive(false);
            }
        }
    }
}

fn standin_pair<S: NetService>(a: Adapter<S>, service: &'static str) -> (Rig, Rig, Vec<&'static str>) {
    (
        Rig::standin(LosesCapacity::wrap(a.clone())),
        Rig::standin(NeverReconnects::wrap(a)),
        vec![tag::CHAOS, tag::LAYER_2, service],
    )
}

/// `loses-capacity-on-cancel(mock)` → `mock`.
fn inner_name(wrapped: &str) -> String {
    wrapped.split_once('(').map(|(_, r)| r.trim_end_matches(')').to_string()).unwrap_or_else(|| wrapped.to_string())
}

/// Runs the scenario against the broken adapter: it must fail, and its
/// message must name the failure.
async fn must_fail(ctx: TestCtx, rig: Rig, body: Body, must: &str) -> anyhow::Result<()> {
    let adapter = rig.adapter.clone();
    match ctx.with_violations(body(ctx.clone(), rig).await) {
        Ok(()) => bail!(
            "the chaos scenario passed against {adapter}, a deliberately broken adapter: it cannot catch this bug"
        ),
        Err(e) => {
            let msg = format!("{e:#}");
            ctx.note(format!("caught as expected: {msg}"));
            ensure!(
                msg.contains(must),
                "the scenario failed against {adapter}, but its message does not name \"{must}\": {msg}"
            );
            Ok(())
        }
    }
}
