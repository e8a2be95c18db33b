//! Runs phases: spawns workers behind a start gate (so spawning is not
//! measured), releases them together, stops them at their bounds, drops what
//! is still running at the hard stop, and merges what they recorded.

use std::{
    fmt::Display,
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use parking_lot::Mutex;
use tokio::{
    sync::watch,
    task::JoinSet,
    time::{Instant, Sleep},
};

use super::{
    op::{OpDone, OpTimer},
    phase::{Pacing, Phase, Shape},
    recorder::{Merged, Recorder, TimelineAcc},
    schedule::Rate,
    Segment,
};
use crate::{
    class::Classify,
    metrics::{PhaseInputs, PhaseStats},
    TestCtx,
};

/// Why a load run could not produce stats.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A phase's configuration cannot run.
    #[error("load phase \"{phase}\" is invalid: {reason}")]
    InvalidPhase {
        /// The phase.
        phase: String,
        /// What is wrong.
        reason: String,
    },
    /// An op panicked; the phase's other workers were stopped.
    #[error("an op panicked in load phase \"{phase}\": {message} (ops must return errors, not panic; the phase was stopped)")]
    OpPanicked {
        /// The phase.
        phase: String,
        /// The panic's message.
        message: String,
    },
    /// The fleet's shared start time (`--start-at`) had passed by more than
    /// [`START_TOLERANCE`] when the phase was ready to start.
    #[error(
        "load phase \"{phase}\": the shared start time passed {late:.1?} before this process was ready \
         (set --start-at / POOLSTRESS_START_AT later than every process's set-up, e.g. `$(( $(date +%s%3N) + 60000 ))`)"
    )]
    StartMissed {
        /// The phase.
        phase: String,
        /// How long ago the start time was.
        late: Duration,
    },
}

/// How late a process may reach the fleet's shared start time: its first
/// arrivals are then sent late (and show in `send_lag` and latency); later
/// than this, the phase fails with [`LoadError::StartMissed`].
pub const START_TOLERANCE: Duration = Duration::from_secs(1);

/// Ops a worker runs back to back (when they never wait) before it yields
/// to the scheduler, so timers and other tasks still run.
const YIELD_EVERY: u32 = 256;
/// How close to its slot a [`Pacing::Spin`] worker stops sleeping.
const SPIN_WINDOW: Duration = Duration::from_millis(1);

/// Hands the worker's recorder back when the worker ends in any way
/// (returned, aborted at the hard stop, panicked).
struct WorkerGuard {
    rec: Option<Recorder>,
    out: Arc<Mutex<Vec<Recorder>>>,
}

impl Drop for WorkerGuard {
    fn drop(&mut self) {
        if let Some(mut r) = self.rec.take() {
            r.close();
            self.out.lock().push(r);
        }
    }
}

async fn gate(mut rx: watch::Receiver<Option<Instant>>) -> Option<Instant> {
    match rx.wait_for(|v| v.is_some()).await {
        Ok(v) => *v,
        Err(_) => None,
    }
}

async fn closed_worker<F, Fut, T, E>(
    op: Arc<F>,
    rx: watch::Receiver<Option<Instant>>,
    mut guard: WorkerGuard,
    worker: u32,
    workers: u64,
    my_ops: u64,
    max_duration: Duration,
) where
    F: Fn(OpTimer) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    T: OpDone,
    E: Classify + Display,
{
    let Some(t0) = gate(rx).await else { return };
    let deadline = t0 + max_duration;
    let rec = guard.rec.as_mut().expect("recorder is present until drop");
    rec.set_t0(t0);
    let mut start = Instant::now();
    let mut n = 0u64;
    let mut since_yield = 0u32;
    while n < my_ops && start < deadline {
        rec.begin(start);
        let res = op(OpTimer::new(n * workers + worker as u64, worker)).await;
        let end = Instant::now();
        rec.finish(start, start, end, res);
        n += 1;
        since_yield += 1;
        if since_yield == YIELD_EVERY {
            since_yield = 0;
            tokio::task::yield_now().await;
            start = Instant::now();
        } else {
            // One clock read per op: this op's end is the next one's start.
            start = end;
        }
    }
}

