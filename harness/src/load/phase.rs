//! Load shapes: a [`Phase`] is one shape with its bounds; a [`Plan`] is a
//! sequence of phases (spike, step and soak are plans).

use std::{
    fmt,
    future::Future,
    time::{Duration, SystemTime},
};

use super::{engine, fleet, op::OpDone, schedule::Rate, LoadError, OpTimer, Segment};
use crate::{class::Classify, metrics::PhaseStats, metrics::Report, TestCtx};

/// Every phase's two bounds: it stops after `max_ops` ops or `max_duration`,
/// whichever comes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Most ops the phase starts.
    pub max_ops: u64,
    /// Longest the phase starts new ops for.
    pub max_duration: Duration,
}

impl Limit {
    /// Up to `max_ops` ops within `max_duration`.
    pub fn new(max_ops: u64, max_duration: Duration) -> Self {
        Limit { max_ops, max_duration }
    }
}

/// How an open-loop worker waits for an op's slot on the timetable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pacing {
    /// Tokio's timer: no CPU while waiting, but it wakes up to ~1 ms late
    /// (timer resolution). The lateness counts in latency (it is measured
    /// from the slot) and shows in `send_lag`.
    #[default]
    Timer,
    /// Timer until 1 ms before the slot, then yield-spinning: sub-ms send lag
    /// at the price of a busy CPU while any op is due within 1 ms. Never with
    /// `tokio::time::pause()` (the clock would not advance).
    Spin,
}

/// The load shape of a phase.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    /// `max_ops` ops released at the same instant, one task each; latency is
    /// measured from the release.
    Burst,
    /// `workers` workers each starting its next op when the last one ends.
    Closed {
        /// Concurrent workers.
        workers: usize,
    },
    /// Ops start on a timetable whatever the target does; latency is measured
    /// from each op's slot, so a stall delays (and shows in) every op due
    /// during it. At most `in_flight` ops run at once; arrivals beyond that
    /// queue (and their wait counts).
    Open {
        /// The arrival rate.
        rate: Rate,
        /// Most ops in flight (workers).
        in_flight: usize,
        /// How workers wait for a slot.
        pacing: Pacing,
    },
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shape::Burst => f.write_str("burst"),
            Shape::Closed { workers } => write!(f, "closed loop, {workers} workers"),
            Shape::Open { rate, in_flight, pacing } => {
                write!(f, "open loop, {rate}, up to {in_flight} in flight, {pacing:?} pacing")
            }
        }
    }
}

/// Default most-in-flight of open-loop phases.
pub const DEFAULT_IN_FLIGHT: usize = 64;
/// Default time in-flight ops get after a phase's `max_duration` before they
/// are dropped (counted as cancelled).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);
/// Default timeline bucket.
pub const DEFAULT_BUCKET: Duration = Duration::from_secs(1);

/// One phase of load: a name (used in metric names and messages), a shape
/// and its bounds. It stops by itself: no new ops after `max_ops` or
/// `max_duration`; ops still running `grace` after that are dropped and
/// counted as cancelled.
///
/// ```
/// use std::time::Duration;
/// use poolstress_harness::load::{Limit, Phase, Plan};
/// let s = Duration::from_secs(1);
/// let plan = Plan::new()
///     .then(Phase::closed("warmup", 8, Limit::new(1_000, s)))
///     .then(Phase::open("steady", 2_000.0, 5 * s))
///     .then(Phase::ramp("ramp", 2_000.0, 10_000.0, 5 * s))
///     .then(Phase::burst("burst", 500, s));
/// assert_eq!(plan.phases().len(), 4);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    pub(crate) name: String,
    pub(crate) shape: Shape,
    pub(crate) limit: Limit,
    pub(crate) grace: Duration,
    pub(crate) bucket: Duration,
    pub(crate) segment: Segment,
    pub(crate) start_at: Option<SystemTime>,
}

impl Phase {
    fn new(name: impl Into<String>, shape: Shape, limit: Limit) -> Self {
        // Open loop takes this process's segment of a fleet's arrivals
        // (`--segment`); other shapes run whole on every process.
        let segment = if matches!(shape, Shape::Open { .. }) { fleet::segment() } else { Segment::WHOLE };
        Phase { name: name.into(), shape, limit, grace: DEFAULT_GRACE, bucket: DEFAULT_BUCKET, segment, start_at: None }
    }

    /// `ops` ops at once (one task each, released together); all must end
    /// within `max_duration` (+ grace).
    pub fn burst(name: impl Into<String>, ops: u64, max_duration: Duration) -> Self {
        Phase::new(name, Shape::Burst, Limit::new(ops, max_duration))
    }

    /// `workers` workers in closed loop, within `limit` (the op count is
    /// split evenly between workers).
    pub fn closed(name: impl Into<String>, workers: usize, limit: Limit) -> Self {
        Phase::new(name, Shape::Closed { workers }, limit)
    }

