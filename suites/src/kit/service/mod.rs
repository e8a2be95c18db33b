//! The services a suite runs on, in one place: what each gives a test at
//! each layer. [`ServiceFixture`] is every service (Postgres, Redis and the
//! layer_1 mock): a target of the test's own, a server-side connection
//! counter and a killer. [`NetService`] adds what only a service reached over
//! the network has: a stand-in (layer_2), the fault proxy, the real server's
//! control (layer_3), a host to rewrite, a counter of slow ops.
//!
//! A suite is generic over these traits and never defines its own.

#[cfg(feature = "postgres")]
mod pg;
#[cfg(feature = "redis")]
mod redis;

use std::{
    any::Any,
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure};
use futures::future::BoxFuture;
#[cfg(feature = "postgres")]
use poolstress_fixtures::standin::PgStandin;
#[cfg(feature = "redis")]
use poolstress_fixtures::standin::RespStandin;
use poolstress_fixtures::{
    fault::FaultProxy,
    pool::{Knob, Mock, MockServer, Service},
    standin::{ConnectionSnapshot, Misbehaving, Misbehaviour, StandinCounter},
};
use poolstress_harness::{tag, ConnectionCounter, TestCtx};

use super::bed::RealParts;

/// What a service gives a conformance test: the target, a server-side
/// connection counter, and a way to kill one connection server side.
pub struct Provided<S: Service> {
    /// Where pools connect.
    pub target: S::Target,
    /// The test's connections as the server sees them.
    pub counter: Arc<dyn ConnectionCounter>,
    /// Kills one connection by its [`Op::WhoAmI`] id and returns once the
    /// server no longer has it.
    pub kill: Arc<dyn Fn(i64) -> BoxFuture<'static, anyhow::Result<()>> + Send + Sync>,
    /// Whatever must live as long as the test (the test database).
    pub keep: Box<dyn Any + Send>,
}

/// A service the conformance suite can run on: its tags and how to get a
/// server for one test.
pub trait ServiceFixture: Service + Sized {
    /// The tags of its conformance tests.
    fn tags() -> &'static [&'static str];
    /// A target of the test's own, its counter and its killer.
    fn provide(ctx: &TestCtx) -> BoxFuture<'_, anyhow::Result<Provided<Self>>>;
}

impl ServiceFixture for Mock {
    fn tags() -> &'static [&'static str] {
        &[tag::STRESS, tag::LAYER_1]
    }

    fn provide(_ctx: &TestCtx) -> BoxFuture<'_, anyhow::Result<Provided<Self>>> {
        Box::pin(async move {
            let server = MockServer::new();
            let s = server.clone();
            let kill = Arc::new(move |id: i64| -> BoxFuture<'static, anyhow::Result<()>> {
                let s = s.clone();
                Box::pin(async move {
                    ensure!(s.kill(id), "mock server had no connection to kill");
                    Ok(())
                })
            });
            Ok(Provided { target: server.clone(), counter: Arc::new(server), kill, keep: Box::new(()) })
        })
    }
}

/// Polls `cond` every 5 ms until it holds; fails naming `what` after `deadline`.
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut cond: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let end = Instant::now() + deadline;
    loop {
        if cond().await? {
            return Ok(());
        }
        if Instant::now() >= end {
            bail!("timed out after {deadline:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A running stand-in of either kind.
pub enum Standin {
    /// The Postgres stand-in.
    #[cfg(feature = "postgres")]
    Pg(PgStandin),
    /// The Redis stand-in.
    #[cfg(feature = "redis")]
    Redis(RespStandin),
}

macro_rules! both {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            #[cfg(feature = "postgres")]
            Standin::Pg($s) => $e,
            #[cfg(feature = "redis")]
            Standin::Redis($s) => $e,
        }
    };
}

impl Standin {
    /// The stand-in's counter of open connections.
    pub fn counter(&self) -> StandinCounter {
        both!(self, s => s.counter())
    }
    /// Makes the stand-in misbehave until the guard drops.
    pub fn misbehave(&self, m: Misbehaviour) -> Misbehaving {
        both!(self, s => s.misbehave(m))
    }
    /// Makes the stand-in misbehave `n` times.
    pub fn misbehave_times(&self, m: Misbehaviour, n: u64) -> Misbehaving {
        both!(self, s => s.misbehave_times(m, n))
    }
    /// Kills connection `id`; false if there is none.
    pub fn kill_connection(&self, id: i64) -> bool {
        both!(self, s => s.kill_connection(id))
    }
    /// Kills every connection; returns how many.
    pub fn kill_all(&self) -> usize {
        both!(self, s => s.kill_all())
    }
    /// The connections it has now.
    pub fn connections(&self) -> Vec<ConnectionSnapshot> {
        both!(self, s => s.connections())
    }
    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        both!(self, s => s.accepted())
    }
    /// Waits until the open connection count satisfies `pred`.
    pub async fn wait_count(&self, pred: impl Fn(u64) -> bool, timeout: Duration) -> Result<u64, u64> {
        match self {
            #[cfg(feature = "postgres")]
            Standin::Pg(s) => s.wait_count(pred, timeout).await,
            #[cfg(feature = "redis")]
            Standin::Redis(s) => s.wait_count(pred, timeout).await,
        }
    }
}

/// A service reached over the network (Postgres, Redis): everything a suite
/// needs from it beyond [`ServiceFixture`], at layers 2 and 3.
pub trait NetService: ServiceFixture {
    /// The tags of its layer_2 tests.
    const STANDIN_TAGS: &'static [&'static str];
    /// The tags of its benchmarks.
    const BENCH_TAGS: &'static [&'static str];
    /// Knobs an adapter needs to work through 500 ms of network latency.
    const LATENCY_NEEDS: &'static [Knob];
    /// Knobs an adapter needs to run an operation of a second or two.
    const SLOW_OP_NEEDS: &'static [Knob];

    /// A stand-in named after the test (layer_2), and the target pools connect to.
    fn start_standin(ctx: &TestCtx) -> anyhow::Result<(Standin, Self::Target)>;

    /// The run's real server and the test's own database on it (layer_3),
    /// with its control and killer.
    fn real(ctx: &TestCtx) -> BoxFuture<'_, anyhow::Result<RealParts<Self>>>;

    /// A fault proxy in front of `target`, and the target through it.
    fn proxy<'a>(
        ctx: &'a TestCtx,
        target: &'a Self::Target,
    ) -> BoxFuture<'a, anyhow::Result<(FaultProxy, Self::Target)>>;

    /// The name the test's connections carry (application / client name).
    fn conn_name(t: &Self::Target) -> String;

    /// `target` with its host replaced by `host`.
    fn with_host(target: &Self::Target, host: &str) -> Self::Target;

    /// Counts the test's [`Op::Slow`](poolstress_fixtures::pool::Op::Slow) operations the server is running.
    fn slow_ops(target: &Self::Target) -> BoxFuture<'_, anyhow::Result<Arc<dyn ConnectionCounter>>>;

    /// Why `adapter` cannot be measured with TLS.
    fn no_tls(adapter: &str) -> String;
}
