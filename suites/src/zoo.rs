//! A zoo of pools: one small correct pool per service, and the same pool with
//! one defect each, the kind that has shipped in released pool crates.
//! Mutation testing for pools: every defect must be caught by a named test
//! whose message names it (`zoo::<service>::<defect>`, in
//! [`crate::selftest::zoo`]), and the correct pools (`zoo-postgres`,
//! `zoo-redis`) must pass every suite, registered through the same one call
//! a user makes ([`crate::register_pool`]).
//!
//! The correct pool, in about a hundred lines, is also an example of what a
//! pool must get right: a FIFO wait for one of `max_size` slots bounded by
//! the acquire timeout, idle connections checked (a ping) before they are
//! handed out, within the same timeout; the op timeout enforced by the pool
//! around every command; a connection whose command failed or was cut short
//! is never handed out again, and its slot goes back.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use parking_lot::Mutex;
use poolstress_fixtures::pool::{
    self, Adapter, BuildError, Capabilities, Cause, Checkout, Connection, Knob, Op, OpOutput, PoolAdapter, PoolConfig,
    PoolError, PoolStatus, PoolUnderTest, Stage,
};
#[cfg(feature = "postgres")]
use poolstress_fixtures::{pool::Postgres, PgTarget};
#[cfg(feature = "redis")]
use poolstress_fixtures::{pool::Redis, RedisTarget};
use poolstress_harness::{Classify, ErrorClass};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A service the zoo's pool can speak to: how to open one connection and run one op.
pub trait ZooDriver: pool::Service {
    /// One driver connection.
    type Conn: Send + 'static;

    /// Opens one connection (no response timeout of the driver's own: the pool enforces it).
    fn connect(target: &Self::Target, cfg: &PoolConfig) -> BoxFuture<'static, Result<Self::Conn, PoolError>>;

    /// Runs `op` on `conn`.
    fn run<'a>(
        conn: &'a mut Self::Conn,
        target: &'a Self::Target,
        op: &'a Op,
    ) -> BoxFuture<'a, Result<OpOutput, PoolError>>;
}

#[cfg(feature = "redis")]
impl ZooDriver for Redis {
    type Conn = pool::redis::driver::aio::MultiplexedConnection;

    fn connect(target: &RedisTarget, cfg: &PoolConfig) -> BoxFuture<'static, Result<Self::Conn, PoolError>> {
        let (target, cfg) = (target.clone(), cfg.clone());
        Box::pin(async move {
            let create = |e| PoolError::new(Stage::Create, e);
            let client = pool::redis::client(&target).map_err(create)?;
            // No response timeout in the driver (redis-rs's default is 500 ms): the pool enforces its own.
            let config = pool::redis::async_config(&PoolConfig { op_timeout: None, ..cfg }).set_response_timeout(None);
            let mut conn = client.get_multiplexed_async_connection_with_config(&config).await.map_err(create)?;
            pool::redis::set_name(&mut conn, &target.client_name).await.map_err(create)?;
            Ok(conn)
        })
    }

    fn run<'a>(
        conn: &'a mut Self::Conn,
        target: &'a RedisTarget,
        op: &'a Op,
    ) -> BoxFuture<'a, Result<OpOutput, PoolError>> {
        pool::redis::run(conn, &target.key_prefix, op)
    }
}

#[cfg(feature = "postgres")]
impl ZooDriver for Postgres {
    type Conn = tokio_postgres::Client;

    fn connect(target: &PgTarget, cfg: &PoolConfig) -> BoxFuture<'static, Result<Self::Conn, PoolError>> {
        let (target, cfg) = (target.clone(), cfg.clone());
        Box::pin(async move { pool::pg::connect(&target, &cfg).await })
    }

    fn run<'a>(conn: &'a mut Self::Conn, _: &'a PgTarget, op: &'a Op) -> BoxFuture<'a, Result<OpOutput, PoolError>> {
        pool::pg::run(conn, op)
    }
}

/// One defect, the only thing a zoo pool gets wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Defect {
    /// A checkout dropped while its command runs (the caller was cancelled)
    /// forgets its slot: capacity shrinks with every cancellation.
    LeakOnCancel,
    /// A connection whose command was cut short is kept, and its next read
    /// answers with the cut command's reply (a reply desync).
    DesyncOnCancel,
    /// A connection that broke gives its slot back twice: after failures the
    /// pool hands out more than max_size.
    PastMaxAfterFailures,
    /// A connection that broke never gives its slot back: waiters starve
    /// once enough connections were killed.
    StarvesAfterKills,
    /// The wait for a slot has no timeout.
    IgnoresAcquireTimeout,
    /// The check of an idle connection (a ping) runs outside the acquire
    /// timeout and has none of its own: a silent server hangs the acquire.
    ValidationIgnoresTimeout,
    /// Callers waiting for a slot are served last come, first served.
    LifoWaiters,
}