async fn pace(mut sleep: Pin<&mut Sleep>, intended: Instant, pacing: Pacing) {
    match pacing {
        Pacing::Timer => {
            sleep.as_mut().reset(intended);
            sleep.await;
        }
        Pacing::Spin => {
            if intended.saturating_duration_since(Instant::now()) > SPIN_WINDOW {
                sleep.as_mut().reset(intended - SPIN_WINDOW);
                sleep.await;
            }
            while Instant::now() < intended {
                tokio::task::yield_now().await;
            }
        }
    }
}

struct OpenParams {
    rate: Rate,
    pacing: Pacing,
    segment: Segment,
    /// This segment's share of the op bound.
    max_ops: u64,
    max_duration: Duration,
    grace: Duration,
}

async fn open_worker<F, Fut, T, E>(
    op: Arc<F>,
    rx: watch::Receiver<Option<Instant>>,
    mut guard: WorkerGuard,
    worker: u32,
    next: Arc<AtomicU64>,
    p: Arc<OpenParams>,
) where
    F: Fn(OpTimer) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    T: OpDone,
    E: Classify + Display,
{
    let Some(t0) = gate(rx).await else { return };
    let hard = t0 + p.max_duration + p.grace;
    let rec = guard.rec.as_mut().expect("recorder is present until drop");
    rec.set_t0(t0);
    let sleep = tokio::time::sleep_until(t0);
    tokio::pin!(sleep);
    let mut since_yield = 0u32;
    loop {
        // The next free slot on the shared timetable (this segment's m-th
        // arrival is the whole timetable's k-th).
        let m = next.fetch_add(1, Ordering::Relaxed);
        if m >= p.max_ops {
            break;
        }
        let k = p.segment.global(m);
        let Some(off) = p.rate.offset(k) else { break };
        if off >= p.max_duration {
            break;
        }
        let intended = t0 + off;
        let mut now = Instant::now();
        if now >= hard {
            break;
        }
        if intended > now {
            pace(sleep.as_mut(), intended, p.pacing).await;
            now = Instant::now();
            since_yield = 0;
        } else {
            since_yield += 1;
            if since_yield == YIELD_EVERY {
                since_yield = 0;
                tokio::task::yield_now().await;
                now = Instant::now();
            }
        }
        rec.begin(now);
        rec.lag(intended, now);
        let res = op(OpTimer::new(k, worker)).await;
        let end = Instant::now();
        rec.finish(intended, now, end, res);
    }
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_string())
}

/// Waits for every task until `hard`, then aborts the rest. Returns the
/// first panic's message (aborting everything on it), whether the hard stop
/// hit, and the tasks' outputs.
async fn join_until<O: 'static>(set: &mut JoinSet<O>, hard: Instant) -> (Option<String>, bool, Vec<O>) {
    let mut panic = None;
    let mut outs = Vec::new();
    let mut hit = false;
    loop {
        match tokio::time::timeout_at(hard, set.join_next()).await {
            Ok(None) => break,
            Ok(Some(Ok(o))) => outs.push(o),
            Ok(Some(Err(e))) => {
                if e.is_panic() && panic.is_none() {
                    panic = Some(panic_message(e.into_panic()));
                    set.abort_all();
                }
            }
            Err(_) => {
                hit = true;
                set.abort_all();
                while let Some(r) = set.join_next().await {
                    if let Ok(o) = r {
                        outs.push(o);
                    }
                }
                break;
            }
        }
    }
    (panic, hit, outs)
}

/// Starts a phase: step, event, the instant it starts and its ms since the
/// test started. `at`: the instant its timetable is anchored at (a shared
/// start time), else now.
fn begin(phase: &Phase, ctx: &TestCtx, at: Option<Instant>) -> (Instant, f64) {
    let seg = if phase.segment.is_whole() { String::new() } else { format!(", segment {}", phase.segment) };
    ctx.step(format!(
        "load phase {}: {}, up to {} ops in {:?}{seg}",
        phase.name,
        phase.shape,
        phase.limit().max_ops,
        phase.limit.max_duration
    ));
    let t0 = at.unwrap_or_else(Instant::now);
    let at_ms = ctx.elapsed().as_secs_f64() * 1e3;
    ctx.event(format!("phase {} start", phase.name));
    (t0, at_ms)
}

