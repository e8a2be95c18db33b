//! [`MockPool`]: a real async connection pool over fake connections, for
//! layer_1 (no I/O). It has the logic of a real pool — a fixed maximum size,
//! FIFO waiters with an acquire timeout, idle reuse, broken connections
//! discarded on return, close — plus hooks to inject failures (refused
//! creates, broken connections, server errors, latency). Pool adapters wrap
//! it like any other pool; layer_1 tests use it to check the harness and
//! the adapters' accounting without a server.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> anyhow::Result<()> {
//! use std::time::Duration;
//! use poolstress_harness::mock::{MockConfig, MockPool, MockError};
//! let pool = MockPool::new(MockConfig { max_size: 1, acquire_timeout: Duration::from_millis(10), ..Default::default() });
//! let mut a = pool.get().await?;
//! a.query().await?;
//! assert_eq!(pool.status().in_use, 1);
//! // The only connection is out: the next checkout times out.
//! assert!(matches!(pool.get().await, Err(MockError::AcquireTimeout { .. })));
//! drop(a);
//! assert_eq!(pool.status().idle, 1);
//! # Ok(()) }
//! ```

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst},
        Arc,
    },
    time::Duration,
};

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::class::{Classify, ErrorClass};

/// How a [`MockPool`] is sized and how slow its fake server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MockConfig {
    /// Most connections (idle + in use + being created). Default 10.
    pub max_size: usize,
    /// Longest [`MockPool::get`] waits for a slot and creates a connection
    /// in total. Default 1 s.
    pub acquire_timeout: Duration,
    /// Time to create a connection. Default 0 (no await at all).
    pub create_latency: Duration,
    /// Time each [`MockConn::query`] takes. Default 0 (no await at all).
    pub op_latency: Duration,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            max_size: 10,
            acquire_timeout: Duration::from_secs(1),
            create_latency: Duration::ZERO,
            op_latency: Duration::ZERO,
        }
    }
}

/// Why a mock pool operation failed; [`Classify`] maps each to its class.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MockError {
    /// No connection within the acquire timeout (`acquire_timeout`).
    #[error("mock pool: no connection within the acquire timeout of {timeout:?} (max_size {max_size}); raise max_size or the timeout, or lower the load")]
    AcquireTimeout {
        /// The timeout.
        timeout: Duration,
        /// The pool's size limit.
        max_size: usize,
    },
    /// The pool was closed (`pool_closed`).
    #[error("mock pool is closed")]
    Closed,
    /// Creating a connection was refused by an injected fault (`connect_refused`).
    #[error("mock pool: creating a connection was refused (injected fault)")]
    CreateRefused,
    /// The connection is broken (`connection_broken`).
    #[error("mock connection {id} is broken (injected fault)")]
    Broken {
        /// The connection's id.
        id: u64,
    },
    /// The fake server answered with an error (`server_error`).
    #[error("mock server error on connection {id} (injected fault)")]
    ServerError {
        /// The connection's id.
        id: u64,
    },
}

impl Classify for MockError {
    fn class(&self) -> ErrorClass {
        match self {
            MockError::AcquireTimeout { .. } => ErrorClass::AcquireTimeout,
            MockError::Closed => ErrorClass::PoolClosed,
            MockError::CreateRefused => ErrorClass::ConnectRefused,
            MockError::Broken { .. } => ErrorClass::ConnectionBroken,
            MockError::ServerError { .. } => ErrorClass::ServerError,
        }
    }
}

/// A snapshot of the pool's state. Exact when the pool is quiet; while ops
/// run, fields are read one after another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MockStatus {
    /// The size limit.
    pub max_size: usize,
    /// Live connections: idle + in use + being created.
    pub size: usize,
    /// Idle connections.
    pub idle: usize,
    /// Checked-out connections.
    pub in_use: usize,
    /// Callers waiting for a slot.
    pub waiters: usize,
}

/// What happened in the pool so far; each counter says when it increments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct MockCounters {
    /// A connection was created.
    pub created: u64,
    /// A create failed (injected refusal).
    pub create_refused: u64,
    /// A broken connection was discarded (on return or found idle).
    pub discarded_broken: u64,
    /// `get` gave up at the acquire timeout.
    pub acquire_timeouts: u64,
    /// `get` returned a connection.
    pub checkouts: u64,
    /// `query` ran (ok or not).
    pub queries: u64,
    /// The most live connections ever at once (must stay <= max_size).
    pub high_water: u64,
}

#[derive(Default)]
struct Faults {
    refuse_creates: AtomicBool,
    fail_next_creates: AtomicU64,
    break_every: AtomicU64,
    fail_every: AtomicU64,
    create_latency_ns: AtomicU64,
    op_latency_ns: AtomicU64,
    /// Connections created before this generation are broken.
    broken_before: AtomicU64,
}