impl Defect {
    /// Every defect.
    pub const ALL: [Defect; 7] = [
        Defect::LeakOnCancel,
        Defect::DesyncOnCancel,
        Defect::PastMaxAfterFailures,
        Defect::StarvesAfterKills,
        Defect::IgnoresAcquireTimeout,
        Defect::ValidationIgnoresTimeout,
        Defect::LifoWaiters,
    ];

    /// The name in pool and test names.
    pub fn name(self) -> &'static str {
        match self {
            Defect::LeakOnCancel => "leak_on_cancel",
            Defect::DesyncOnCancel => "desync_on_cancel",
            Defect::PastMaxAfterFailures => "past_max_after_failures",
            Defect::StarvesAfterKills => "starves_after_kills",
            Defect::IgnoresAcquireTimeout => "ignores_acquire_timeout",
            Defect::ValidationIgnoresTimeout => "validation_ignores_timeout",
            Defect::LifoWaiters => "lifo_waiters",
        }
    }
}

/// The zoo's pool as an adapter: correct (`defect` `None`) or with one defect.
pub struct ZooAdapter<S: ZooDriver> {
    name: String,
    defect: Option<Defect>,
    _s: std::marker::PhantomData<fn() -> S>,
}

impl<S: ZooDriver> ZooAdapter<S> {
    /// The correct pool: `zoo-<service>`.
    pub fn correct() -> Adapter<S> {
        Adapter::new(ZooAdapter::<S> { name: format!("zoo-{}", S::NAME), defect: None, _s: Default::default() })
    }

    /// The pool with `defect`: `zoo-<service>+<defect>`.
    pub fn with(defect: Defect) -> Adapter<S> {
        Adapter::new(ZooAdapter::<S> {
            name: format!("zoo-{}+{}", S::NAME, defect.name()),
            defect: Some(defect),
            _s: Default::default(),
        })
    }
}

impl<S: ZooDriver> PoolAdapter for ZooAdapter<S> {
    type Service = S;

    fn name(&self) -> &str {
        &self.name
    }

    fn version(&self) -> String {
        format!("poolstress zoo {}", env!("CARGO_PKG_VERSION"))
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::basic()
            .with(Knob::AcquireTimeout)
            .with(Knob::ConnectTimeout)
            .with(Knob::OpTimeout)
            .with(Knob::StatusSize)
            .with(Knob::StatusIdle)
            .with(Knob::StatusWaiters)
            .with_note(Knob::FifoWaiters, "waiters queue on tokio's fair Semaphore")
    }

    fn build<'a>(
        &'a self,
        cfg: &'a PoolConfig,
        target: &'a S::Target,
    ) -> BoxFuture<'a, Result<Box<dyn PoolUnderTest>, BuildError>> {
        Box::pin(async move {
            let shared = Arc::new(Shared::<S> {
                target: target.clone(),
                cfg: cfg.clone(),
                defect: self.defect,
                idle: Mutex::new(Vec::new()),
                slots: Arc::new(Semaphore::new(cfg.max_size)),
                open: AtomicUsize::new(0),
                waiting: AtomicUsize::new(0),
                debt: AtomicUsize::new(0),
                stack: Mutex::new(Vec::new()),
            });
            Ok(Box::new(ZooPool { shared }) as Box<dyn PoolUnderTest>)
        })
    }
}

struct Shared<S: ZooDriver> {
    target: S::Target,
    cfg: PoolConfig,
    defect: Option<Defect>,
    idle: Mutex<Vec<Idle<S>>>,
    slots: Arc<Semaphore>,
    /// Connections open (idle + checked out).
    open: AtomicUsize,
    waiting: AtomicUsize,
    /// StarvesAfterKills: slots owed (forgotten at the next release).
    debt: AtomicUsize,
    /// LifoWaiters: the waiters, the latest on top.
    stack: Mutex<Vec<Arc<tokio::sync::Notify>>>,
}

struct Idle<S: ZooDriver> {
    conn: S::Conn,
    /// DesyncOnCancel: the reply left on the connection by a cut command.
    stale: Option<OpOutput>,
}

