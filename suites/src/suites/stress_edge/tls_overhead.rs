//! `stress::edge::postgres::tls_overhead[tokio-postgres]`: TLS vs plain
//! connects and queries, measured with tokio-postgres itself (no pool
//! adapter speaks TLS; the connector is [`super::tls`]): 50
//! connect-and-query ops and 50 queries on one connection, with TLS and
//! without; overhead budget 100 %. Skipped at run time when the server has no TLS.

use std::time::Instant;

use anyhow::{ensure, Context};
use poolstress_fixtures::service::{self, pg_target_config};
use poolstress_harness::{tag, Metric, Registry, TestCtx};
use tokio_postgres::config::SslMode;

use super::tls;
use crate::kit::support::{budget_max, ms};

/// `stress::edge::postgres::tls_overhead[tokio-postgres]`.
pub(super) fn register_tls_driver(r: &mut Registry) {
    r.test(
        "stress::edge::postgres::tls_overhead[tokio-postgres]",
        &[tag::STRESS, tag::LAYER_3, tag::POSTGRES],
        tls_overhead,
    );
}

async fn tls_overhead(ctx: TestCtx) -> anyhow::Result<()> {
    let n = 50;
    let server = service::postgres().await?;
    if !server.tls_enabled().await? {
        return Err(ctx.skip(
            "the Postgres server has no TLS (SHOW ssl = off): run with POOLSTRESS_POSTGRES_TLS=on (docker backend with \
             poolstress's local image, scripts/build-local-images.sh) or POOLSTRESS_POSTGRES_URL pointing at a TLS-enabled server",
        ));
    }
    let db = server.test_db(&ctx).await?;
    let plain = {
        let mut c = pg_target_config(&db.target);
        c.ssl_mode(SslMode::Disable);
        c
    };
    let tls_cfg = {
        let mut c = pg_target_config(&db.target);
        c.ssl_mode(SslMode::Require);
        c
    };
    let connector = tls::connector()?;

    // Connect-and-query: the handshake is where TLS costs most.
    ctx.step(format!("{n} connect + SELECT 1, plain and with TLS, alternating"));
    let (mut plain_connect, mut tls_connect) = (Vec::new(), Vec::new());
    for i in 0..n {
        let t = Instant::now();
        let (c, conn) = plain.connect(tokio_postgres::NoTls).await.with_context(|| format!("plain connect {i}"))?;
        let driver = tokio::spawn(conn);
        c.simple_query("SELECT 1").await?;
        drop(c);
        driver.await??;
        plain_connect.push(ms(t.elapsed()));

        let t = Instant::now();
        let (c, conn) = tls_cfg.connect(connector.clone()).await.with_context(|| format!("TLS connect {i}"))?;
        let driver = tokio::spawn(conn);
        c.simple_query("SELECT 1").await?;
        drop(c);
        driver.await??;
        tls_connect.push(ms(t.elapsed()));
    }

    // Queries on an open connection: the per-op cost a pool's user pays.
    ctx.step(format!("{n} queries on one open connection, plain and with TLS"));
    let (pc, pconn) = plain.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(pconn);
    let (tc, tconn) = tls_cfg.connect(connector.clone()).await?;
    tokio::spawn(tconn);
    let ssl_in_use: bool = tc
        .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
        .await
        .context("reading pg_stat_ssl")?
        .get(0);
    ensure!(ssl_in_use, "the TLS connection is not encrypted according to pg_stat_ssl: TLS was not applied");
    let (mut plain_query, mut tls_query) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let t = Instant::now();
        pc.simple_query("SELECT 1").await?;
        plain_query.push(ms(t.elapsed()));
        let t = Instant::now();
        tc.simple_query("SELECT 1").await?;
        tls_query.push(ms(t.elapsed()));
    }

    let med = |v: &[f64]| poolstress_harness::median(v);
    let connect_overhead = (med(&tls_connect) / med(&plain_connect) - 1.0) * 100.0;
    let query_overhead = (med(&tls_query) / med(&plain_query) - 1.0) * 100.0;
    ctx.record(Metric::lower("plain_connect_p50_ms", med(&plain_connect)));
    ctx.record(Metric::lower("tls_connect_p50_ms", med(&tls_connect)));
    ctx.record(Metric::lower("plain_query_p50_ms", med(&plain_query)));
    ctx.record(Metric::lower("tls_query_p50_ms", med(&tls_query)));
    ctx.note(format!(
        "connect + query p50: plain {:.2} ms, TLS {:.2} ms ({connect_overhead:+.0} %); query on an open connection p50: plain {:.3} ms, TLS {:.3} ms ({query_overhead:+.0} %)",
        med(&plain_connect),
        med(&tls_connect),
        med(&plain_query),
        med(&tls_query)
    ));
    budget_max(&ctx, "tokio-postgres", "tls_query_overhead_pct", query_overhead, 100.0, 400.0, "%")?;
    budget_max(&ctx, "tokio-postgres", "tls_connect_overhead_pct", connect_overhead, 100.0, 400.0, "%")
}
