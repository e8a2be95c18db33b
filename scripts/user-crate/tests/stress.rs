//! A user's crate: its own small Redis pool, registered with poolstress in
//! one call. scripts/check-user-crate.sh copies this crate outside the
//! workspace, depends on poolstress by path and runs it.

use std::{process::ExitCode, sync::Arc};

use futures::future::BoxFuture;
use poolstress::{
    fixtures::{
        pool::{
            self, redis::driver::aio::MultiplexedConnection, BuildError, Capabilities, Cause, Checkout, Connection,
            Knob, Op, OpOutput, Stage, PoolAdapter, PoolConfig, PoolError, PoolStatus, PoolUnderTest, Redis,
        },
        RedisTarget,
    },
    harness::{Classify, ErrorClass},
    Registry,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

// ---- the user's pool --------------------------------------------------------

struct Shared {
    target: RedisTarget,
    config: PoolConfig,
    prefix: Arc<str>,
    idle: std::sync::Mutex<Vec<MultiplexedConnection>>,
    slots: Arc<Semaphore>,
}

/// At most `max_size` connections; idle ones reused; a connection that broke is dropped.
struct MyPool {
    shared: Arc<Shared>,
}

struct MyConn {
    conn: Option<MultiplexedConnection>,
    broken: bool,
    shared: Arc<Shared>,
    _slot: OwnedSemaphorePermit,
}

impl Drop for MyConn {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take().filter(|_| !self.broken) {
            self.shared.idle.lock().unwrap().push(c);
        }
    }
}

impl PoolUnderTest for MyPool {
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
            let idle = sh.idle.lock().unwrap().pop();
            let conn = match idle {
                Some(c) => c,
                None => pool::redis::connect(&sh.target, &sh.config).await?,
            };
            Ok(Checkout::new(MyConn { conn: Some(conn), broken: false, shared: sh.clone(), _slot: slot }))
        })
    }

    fn status(&self) -> Option<PoolStatus> {
        let sh = &self.shared;
        let idle = sh.idle.lock().unwrap().len();
        let in_use = sh.config.max_size - sh.slots.available_permits();
        Some(PoolStatus { max_size: Some(sh.config.max_size), size: Some(idle + in_use), idle: Some(idle), waiters: None })
    }
}

impl Connection for MyConn {
    fn run<'a>(&'a mut self, op: &'a Op) -> BoxFuture<'a, Result<OpOutput, PoolError>> {
        Box::pin(async move {
            let conn = self.conn.as_mut().expect("present until drop");
            // Cancelled mid-command: the connection is not trusted again.
            self.broken = true;
            let r = pool::redis::run(conn, &self.shared.prefix, op).await;
            self.broken = matches!(&r, Err(e) if matches!(e.class(), ErrorClass::ConnectionBroken | ErrorClass::OpTimeout));
            r
        })
    }
}

// ---- the glue ---------------------------------------------------------------

struct MyAdapter;

impl PoolAdapter for MyAdapter {
    type Service = Redis;

    fn name(&self) -> &str {
        "my-redis-pool"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::basic()
            .with(Knob::AcquireTimeout)
            .with(Knob::ConnectTimeout)
            .with(Knob::OpTimeout)
            .with(Knob::StatusSize)
            .with(Knob::StatusIdle)
    }

    fn build<'a>(
        &'a self,
        cfg: &'a PoolConfig,
        target: &'a RedisTarget,
    ) -> BoxFuture<'a, Result<Box<dyn PoolUnderTest>, BuildError>> {
        Box::pin(async move {
            let shared = Arc::new(Shared {
                target: target.clone(),
                config: cfg.clone(),
                prefix: Arc::from(target.key_prefix.as_str()),
                idle: std::sync::Mutex::new(Vec::new()),
                slots: Arc::new(Semaphore::new(cfg.max_size)),
            });
            Ok(Box::new(MyPool { shared }) as Box<dyn PoolUnderTest>)
        })
    }
}

fn main() -> ExitCode {
    let mut r = Registry::new();
    poolstress::register_pool(&mut r, MyAdapter);
    poolstress::run(r)
}
