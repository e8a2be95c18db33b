//! The catalogue's 10 edge cases on both services' adapters, side by side:
//! `stress::edge::<name>[<adapter>]`, tags `stress`, `layer_3` and the
//! service. Every fault is real: latency is injected by the fault proxy,
//! connections are killed server side, the host name really does not
//! resolve.
//!
//! - [`latency`]: `high_network_latency`, `slow_queries_do_not_starve_fast`
//! - [`load`]: `connection_spike`, `connection_churn`
//! - [`lifecycle`]: `close_while_active`, `resize_during_use`,
//!   `acquire_timeout_precision`, `broken_connection_not_reused`
//! - [`connect`]: `unresolvable_host`, `tls_overhead` (TLS with tokio-postgres
//!   itself when the server has TLS: no adapter speaks TLS, see [`tls`])

use std::sync::Arc;

use futures::future::BoxFuture;
use poolstress_fixtures::{
    fault::FaultProxy,
    pool::{self, pg::driver::NoTls, redis::driver as redis_rs, Adapter, Knob, Postgres, Redis},
    service::{self, pg_target_config},
    PgTarget, RedisTarget,
};
use poolstress_harness::{ConnectionCounter, Registry, TestCtx};

use super::{
    conformance::ServiceFixture,
    stress_redis::support::{register_table, Finding, Scenario},
};

mod connect;
mod latency;
mod lifecycle;
mod load;
mod tls;

/// Known findings in real pools: `(scenario, adapter, reason)`. The test
/// stays registered, fails when run, and is marked ignored with the reason.
pub const FINDINGS: &[Finding] = &[
    (
        "slow_queries_do_not_starve_fast",
        "redis-manager",
        "redis 1.8.1 ConnectionManager: every caller shares one multiplexed connection, so a blocking command (BLPOP, \
         the Redis slow op) holds up every command queued behind it: with 5 slow ops of 800 ms running, all 10 fast PINGs \
         waited until the 4 s op timeout (head-of-line blocking)",
    ),
    (
        "broken_connection_not_reused",
        "redis-manager",
        "redis 1.8.1 ConnectionManager (RESP2, the default): after the server killed the connection, the next command \
         fails with broken pipe (connection_broken); the manager reconnects only after that failure",
    ),
    (
        "unresolvable_host",
        "redis-manager",
        "redis 1.8.1 ConnectionManager::new_with_config retries a failed connect 6 times with exponential backoff \
         (100 ms base) whatever connection_timeout says: building one for a host that does not resolve fails only \
         after ~9.5 s (bound 6 s)",
    ),
];

/// Registers the edge cases for every built-in Postgres and Redis adapter,
/// and `tls_overhead[tokio-postgres]`.
pub fn register(r: &mut Registry) {
    register_adapters(r, pool::postgres_adapters());
    register_adapters(r, pool::redis_adapters());
    connect::register_tls_driver(r);
}

/// Registers the edge cases for `adapters` of service `S`.
pub fn register_adapters<S: EdgeService>(r: &mut Registry, adapters: Vec<Adapter<S>>) {
    let table: Vec<Scenario<S>> = vec![
        Scenario::new("high_network_latency", S::LATENCY_NEEDS, |c, a| Box::pin(latency::high_network_latency(c, a))),
        Scenario::new("slow_queries_do_not_starve_fast", S::SLOW_OP_NEEDS, |c, a| {
            Box::pin(latency::slow_queries_do_not_starve_fast(c, a))
        }),
        Scenario::new("connection_spike", &[], |c, a| Box::pin(load::connection_spike(c, a)))
            .skip_if(load::cannot_shrink),
        Scenario::new("connection_churn", &[], |c, a| Box::pin(load::connection_churn(c, a))),
        Scenario::new("close_while_active", &[], |c, a| Box::pin(lifecycle::close_while_active(c, a))),
        Scenario::new("resize_during_use", &[], |c, a| Box::pin(lifecycle::resize_during_use(c, a))),
        Scenario::new("acquire_timeout_precision", &[Knob::MaxSize, Knob::AcquireTimeout], |c, a| {
            Box::pin(lifecycle::acquire_timeout_precision(c, a))
        }),
        Scenario::new("broken_connection_not_reused", &[Knob::Reuse], |c, a| {
            Box::pin(lifecycle::broken_connection_not_reused(c, a))
        }),
        Scenario::new("unresolvable_host", &[], |c, a| Box::pin(connect::unresolvable_host(c, a))),
        // No adapter speaks TLS: registered skipped with the reason, side by side with the others.
        Scenario::new("tls_overhead", &[], |c, a| Box::pin(async move { Err(c.skip(S::no_tls(a.name()))) }))
            .skip_if(|a| Some(S::no_tls(a.name()))),
    ];
    register_table(r, "stress::edge", table, &adapters, FINDINGS);
}

/// What the edge cases need from a service beyond [`ServiceFixture`].
pub trait EdgeService: ServiceFixture {
    /// Knobs an adapter needs to work through 500 ms of network latency.
    const LATENCY_NEEDS: &'static [Knob];
    /// Knobs an adapter needs to run an operation of a second or two.
    const SLOW_OP_NEEDS: &'static [Knob];

    /// A fault proxy in front of `target`, and the target through it.
    fn proxy<'a>(
        ctx: &'a TestCtx,
        target: &'a Self::Target,
    ) -> BoxFuture<'a, anyhow::Result<(FaultProxy, Self::Target)>>;

    /// `target` with its host replaced by `host`.
    fn with_host(target: &Self::Target, host: &str) -> Self::Target;

    /// Counts the test's [`pool::Op::Slow`] operations the server is running.
    fn slow_ops(target: &Self::Target) -> BoxFuture<'_, anyhow::Result<Arc<dyn ConnectionCounter>>>;

    /// Why `adapter` cannot be measured with TLS.
    fn no_tls(adapter: &str) -> String;
}

impl EdgeService for Postgres {
    // tokio-postgres and sqlx have no default statement or connect timeout.
    const LATENCY_NEEDS: &'static [Knob] = &[];
    const SLOW_OP_NEEDS: &'static [Knob] = &[];

    fn proxy<'a>(ctx: &'a TestCtx, target: &'a PgTarget) -> BoxFuture<'a, anyhow::Result<(FaultProxy, PgTarget)>> {
        Box::pin(async move { Ok(FaultProxy::for_pg(ctx, target).await?) })
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
             without a TLS feature); TLS vs plain is measured with tokio-postgres itself in stress::edge::tls_overhead[tokio-postgres]"
        )
    }
}

impl EdgeService for Redis {
    // redis-rs defaults: 1 s to connect, 500 ms per response.
    const LATENCY_NEEDS: &'static [Knob] = &[Knob::OpTimeout, Knob::ConnectTimeout];
    const SLOW_OP_NEEDS: &'static [Knob] = &[Knob::OpTimeout];

    fn proxy<'a>(
        ctx: &'a TestCtx,
        target: &'a RedisTarget,
    ) -> BoxFuture<'a, anyhow::Result<(FaultProxy, RedisTarget)>> {
        Box::pin(async move { Ok(FaultProxy::for_redis(ctx, target).await?) })
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
