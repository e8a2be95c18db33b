//! The per-worker recorder: the only code on the per-op path. Plain fields,
//! no locks, no allocation after warm-up (histograms grow a few times to fit
//! the largest value); per-second timeline buckets are merged into a shared
//! map once per bucket per worker, not per op.

use std::{collections::BTreeMap, fmt::Display, sync::Arc, time::Duration};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::op::OpDone;
use crate::class::{Classify, ErrorClass};

/// Significant figures of per-phase latency histograms (0.1 % resolution).
pub(crate) const SIGFIG: u8 = 3;
/// Significant figures of per-second timeline histograms (1 % resolution).
pub(crate) const TIMELINE_SIGFIG: u8 = 2;
/// Error messages kept per class and phase, for reports.
pub(crate) const SAMPLES_PER_CLASS: usize = 3;
const CLASSES: usize = ErrorClass::ALL.len();

pub(crate) fn histogram(sigfig: u8) -> Histogram<u64> {
    Histogram::new(sigfig).expect("sigfig <= 5 is valid")
}

#[inline]
fn ns(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}

/// One timeline bucket, merged from every worker.
pub(crate) struct Bucket {
    pub(crate) ops: u64,
    pub(crate) errors: [u64; CLASSES],
    /// Latency (ns) of every op that completed in the bucket, ok or not.
    pub(crate) hist: Histogram<u64>,
}

/// The shared per-phase timeline: bucket index -> bucket.
#[derive(Default)]
pub(crate) struct TimelineAcc {
    pub(crate) buckets: BTreeMap<u64, Bucket>,
}

struct TimelineRec {
    t0: Instant,
    width_ns: u64,
    idx: u64,
    end: Instant,
    ops: u64,
    errors: [u64; CLASSES],
    hist: Histogram<u64>,
    shared: Arc<Mutex<TimelineAcc>>,
}

impl TimelineRec {
    #[inline]
    fn note(&mut self, end: Instant, latency_ns: u64, class: Option<ErrorClass>) {
        if end >= self.end {
            self.roll(end);
        }
        self.ops += 1;
        let _ = self.hist.record(latency_ns);
        if let Some(c) = class {
            self.errors[c.index()] += 1;
        }
    }

    #[cold]
    fn roll(&mut self, at: Instant) {
        self.flush();
        self.idx = ns(at.saturating_duration_since(self.t0)) / self.width_ns;
        self.end = self.t0 + Duration::from_nanos((self.idx + 1).saturating_mul(self.width_ns));
    }

    fn flush(&mut self) {
        if self.ops == 0 {
            return;
        }
        let mut shared = self.shared.lock();
        let b = shared.buckets.entry(self.idx).or_insert_with(|| Bucket {
            ops: 0,
            errors: [0; CLASSES],
            hist: histogram(TIMELINE_SIGFIG),
        });
        b.ops += self.ops;
        for (a, x) in b.errors.iter_mut().zip(self.errors) {
            *a += x;
        }
        let _ = b.hist.add(&self.hist);
        drop(shared);
        self.ops = 0;
        self.errors = [0; CLASSES];
        self.hist.reset();
    }
}

/// Everything one worker measured in one phase.
pub(crate) struct Recorder {
    /// Successful ops: latency from the intended start, ns.
    pub(crate) ok: Histogram<u64>,
    pub(crate) ok_sum_ns: u128,
    pub(crate) ok_max_ns: u64,
    /// Failed ops: latency from the intended start, ns.
    pub(crate) err: Option<Histogram<u64>>,
    /// Open loop, successful ops: from the actual start (what a closed-loop
    /// tool would report; the coordinated-omission-blind number).
    pub(crate) service: Option<Histogram<u64>>,
    /// Open loop: actual start minus intended start, every started op.
    pub(crate) lag: Option<Histogram<u64>>,
    /// Ops that marked their acquire step: start -> acquired, and acquired -> end.
    pub(crate) acquire: Option<Histogram<u64>>,
    pub(crate) op_time: Option<Histogram<u64>>,
    pub(crate) errors: [u64; CLASSES],
    pub(crate) samples: Vec<(ErrorClass, String)>,
    pub(crate) started: u64,
    pub(crate) cancelled: u64,
    pub(crate) in_flight: bool,
    pub(crate) first_start: Option<Instant>,
    pub(crate) last_start: Option<Instant>,
    pub(crate) last_end: Option<Instant>,
    tl: TimelineRec,
}

impl Recorder {
    /// A recorder for one worker; `open` adds the service and lag histograms.
    /// Allocates up front so the per-op path does not.
    pub(crate) fn new(open: bool, bucket: Duration, shared: Arc<Mutex<TimelineAcc>>) -> Self {
        let now = Instant::now();
        Recorder {
            ok: histogram(SIGFIG),
            ok_sum_ns: 0,
            ok_max_ns: 0,
            err: None,
            service: open.then(|| histogram(SIGFIG)),
            lag: open.then(|| histogram(SIGFIG)),
            acquire: None,
            op_time: None,
            errors: [0; CLASSES],
            samples: Vec::new(),
            started: 0,
            cancelled: 0,
            in_flight: false,
            first_start: None,
            last_start: None,
            last_end: None,
            tl: TimelineRec {
                t0: now,
                width_ns: ns(bucket).max(1),
                idx: 0,
                end: now + bucket,
                ops: 0,
                errors: [0; CLASSES],
                hist: histogram(TIMELINE_SIGFIG),
                shared,
            },
        }
    }

