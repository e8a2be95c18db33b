//! Getting a connection at all.
//!
//! - `unresolvable_host`: a pool to `poolstress-does-not-exist.invalid`
//!   (`.invalid` is reserved: it never resolves) fails within 6 s with an
//!   error classified `connect_refused` (or, for a pool that reports one
//!   timeout for everything, `acquire_timeout` carrying the lookup failure it
//!   swallowed), naming the pool.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use poolstress_fixtures::pool::{Adapter, Op, PoolError};
use poolstress_harness::{Classify, ErrorClass, Metric, TestCtx};

use crate::kit::{support::ms, NetService, Tune};

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