impl<S: ZooDriver> Shared<S> {
    /// LifoWaiters: a slot at once if one is free, else wait on top of the
    /// stack; a release wakes the waiter on top (the latest).
    async fn lifo_slot(&self) -> Result<OwnedSemaphorePermit, tokio::sync::AcquireError> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Ok(p);
        }
        let me = Arc::new(tokio::sync::Notify::new());
        self.stack.lock().push(me.clone());
        let _off = OffStack { stack: &self.stack, me: me.clone() };
        loop {
            me.notified().await;
            if let Ok(p) = self.slots.clone().try_acquire_owned() {
                return Ok(p);
            }
        }
    }

    /// LifoWaiters: after a slot came back, wakes the latest waiter.
    fn wake_latest(&self) {
        if let Some(top) = self.stack.lock().last() {
            top.notify_one();
        }
    }

    /// A dead connection was thrown away (its slot, if it had one, goes back
    /// when its checkout's permit drops): the two defects about it act here.
    fn discarded_dead(&self, own_slot: Option<&mut Option<OwnedSemaphorePermit>>) {
        match self.defect {
            Some(Defect::PastMaxAfterFailures) => self.slots.add_permits(1),
            Some(Defect::StarvesAfterKills) => match own_slot {
                Some(slot) => std::mem::forget(slot.take()),
                None => {
                    self.debt.fetch_add(1, Ordering::Relaxed);
                }
            },
            _ => {}
        }
    }
}

/// An idle connection taken for a check: counted open until handed out,
/// uncounted if dropped (the check failed, or the acquire was cancelled).
struct Opened<S: ZooDriver> {
    shared: Arc<Shared<S>>,
    idle: Option<Idle<S>>,
}

impl<S: ZooDriver> Drop for Opened<S> {
    fn drop(&mut self) {
        if self.idle.take().is_some() {
            self.shared.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Takes a LIFO waiter off the stack when it leaves (served, timed out, cancelled).
struct OffStack<'a> {
    stack: &'a Mutex<Vec<Arc<tokio::sync::Notify>>>,
    me: Arc<tokio::sync::Notify>,
}

impl Drop for OffStack<'_> {
    fn drop(&mut self) {
        self.stack.lock().retain(|n| !Arc::ptr_eq(n, &self.me));
    }
}

struct ZooPool<S: ZooDriver> {
    shared: Arc<Shared<S>>,
}

struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<S: ZooDriver> ZooPool<S> {
    /// Takes a slot, then an idle connection checked with a ping or a new
    /// one: all within the acquire timeout (the defects step outside it).
    async fn checkout(&self) -> Result<Checkout, PoolError> {
        let sh = &self.shared;
        let started = Instant::now();
        sh.waiting.fetch_add(1, Ordering::Relaxed);
        let waiting = Waiting(&sh.waiting);
        let slot: BoxFuture<'_, Result<OwnedSemaphorePermit, tokio::sync::AcquireError>> =
            if sh.defect == Some(Defect::LifoWaiters) {
                Box::pin(sh.lifo_slot())
            } else {
                Box::pin(sh.slots.clone().acquire_owned())
            };
        let slot = match sh.cfg.acquire_timeout.filter(|_| sh.defect != Some(Defect::IgnoresAcquireTimeout)) {
            Some(t) => tokio::time::timeout(t, slot)
                .await
                .map_err(|_| PoolError::new(Stage::Wait, Cause::TimedOut(Some(t))))?,
            None => slot.await,
        }
        .map_err(|_| PoolError::new(Stage::Wait, Cause::Closed))?;
        drop(waiting);
        let left = |t: Duration| t.saturating_sub(started.elapsed());
        loop {
            let idle = sh.idle.lock().pop();
            let Some(idle) = idle else { break };
            // Counted open until handed out or dropped (a cancelled acquire drops it).
            let mut held = Opened { shared: sh.clone(), idle: Some(idle) };
            let conn = &mut held.idle.as_mut().expect("set above").conn;
            let check = S::run(conn, &sh.target, &Op::Ping);
            let ok = match sh.cfg.acquire_timeout.filter(|_| sh.defect != Some(Defect::ValidationIgnoresTimeout)) {
                Some(t) => matches!(tokio::time::timeout(left(t), check).await, Ok(Ok(_))),
                None => check.await.is_ok(),
            };
            if ok {
                let idle = held.idle.take().expect("set above");
                return Ok(self.hand_out(idle.conn, idle.stale, slot));
            }
            sh.discarded_dead(None);
        }
        let connect = S::connect(&sh.target, &sh.cfg);
        let conn = match sh.cfg.acquire_timeout {
            Some(t) => tokio::time::timeout(left(t).max(Duration::from_millis(1)), connect)
                .await
                .map_err(|_| PoolError::new(Stage::Create, Cause::TimedOut(Some(t))))??,
            None => connect.await?,
        };
        sh.open.fetch_add(1, Ordering::Relaxed);
        Ok(self.hand_out(conn, None, slot))
    }

    fn hand_out(&self, conn: S::Conn, stale: Option<OpOutput>, slot: OwnedSemaphorePermit) -> Checkout {
        Checkout::new(ZooConn {
            conn: Some(conn),
            stale,
            in_flight: false,
            broken: false,
            shared: self.shared.clone(),
            slot: Some(slot),
        })
    }
}

impl<S: ZooDriver> PoolUnderTest for ZooPool<S> {
    fn acquire(&self) -> BoxFuture<'_, Result<Checkout, PoolError>> {
        Box::pin(self.checkout())
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let sh = &self.shared;
            // Waiters and later acquires fail with Closed; idle connections
            // close now, checked-out ones when they come back.
            sh.slots.close();
            let idle: Vec<Idle<S>> = std::mem::take(&mut *sh.idle.lock());
            sh.open.fetch_sub(idle.len(), Ordering::Relaxed);
            drop(idle);
        })
    }

    fn status(&self) -> Option<PoolStatus> {
        let sh = &self.shared;
        Some(PoolStatus {
            max_size: Some(sh.cfg.max_size),
            size: Some(sh.open.load(Ordering::Relaxed)),
            idle: Some(sh.idle.lock().len()),
            waiters: Some(sh.waiting.load(Ordering::Relaxed)),
        })
    }
}

