//! Load under chaos, accounted for: the op every load scenario runs (a
//! write and a read of the same key on one checkout, the read checked), an
//! independent ledger of what the ops did (cross-checked against the load
//! generator's counts), recovery metrics around a fault, and the recovery
//! invariants every scenario ends with.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure};
use futures::future::BoxFuture;
use parking_lot::Mutex;
use poolstress_fixtures::{
    fault::{analyse, FaultWindow, Recovery, Sample},
    pool::{Checkout, Knob, Op, Pool, PoolError},
};
use poolstress_harness::{
    load::{Limit, LoadError, OpError, OpTimer, Phase},
    metrics::PhaseStats,
    Classify, ErrorClass, Metric, TestCtx,
};

use super::bed::Bed;

/// Keys the load writes start here (the capacity check uses its own range).
const LOAD_KEYS: u64 = 1_000_000;
/// The load generator's counts, of one phase or summed over several.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Ops started.
    pub started: u64,
    /// Succeeded.
    pub ok: u64,
    /// Failed.
    pub errors: u64,
    /// Dropped at the hard stop.
    pub cancelled: u64,
}

impl Counts {
    /// The counts of one phase.
    pub fn of(s: &PhaseStats) -> Self {
        Counts { started: s.started, ok: s.ok, errors: s.errors.total(), cancelled: s.cancelled }
    }

    fn add(&mut self, o: Counts) {
        self.started += o.started;
        self.ok += o.ok;
        self.errors += o.errors;
        self.cancelled += o.cancelled;
    }
}

/// How long an op waits after failing before it returns.
const ERROR_BACKOFF: Duration = Duration::from_millis(5);
/// Keys of the capacity / poison check.
const CHECK_KEYS: u64 = 9_000_000;

/// One finished op.
#[derive(Debug, Clone, Copy)]
pub struct Obs {
    /// When it finished.
    pub at: Instant,
    /// From its start to its end.
    pub latency: Duration,
    /// `None`: it succeeded.
    pub class: Option<ErrorClass>,
}

/// What the ops did, counted by the ops themselves.
#[derive(Default)]
pub struct Ledger {
    started: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    cancelled: AtomicU64,
    wrong: AtomicU64,
    lost: AtomicU64,
    obs: Mutex<Vec<Obs>>,
    wrong_samples: Mutex<Vec<String>>,
}

/// Counts an op as cancelled unless it was finished (an op dropped at the
/// load's hard stop, or by an op bound, never reaches `finish`).
struct Ticket {
    ledger: Arc<Ledger>,
    start: Instant,
    done: bool,
}

impl Ticket {
    fn new(ledger: Arc<Ledger>) -> Self {
        ledger.started.fetch_add(1, Ordering::Relaxed);
        Ticket { ledger, start: Instant::now(), done: false }
    }

