//! The services a suite runs on, in one place: what each gives a test at
//! each layer. [`ServiceFixture`] is every service (Postgres, Redis and the
//! layer_1 mock): a target of the test's own, a server-side connection
//! counter and a killer. [`NetService`] adds what only a service reached over
//! the network has: a stand-in (layer_2), the fault proxy, the real server's
//! control (layer_3), a host to rewrite, a counter of slow ops.
//!
//! A suite is generic over these traits and never defines its own.

use std::{
    any::Any,
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure};
use futures::future::BoxFuture;
use poolstress_fixtures::{
    fault::{ChaosEnv, FaultProxy},
    pool::{pg::driver::NoTls, redis::driver as redis_rs, Knob, Mock, MockServer, Postgres, Redis, Service},
    service::{self, pg_target_config, ServerControl},
    standin::{
        ConnectionSnapshot, Misbehaving, Misbehaviour, PgConfig, PgStandin, RespConfig, RespStandin, StandinCounter,
    },
    PgTarget, RedisTarget,
};
use poolstress_harness::{tag, ConnectionCounter, TestCtx};

use super::bed::{Killer, RealParts};

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

impl ServiceFixture for Postgres {
    fn tags() -> &'static [&'static str] {
        &[tag::STRESS, tag::LAYER_3, tag::POSTGRES]
    }

    fn provide(ctx: &TestCtx) -> BoxFuture<'_, anyhow::Result<Provided<Self>>> {
        Box::pin(async move {
            let server = service::postgres().await?;
            let db = server.test_db(ctx).await?;
            let admin = server.admin_target();
            let kill = Arc::new(move |pid: i64| -> BoxFuture<'static, anyhow::Result<()>> {
                let admin = admin.clone();
                Box::pin(async move {
                    let (client, conn) = service::pg_target_config(&admin).connect(NoTls).await?;
                    tokio::spawn(conn);
                    let pid = i32::try_from(pid)?;
                    let row = client.query_one("SELECT pg_terminate_backend($1)", &[&pid]).await?;
                    ensure!(row.get::<_, bool>(0), "pg_terminate_backend({pid}) found no such backend");
                    wait_until(&format!("backend {pid} gone from pg_stat_activity"), Duration::from_secs(5), || async {
                        Ok(client.query_opt("SELECT 1 FROM pg_stat_activity WHERE pid = $1", &[&pid]).await?.is_none())
                    })
                    .await
                })
            });
            Ok(Provided {
                target: db.target.clone(),
                counter: Arc::new(db.connection_counter()),
                kill,
                keep: Box::new(db),
            })
        })
    }
}

impl ServiceFixture for Redis {
    fn tags() -> &'static [&'static str] {
        &[tag::STRESS, tag::LAYER_3, tag::REDIS]
    }

    fn provide(ctx: &TestCtx) -> BoxFuture<'_, anyhow::Result<Provided<Self>>> {
        Box::pin(async move {
            let server = service::redis().await?;
            let db = server.test_db(ctx).await?;
            // Unnamed, so the test's counter never sees it.
            let admin_url = server.admin_target().url();
            let kill = Arc::new(move |id: i64| -> BoxFuture<'static, anyhow::Result<()>> {
                let url = admin_url.clone();
                Box::pin(async move {
                    let mut c = redis_rs::Client::open(url)?.get_multiplexed_async_connection().await?;
                    let n: i64 = redis_rs::cmd("CLIENT").arg("KILL").arg("ID").arg(id).query_async(&mut c).await?;
                    ensure!(n == 1, "CLIENT KILL ID {id} killed {n} clients");
                    wait_until(&format!("client {id} gone from CLIENT LIST"), Duration::from_secs(5), || {
                        let mut c = c.clone();
                        async move {
                            let l: String =
                                redis_rs::cmd("CLIENT").arg("LIST").arg("ID").arg(id).query_async(&mut c).await?;
                            Ok(l.trim().is_empty())
                        }
                    })
                    .await
                })
            });
            Ok(Provided {
                target: db.target.clone(),
                counter: Arc::new(db.connection_counter()),
                kill,
                keep: Box::new(db),
            })
        })
    }
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
    Pg(PgStandin),
    /// The Redis stand-in.
    Redis(RespStandin),
}

