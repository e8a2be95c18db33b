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
//! is never handed out again, and its slot goes back; and default timeouts
//! ([`DEFAULT_TIMEOUTS`]) for a caller who sets none.

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
        match op {
            Op::Transaction { key } => Box::pin(redis_transaction(conn, &target.key_prefix, *key)),
            _ => pool::redis::run(conn, &target.key_prefix, op),
        }
    }
}

/// `MULTI`, `INCR`, `EXEC` as three round trips (not one pipeline, as the
/// fixtures send it), so a caller can be cancelled while the connection is
/// in `MULTI`: what a pool must then never hand out again.
#[cfg(feature = "redis")]
async fn redis_transaction(
    conn: &mut <Redis as ZooDriver>::Conn,
    prefix: &str,
    key: u64,
) -> Result<OpOutput, PoolError> {
    use pool::redis::driver::{cmd, from_redis_value, Value};
    let op = |e| PoolError::op(Cause::Redis(e));
    cmd("MULTI").query_async::<Value>(conn).await.map_err(op)?;
    let queued = cmd("INCR").arg(pool::redis::counter_key(prefix, key)).query_async::<Value>(conn).await;
    let exec = match queued {
        Ok(_) => cmd("EXEC").query_async::<Value>(conn).await.map_err(op)?,
        Err(e) => {
            let _ = cmd("DISCARD").query_async::<Value>(conn).await;
            return Err(op(e));
        }
    };
    let (n,): (i64,) = from_redis_value(exec).map_err(|e| PoolError::op(Cause::Other(Box::new(e))))?;
    Ok(OpOutput::Counter(n))
}

#[cfg(feature = "postgres")]
impl ZooDriver for Postgres {
    type Conn = tokio_postgres::Client;

    fn connect(target: &PgTarget, cfg: &PoolConfig) -> BoxFuture<'static, Result<Self::Conn, PoolError>> {
        let (target, cfg) = (target.clone(), cfg.clone());
        Box::pin(async move { pool::pg::connect(&target, &cfg).await })
    }

    fn run<'a>(conn: &'a mut Self::Conn, _: &'a PgTarget, op: &'a Op) -> BoxFuture<'a, Result<OpOutput, PoolError>> {
        match op {
            Op::Transaction { key } => Box::pin(pg_transaction(conn, *key)),
            _ => pool::pg::run(conn, op),
        }
    }
}

/// The fixtures' transaction with an explicit `BEGIN` and `COMMIT` (not
/// tokio-postgres's `Transaction`, whose drop sends a `ROLLBACK` by itself),
/// so a caller cancelled mid-transaction leaves the session in it: what a
/// pool must then never hand out again. A failed statement rolls back.
#[cfg(feature = "postgres")]
async fn pg_transaction(client: &mut tokio_postgres::Client, key: u64) -> Result<OpOutput, PoolError> {
    use tokio_postgres::types::Type;
    let table = pool::pg::KV_TABLE;
    let k = key as i64;
    client.batch_execute("BEGIN").await.map_err(PoolError::op)?;
    let body = async {
        client
            .execute_typed(
                &format!("INSERT INTO {table} (k, n) VALUES ($1, 0) ON CONFLICT (k) DO NOTHING"),
                &[(&k, Type::INT8)],
            )
            .await?;
        let row = client
            .query_typed_one(&format!("SELECT n FROM {table} WHERE k = $1 FOR UPDATE"), &[(&k, Type::INT8)])
            .await?;
        let n: i64 = row.try_get::<_, i64>(0)? + 1;
        client
            .execute_typed(&format!("UPDATE {table} SET n = $2 WHERE k = $1"), &[(&k, Type::INT8), (&n, Type::INT8)])
            .await?;
        Ok::<i64, tokio_postgres::Error>(n)
    };
    match body.await {
        Ok(n) => {
            client.batch_execute("COMMIT").await.map_err(PoolError::op)?;
            Ok(OpOutput::Counter(n))
        }
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(PoolError::op(e))
        }
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
    /// A checkout cancelled mid-transaction (Postgres between `BEGIN` and
    /// `COMMIT`, Redis between `MULTI` and `EXEC`) goes back to idle without
    /// a `ROLLBACK` / `DISCARD`: the session stays in the transaction.
    IdleInTransactionOnCancel,
    /// Declares ping validation but hands idle connections out unchecked: a
    /// connection killed server side while idle fails its caller's op.
    NoValidation,
    /// Creates on a check-then-act race: it counts the open connections,
    /// awaits the connect, then increments, so a burst of acquires on a cold
    /// pool opens more than max_size.
    CreateRacePastMax,
    /// Once a connection broke it never opens a new one: creates fail with
    /// the remembered loss.
    NeverReconnects,
    /// A discarded connection is dropped without closing its socket
    /// (`std::mem::forget`): the server's connections pile up.
    DropsWithoutClose,
    /// Every acquire waits a fixed [`SLOW_ACQUIRE`] more.
    SlowAcquire,
}

