//! Getting a connection at all.
//!
//! - `unresolvable_host`: a pool to `poolstress-does-not-exist.invalid`
//!   (`.invalid` is reserved: it never resolves) fails within 6 s with an
//!   error classified `connect_refused` (or, for a pool that reports one
//!   timeout for everything, `acquire_timeout` carrying the lookup failure it
//!   swallowed), naming the pool.
//! - `tls_overhead[tokio-postgres]`: 50 connect-and-query ops and 50 queries
//!   on one connection, with TLS and without, straight on tokio-postgres
//!   (no adapter speaks TLS); overhead budget 100 %. Skipped at run time when
//!   the server has no TLS.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use poolstress_fixtures::{
    pool::{Adapter, Op, PoolError},
    service::{self, pg_target_config},
};
use poolstress_harness::{tag, Classify, ErrorClass, Metric, Registry, TestCtx};
use tokio_postgres::config::SslMode;

use super::tls;
use crate::kit::{
    support::{budget_max, ms},
    NetService, Tune,
};

/// Reserved by RFC 6761: never resolves, on any resolver.
pub(super) const UNRESOLVABLE: &str = "poolstress-does-not-exist.invalid";

pub(super) async fn unresolvable_host<S: NetService>(ctx: TestCtx, a: Adapter<S>) -> anyhow::Result<()> {
    let bound = Duration::from_secs(6);
    ctx.step(format!("providing a {} target", S::NAME));
    let fx = S::provide(&ctx).await?;
    let target = S::with_host(&fx.target, UNRESOLVABLE);
    let cfg = Tune::new(&a.capabilities(), 2)
        .acquire_timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(2))
        .done();
    let name = a.name();

    ctx.step(format!("a pool to {UNRESOLVABLE}"));
    let started = Instant::now();
    let attempt = tokio::time::timeout(Duration::from_secs(30), async {
        match a.build(&cfg, &target).await {
            // Pools that connect (or prepare the target) while being built fail here.
            Err(e) => Err((e.class(), format!("building failed: {e}"), None)),
            Ok(pool) => match pool.run(&Op::Ping).await {
                Ok(_) => Ok(()),
                Err(e) => Err((e.class(), e.to_string(), Some(e))),
            },
        }
    })
    .await;
    let took = started.elapsed();
    ctx.record(Metric::lower("failed_after_ms", ms(took)));
    let (class, message, err) = match attempt {
        Err(_) => bail!("{name}: a pool to {UNRESOLVABLE} neither failed nor connected within 30 s"),
        Ok(Ok(())) => bail!("{name}: a pool to {UNRESOLVABLE} answered a ping: the name resolved"),
        Ok(Err(x)) => x,
    };
    ctx.note(format!("{name}: failed after {took:?} [{class}]: {message}"));
    ensure!(took <= bound, "{name}: a pool to {UNRESOLVABLE} took {took:?} to fail (bound {bound:?}): {message}");
    match err {
        Some(e) => check_error(name, &e)?,
        None => {
            // Adapter::build prepares the target before the pool is built (Postgres: the schema set-up
            // connection), so for Postgres this is the fixture's connect failing, not the pool's.
            ctx.note(format!(
                "{name}: the error came while building (the target's preparation or the pool's eager connect)"
            ));
            ensure!(
                class == ErrorClass::ConnectRefused,
                "{name}: building a pool to {UNRESOLVABLE} failed with [{class}], expected connect_refused: {message}"
            )
        }
    }
    Ok(())
}

/// The error of an acquire or op against an unresolvable host must say so:
/// `connect_refused` (no connection could be had), or an acquire timeout
/// that carries the connection error the pool saw meanwhile.
fn check_error(name: &str, e: &PoolError) -> anyhow::Result<()> {
    match e.class() {
        ErrorClass::ConnectRefused => Ok(()),
        ErrorClass::AcquireTimeout if e.detail().is_some() => Ok(()),
        ErrorClass::AcquireTimeout => bail!(
            "{name}: an acquire timeout that does not say why no connection could be opened (no connection error in it): {e}"
        ),
        c => bail!("{name}: the error is classified {c}, expected connect_refused: {e}"),
    }
}

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