macro_rules! both {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            Standin::Pg($s) => $e,
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
            Standin::Pg(s) => s.wait_count(pred, timeout).await,
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

impl NetService for Postgres {
    const STANDIN_TAGS: &'static [&'static str] = &[tag::LAYER_2, tag::POSTGRES];
    const BENCH_TAGS: &'static [&'static str] = &[tag::BENCHMARK, tag::LAYER_3, tag::POSTGRES];
    // tokio-postgres and sqlx have no default statement or connect timeout.
    const LATENCY_NEEDS: &'static [Knob] = &[];
    const SLOW_OP_NEEDS: &'static [Knob] = &[];

    fn start_standin(ctx: &TestCtx) -> anyhow::Result<(Standin, PgTarget)> {
        let s = PgStandin::start(PgConfig::named(ctx.slug())).map_err(|e| e.into_fixture_failure())?;
        let t = s.target();
        Ok((Standin::Pg(s), t))
    }

    fn real(ctx: &TestCtx) -> BoxFuture<'_, anyhow::Result<RealParts<Self>>> {
        Box::pin(async move {
            ctx.step("getting the postgres server");
            let server = service::postgres().await?;
            let db = server.test_db(ctx).await?;
            let admin = server.admin_target();
            let name = db.target.application_name.clone();
            Ok(RealParts {
                target: db.target.clone(),
                counter: Arc::new(db.connection_counter()),
                env: ChaosEnv::new().postgres_connections(admin.clone(), name.clone()),
                killer: Killer::Pg(admin, name),
                server: server as Arc<dyn ServerControl>,
                keep: Box::new(db),
            })
        })
    }

    fn proxy<'a>(ctx: &'a TestCtx, target: &'a PgTarget) -> BoxFuture<'a, anyhow::Result<(FaultProxy, PgTarget)>> {
        Box::pin(async move { Ok(FaultProxy::for_pg(ctx, target).await?) })
    }

    fn conn_name(t: &PgTarget) -> String {
        t.application_name.clone()
    }

    fn with_host(target: &PgTarget, host: &str) -> PgTarget {
        PgTarget { host: host.to_string(), ..target.clone() }
    }

    fn slow_ops(target: &PgTarget) -> BoxFuture<'_, anyhow::Result<Arc<dyn ConnectionCounter>>> {
        Box::pin(async move {
            let mut admin = service::postgres().await?.admin_target();
            admin.application_name = "poolstress_probe".into();
            let (client, conn) = pg_target_config(&admin).connect(NoTls).await?;
            tokio::spawn(conn);
            Ok(Arc::new(PgSlowOps { client: Arc::new(client), dbname: target.dbname.clone() })
                as Arc<dyn ConnectionCounter>)
        })
    }

    fn no_tls(adapter: &str) -> String {
        format!(
            "{adapter} connects without TLS (the fixtures' Postgres adapters use tokio_postgres::NoTls; sqlx is built \
             without a TLS feature); TLS vs plain is measured with tokio-postgres itself in stress::edge::postgres::tls_overhead[tokio-postgres]"
        )
    }
}