/// What [`Defect::SlowAcquire`] adds to every acquire.
pub const SLOW_ACQUIRE: Duration = Duration::from_millis(10);

impl Defect {
    /// Every defect.
    pub const ALL: [Defect; 13] = [
        Defect::LeakOnCancel,
        Defect::DesyncOnCancel,
        Defect::PastMaxAfterFailures,
        Defect::StarvesAfterKills,
        Defect::IgnoresAcquireTimeout,
        Defect::ValidationIgnoresTimeout,
        Defect::LifoWaiters,
        Defect::IdleInTransactionOnCancel,
        Defect::NoValidation,
        Defect::CreateRacePastMax,
        Defect::NeverReconnects,
        Defect::DropsWithoutClose,
        Defect::SlowAcquire,
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
            Defect::IdleInTransactionOnCancel => "idle_in_transaction_on_cancel",
            Defect::NoValidation => "no_validation",
            Defect::CreateRacePastMax => "create_race_past_max",
            Defect::NeverReconnects => "never_reconnects",
            Defect::DropsWithoutClose => "drops_without_close",
            Defect::SlowAcquire => "slow_acquire",
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
            .with_note(Knob::ValidatePing, "always: an idle connection is pinged within the acquire timeout")
            .with_note(Knob::FifoWaiters, "waiters queue on tokio's fair Semaphore")
    }

    fn build<'a>(
        &'a self,
        cfg: &'a PoolConfig,
        target: &'a S::Target,
    ) -> BoxFuture<'a, Result<Box<dyn PoolUnderTest>, BuildError>> {
        Box::pin(async move {
            let regression = match self.defect {
                None => Regression::from_env().map_err(BuildError::invalid)?,
                Some(_) => None,
            };
            let shared = Arc::new(Shared::<S> {
                target: target.clone(),
                cfg: with_defaults(cfg),
                defect: self.defect,
                regression,
                checkouts: AtomicUsize::new(0),
                idle: Mutex::new(Vec::new()),
                slots: Arc::new(Semaphore::new(cfg.max_size)),
                open: AtomicUsize::new(0),
                waiting: AtomicUsize::new(0),
                debt: AtomicUsize::new(0),
                stack: Mutex::new(Vec::new()),
                lost: Mutex::new(None),
            });
            Ok(Box::new(ZooPool { shared }) as Box<dyn PoolUnderTest>)
        })
    }
}

/// Env var: a performance regression for the zoo's *correct* pools
/// (`zoo-postgres`, `zoo-redis`), so the regression gate can be shown to
/// catch one (scripts/check-gate.sh, `bench::gate::*`): see [`Regression`].
pub const REGRESSION_ENV: &str = "POOLSTRESS_ZOO_REGRESSION";

/// A performance regression injected into the zoo's correct pools by
/// [`REGRESSION_ENV`]. Not a defect: every invariant still holds; the pool
/// is only slower, as a release that regressed would be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Regression {
    /// `acquire-1s`: an acquire that times out waiting for a slot returns
    /// only after [`SLOW_TIMEOUT`] (the seed's 100 → 1341 ms acquire-timeout
    /// regression): with a 20 ms timeout the wait goes from 20 ms to 1 s.
    SlowTimeout,
    /// `extra-round-trip`: the idle connection's check pings twice on six
    /// of seven checkouts (2.86 round trips per read instead of 2): about
    /// -30 % throughput where round trips are the cost.
    ExtraRoundTrip,
    /// `double-round-trips`: the idle connection's check pings three times
    /// on every checkout (4 round trips per read instead of 2): about -50 %
    /// throughput where round trips are the cost. The gate's self-test
    /// (`bench::gate::*`) injects this one: on a slow, noisy 2-core runner
    /// a -30 % change measured in quick-profile rounds landed within the
    /// noise of a gate that must stay quiet there.
    DoubleRoundTrips,
}

/// How long a [`Regression::SlowTimeout`] acquire takes to time out.
pub const SLOW_TIMEOUT: Duration = Duration::from_secs(1);

