//! Postgres as a service suites run on: its conformance fixture (a test
//! database, `pg_terminate_backend`) and what a network service gives
//! (the pgwire stand-in, the real server, the fault proxy, slow ops).

use std::{sync::Arc, time::Duration};

use anyhow::ensure;
use futures::future::BoxFuture;
use poolstress_fixtures::{
    fault::{ChaosEnv, FaultProxy},
    pool::{pg::driver::NoTls, Knob, Postgres},
    service::{self, pg_target_config, ServerControl},
    standin::{PgConfig, PgStandin},
    PgTarget,
};
use poolstress_harness::{tag, ConnectionCounter, TestCtx};

use super::{wait_until, NetService, Provided, ServiceFixture, Standin};
use crate::kit::bed::{Killer, RealParts};

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