impl NetService for Redis {
    const STANDIN_TAGS: &'static [&'static str] = &[tag::LAYER_2, tag::REDIS];
    const BENCH_TAGS: &'static [&'static str] = &[tag::BENCHMARK, tag::LAYER_3, tag::REDIS];
    // redis-rs defaults: 1 s to connect, 500 ms per response.
    const LATENCY_NEEDS: &'static [Knob] = &[Knob::OpTimeout, Knob::ConnectTimeout];
    const SLOW_OP_NEEDS: &'static [Knob] = &[Knob::OpTimeout];

    fn start_standin(ctx: &TestCtx) -> anyhow::Result<(Standin, RedisTarget)> {
        let s = RespStandin::start(RespConfig::named(ctx.slug())).map_err(|e| e.into_fixture_failure())?;
        let t = s.target();
        Ok((Standin::Redis(s), t))
    }

    fn real(ctx: &TestCtx) -> BoxFuture<'_, anyhow::Result<RealParts<Self>>> {
        Box::pin(async move {
            ctx.step("getting the redis server");
            let server = service::redis().await?;
            let db = server.test_db(ctx).await?;
            let admin = server.admin_target();
            let name = db.target.client_name.clone();
            Ok(RealParts {
                target: db.target.clone(),
                counter: Arc::new(db.connection_counter()),
                env: ChaosEnv::new().redis_connections(admin.clone(), name.clone()),
                killer: Killer::Redis(admin, name),
                server: server as Arc<dyn ServerControl>,
                keep: Box::new(db),
            })
        })
    }

    fn proxy<'a>(
        ctx: &'a TestCtx,
        target: &'a RedisTarget,
    ) -> BoxFuture<'a, anyhow::Result<(FaultProxy, RedisTarget)>> {
        Box::pin(async move { Ok(FaultProxy::for_redis(ctx, target).await?) })
    }

    fn conn_name(t: &RedisTarget) -> String {
        t.client_name.clone()
    }

    fn with_host(target: &RedisTarget, host: &str) -> RedisTarget {
        RedisTarget { host: host.to_string(), ..target.clone() }
    }

    fn slow_ops(target: &RedisTarget) -> BoxFuture<'_, anyhow::Result<Arc<dyn ConnectionCounter>>> {
        Box::pin(async move {
            let admin = service::redis().await?.admin_target();
            let conn = redis_rs::Client::open(admin.url())?.get_multiplexed_async_connection().await?;
            Ok(Arc::new(RedisSlowOps { conn, name: target.client_name.clone() }) as Arc<dyn ConnectionCounter>)
        })
    }

    fn no_tls(adapter: &str) -> String {
        format!(
            "{adapter}: Redis TLS is not available (redis-rs is built without a TLS feature and the Redis fixtures \
             open no TLS port)"
        )
    }
}

/// Active `pg_sleep` statements in the test's database.
struct PgSlowOps {
    client: Arc<tokio_postgres::Client>,
    dbname: String,
}

impl ConnectionCounter for PgSlowOps {
    fn count(&self) -> BoxFuture<'_, anyhow::Result<u64>> {
        Box::pin(async move {
            let row = self
                .client
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND state = 'active' \
                     AND query LIKE '%pg_sleep%' AND pid <> pg_backend_pid()",
                    &[&self.dbname],
                )
                .await?;
            Ok(row.get::<_, i64>(0) as u64)
        })
    }
}

/// The test's clients blocked in `BLPOP` (named by `CLIENT SETNAME` or by the
/// library name redis-rs repeats on reconnects).
struct RedisSlowOps {
    conn: redis_rs::aio::MultiplexedConnection,
    name: String,
}

impl ConnectionCounter for RedisSlowOps {
    fn count(&self) -> BoxFuture<'_, anyhow::Result<u64>> {
        let mut c = self.conn.clone();
        Box::pin(async move {
            let list: String =
                redis_rs::cmd("CLIENT").arg("LIST").arg("TYPE").arg("normal").query_async(&mut c).await?;
            Ok(blocked_named(&list, &self.name))
        })
    }
}

/// `CLIENT LIST` lines of clients named `name` that are blocked in BLPOP.
fn blocked_named(list: &str, name: &str) -> u64 {
    list.lines()
        .filter(|l| {
            let f = |k: &str| l.split(' ').find_map(|x| x.strip_prefix(k));
            (f("name=") == Some(name) || f("lib-name=") == Some(name))
                && f("cmd=") == Some("blpop")
                && f("flags=").is_some_and(|fl| fl.contains('b'))
        })
        .count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_clients_are_counted_by_name_or_library_name() {
        let list = "id=3 addr=x name=t_1 flags=b cmd=blpop lib-name=t_1\n\
                    id=4 addr=x name= flags=b cmd=blpop lib-name=t_1\n\
                    id=5 addr=x name=t_1 flags=N cmd=ping lib-name=t_1\n\
                    id=6 addr=x name=t_10 flags=b cmd=blpop lib-name=t_10\n";
        assert_eq!(blocked_named(list, "t_1"), 2);
        assert_eq!(blocked_named(list, "t_2"), 0);
    }
}