    /// Open loop at a constant `per_s` for `duration` (`per_s * duration`
    /// ops; lower it with [`Phase::max_ops`]), up to
    /// [`DEFAULT_IN_FLIGHT`] in flight.
    pub fn open(name: impl Into<String>, per_s: f64, duration: Duration) -> Self {
        Phase::rate(name, Rate::Constant { per_s }, duration)
    }

    /// Open loop with the rate ramping linearly from `from_per_s` to
    /// `to_per_s` over `over` (the phase's duration).
    pub fn ramp(name: impl Into<String>, from_per_s: f64, to_per_s: f64, over: Duration) -> Self {
        Phase::rate(name, Rate::Ramp { from_per_s, to_per_s, over }, over)
    }

    /// Open loop on any [`Rate`] for `duration`.
    pub fn rate(name: impl Into<String>, rate: Rate, duration: Duration) -> Self {
        let ops = if rate.validate().is_ok() { rate.due_before(duration) } else { 0 };
        Phase::new(
            name,
            Shape::Open { rate, in_flight: DEFAULT_IN_FLIGHT, pacing: Pacing::Timer },
            Limit::new(ops, duration),
        )
    }

    /// Lowers (or sets) the op bound.
    pub fn max_ops(mut self, n: u64) -> Self {
        self.limit.max_ops = n;
        self
    }

    /// Open loop: most ops in flight (default [`DEFAULT_IN_FLIGHT`]). No
    /// effect on other shapes.
    pub fn in_flight(mut self, n: usize) -> Self {
        if let Shape::Open { in_flight, .. } = &mut self.shape {
            *in_flight = n;
        }
        self
    }

    /// Open loop: how workers wait for slots (default [`Pacing::Timer`]).
    pub fn pacing(mut self, p: Pacing) -> Self {
        if let Shape::Open { pacing, .. } = &mut self.shape {
            *pacing = p;
        }
        self
    }

    /// How long in-flight ops may run past `max_duration` before they are
    /// dropped and counted as cancelled (default [`DEFAULT_GRACE`]).
    pub fn grace(mut self, d: Duration) -> Self {
        self.grace = d;
        self
    }

    /// The timeline's bucket width (default 1 s).
    pub fn timeline_bucket(mut self, d: Duration) -> Self {
        self.bucket = d;
        self
    }

    /// The same phase under another name.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its shape.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// Its bounds, for this process: on a segment of a fleet's open-loop
    /// load, `max_ops` is the segment's share of the arrivals the whole
    /// phase has due (within its op bound and duration), so `started +
    /// missed == limit().max_ops` holds on every process.
    pub fn limit(&self) -> Limit {
        match &self.shape {
            Shape::Open { rate, .. } if !self.segment.is_whole() => {
                let due = if rate.validate().is_ok() { rate.due_before(self.limit.max_duration) } else { 0 };
                Limit { max_ops: self.segment.share_of(due.min(self.limit.max_ops)), ..self.limit }
            }
            _ => self.limit,
        }
    }

    /// Open loop: runs this process's segment of the arrivals (default: the
    /// process's `--segment`, else the whole). The timetable, the op bound
    /// ([`Phase::max_ops`]) and the rate stay the whole fleet's; this process
    /// starts arrivals `i - 1`, `i - 1 + n`, ... of it. No effect on other shapes.
    pub fn segment(mut self, segment: Segment) -> Self {
        if matches!(self.shape, Shape::Open { .. }) {
            self.segment = segment;
        }
        self
    }

    /// Its segment ([`Segment::WHOLE`] unless split).
    pub fn segment_of(&self) -> Segment {
        self.segment
    }

    /// Open loop: anchors the timetable at wall-clock `at` (the fleet's
    /// shared start time), waiting until then; a start time that passed over
    /// a second before the phase was ready fails it with
    /// [`LoadError::StartMissed`]. Default: the process's `--start-at`, taken
    /// by its first open-loop phase. No effect on other shapes.
    pub fn start_at(mut self, at: SystemTime) -> Self {
        if matches!(self.shape, Shape::Open { .. }) {
            self.start_at = Some(at);
        }
        self
    }

    pub(crate) fn validate(&self) -> Result<(), LoadError> {
        let bad = |reason: String| Err(LoadError::InvalidPhase { phase: self.name.clone(), reason });
        match &self.shape {
            Shape::Closed { workers: 0 } => return bad("closed loop needs at least 1 worker".into()),
            Shape::Open { in_flight: 0, .. } => return bad("open loop needs in_flight >= 1".into()),
            Shape::Open { rate, .. } => {
                if let Err(e) = rate.validate() {
                    return bad(e);
                }
            }
            _ => {}
        }
        if self.bucket < Duration::from_millis(1) {
            return bad(format!("timeline bucket {:?} is below 1 ms", self.bucket));
        }
        if matches!(self.shape, Shape::Burst) && self.limit.max_ops > 1_000_000 {
            return bad(format!("burst of {} tasks is above 1 000 000; use a closed loop", self.limit.max_ops));
        }
        Ok(())
    }