    fn finish(mut self, class: Option<ErrorClass>) {
        self.done = true;
        let l = &self.ledger;
        match class {
            None => l.ok.fetch_add(1, Ordering::Relaxed),
            Some(_) => l.failed.fetch_add(1, Ordering::Relaxed),
        };
        let now = Instant::now();
        l.obs.lock().push(Obs { at: now, latency: now - self.start, class });
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.done {
            self.ledger.cancelled.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn op_error(e: PoolError) -> OpError {
    OpError::new(e.class(), e.to_string())
}

/// Offered every checkout after a successful op: returns it to release it,
/// or keeps it (a leak).
pub type Keep = Arc<dyn Fn(Checkout) -> Option<Checkout> + Send + Sync>;

/// The load's op closure type.
pub type LoadOp = Arc<dyn Fn(OpTimer) -> BoxFuture<'static, Result<OpTimer, OpError>> + Send + Sync>;

impl Ledger {
    /// A fresh ledger.
    pub fn new() -> Arc<Self> {
        Arc::new(Ledger::default())
    }

    /// The op: acquire, write `seq` to key `seq`, read it back on the same
    /// checkout (a different answer is a poisoned connection), all within
    /// `bound` (past it the op is dropped mid-flight: a cancellation).
    pub fn op(self: &Arc<Self>, pool: &Pool, bound: Duration, keep: Option<Keep>) -> LoadOp {
        let (pool, ledger) = (pool.clone(), self.clone());
        Arc::new(move |mut t: OpTimer| -> BoxFuture<'static, Result<OpTimer, OpError>> {
            let (pool, ledger, keep) = (pool.clone(), ledger.clone(), keep.clone());
            Box::pin(async move {
                let ticket = Ticket::new(ledger.clone());
                let work = async {
                    let mut c = pool.acquire().await.map_err(op_error)?;
                    t.acquired();
                    let key = LOAD_KEYS + t.seq();
                    let value = t.seq().to_string();
                    c.run(&Op::Write { key, value: value.clone() }).await.map_err(op_error)?;
                    let got = c.run(&Op::Read { key }).await.map_err(op_error)?;
                    if got.value().is_none() {
                        // Not another op's answer: the write was lost (a Redis restart
                        // without persistence loses it, and a reconnecting client may
                        // send the read to the restarted server).
                        ledger.lost.fetch_add(1, Ordering::Relaxed);
                        return Err(OpError::new(
                            ErrorClass::ServerError,
                            format!("write lost: wrote {value:?} to key {key}, read back nothing"),
                        ));
                    }
                    if got.value() != Some(value.as_str()) {
                        let msg = format!("poisoned connection: wrote {value:?} to key {key}, read back {got:?}");
                        ledger.wrong.fetch_add(1, Ordering::Relaxed);
                        let mut s = ledger.wrong_samples.lock();
                        if s.len() < 3 {
                            s.push(msg.clone());
                        }
                        return Err(OpError::new(ErrorClass::Other, msg));
                    }
                    if let Some(keep) = &keep {
                        drop(keep(c));
                    }
                    Ok::<OpTimer, OpError>(t)
                };
                let r = match tokio::time::timeout(bound, work).await {
                    Ok(r) => r,
                    Err(_) => {
                        Err(OpError::new(ErrorClass::OpTimeout, format!("no answer within the op bound of {bound:?}")))
                    }
                };
                ticket.finish(r.as_ref().err().map(|e| e.class));
                if r.is_err() {
                    // A failing client backs off a little, so a fault that fails ops
                    // instantly does not turn the closed loop into a busy loop.
                    tokio::time::sleep(ERROR_BACKOFF).await;
                }
                r
            })
        })
    }

    /// Ops whose read found nothing right after their write (lost writes).
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// Ops that succeeded so far.
    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Every finished op so far.
    pub fn observations(&self) -> Vec<Obs> {
        self.obs.lock().clone()
    }

    /// The outcomes as recovery samples.
    pub fn samples(&self) -> Vec<Sample> {
        self.obs.lock().iter().map(|o| Sample::new(o.at, o.class.is_none())).collect()
    }

    /// Hard: the load generator and the ops agree on every count, and
    /// `started == ok + errors + cancelled` (no op lost or counted twice).
    pub fn check_accounted(&self, what: &str, s: &PhaseStats) -> anyhow::Result<()> {
        self.check_counts(what, Counts::of(s))
    }

    /// [`Ledger::check_accounted`] against counts summed over several phases.
    pub fn check_counts(&self, what: &str, s: Counts) -> anyhow::Result<()> {
        let (started, ok, failed, cancelled) = (
            self.started.load(Ordering::Relaxed),
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.cancelled.load(Ordering::Relaxed),
        );
        ensure!(
            s.started == s.ok + s.errors + s.cancelled,
            "{what}: the load generator counted {} started but {} ok + {} errors + {} cancelled",
            s.started,
            s.ok,
            s.errors,
            s.cancelled
        );
        ensure!(
            (started, ok, failed, cancelled) == (s.started, s.ok, s.errors, s.cancelled),
            "{what}: ops counted themselves {started} started / {ok} ok / {failed} failed / {cancelled} cancelled, \
             the load generator {} / {} / {} / {}: an op was lost or counted twice",
            s.started,
            s.ok,
            s.errors,
            s.cancelled
        );
        ensure!(
            started == ok + failed + cancelled,
            "{what}: {started} ops started, {ok} + {failed} + {cancelled} ended"
        );
        Ok(())
    }

    /// Hard: no op read back something other than what it wrote.
    pub fn check_not_poisoned(&self, what: &str) -> anyhow::Result<()> {
        let n = self.wrong.load(Ordering::Relaxed);
        ensure!(
            n == 0,
            "{what}: {n} ops got another op's answer (poisoned connection): {}",
            self.wrong_samples.lock().join("; ")
        );
        Ok(())
    }

    /// Recovery around `w`, with latency during and after the fault.
    pub fn recovery(&self, w: FaultWindow) -> Recovered {
        let obs = self.observations();
        let samples: Vec<Sample> = obs.iter().map(|o| Sample::new(o.at, o.class.is_none())).collect();
        let recovery = analyse(&samples, &w);
        let p99 = |from: Instant, to: Option<Instant>| {
            let mut v: Vec<Duration> = obs
                .iter()
                .filter(|o| o.class.is_none() && o.at >= from && to.is_none_or(|t| o.at < t))
                .map(|o| o.latency)
                .collect();
            v.sort();
            (!v.is_empty()).then(|| v[((v.len() - 1) as f64 * 0.99).round() as usize])
        };
        Recovered {
            latency_during_p99: p99(w.fault_at, Some(w.heal_at)),
            latency_after_p99: p99(w.heal_at, w.until),
            errors_after_by_class: obs.iter().filter(|o| o.at >= w.heal_at).filter_map(|o| o.class).fold(
                Vec::new(),
                |mut acc: Vec<(ErrorClass, u64)>, c| {
                    match acc.iter_mut().find(|(k, _)| *k == c) {
                        Some(e) => e.1 += 1,
                        None => acc.push((c, 1)),
                    }
                    acc
                },
            ),
            back_to_size: None,
            recovery,
        }
    }

    /// Failures in `[from, to)`, by class.
    pub fn errors_between(&self, from: Instant, to: Instant) -> Vec<ErrorClass> {
        self.obs.lock().iter().filter(|o| o.at >= from && o.at < to).filter_map(|o| o.class).collect()
    }
}

/// How the ops fared around one fault.
#[derive(Debug, Clone)]
pub struct Recovered {
    /// Errors during the fault, first success, time to < 1 % errors.
    pub recovery: Recovery,
    /// p99 of successful ops that finished during the fault.
    pub latency_during_p99: Option<Duration>,
    /// p99 of successful ops that finished after the heal.
    pub latency_after_p99: Option<Duration>,
    /// Failures after the heal, by class.
    pub errors_after_by_class: Vec<(ErrorClass, u64)>,
    /// From the heal until the server saw as many of the test's connections
    /// as before the fault (`None`: not measured or never).
    pub back_to_size: Option<Duration>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl Recovered {
    /// Records `<prefix>errors_during_fault`, `<prefix>first_success_after_heal_ms`,
    /// `<prefix>recovery_ms`, `<prefix>latency_during_p99_ms`,
    /// `<prefix>latency_after_p99_ms`, `<prefix>back_to_size_ms`.
    pub fn record(&self, ctx: &TestCtx, prefix: &str) {
        self.recovery.record(ctx, prefix);
        ctx.record(Metric::lower(format!("{prefix}errors_after_heal"), self.recovery.errors_after_heal as f64));
        if let Some(d) = self.latency_during_p99 {
            ctx.record(Metric::lower(format!("{prefix}latency_during_p99_ms"), ms(d)));
        }
        if let Some(d) = self.latency_after_p99 {
            ctx.record(Metric::lower(format!("{prefix}latency_after_p99_ms"), ms(d)));
        }
        match self.back_to_size {
            Some(d) => ctx.record(Metric::lower(format!("{prefix}back_to_size_ms"), ms(d))),
            None => {
                ctx.note(format!("{prefix}: the server-side connection count was not seen back at its pre-fault size"))
            }
        }
    }

    /// Hard: something succeeded after the heal and the error rate went
    /// back under 1 % before the load ended.
    pub fn check_recovered(&self, what: &str) -> anyhow::Result<()> {
        ensure!(
            self.recovery.first_success_after_heal.is_some(),
            "{what}: no operation succeeded after the fault ended: {:?}",
            self.recovery
        );
        ensure!(
            self.recovery.error_rate_recovered_after.is_some(),
            "{what}: the error rate never went back under 1 % after the fault (errors after it by class: {:?}): {:?}",
            self.errors_after_by_class,
            self.recovery
        );
        Ok(())
    }
}

/// A load phase running in the background.
pub struct LoadRun {
    task: tokio::task::JoinHandle<Result<PhaseStats, LoadError>>,
    /// What its ops did.
    pub ledger: Arc<Ledger>,
    /// When it was started.
    pub started: Instant,
}

/// Starts `phase` against the bed's pool with the checked write/read op.
pub fn start_load(ctx: &TestCtx, bed: &Bed, phase: Phase, bound: Duration) -> LoadRun {
    start_load_with(ctx, bed, phase, bound, None)
}

/// [`start_load`] with a hook that may keep (leak) checkouts.
pub fn start_load_with(ctx: &TestCtx, bed: &Bed, phase: Phase, bound: Duration, keep: Option<Keep>) -> LoadRun {
    let ledger = Ledger::new();
    let op = ledger.op(&bed.pool, bound, keep);
    let c = ctx.clone();
    let task = tokio::spawn(async move { phase.run(&c, move |t| op(t)).await });
    LoadRun { task, ledger, started: Instant::now() }
}

/// Waits until `n` ops have succeeded (the load is really running).
async fn wait_running(ledger: &Ledger, ended: impl Fn() -> bool, n: u64, within: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + within;
    while ledger.ok() < n {
        ensure!(!ended(), "the load ended before {n} operations succeeded");
        if Instant::now() >= end {
            bail!("only {} operations succeeded within {within:?} before the fault (wanted {n})", ledger.ok());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

impl LoadRun {
    /// Waits until `n` ops have succeeded (the load is really running).
    pub async fn running(&self, n: u64, within: Duration) -> anyhow::Result<()> {
        wait_running(&self.ledger, || self.task.is_finished(), n, within).await
    }

    /// Waits for the phase to end; records `load.*` metrics and the timeline.
    pub async fn finish(self, ctx: &TestCtx, what: &str) -> anyhow::Result<(PhaseStats, Arc<Ledger>)> {
        let stats = self.task.await.map_err(|e| anyhow!("the load task failed: {e}"))??;
        stats.record_into(ctx, "load");
        ctx.record(Metric::lower("load.lost_writes", self.ledger.lost() as f64));
        self.ledger.check_accounted(what, &stats)?;
        self.ledger.check_not_poisoned(what)?;
        Ok((stats, self.ledger))
    }
}

/// A closed-loop load in back-to-back phases of `chunk` that runs until
/// stopped (for faults whose length is not known in advance, like a restart).
pub struct ChunkedRun {
    task: tokio::task::JoinHandle<Result<Counts, LoadError>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    /// What its ops did.
    pub ledger: Arc<Ledger>,
}

/// Starts a [`ChunkedRun`] of `workers` against the bed's pool.
pub fn start_chunked(ctx: &TestCtx, bed: &Bed, workers: usize, chunk: Duration, bound: Duration) -> ChunkedRun {
    let ledger = Ledger::new();
    let op = ledger.op(&bed.pool, bound, None);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (c, s) = (ctx.clone(), stop.clone());
    let task = tokio::spawn(async move {
        let mut total = Counts::default();
        let mut i = 0;
        while !s.load(Ordering::Relaxed) {
            let op = op.clone();
            // An op is never cut by the chunk's end before its own bound:
            // a hang is the op's to report, not the load generator's to hide.
            let stats = Phase::closed(format!("load_{i}"), workers, Limit::new(1_000_000, chunk))
                .grace(bound + Duration::from_millis(500))
                .run(&c, move |t| op(t))
                .await?;
            total.add(Counts::of(&stats));
            i += 1;
        }
        Ok(total)
    });
    ChunkedRun { task, stop, ledger }
}

impl ChunkedRun {
    /// Waits until `n` ops have succeeded.
    pub async fn running(&self, n: u64, within: Duration) -> anyhow::Result<()> {
        wait_running(&self.ledger, || self.task.is_finished(), n, within).await
    }

    /// Stops after the current chunk; checks the accounting and records
    /// `load.ok`, `load.errors.total`, `load.cancelled`.
    pub async fn finish(self, ctx: &TestCtx, what: &str) -> anyhow::Result<Arc<Ledger>> {
        self.stop.store(true, Ordering::Relaxed);
        let counts = self.task.await.map_err(|e| anyhow!("the load task failed: {e}"))??;
        ctx.record(Metric::higher("load.ok", counts.ok as f64));
        ctx.record(Metric::lower("load.errors.total", counts.errors as f64));
        ctx.record(Metric::lower("load.cancelled", counts.cancelled as f64));
        ctx.record(Metric::lower("load.lost_writes", self.ledger.lost() as f64));
        self.ledger.check_counts(what, counts)?;
        self.ledger.check_not_poisoned(what)?;
        Ok(self.ledger)
    }
}

/// Polls the server-side count from `since` until it reaches `size`
/// (bounded by `within`), in the background.
pub fn size_probe(bed: &Bed, size: u64, since: Instant, within: Duration) -> tokio::task::JoinHandle<Option<Duration>> {
    let counter = bed.counter();
    tokio::spawn(async move {
        let end = Instant::now() + within;
        loop {
            if counter.count().await.is_ok_and(|n| n >= size) {
                return Some(since.elapsed());
            }
            if Instant::now() >= end {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
}

/// Runs `fut` under a watchdog; a hang is an error naming `what`.
pub async fn watchdog<T>(what: &str, within: Duration, fut: impl std::future::Future<Output = T>) -> anyhow::Result<T> {
    tokio::time::timeout(within, fut).await.map_err(|_| anyhow!("{what} hung for {within:?}"))
}

/// How long one acquire may take in the checks before it counts as a hang.
fn acquire_bound(bed: &Bed) -> Duration {
    bed.cfg.acquire_timeout.unwrap_or(Duration::from_secs(2)) + Duration::from_secs(3)
}

/// Hard: the same pool (never rebuilt) serves `n` pings in a row within
/// `within`; returns how long that took.
pub async fn serves_again(bed: &Bed, n: usize, within: Duration) -> anyhow::Result<Duration> {
    pool_serves_again(&bed.pool, &bed.what(), acquire_bound(bed), n, within).await
}

/// [`serves_again`] for any pool; `bound` limits one ping.
pub async fn pool_serves_again(
    pool: &Pool,
    what: &str,
    bound: Duration,
    n: usize,
    within: Duration,
) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let mut streak = 0;
    let mut failures: Vec<String> = Vec::new();
    // Failures that were waits for a connection (acquire timeouts):
    // when they are all there is, the pool handed nothing out, which is lost
    // capacity, not a failure to reconnect.
    let mut waits = 0;
    while streak < n {
        if t.elapsed() > within {
            let why = if !failures.is_empty() && waits == failures.len() {
                "lost capacity: every attempt waited for a connection the pool never handed out (acquire timeouts, \
                 no connect or I/O error)"
            } else {
                "never reconnected"
            };
            bail!(
                "{what}: {why}: the same pool did not serve {n} operations in a row within {within:?} after the fault \
                 ({} failures; last: {})",
                failures.len(),
                failures.last().map(String::as_str).unwrap_or("none")
            );
        }
        match tokio::time::timeout(bound, pool.run(&Op::Ping)).await {
            Ok(Ok(_)) => streak += 1,
            Ok(Err(e)) => {
                streak = 0;
                waits += usize::from(e.class() == ErrorClass::AcquireTimeout);
                failures.push(format!("[{}] {e}", e.class()));
                tokio::time::sleep(Duration::from_millis(20)).await; // retry pacing, not synchronisation
            }
            Err(_) => {
                streak = 0;
                failures.push(format!("a ping hung for {bound:?}"));
            }
        }
    }
    Ok(t.elapsed())
}

/// Hard: `cap` checkouts can be held at once (capacity not lost), and on
/// every one a write is read back (no poisoned connection). Two rounds:
/// the first may meet a dead connection the pool had not noticed yet
/// (`connection_broken`, discarded); the second must be clean.
pub async fn capacity_intact(bed: &Bed, cap: usize, tag: u64) -> anyhow::Result<()> {
    pool_capacity_intact(&bed.pool, &bed.what(), acquire_bound(bed), cap, tag).await
}

/// [`capacity_intact`] for any pool; `bound` limits one acquire.
pub async fn pool_capacity_intact(
    pool: &Pool,
    what: &str,
    bound: Duration,
    cap: usize,
    tag: u64,
) -> anyhow::Result<()> {
    let mut dead = 0;
    for round in 0..2u64 {
        let mut held = Vec::with_capacity(cap);
        for i in 0..cap {
            match tokio::time::timeout(bound, pool.acquire()).await {
                Ok(Ok(c)) => held.push(c),
                Ok(Err(e)) => bail!(
                    "{what}: lost capacity: only {i} of {cap} checkouts could be held at once after the fault \
                     (the next acquire failed [{}]: {e}; pool status {})",
                    e.class(),
                    status(pool)
                ),
                Err(_) => bail!(
                    "{what}: lost capacity: only {i} of {cap} checkouts could be held at once after the fault \
                     (the next acquire hung for {:?}; pool status {})",
                    bound,
                    status(pool)
                ),
            }
        }
        for (i, c) in held.iter_mut().enumerate() {
            let key = CHECK_KEYS + tag * 1000 + i as u64;
            let want = format!("check-{tag}-{round}-{i}");
            let r = async {
                c.run(&Op::Write { key, value: want.clone() }).await?;
                c.run(&Op::Read { key }).await
            }
            .await;
            match r {
                Ok(got) if got.value() == Some(want.as_str()) => {}
                Ok(got) => bail!(
                    "{what}: poisoned connection: checkout {i} of {cap} read {got:?} right after writing {want:?}"
                ),
                Err(e) if round == 0 && e.class() == ErrorClass::ConnectionBroken => dead += 1,
                Err(e) => bail!(
                    "{what}: poisoned connection: checkout {i} of {cap} failed a write/read after the fault \
                     (round {round}, {dead} dead connections met before) [{}]: {e}",
                    e.class()
                ),
            }
        }
    }
    Ok(())
}

fn status(pool: &Pool) -> String {
    pool.status().map(|s| s.to_string()).unwrap_or_else(|| "not reported".into())
}

/// Hard: the server-side count of the test's connections was never above
/// `max_size` plus the `killed` connections that may linger, and settles at
/// or under `max_size` (pools with a max size only).
pub async fn server_side_bounded(bed: &Bed, max_seen: u64, killed: usize) -> anyhow::Result<()> {
    if !bed.supports(Knob::MaxSize) {
        return Ok(());
    }
    let max = bed.cfg.max_size as u64;
    ensure!(
        max_seen <= max + killed as u64,
        "{}: the server saw {max_seen} of the test's connections at once (max_size {max}, {killed} killed that may linger)",
        bed.what()
    );
    let last = std::sync::atomic::AtomicU64::new(0);
    let settled =
        super::service::wait_until("server-side connections back at max_size", Duration::from_secs(5), || async {
            let n = bed.server_count().await?;
            last.store(n, std::sync::atomic::Ordering::Relaxed);
            Ok(n <= max)
        })
        .await;
    ensure!(
        settled.is_ok(),
        "{}: the server still sees {} of the test's connections 5 s after the checks (max_size {max}): leaked",
        bed.what(),
        last.load(std::sync::atomic::Ordering::Relaxed)
    );
    Ok(())
}

/// The recovery invariants every scenario ends with: the same pool serves
/// again, capacity is intact and no connection is poisoned, no session of the
/// test is left inside a transaction, and the server never saw more than
/// max_size (plus lingering killed) connections.
pub async fn after_fault(ctx: &TestCtx, bed: &Bed, max_seen: u64, killed: usize) -> anyhow::Result<()> {
    ctx.step("checking the same pool serves again");
    let took = serves_again(bed, 5, ctx.profile().pick(Duration::from_secs(3), Duration::from_secs(30))).await?;
    ctx.record(Metric::lower("serves_again_ms", ms(took)));
    ctx.step("checking capacity and connections");
    capacity_intact(bed, bed.cfg.max_size, 1).await?;
    ctx.step("checking no session was left inside a transaction");
    super::checks::no_idle_in_transaction(bed, Duration::from_secs(3)).await?;
    ctx.step("checking the server side");
    server_side_bounded(bed, max_seen, killed).await?;
    ctx.record(Metric::lower("server_connections_max", max_seen as f64));
    Ok(())
}

/// Notes the fault plan with the test's seed, in the Schedule's format, for
/// faults a Schedule cannot drive at this layer (printed on failure).
pub fn note_plan(ctx: &TestCtx, lines: &[String]) {
    ctx.note(format!("chaos schedule (seed {}): {}", ctx.seed(), lines.join("; ")));
    ctx.attach("chaos_plan", lines);
}