/// Wall-clock Unix ms of `t` (an instant of this process's clock).
fn unix_ms(t: Instant) -> f64 {
    let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64() * 1e3;
    let now = Instant::now();
    if t <= now {
        wall - now.duration_since(t).as_secs_f64() * 1e3
    } else {
        wall + t.duration_since(now).as_secs_f64() * 1e3
    }
}

/// Waits for the shared start time `at`; returns the instant it corresponds
/// to (in the past by up to [`START_TOLERANCE`] if this process was late).
async fn wait_for_start(phase: &Phase, ctx: &TestCtx, at: SystemTime) -> Result<Instant, LoadError> {
    let now = Instant::now();
    match at.duration_since(SystemTime::now()) {
        Ok(wait) => {
            ctx.step(format!("load phase {}: waiting {wait:.1?} for the fleet's shared start time", phase.name));
            let t = now + wait;
            tokio::time::sleep_until(t).await;
            Ok(t)
        }
        Err(e) => {
            let late = e.duration();
            if late > START_TOLERANCE {
                return Err(LoadError::StartMissed { phase: phase.name.clone(), late });
            }
            ctx.event(format!("phase {} reached the shared start time {late:.1?} late", phase.name));
            Ok(now.checked_sub(late).unwrap_or(now))
        }
    }
}

fn events_since(ctx: &TestCtx, at_ms: f64) -> Vec<crate::Event> {
    ctx.events().into_iter().filter(|e| e.at_ms >= at_ms).collect()
}

pub(crate) async fn run_phase<F, Fut, T, E>(phase: &Phase, ctx: &TestCtx, op: Arc<F>) -> Result<PhaseStats, LoadError>
where
    F: Fn(OpTimer) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
    T: OpDone,
    E: Classify + Display + Send + 'static,
{
    match phase.shape {
        Shape::Burst => run_burst(phase, ctx, op).await,
        Shape::Closed { workers } => run_workers(phase, ctx, op, workers, None).await,
        Shape::Open { rate, in_flight, pacing } => run_workers(phase, ctx, op, in_flight, Some((rate, pacing))).await,
    }
}

async fn run_workers<F, Fut, T, E>(
    phase: &Phase,
    ctx: &TestCtx,
    op: Arc<F>,
    workers: usize,
    open: Option<(Rate, Pacing)>,
) -> Result<PhaseStats, LoadError>
where
    F: Fn(OpTimer) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
    T: OpDone,
    E: Classify + Display + Send + 'static,
{
    let limit = phase.limit;
    let tl = Arc::new(Mutex::new(TimelineAcc::default()));
    let out = Arc::new(Mutex::new(Vec::with_capacity(workers)));
    let (tx, rx) = watch::channel(None::<Instant>);
    let next = Arc::new(AtomicU64::new(0));
    let segment = phase.segment;
    let params = open.map(|(rate, pacing)| {
        Arc::new(OpenParams {
            rate,
            pacing,
            segment,
            max_ops: segment.share_of(limit.max_ops),
            max_duration: limit.max_duration,
            grace: phase.grace,
        })
    });
    let mut set = JoinSet::new();
    let n = workers as u64;
    for w in 0..workers {
        let guard =
            WorkerGuard { rec: Some(Recorder::new(open.is_some(), phase.bucket, tl.clone())), out: out.clone() };
        let (op, rx) = (op.clone(), rx.clone());
        match &params {
            None => {
                let my_ops = limit.max_ops / n + u64::from((w as u64) < limit.max_ops % n);
                set.spawn(closed_worker(op, rx, guard, w as u32, n, my_ops, limit.max_duration));
            }
            Some(p) => {
                set.spawn(open_worker(op, rx, guard, w as u32, next.clone(), p.clone()));
            }
        }
    }
    drop(rx);
    // Only an open-loop phase takes the shared start time.
    let start_at = if open.is_some() { phase.start_at.or_else(super::fleet::take_start_at) } else { None };
    let anchor = match start_at {
        Some(at) => Some(wait_for_start(phase, ctx, at).await?),
        None => None,
    };
    let (t0, at_ms) = begin(phase, ctx, anchor);
    tx.send_replace(Some(t0));
    let (panic, hit, _) = join_until(&mut set, t0 + limit.max_duration + phase.grace).await;
    if let Some(message) = panic {
        return Err(LoadError::OpPanicked { phase: phase.name.clone(), message });
    }
    let mut m = Merged::new();
    for r in out.lock().drain(..) {
        m.add(r);
    }
    let elapsed = match m.last_end {
        Some(e) if !hit => e.saturating_duration_since(t0),
        _ => Instant::now().saturating_duration_since(t0),
    };
    let (missed, target_rate) = match &params {
        Some(p) => {
            let due = p.rate.due_before(limit.max_duration);
            let window = if limit.max_ops < due {
                p.rate.offset(limit.max_ops).unwrap_or(limit.max_duration)
            } else {
                limit.max_duration
            };
            let mine = p.segment.share_of(due.min(limit.max_ops));
            (mine.saturating_sub(m.started), Some(p.rate.mean_over(window) * p.segment.fraction()))
        }
        None => (0, None),
    };
    let tl = std::mem::take(&mut *tl.lock());
    let inputs = PhaseInputs {
        name: phase.name.clone(),
        shape: phase.shape.to_string(),
        at_ms,
        elapsed,
        bucket: phase.bucket,
        missed,
        target_rate,
        open: open.is_some(),
        events: events_since(ctx, at_ms),
        started_unix_ms: unix_ms(t0),
        segment: (open.is_some() && !segment.is_whole()).then(|| segment.to_string()),
    };
    Ok(PhaseStats::build(inputs, m, tl))
}