    /// Runs this phase alone; see [`Plan::run`].
    pub async fn run<F, Fut, T, E>(&self, ctx: &TestCtx, op: F) -> Result<PhaseStats, LoadError>
    where
        F: Fn(OpTimer) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        T: OpDone,
        E: Classify + fmt::Display + Send + 'static,
    {
        self.validate()?;
        engine::run_phase(self, ctx, std::sync::Arc::new(op)).await
    }
}

/// A sequence of phases run back to back with the same op; stats per phase.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    phases: Vec<Phase>,
}

/// The numbers of a spike plan (see [`Plan::spike`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spike {
    /// Rate before and after the spike.
    pub base_per_s: f64,
    /// Rate during the spike.
    pub spike_per_s: f64,
    /// Length of the `baseline` phase.
    pub baseline: Duration,
    /// Length of the `spike` phase.
    pub spike: Duration,
    /// Length of the `recovery` phase.
    pub recovery: Duration,
}

impl Plan {
    /// An empty plan.
    pub fn new() -> Self {
        Plan::default()
    }

    /// Appends a phase.
    pub fn then(mut self, phase: Phase) -> Self {
        self.phases.push(phase);
        self
    }

    /// Applies `f` to every phase (`|p| p.in_flight(256)`).
    pub fn each(mut self, f: impl FnMut(Phase) -> Phase) -> Self {
        self.phases = self.phases.into_iter().map(f).collect();
        self
    }

    /// The phases.
    pub fn phases(&self) -> &[Phase] {
        &self.phases
    }

    /// Open-loop phases `baseline`, `spike`, `recovery`.
    pub fn spike(s: Spike) -> Self {
        Plan::new()
            .then(Phase::open("baseline", s.base_per_s, s.baseline))
            .then(Phase::open("spike", s.spike_per_s, s.spike))
            .then(Phase::open("recovery", s.base_per_s, s.recovery))
    }

    /// Open-loop phases `step_1..step_n`, one per rate, `each` long.
    pub fn step_rate(rates: &[f64], each: Duration) -> Self {
        rates.iter().enumerate().fold(Plan::new(), |p, (i, r)| p.then(Phase::open(format!("step_{}", i + 1), *r, each)))
    }

    /// Closed-loop phases `step_1..step_n`, one per worker count, each within `limit`.
    pub fn step_workers(workers: &[usize], limit: Limit) -> Self {
        workers
            .iter()
            .enumerate()
            .fold(Plan::new(), |p, (i, w)| p.then(Phase::closed(format!("step_{}", i + 1), *w, limit)))
    }

    /// A soak: `windows` back-to-back copies of `phase`, named
    /// `<name>_1..<name>_n`, so leaks show as growth between windows
    /// (see [`crate::metrics::Series::growth_to`]).
    pub fn soak(phase: Phase, windows: usize) -> Self {
        (1..=windows).fold(Plan::new(), |p, i| {
            let name = format!("{}_{i}", phase.name);
            p.then(phase.clone().named(name))
        })
    }

    /// Runs every phase in order with `op` and returns their stats. Each
    /// phase's start is stamped as a test event (`phase <name> start`) and
    /// step; each phase's stats carry the test's events during it.
    ///
    /// `op` gets an [`OpTimer`] and returns `Ok(())`, or `Ok(timer)` after
    /// calling [`OpTimer::acquired`], or an error that knows its
    /// [`crate::ErrorClass`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> anyhow::Result<()> {
    /// use std::time::Duration;
    /// use poolstress_harness::{load::{Limit, OpError, Phase, Plan}, TestCtx};
    /// let ctx = TestCtx::detached("doc");
    /// let report = Plan::new()
    ///     .then(Phase::closed("noop", 2, Limit::new(1_000, Duration::from_secs(1))))
    ///     .run(&ctx, |_t| async { Ok::<_, OpError>(()) })
    ///     .await?;
    /// assert_eq!(report.phase("noop")?.ok, 1_000);
    /// # Ok(()) }
    /// ```
    pub async fn run<F, Fut, T, E>(&self, ctx: &TestCtx, op: F) -> Result<Report, LoadError>
    where
        F: Fn(OpTimer) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        T: OpDone,
        E: Classify + fmt::Display + Send + 'static,
    {
        for p in &self.phases {
            p.validate()?;
        }
        let op = std::sync::Arc::new(op);
        let mut phases = Vec::with_capacity(self.phases.len());
        for p in &self.phases {
            phases.push(engine::run_phase(p, ctx, op.clone()).await?);
        }
        Ok(Report { phases })
    }
}