impl Regression {
    /// The regression [`REGRESSION_ENV`] asks for, or an error saying what it takes.
    pub fn from_env() -> Result<Option<Regression>, String> {
        match std::env::var(REGRESSION_ENV) {
            Err(_) => Ok(None),
            Ok(v) => match v.trim() {
                "" | "none" => Ok(None),
                "acquire-1s" => Ok(Some(Regression::SlowTimeout)),
                "extra-round-trip" => Ok(Some(Regression::ExtraRoundTrip)),
                "double-round-trips" => Ok(Some(Regression::DoubleRoundTrips)),
                other => Err(format!(
                    "{REGRESSION_ENV}={other:?}: use acquire-1s, extra-round-trip or double-round-trips (or unset it)"
                )),
            },
        }
    }
}

/// The zoo's default timeouts, for a caller who sets none: every call ends
/// on a silent network too (30 s to wait for a slot and to run a command,
/// 10 s to open a connection).
pub const DEFAULT_TIMEOUTS: (Duration, Duration, Duration) =
    (Duration::from_secs(30), Duration::from_secs(10), Duration::from_secs(30));

fn with_defaults(cfg: &PoolConfig) -> PoolConfig {
    let (acquire, connect, op) = DEFAULT_TIMEOUTS;
    PoolConfig {
        acquire_timeout: cfg.acquire_timeout.or(Some(acquire)),
        connect_timeout: cfg.connect_timeout.or(Some(connect)),
        op_timeout: cfg.op_timeout.or(Some(op)),
        ..cfg.clone()
    }
}

struct Shared<S: ZooDriver> {
    target: S::Target,
    cfg: PoolConfig,
    defect: Option<Defect>,
    /// A performance regression (correct pools only, from [`REGRESSION_ENV`]).
    regression: Option<Regression>,
    /// Checkouts of idle connections so far (ExtraRoundTrip picks six of seven).
    checkouts: AtomicUsize,
    idle: Mutex<Vec<Idle<S>>>,
    slots: Arc<Semaphore>,
    /// Connections open (idle + checked out).
    open: AtomicUsize,
    waiting: AtomicUsize,
    /// StarvesAfterKills: slots owed (forgotten at the next release).
    debt: AtomicUsize,
    /// LifoWaiters: the waiters, the latest on top.
    stack: Mutex<Vec<Arc<tokio::sync::Notify>>>,
    /// NeverReconnects: how the first connection was lost.
    lost: Mutex<Option<String>>,
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
    fn discarded_dead(&self, own_slot: Option<&mut Option<OwnedSemaphorePermit>>, why: &str) {
        if self.defect == Some(Defect::NeverReconnects) {
            self.lost.lock().get_or_insert_with(|| why.to_string());
        }
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
        if sh.defect == Some(Defect::SlowAcquire) {
            tokio::time::sleep(SLOW_ACQUIRE).await; // THE DEFECT: a fixed delay on every acquire
        }
        if sh.defect == Some(Defect::CreateRacePastMax)
            && sh.idle.lock().is_empty()
            && sh.open.load(Ordering::Relaxed) < sh.cfg.max_size
        {
            // THE DEFECT: check (room for one more), await the connect, then
            // count it: every caller that checked before the first connect
            // finished opens one, whatever max_size says.
            let conn = self.connect(started).await?;
            sh.open.fetch_add(1, Ordering::Relaxed);
            return Ok(self.hand_out(conn, None, sh.slots.clone().try_acquire_owned().ok()));
        }
        sh.waiting.fetch_add(1, Ordering::Relaxed);
        let waiting = Waiting(&sh.waiting);
        let slot: BoxFuture<'_, Result<OwnedSemaphorePermit, tokio::sync::AcquireError>> =
            if sh.defect == Some(Defect::LifoWaiters) {
                Box::pin(sh.lifo_slot())
            } else {
                Box::pin(sh.slots.clone().acquire_owned())
            };
        let slot = match sh.cfg.acquire_timeout.filter(|_| sh.defect != Some(Defect::IgnoresAcquireTimeout)) {
            Some(t) => match tokio::time::timeout(t, slot).await {
                Ok(s) => s,
                Err(_) => {
                    if sh.regression == Some(Regression::SlowTimeout) {
                        // THE REGRESSION: the timeout is noticed late.
                        tokio::time::sleep(SLOW_TIMEOUT.saturating_sub(started.elapsed())).await;
                    }
                    return Err(PoolError::new(Stage::Wait, Cause::TimedOut(Some(t))));
                }
            },
            None => slot.await,
        }
        .map_err(|_| PoolError::new(Stage::Wait, Cause::Closed))?;
        drop(waiting);
        let left = |t: Duration| t.saturating_sub(started.elapsed());
        loop {
            let idle = sh.idle.lock().pop();
            let Some(idle) = idle else { break };
            if sh.defect == Some(Defect::NoValidation) {
                // THE DEFECT: declared validation=ping, hands it out unchecked.
                return Ok(self.hand_out(idle.conn, idle.stale, Some(slot)));
            }
            // Counted open until handed out or dropped (a cancelled acquire drops it).
            let mut held = Opened { shared: sh.clone(), idle: Some(idle) };
            let conn = &mut held.idle.as_mut().expect("set above").conn;
            let extra = match sh.regression {
                Some(Regression::ExtraRoundTrip) => {
                    usize::from(!sh.checkouts.fetch_add(1, Ordering::Relaxed).is_multiple_of(7))
                }
                Some(Regression::DoubleRoundTrips) => 2,
                _ => 0,
            };
            let target = &sh.target;
            let check = async move {
                for _ in 0..extra {
                    S::run(conn, target, &Op::Ping).await?; // THE REGRESSION: more round trips
                }
                S::run(conn, target, &Op::Ping).await
            };
            let failed = match sh.cfg.acquire_timeout.filter(|_| sh.defect != Some(Defect::ValidationIgnoresTimeout)) {
                Some(t) => match tokio::time::timeout(left(t), check).await {
                    Ok(Ok(_)) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(_) => Some(format!("the ping timed out after {:?}", left(t))),
                },
                None => check.await.err().map(|e| e.to_string()),
            };
            let Some(why) = failed else {
                let idle = held.idle.take().expect("set above");
                return Ok(self.hand_out(idle.conn, idle.stale, Some(slot)));
            };
            sh.discarded_dead(None, &why);
        }
        let conn = self.connect(started).await?;
        sh.open.fetch_add(1, Ordering::Relaxed);
        Ok(self.hand_out(conn, None, Some(slot)))
    }

