//! The bed a chaos scenario runs on, at one of three layers: the pool under
//! test, the "server" it talks to, and the faults that server can suffer.
//!
//! | | layer_1 | layer_2 | layer_3 |
//! |---|---|---|---|
//! | server | [`MockServer`] | stand-in (`poolstress_fixtures::standin`) | the run's Postgres / Redis, the test's own database |
//! | path | in process | through the fault proxy | through the fault proxy |
//! | kill | every connection broken (`MockServer::kill`; the mock has no per-connection kill) | chosen connections killed by id | `kill_pg_backends` / `kill_redis_clients` |
//! | partition | connections broken and creates refused until healed | proxy blackhole both ways (`timeout` 0) | proxy blackhole both ways |
//! | schedule env | workers | proxy, workers | proxy, server, connections, workers |
//!
//! A scenario gets a [`Rig`] (a layer and an adapter), decides its pool
//! config, and builds a [`Bed`] from it.

use std::{
    any::Any,
    fmt,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::Context;
use futures::future::BoxFuture;
use parking_lot::Mutex;
#[cfg(feature = "postgres")]
use poolstress_fixtures::{fault::kill_pg_backends, PgTarget};
#[cfg(feature = "redis")]
use poolstress_fixtures::{fault::kill_redis_clients, RedisTarget};
use poolstress_fixtures::{
    fault::{ChaosEnv, FaultGuard, FaultKind, FaultProxy, FaultSpec, Victims},
    pool::{Adapter, Capabilities, Knob, Mock, MockServer, Pool, PoolConfig, Service},
    service::ServerControl,
    standin::ConnectionSnapshot,
};
use poolstress_harness::{mock::MockPool, tag, ConnectionCounter, TestCtx};
use rand::rngs::StdRng;

use super::service::{NetService, Standin};

/// Where a scenario runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Layer {
    /// The mock pool over a [`MockServer`]: no I/O.
    L1,
    /// Real client crates against an in-process stand-in, through the fault proxy.
    L2,
    /// Real servers, through the fault proxy.
    L3,
}

impl Layer {
    /// `layer_1`, `layer_2`, `layer_3` (the tag).
    pub fn tag(self) -> &'static str {
        match self {
            Layer::L1 => tag::LAYER_1,
            Layer::L2 => tag::LAYER_2,
            Layer::L3 => tag::LAYER_3,
        }
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.tag())
    }
}

/// How long a mock query takes at layer_1.
const MOCK_QUERY: Duration = Duration::from_millis(1);

type Build = Arc<dyn Fn(TestCtx, PoolConfig) -> BoxFuture<'static, anyhow::Result<Bed>> + Send + Sync>;

/// A layer and an adapter: what a scenario instance runs on.
#[derive(Clone)]
pub struct Rig {
    /// The layer.
    pub layer: Layer,
    /// The adapter's name (the test's instance).
    pub adapter: String,
    /// `postgres`, `redis`, `mock`.
    pub service: &'static str,
    /// What the adapter's pool supports.
    pub caps: Capabilities,
    build: Build,
}

impl fmt::Debug for Rig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Rig({} {} at {})", self.service, self.adapter, self.layer)
    }
}

impl Rig {
    /// `adapter` on a [`MockServer`] (layer_1).
    pub fn mock(a: Adapter<Mock>) -> Self {
        let build: Build = {
            let a = a.clone();
            Arc::new(move |ctx: TestCtx, cfg: PoolConfig| -> BoxFuture<'static, anyhow::Result<Bed>> {
                let a = a.clone();
                Box::pin(async move { Bed::mock(&ctx, &a, &cfg).await })
            })
        };
        Rig { layer: Layer::L1, adapter: a.name().to_string(), service: Mock::NAME, caps: a.capabilities(), build }
    }

    /// `adapter` on a stand-in through the fault proxy (layer_2).
    pub fn standin<S: NetService>(a: Adapter<S>) -> Self {
        let build: Build = {
            let a = a.clone();
            Arc::new(move |ctx: TestCtx, cfg: PoolConfig| -> BoxFuture<'static, anyhow::Result<Bed>> {
                let a = a.clone();
                Box::pin(async move { Bed::standin(&ctx, &a, &cfg).await })
            })
        };
        Rig { layer: Layer::L2, adapter: a.name().to_string(), service: S::NAME, caps: a.capabilities(), build }
    }

    /// `adapter` on the run's real server through the fault proxy (layer_3).
    pub fn real<S: NetService>(a: Adapter<S>) -> Self {
        let build: Build = {
            let a = a.clone();
            Arc::new(move |ctx: TestCtx, cfg: PoolConfig| -> BoxFuture<'static, anyhow::Result<Bed>> {
                let a = a.clone();
                Box::pin(async move { Bed::real(&ctx, &a, &cfg).await })
            })
        };
        Rig { layer: Layer::L3, adapter: a.name().to_string(), service: S::NAME, caps: a.capabilities(), build }
    }

    /// Whether the pool has `knob`.
    pub fn supports(&self, knob: Knob) -> bool {
        self.caps.supports(knob)
    }

    /// A config of `max` with only the knobs the adapter supports among
    /// those asked for (a knob it lacks is left at the pool's default).
    pub fn config(
        &self,
        max: usize,
        acquire: Option<Duration>,
        connect: Option<Duration>,
        op: Option<Duration>,
    ) -> PoolConfig {
        super::fit(&self.caps, max, acquire, connect, op)
    }

    /// Builds the bed with `cfg`.
    pub async fn bed(&self, ctx: &TestCtx, cfg: PoolConfig) -> anyhow::Result<Bed> {
        ctx.step(format!("building {} at {} with {cfg:?}", self.adapter, self.layer));
        (self.build)(ctx.clone(), cfg).await
    }
}