/// A burst task's result.
struct Single<E> {
    start: Instant,
    end: Instant,
    res: Result<Acquired, E>,
}

struct Acquired(Option<Instant>);

impl OpDone for Acquired {
    fn acquired_at(&self) -> Option<Instant> {
        self.0
    }
}

async fn run_burst<F, Fut, T, E>(phase: &Phase, ctx: &TestCtx, op: Arc<F>) -> Result<PhaseStats, LoadError>
where
    F: Fn(OpTimer) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
    T: OpDone,
    E: Classify + Display + Send + 'static,
{
    let n = phase.limit.max_ops;
    let (tx, rx) = watch::channel(None::<Instant>);
    let mut set = JoinSet::new();
    for i in 0..n {
        let (op, rx) = (op.clone(), rx.clone());
        set.spawn(async move {
            gate(rx).await?;
            let start = Instant::now();
            let res = op(OpTimer::new(i, i as u32)).await;
            let end = Instant::now();
            Some(Single { start, end, res: res.map(|d| Acquired(d.acquired_at())) })
        });
    }
    drop(rx);
    let (t0, at_ms) = begin(phase, ctx, None);
    tx.send_replace(Some(t0));
    let (panic, hit, outs) = join_until(&mut set, t0 + phase.limit.max_duration + phase.grace).await;
    if let Some(message) = panic {
        return Err(LoadError::OpPanicked { phase: phase.name.clone(), message });
    }
    let mut singles: Vec<Single<E>> = outs.into_iter().flatten().collect();
    singles.sort_by_key(|s| s.end);
    let tl = Arc::new(Mutex::new(TimelineAcc::default()));
    let mut rec = Recorder::new(false, phase.bucket, tl.clone());
    rec.set_t0(t0);
    let last_end = singles.last().map(|s| s.end);
    let finished = singles.len() as u64;
    for s in singles {
        rec.begin(s.start);
        rec.finish(t0, s.start, s.end, s.res);
    }
    // Released but never finished: dropped at the hard stop.
    rec.started += n - finished;
    rec.cancelled += n - finished;
    rec.close();
    let mut m = Merged::new();
    m.add(rec);
    let elapsed = match last_end {
        Some(e) if !hit => e.saturating_duration_since(t0),
        _ => Instant::now().saturating_duration_since(t0),
    };
    let tl = std::mem::take(&mut *tl.lock());
    let inputs = PhaseInputs {
        name: phase.name.clone(),
        shape: phase.shape.to_string(),
        at_ms,
        elapsed,
        bucket: phase.bucket,
        missed: 0,
        target_rate: None,
        open: false,
        events: events_since(ctx, at_ms),
        started_unix_ms: unix_ms(t0),
        segment: None,
    };
    Ok(PhaseStats::build(inputs, m, tl))
}