    /// Opens a connection within what is left of the acquire timeout.
    async fn connect(&self, started: Instant) -> Result<S::Conn, PoolError> {
        let sh = &self.shared;
        if sh.defect == Some(Defect::NeverReconnects) {
            if let Some(lost) = sh.lost.lock().clone() {
                // THE DEFECT: a lost connection is remembered and never retried.
                return Err(PoolError::new(
                    Stage::Create,
                    Cause::Other(format!("not reconnecting: the connection was lost ({lost})").into()),
                ));
            }
        }
        let connect = S::connect(&sh.target, &sh.cfg);
        match sh.cfg.acquire_timeout {
            Some(t) => tokio::time::timeout(t.saturating_sub(started.elapsed()).max(Duration::from_millis(1)), connect)
                .await
                .map_err(|_| PoolError::new(Stage::Create, Cause::TimedOut(Some(t))))?,
            None => connect.await,
        }
    }

    fn hand_out(&self, conn: S::Conn, stale: Option<OpOutput>, slot: Option<OwnedSemaphorePermit>) -> Checkout {
        Checkout::new(ZooConn {
            conn: Some(conn),
            stale,
            in_flight: false,
            in_transaction: false,
            broken: false,
            shared: self.shared.clone(),
            slot,
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
    /// The command in flight is a transaction.
    in_transaction: bool,
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
        // IdleInTransactionOnCancel (THE DEFECT): a transaction cut short goes
        // back as it is, still in the transaction (no ROLLBACK / DISCARD).
        let idle_in_tx = cut && self.in_transaction && defect == Some(Defect::IdleInTransactionOnCancel);
        let keep =
            !self.broken && (!cut || defect == Some(Defect::DesyncOnCancel) || idle_in_tx) && !sh.slots.is_closed();
        match self.conn.take() {
            Some(conn) if keep => {
                let stale = if cut && !idle_in_tx {
                    Some(OpOutput::Value(Some("stale reply of a cut command".into())))
                } else {
                    self.stale.take()
                };
                sh.idle.lock().push(Idle { conn, stale });
            }
            Some(conn) => {
                sh.open.fetch_sub(1, Ordering::Relaxed);
                if self.broken {
                    sh.discarded_dead(None, "a command on it failed");
                }
                if defect == Some(Defect::DropsWithoutClose) {
                    // THE DEFECT: forgotten, not dropped: its socket stays open.
                    std::mem::forget(conn);
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
            self.in_transaction = matches!(op, Op::Transaction { .. });
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
