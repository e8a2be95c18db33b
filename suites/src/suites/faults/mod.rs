//! The FailureInjector proven against real servers: every proxy fault with a
//! real client (redis-rs, tokio-postgres), worker kills on both sides, server
//! faults through the lifecycle, chaos schedules (TOML) with recovery metrics,
//! healing after a panic or a runtime shutdown, and the proxy's overhead.
//!
//! All are tagged `chaos` (exclusive: they stop, pause and slow shared
//! servers), `layer_3` and their service; the overhead benchmark is tagged
//! `benchmark`.

#[cfg(all(feature = "postgres", feature = "redis"))]
mod both;
#[cfg(feature = "postgres")]
mod pg;
#[cfg(feature = "redis")]
mod redis;

use std::{
    io,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context};
use parking_lot::Mutex;
use poolstress_fixtures::{
    fault::{
        analyse, ChaosEnv, FaultKind, FaultProxy, FaultSpec, FaultWindow, Sample, Schedule, ServerFaults, Victims,
    },
    service,
};
use poolstress_harness::{tag, Metric, Registry, TestCtx};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Registers the fault suite for the services compiled in (the healing
/// checks across both servers need both).
pub fn register(r: &mut Registry) {
    #[cfg(feature = "redis")]
    redis::register(r);
    #[cfg(feature = "postgres")]
    pg::register(r);
    #[cfg(all(feature = "postgres", feature = "redis"))]
    both::register(r);
}

// ---------------------------------------------------------------- helpers

/// The io error kind somewhere in `e`'s source chain.
fn io_kind(e: &(dyn std::error::Error + 'static)) -> Option<io::ErrorKind> {
    let mut cur = Some(e);
    while let Some(x) = cur {
        if let Some(io) = x.downcast_ref::<io::Error>() {
            return Some(io.kind());
        }
        cur = x.source();
    }
    None
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Waits for `cond` with a deadline (never a fixed sleep as synchronisation).
async fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while !cond() {
        if Instant::now() >= deadline {
            bail!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}