struct ZooConn<S: ZooDriver> {
    conn: Option<S::Conn>,
    stale: Option<OpOutput>,
    /// A command was started and has not finished (the caller dropped it).
    in_flight: bool,
    broken: bool,
    shared: Arc<Shared<S>>,
    slot: Option<OwnedSemaphorePermit>,
}

impl<S: ZooDriver> Drop for ZooConn<S> {
    fn drop(&mut self) {
        let sh = &self.shared;
        let defect = sh.defect;
        let cut = self.in_flight;
        if cut && defect == Some(Defect::LeakOnCancel) {
            std::mem::forget(self.slot.take());
        }
        let keep = !self.broken && (!cut || defect == Some(Defect::DesyncOnCancel)) && !sh.slots.is_closed();
        match self.conn.take() {
            Some(conn) if keep => {
                let stale = if cut {
                    Some(OpOutput::Value(Some("stale reply of a cut command".into())))
                } else {
                    self.stale.take()
                };
                sh.idle.lock().push(Idle { conn, stale });
            }
            Some(_) => {
                sh.open.fetch_sub(1, Ordering::Relaxed);
                if self.broken {
                    sh.discarded_dead(None);
                }
            }
            None => {}
        }
        if defect == Some(Defect::StarvesAfterKills)
            && self.slot.is_some()
            && sh.debt.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| d.checked_sub(1)).is_ok()
        {
            std::mem::forget(self.slot.take());
        }
        if defect == Some(Defect::LifoWaiters) {
            drop(self.slot.take());
            sh.wake_latest();
        }
    }
}

impl<S: ZooDriver> Connection for ZooConn<S> {
    fn run<'a>(&'a mut self, op: &'a Op) -> BoxFuture<'a, Result<OpOutput, PoolError>> {
        Box::pin(async move {
            if self.in_flight {
                // The last command was cut short: its reply may still come.
                // The correct pool never hands this connection out again.
                self.broken = self.shared.defect != Some(Defect::DesyncOnCancel);
                if !self.broken {
                    self.stale = Some(OpOutput::Value(Some("stale reply of a cut command".into())));
                }
            }
            if let Some(stale) = self.stale.take() {
                if matches!(op, Op::Read { .. }) {
                    return Ok(stale);
                }
                self.stale = Some(stale);
            }
            let conn = self.conn.as_mut().expect("present until drop");
            self.in_flight = true;
            let run = S::run(conn, &self.shared.target, op);
            let r = match self.shared.cfg.op_timeout {
                Some(t) => match tokio::time::timeout(t, run).await {
                    Ok(r) => r,
                    Err(_) => Err(PoolError::new(Stage::Op, Cause::TimedOut(Some(t)))),
                },
                None => run.await,
            };
            self.in_flight = false;
            if let Err(e) = &r {
                self.broken = matches!(
                    e.class(),
                    ErrorClass::ConnectionBroken
                        | ErrorClass::OpTimeout
                        | ErrorClass::ConnectRefused
                        | ErrorClass::Other
                );
            }
            r
        })
    }
}