#[derive(Default)]
struct Counters {
    created: AtomicU64,
    create_refused: AtomicU64,
    discarded_broken: AtomicU64,
    acquire_timeouts: AtomicU64,
    checkouts: AtomicU64,
    queries: AtomicU64,
    high_water: AtomicU64,
}

struct Conn {
    id: u64,
    broken: bool,
}

struct Inner {
    max_size: usize,
    acquire_timeout: Duration,
    slots: Arc<Semaphore>,
    idle: Mutex<VecDeque<Conn>>,
    closed: AtomicBool,
    size: AtomicUsize,
    in_use: AtomicUsize,
    waiters: AtomicUsize,
    next_id: AtomicU64,
    faults: Faults,
    counters: Counters,
}

impl Inner {
    fn is_broken(&self, c: &Conn) -> bool {
        c.broken || c.id < self.faults.broken_before.load(SeqCst)
    }

    fn discard(&self) {
        self.size.fetch_sub(1, SeqCst);
    }
}

/// The mock pool; cheap to clone (clones share the pool). See the module docs.
#[derive(Clone)]
pub struct MockPool {
    inner: Arc<Inner>,
}

struct WaiterGuard<'a>(&'a AtomicUsize);

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

async fn wait(ns: u64) {
    if ns > 0 {
        tokio::time::sleep(Duration::from_nanos(ns)).await;
    }
}

impl MockPool {
    /// A pool with `cfg`, empty (connections are created on demand).
    pub fn new(cfg: MockConfig) -> Self {
        let faults = Faults::default();
        faults.create_latency_ns.store(cfg.create_latency.as_nanos() as u64, SeqCst);
        faults.op_latency_ns.store(cfg.op_latency.as_nanos() as u64, SeqCst);
        MockPool {
            inner: Arc::new(Inner {
                max_size: cfg.max_size,
                acquire_timeout: cfg.acquire_timeout,
                slots: Arc::new(Semaphore::new(cfg.max_size)),
                idle: Mutex::new(VecDeque::new()),
                closed: AtomicBool::new(false),
                size: AtomicUsize::new(0),
                in_use: AtomicUsize::new(0),
                waiters: AtomicUsize::new(0),
                next_id: AtomicU64::new(1),
                faults,
                counters: Counters::default(),
            }),
        }
    }

