//! Your own pool under poolstress, end to end.
//!
//! `TinyPool` stands for the pool your crate ships: a few dozen lines over
//! tokio-postgres (a semaphore for the size limit, a stack of idle clients,
//! an acquire timeout). To put it under every poolstress suite you implement
//! three small traits:
//!
//! - [`PoolAdapter`]: its name, what it supports, how to build it;
//! - [`PoolUnderTest`]: `acquire` (status and close have defaults);
//! - [`Connection`]: `run` an operation — here one line, because
//!   `pool::pg::run` already speaks every operation over a tokio-postgres client.
//!
//! Then register it with one call — every suite that applies to a Postgres
//! pool (conformance, stress, edge cases, chaos at layers 2 and 3,
//! exhaustion, benchmarks, layer_2) — beside a built-in pool for a
//! side-by-side scorecard, and run:
//!
//! ```text
//! cargo run -p poolstress --example user_pool -- --include-tag chaos
//! cargo run -p poolstress --example user_pool -- --include-tag benchmark
//! cargo run -p poolstress --example user_pool -- --list
//! ```
//!
//! Tests appear as `chaos::postgres::<scenario>[tiny-pool]`,
//! `exhaustion::postgres::<case>[tiny-pool]`, `bench::postgres::point_read[tiny-pool]`, ...;
//! those needing a knob TinyPool does not declare (min idle, validation, ...)
//! are listed as skipped with the reason. report.html and summary.md open
//! with the scorecard: tiny-pool beside deadpool-postgres.

use std::{process::ExitCode, sync::Arc};

use futures::future::BoxFuture;
use parking_lot::Mutex;
use poolstress::{
    fixtures::{
        pool::{
            self, pg::driver::Client, BuildError, Capabilities, Cause, Checkout, Connection, Knob, Op, OpOutput,
            PoolAdapter, PoolConfig, PoolError, PoolStatus, PoolUnderTest, Postgres, Stage,
        },
        PgTarget,
    },
    Registry,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

// ---- the user's pool (what your crate already has) -------------------------

struct Shared {
    target: PgTarget,
    config: PoolConfig,
    idle: Mutex<Vec<Client>>,
    slots: Arc<Semaphore>,
}

/// A tiny pool: at most `max_size` clients, idle ones reused (closed ones dropped).
struct TinyPool {
    shared: Arc<Shared>,
}

/// A checked-out client; back to the idle stack on drop unless closed.
struct TinyConn {
    client: Option<Client>,
    shared: Arc<Shared>,
    _slot: OwnedSemaphorePermit,
}

impl Drop for TinyConn {
    fn drop(&mut self) {
        if let Some(c) = self.client.take().filter(|c| !c.is_closed()) {
            self.shared.idle.lock().push(c);
        }
    }
}

// ---- the glue: three small traits ---------------------------------------------

/// Describes TinyPool to poolstress.
struct TinyAdapter;

impl PoolAdapter for TinyAdapter {
    type Service = Postgres;

    fn name(&self) -> &str {
        "tiny-pool"
    }

    fn version(&self) -> String {
        "tiny-pool (example)".into()
    }

    /// Max size and reuse are in `basic()`; declare the rest it really has.
    fn capabilities(&self) -> Capabilities {
        Capabilities::basic()
            .with_note(Knob::AcquireTimeout, "waiting for a slot only")
            .with(Knob::ConnectTimeout)
            .with(Knob::OpTimeout)
            .with_note(Knob::ValidateNever, "drops clients whose connection closed, nothing more")
            .with(Knob::StatusSize)
            .with(Knob::StatusIdle)
    }

    fn build<'a>(
        &'a self,
        cfg: &'a PoolConfig,
        target: &'a PgTarget,
    ) -> BoxFuture<'a, Result<Box<dyn PoolUnderTest>, BuildError>> {
        Box::pin(async move {
            let shared = Arc::new(Shared {
                target: target.clone(),
                config: cfg.clone(),
                idle: Mutex::new(Vec::new()),
                slots: Arc::new(Semaphore::new(cfg.max_size)),
            });
            Ok(Box::new(TinyPool { shared }) as Box<dyn PoolUnderTest>)
        })
    }
}

impl PoolUnderTest for TinyPool {
    fn acquire(&self) -> BoxFuture<'_, Result<Checkout, PoolError>> {
        Box::pin(async move {
            let sh = &self.shared;
            let slot = sh.slots.clone().acquire_owned();
            let slot = match sh.config.acquire_timeout {
                Some(t) => tokio::time::timeout(t, slot)
                    .await
                    .map_err(|_| PoolError::new(Stage::Wait, Cause::TimedOut(Some(t))))?,
                None => slot.await,
            }
            .map_err(|_| PoolError::new(Stage::Wait, Cause::Closed))?;
            let idle = loop {
                match sh.idle.lock().pop() {
                    Some(c) if c.is_closed() => continue,
                    other => break other,
                }
            };
            let client = match idle {
                Some(c) => c,
                // `pg::connect` maps the target and connect/op timeouts, names
                // the connection and spawns its driver task.
                None => pool::pg::connect(&sh.target, &sh.config).await?,
            };
            Ok(Checkout::new(TinyConn { client: Some(client), shared: sh.clone(), _slot: slot }))
        })
    }

    fn status(&self) -> Option<PoolStatus> {
        let sh = &self.shared;
        let idle = sh.idle.lock().len();
        let in_use = sh.config.max_size - sh.slots.available_permits();
        Some(PoolStatus {
            max_size: Some(sh.config.max_size),
            size: Some(idle + in_use),
            idle: Some(idle),
            waiters: None,
        })
    }
}

impl Connection for TinyConn {
    fn run<'a>(&'a mut self, op: &'a Op) -> BoxFuture<'a, Result<OpOutput, PoolError>> {
        Box::pin(async move {
            let client = self.client.as_mut().ok_or_else(|| PoolError::new(Stage::Op, Cause::Closed))?;
            let Some(t) = self.shared.config.op_timeout else { return pool::pg::run(client, op).await };
            // The op timeout is enforced here, on the client: the server's
            // statement_timeout (which `pg::connect` also sets) cannot end a
            // query while the network is silent (poolstress's combo::*::silent
            // cells catch a pool that relies on it alone).
            match tokio::time::timeout(t, pool::pg::run(client, op)).await {
                Ok(r) => r,
                Err(_) => {
                    self.client = None; // its reply may still come: never hand it out again
                    Err(PoolError::new(Stage::Op, Cause::TimedOut(Some(t))))
                }
            }
        })
    }
}

// ---- register and run -------------------------------------------------------

fn main() -> ExitCode {
    let mut r = Registry::new();
    poolstress::register_pool(&mut r, TinyAdapter);
    // A built-in pool beside it, for the side-by-side scorecard.
    poolstress::register_pool(&mut r, pool::DeadpoolPostgres);
    poolstress::run(r)
}
