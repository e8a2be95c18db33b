//! Redis as a service suites run on: its conformance fixture (a logical
//! database, `CLIENT KILL`) and what a network service gives (the RESP
//! stand-in, the real server, the fault proxy, slow ops).

use std::{sync::Arc, time::Duration};

use anyhow::ensure;
use futures::future::BoxFuture;
use poolstress_fixtures::{
    fault::{ChaosEnv, FaultProxy},
    pool::{redis::driver as redis_rs, Knob, Redis},
    service::{self, ServerControl},
    standin::{RespConfig, RespStandin},
    RedisTarget,
};
use poolstress_harness::{tag, ConnectionCounter, TestCtx};

use super::{wait_until, NetService, Provided, ServiceFixture, Standin};
use crate::kit::bed::{Killer, RealParts};

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