    /// Checks out a connection: waits (FIFO) for a free slot, reuses an idle
    /// connection (discarding broken ones) or creates one; all within the
    /// acquire timeout.
    pub async fn get(&self) -> Result<MockConn, MockError> {
        let i = &self.inner;
        if i.closed.load(SeqCst) {
            return Err(MockError::Closed);
        }
        let timed_out = || {
            i.counters.acquire_timeouts.fetch_add(1, SeqCst);
            MockError::AcquireTimeout { timeout: i.acquire_timeout, max_size: i.max_size }
        };
        let deadline = tokio::time::Instant::now() + i.acquire_timeout;
        let permit = {
            i.waiters.fetch_add(1, SeqCst);
            let _w = WaiterGuard(&i.waiters);
            match tokio::time::timeout_at(deadline, i.slots.clone().acquire_owned()).await {
                Ok(Ok(p)) => p,
                Ok(Err(_)) => return Err(MockError::Closed),
                Err(_) => return Err(timed_out()),
            }
        };
        let reused = loop {
            let c = i.idle.lock().pop_front();
            match c {
                Some(c) if i.is_broken(&c) => {
                    i.counters.discarded_broken.fetch_add(1, SeqCst);
                    i.discard();
                }
                other => break other,
            }
        };
        let conn = match reused {
            Some(c) => c,
            None => {
                let size = i.size.fetch_add(1, SeqCst) + 1;
                i.counters.high_water.fetch_max(size as u64, SeqCst);
                let created = tokio::time::timeout_at(deadline, wait(i.faults.create_latency_ns.load(SeqCst))).await;
                if created.is_err() {
                    i.discard();
                    return Err(timed_out());
                }
                let refuse = i.faults.refuse_creates.load(SeqCst)
                    || i.faults.fail_next_creates.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1)).is_ok();
                if refuse {
                    i.discard();
                    i.counters.create_refused.fetch_add(1, SeqCst);
                    return Err(MockError::CreateRefused);
                }
                i.counters.created.fetch_add(1, SeqCst);
                Conn { id: i.next_id.fetch_add(1, SeqCst), broken: false }
            }
        };
        i.in_use.fetch_add(1, SeqCst);
        i.counters.checkouts.fetch_add(1, SeqCst);
        Ok(MockConn { pool: self.inner.clone(), conn: Some(conn), _permit: permit })
    }

    /// The pool's state now.
    pub fn status(&self) -> MockStatus {
        let i = &self.inner;
        MockStatus {
            max_size: i.max_size,
            size: i.size.load(SeqCst),
            idle: i.idle.lock().len(),
            in_use: i.in_use.load(SeqCst),
            waiters: i.waiters.load(SeqCst),
        }
    }

    /// The counters so far.
    pub fn counters(&self) -> MockCounters {
        let c = &self.inner.counters;
        MockCounters {
            created: c.created.load(SeqCst),
            create_refused: c.create_refused.load(SeqCst),
            discarded_broken: c.discarded_broken.load(SeqCst),
            acquire_timeouts: c.acquire_timeouts.load(SeqCst),
            checkouts: c.checkouts.load(SeqCst),
            queries: c.queries.load(SeqCst),
            high_water: c.high_water.load(SeqCst),
        }
    }

    /// Closes the pool: waiters and later `get`s fail with
    /// [`MockError::Closed`], idle connections are dropped, checked-out ones
    /// are dropped when returned.
    pub fn close(&self) {
        let i = &self.inner;
        i.closed.store(true, SeqCst);
        i.slots.close();
        let n = std::mem::take(&mut *i.idle.lock()).len();
        i.size.fetch_sub(n, SeqCst);
    }

    /// Whether [`MockPool::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(SeqCst)
    }

    /// Every create fails with [`MockError::CreateRefused`] while `on`
    /// (a server that refuses connections).
    pub fn refuse_creates(&self, on: bool) {
        self.inner.faults.refuse_creates.store(on, SeqCst);
    }

    /// The next `n` creates fail with [`MockError::CreateRefused`].
    pub fn fail_next_creates(&self, n: u64) {
        self.inner.faults.fail_next_creates.store(n, SeqCst);
    }

    /// Breaks every connection that exists now, idle or checked out (a
    /// server restart): their next query fails with [`MockError::Broken`],
    /// idle ones are discarded at checkout, all are discarded on return.
    pub fn break_all(&self) {
        let next = self.inner.next_id.load(SeqCst);
        self.inner.faults.broken_before.fetch_max(next, SeqCst);
    }

    /// Every `n`-th query (pool-wide) breaks its connection and fails with
    /// [`MockError::Broken`]; 0 turns it off.
    pub fn break_every_nth_query(&self, n: u64) {
        self.inner.faults.break_every.store(n, SeqCst);
    }

    /// Every `n`-th query (pool-wide) fails with [`MockError::ServerError`],
    /// the connection stays healthy; 0 turns it off.
    pub fn fail_every_nth_query(&self, n: u64) {
        self.inner.faults.fail_every.store(n, SeqCst);
    }

    /// Sets the time each query takes from now on.
    pub fn set_op_latency(&self, d: Duration) {
        self.inner.faults.op_latency_ns.store(d.as_nanos() as u64, SeqCst);
    }

    /// Sets the time each create takes from now on.
    pub fn set_create_latency(&self, d: Duration) {
        self.inner.faults.create_latency_ns.store(d.as_nanos() as u64, SeqCst);
    }
}

/// A checked-out connection; returns itself to the pool on drop (or is
/// discarded if broken or the pool is closed).
pub struct MockConn {
    pool: Arc<Inner>,
    conn: Option<Conn>,
    _permit: OwnedSemaphorePermit,
}

impl MockConn {
    /// The connection's id (1, 2, ... in creation order): tells a reused
    /// connection from a new one.
    pub fn id(&self) -> u64 {
        self.conn.as_ref().map_or(0, |c| c.id)
    }

    /// One round trip to the fake server: waits the op latency, then applies
    /// the injected faults.
    pub async fn query(&mut self) -> Result<(), MockError> {
        let p = self.pool.clone();
        let c = self.conn.as_mut().expect("connection is present until drop");
        let n = p.counters.queries.fetch_add(1, SeqCst) + 1;
        if p.is_broken(c) {
            c.broken = true;
            return Err(MockError::Broken { id: c.id });
        }
        wait(p.faults.op_latency_ns.load(SeqCst)).await;
        let every = |x: &AtomicU64| {
            let k = x.load(SeqCst);
            k > 0 && n.is_multiple_of(k)
        };
        if every(&p.faults.break_every) {
            c.broken = true;
            return Err(MockError::Broken { id: c.id });
        }
        if every(&p.faults.fail_every) {
            return Err(MockError::ServerError { id: c.id });
        }
        Ok(())
    }

    /// Marks this connection broken (the client noticed a reset); it is
    /// discarded on return.
    pub fn mark_broken(&mut self) {
        if let Some(c) = &mut self.conn {
            c.broken = true;
        }
    }
}