/// What a kill did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Killed {
    /// The test's connections the server had.
    pub seen: usize,
    /// How many were killed.
    pub killed: usize,
    /// Whether the layer could choose (false: layer_1 kills all).
    pub chosen: bool,
}

pub(crate) enum Killer {
    Mock(MockServer),
    Standin(Arc<Standin>, String),
    #[cfg(feature = "postgres")]
    Pg(PgTarget, String),
    #[cfg(feature = "redis")]
    Redis(RedisTarget, String),
}

/// A partition in force; healed by [`Partition::heal`] or on drop.
pub struct Partition {
    /// layer_1: the mock pools refusing creates (their connections were broken).
    mock: Vec<MockPool>,
    /// layer_2 / layer_3: the proxy holding every byte.
    guard: Option<FaultGuard>,
}

impl Partition {
    /// Heals it.
    pub fn heal(mut self) -> anyhow::Result<()> {
        for p in &self.mock {
            p.refuse_creates(false);
        }
        if let Some(g) = self.guard.take() {
            g.heal()?;
        }
        Ok(())
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        for p in &self.mock {
            p.refuse_creates(false);
        }
    }
}

/// A built pool on its server, with the faults the layer can apply.
pub struct Bed {
    /// The layer.
    pub layer: Layer,
    /// The pool under test (never rebuilt by a scenario).
    pub pool: Pool,
    /// Its config.
    pub cfg: PoolConfig,
    /// The adapter's name.
    pub adapter: String,
    /// What it supports.
    pub caps: Capabilities,
    /// The fault proxy between the pool and the server (layers 2 and 3).
    pub proxy: Option<FaultProxy>,
    /// The server (layer_3), for restarts.
    pub server: Option<Arc<dyn ServerControl>>,
    /// What a [`poolstress_fixtures::fault::Schedule`] can act on (add workers yourself).
    pub env: ChaosEnv,
    counter: Arc<dyn ConnectionCounter>,
    killer: Killer,
    _keep: Mutex<Vec<Box<dyn Any + Send>>>,
}

impl Bed {
    async fn mock(ctx: &TestCtx, a: &Adapter<Mock>, cfg: &PoolConfig) -> anyhow::Result<Bed> {
        let server = MockServer::new();
        let pool = a.build(cfg, &server).await.with_context(|| format!("building {}", a.name()))?;
        // Mock queries take a tick, so a closed loop on them does not spin.
        for p in server.pools() {
            p.set_op_latency(MOCK_QUERY);
        }
        ctx.note(format!(
            "{} ({}) with {cfg:?} at layer_1 (mock server, {MOCK_QUERY:?} per query)",
            a.name(),
            a.version()
        ));
        Ok(Bed {
            layer: Layer::L1,
            pool,
            cfg: cfg.clone(),
            adapter: a.name().to_string(),
            caps: a.capabilities(),
            proxy: None,
            server: None,
            env: ChaosEnv::new(),
            counter: Arc::new(server.clone()),
            killer: Killer::Mock(server),
            _keep: Mutex::new(Vec::new()),
        })
    }

    async fn standin<S: NetService>(ctx: &TestCtx, a: &Adapter<S>, cfg: &PoolConfig) -> anyhow::Result<Bed> {
        let (server, target) = S::start_standin(ctx)?;
        let (proxy, via) = S::proxy(ctx, &target).await?;
        let pool = a.build(cfg, &via).await.with_context(|| format!("building {} against the stand-in", a.name()))?;
        ctx.note(format!(
            "{} ({}) with {cfg:?} at layer_2 ({} stand-in through the fault proxy)",
            a.name(),
            a.version(),
            S::NAME
        ));
        let server = Arc::new(server);
        let counter: Arc<dyn ConnectionCounter> = Arc::new(server.counter());
        Ok(Bed {
            layer: Layer::L2,
            pool,
            cfg: cfg.clone(),
            adapter: a.name().to_string(),
            caps: a.capabilities(),
            env: ChaosEnv::new().proxy(&proxy),
            proxy: Some(proxy),
            server: None,
            counter,
            killer: Killer::Standin(server, S::conn_name(&target)),
            _keep: Mutex::new(Vec::new()),
        })
    }