    /// Sets the phase's start (the gate's release), which timeline buckets count from.
    pub(crate) fn set_t0(&mut self, t0: Instant) {
        self.tl.t0 = t0;
        self.tl.idx = 0;
        self.tl.end = t0 + Duration::from_nanos(self.tl.width_ns);
    }

    /// An op is about to start at `start`.
    #[inline]
    pub(crate) fn begin(&mut self, start: Instant) {
        if self.started == 0 {
            self.first_start = Some(start);
        }
        self.started += 1;
        self.last_start = Some(start);
        self.in_flight = true;
    }

    /// Open loop: how late the op started against its timetable slot.
    #[inline]
    pub(crate) fn lag(&mut self, intended: Instant, start: Instant) {
        if let Some(h) = &mut self.lag {
            let _ = h.record(ns(start.saturating_duration_since(intended)));
        }
    }

    /// The op that began at `start` (due at `intended`) ended at `end` with `res`.
    #[inline]
    pub(crate) fn finish<T: OpDone, E: Classify + Display>(
        &mut self,
        intended: Instant,
        start: Instant,
        end: Instant,
        res: Result<T, E>,
    ) {
        self.in_flight = false;
        self.last_end = Some(end);
        let latency = ns(end.saturating_duration_since(intended));
        match res {
            Ok(done) => {
                let _ = self.ok.record(latency);
                self.ok_sum_ns += latency as u128;
                self.ok_max_ns = self.ok_max_ns.max(latency);
                if let Some(h) = &mut self.service {
                    let _ = h.record(ns(end.saturating_duration_since(start)));
                }
                if let Some(acq) = done.acquired_at() {
                    self.split(start, acq, end);
                }
                self.tl.note(end, latency, None);
            }
            Err(e) => {
                let class = e.class();
                self.error(class, latency, &e);
                self.tl.note(end, latency, Some(class));
            }
        }
    }

    #[cold]
    fn error(&mut self, class: ErrorClass, latency: u64, e: &dyn Display) {
        let i = class.index();
        self.errors[i] += 1;
        if self.errors[i] <= SAMPLES_PER_CLASS as u64 {
            self.samples.push((class, e.to_string()));
        }
        let _ = self.err.get_or_insert_with(|| histogram(SIGFIG)).record(latency);
    }

    #[inline]
    fn split(&mut self, start: Instant, acquired: Instant, end: Instant) {
        let a = self.acquire.get_or_insert_with(|| histogram(SIGFIG));
        let _ = a.record(ns(acquired.saturating_duration_since(start)));
        let o = self.op_time.get_or_insert_with(|| histogram(SIGFIG));
        let _ = o.record(ns(end.saturating_duration_since(acquired)));
    }

    /// The worker is done (or was dropped): count an op still in flight as
    /// cancelled and flush the timeline.
    pub(crate) fn close(&mut self) {
        if self.in_flight {
            self.in_flight = false;
            self.cancelled += 1;
        }
        self.tl.flush();
    }
}

/// Every worker's recorder of one phase, merged.
pub(crate) struct Merged {
    pub(crate) ok: Histogram<u64>,
    pub(crate) ok_sum_ns: u128,
    pub(crate) ok_max_ns: u64,
    pub(crate) err: Option<Histogram<u64>>,
    pub(crate) service: Option<Histogram<u64>>,
    pub(crate) lag: Option<Histogram<u64>>,
    pub(crate) acquire: Option<Histogram<u64>>,
    pub(crate) op_time: Option<Histogram<u64>>,
    pub(crate) errors: [u64; CLASSES],
    pub(crate) samples: Vec<(ErrorClass, String)>,
    pub(crate) started: u64,
    pub(crate) cancelled: u64,
    pub(crate) first_start: Option<Instant>,
    pub(crate) last_start: Option<Instant>,
    pub(crate) last_end: Option<Instant>,
}

fn add_opt(into: &mut Option<Histogram<u64>>, from: Option<Histogram<u64>>) {
    match (into.as_mut(), from) {
        (_, None) => {}
        (None, Some(h)) => *into = Some(h),
        (Some(a), Some(h)) => {
            let _ = a.add(&h);
        }
    }
}

impl Merged {
    pub(crate) fn new() -> Self {
        Merged {
            ok: histogram(SIGFIG),
            ok_sum_ns: 0,
            ok_max_ns: 0,
            err: None,
            service: None,
            lag: None,
            acquire: None,
            op_time: None,
            errors: [0; CLASSES],
            samples: Vec::new(),
            started: 0,
            cancelled: 0,
            first_start: None,
            last_start: None,
            last_end: None,
        }
    }

    /// Adds a closed recorder.
    pub(crate) fn add(&mut self, r: Recorder) {
        let _ = self.ok.add(&r.ok);
        self.ok_sum_ns += r.ok_sum_ns;
        self.ok_max_ns = self.ok_max_ns.max(r.ok_max_ns);
        add_opt(&mut self.err, r.err);
        add_opt(&mut self.service, r.service);
        add_opt(&mut self.lag, r.lag);
        add_opt(&mut self.acquire, r.acquire);
        add_opt(&mut self.op_time, r.op_time);
        for (a, x) in self.errors.iter_mut().zip(r.errors) {
            *a += x;
        }
        for (class, msg) in r.samples {
            if self.samples.iter().filter(|(c, _)| *c == class).count() < SAMPLES_PER_CLASS {
                self.samples.push((class, msg));
            }
        }
        self.started += r.started;
        self.cancelled += r.cancelled;
        self.first_start = min_opt(self.first_start, r.first_start);
        self.last_start = self.last_start.max(r.last_start);
        self.last_end = self.last_end.max(r.last_end);
    }
}

fn min_opt(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}