impl Drop for MockConn {
    fn drop(&mut self) {
        let p = &self.pool;
        if let Some(c) = self.conn.take() {
            p.in_use.fetch_sub(1, SeqCst);
            if p.is_broken(&c) {
                p.counters.discarded_broken.fetch_add(1, SeqCst);
                p.discard();
            } else if p.closed.load(SeqCst) {
                p.discard();
            } else {
                p.idle.lock().push_back(c);
            }
        }
        // The permit is released after the connection is back (field drop order).
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn pool(max_size: usize) -> MockPool {
        MockPool::new(MockConfig { max_size, acquire_timeout: 100 * MS, ..Default::default() })
    }

    #[tokio::test(start_paused = true)]
    async fn reuses_idle_connections_and_times_out_when_full() {
        let p = pool(2);
        let a = p.get().await.unwrap();
        let b = p.get().await.unwrap();
        assert_eq!((a.id(), b.id()), (1, 2));
        assert_eq!(p.status(), MockStatus { max_size: 2, size: 2, idle: 0, in_use: 2, waiters: 0 });
        let t = tokio::time::Instant::now();
        let e = p.get().await.err().unwrap();
        assert_eq!(t.elapsed(), 100 * MS, "waited exactly the acquire timeout");
        assert_eq!(e.class(), ErrorClass::AcquireTimeout);
        drop(a);
        assert_eq!(p.status(), MockStatus { max_size: 2, size: 2, idle: 1, in_use: 1, waiters: 0 });
        assert_eq!(p.get().await.unwrap().id(), 1, "the idle connection is reused");
        let c = p.counters();
        assert_eq!((c.created, c.checkouts, c.acquire_timeouts, c.high_water), (2, 3, 1, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_are_served_in_order_and_counted() {
        let p = pool(1);
        let held = p.get().await.unwrap();
        let (p1, p2) = (p.clone(), p.clone());
        let w1 = tokio::spawn(async move { p1.get().await.map(|c| c.id()) });
        tokio::task::yield_now().await;
        let w2 = tokio::spawn(async move { p2.get().await.map(|c| c.id()) });
        tokio::task::yield_now().await;
        assert_eq!(p.status().waiters, 2);
        drop(held);
        assert_eq!(w1.await.unwrap(), Ok(1));
        assert_eq!(w2.await.unwrap(), Ok(1));
        assert_eq!(p.status().waiters, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn injected_faults_have_their_classes() {
        let p = pool(4);
        p.fail_next_creates(2);
        for _ in 0..2 {
            assert_eq!(p.get().await.err().unwrap().class(), ErrorClass::ConnectRefused);
        }
        assert_eq!(p.status().size, 0, "failed creates free their slot");
        let mut c = p.get().await.unwrap();
        c.query().await.unwrap();
        p.fail_every_nth_query(2);
        assert_eq!(c.query().await.unwrap_err().class(), ErrorClass::ServerError);
        p.fail_every_nth_query(0);
        p.break_all();
        assert_eq!(c.query().await.unwrap_err().class(), ErrorClass::ConnectionBroken);
        drop(c);
        assert_eq!(p.status().size, 0, "a broken connection is discarded on return");
        let mut c = p.get().await.unwrap();
        assert_eq!(c.id(), 2, "a new connection after the break");
        p.break_every_nth_query(1);
        assert_eq!(c.query().await.unwrap_err(), MockError::Broken { id: 2 });
        drop(c);
        p.break_every_nth_query(0);
        p.refuse_creates(true);
        assert_eq!(p.get().await.err(), Some(MockError::CreateRefused));
        p.refuse_creates(false);
        let c = p.counters();
        assert_eq!((c.created, c.create_refused, c.discarded_broken, c.queries), (2, 3, 2, 4));
        p.close();
        assert_eq!(p.get().await.err().unwrap().class(), ErrorClass::PoolClosed);
    }

    #[tokio::test(start_paused = true)]
    async fn latency_and_close_wake_waiters() {
        let p = MockPool::new(MockConfig {
            max_size: 1,
            acquire_timeout: 10 * MS,
            create_latency: 20 * MS,
            op_latency: 5 * MS,
        });
        assert_eq!(
            p.get().await.err().unwrap().class(),
            ErrorClass::AcquireTimeout,
            "a create slower than the timeout"
        );
        assert_eq!(p.status().size, 0);
        p.set_create_latency(MS);
        let mut c = p.get().await.unwrap();
        let t = tokio::time::Instant::now();
        c.query().await.unwrap();
        assert_eq!(t.elapsed(), 5 * MS);
        let p2 = p.clone();
        let waiter = tokio::spawn(async move { p2.get().await.err() });
        tokio::task::yield_now().await;
        p.close();
        assert_eq!(waiter.await.unwrap(), Some(MockError::Closed));
        drop(c);
        assert_eq!(p.status().size, 0, "returned to a closed pool: dropped");
    }
}