    async fn real<S: NetService>(ctx: &TestCtx, a: &Adapter<S>, cfg: &PoolConfig) -> anyhow::Result<Bed> {
        let real = S::real(ctx).await?;
        let (proxy, via) = S::proxy(ctx, &real.target).await?;
        let pool = a.build(cfg, &via).await.with_context(|| format!("building {} ({})", a.name(), a.version()))?;
        ctx.note(format!(
            "{} ({}) with {cfg:?} at layer_3 (real {} through the fault proxy)",
            a.name(),
            a.version(),
            S::NAME
        ));
        let env = real.env.clone().proxy(&proxy).server(ctx, real.server.clone());
        Ok(Bed {
            layer: Layer::L3,
            pool,
            cfg: cfg.clone(),
            adapter: a.name().to_string(),
            caps: a.capabilities(),
            proxy: Some(proxy),
            server: Some(real.server),
            env,
            counter: real.counter,
            killer: real.killer,
            _keep: Mutex::new(vec![real.keep]),
        })
    }

    /// Whether the pool has `knob`.
    pub fn supports(&self, knob: Knob) -> bool {
        self.caps.supports(knob)
    }

    /// The test's connections as the server sees them.
    pub async fn server_count(&self) -> anyhow::Result<u64> {
        self.counter.count().await
    }

    /// The server-side counter (for samplers).
    pub fn counter(&self) -> Arc<dyn ConnectionCounter> {
        self.counter.clone()
    }

    /// Who the test's server connections are and how to reach the server
    /// as admin (for server-side checks, [`crate::kit::checks`]).
    pub(crate) fn killer(&self) -> &Killer {
        &self.killer
    }

    /// Kills `victims` of the test's server connections, chosen with `rng`
    /// (layer_1 breaks them all).
    pub async fn kill(&self, victims: Victims, rng: &mut StdRng) -> anyhow::Result<Killed> {
        Ok(match &self.killer {
            Killer::Mock(s) => {
                let seen = s.open_connections();
                s.kill(0);
                Killed { seen, killed: seen, chosen: false }
            }
            Killer::Standin(s, name) => {
                let snaps: Vec<ConnectionSnapshot> = s.connections();
                let ids: Vec<i64> = snaps.iter().filter(|c| c.belongs_to(name)).map(|c| c.id).collect();
                let chosen = victims.choose(&ids, rng);
                let killed = chosen.iter().filter(|id| s.kill_connection(**id)).count();
                Killed { seen: ids.len(), killed, chosen: true }
            }
            #[cfg(feature = "postgres")]
            Killer::Pg(admin, name) => {
                let r = kill_pg_backends(admin, name, victims, rng).await?;
                Killed { seen: r.seen, killed: r.killed.len(), chosen: true }
            }
            #[cfg(feature = "redis")]
            Killer::Redis(admin, name) => {
                let r = kill_redis_clients(admin, name, victims, rng).await?;
                Killed { seen: r.seen, killed: r.killed.len(), chosen: true }
            }
        })
    }

    /// Partitions the pool from its server until the returned guard heals.
    pub fn partition(&self) -> anyhow::Result<Partition> {
        match (&self.killer, &self.proxy) {
            (Killer::Mock(s), _) => {
                let pools = s.pools();
                for p in &pools {
                    p.refuse_creates(true);
                    p.break_all();
                }
                Ok(Partition { mock: pools, guard: None })
            }
            (_, Some(p)) => {
                Ok(Partition { mock: Vec::new(), guard: Some(p.add(FaultSpec::new(FaultKind::blackhole()).both())?) })
            }
            (_, None) => anyhow::bail!("no proxy to partition with"),
        }
    }

    /// A short description for notes: `deadpool-postgres at layer_3`.
    pub fn what(&self) -> String {
        format!("{} at {}", self.adapter, self.layer)
    }
}

/// What a service gives the chaos suite at layer_3.
pub struct RealParts<S: Service> {
    pub(crate) target: S::Target,
    pub(crate) counter: Arc<dyn ConnectionCounter>,
    pub(crate) server: Arc<dyn ServerControl>,
    pub(crate) killer: Killer,
    pub(crate) env: ChaosEnv,
    pub(crate) keep: Box<dyn Any + Send>,
}

/// Samples the server-side count every 10 ms until finished; keeps the maximum.
pub struct Sampler {
    max: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    /// Starts sampling `counter` (errors, e.g. during a restart, are skipped).
    pub fn start(counter: Arc<dyn ConnectionCounter>) -> Self {
        let max = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s) = (max.clone(), stop.clone());
        let task = tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                if let Ok(n) = counter.count().await {
                    m.fetch_max(n, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        Sampler { max, stop, task }
    }

    /// Stops and returns the largest count seen.
    pub async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.max.load(Ordering::Relaxed)
    }
}
