//! Per-phase statistics: latency distributions, throughput, errors by class,
//! acquire vs operation time, the per-second timeline; and how they become
//! named metrics and attachments of a test.

use std::{fmt, ops::Deref, time::Duration};

use hdrhistogram::Histogram;
use serde::{ser::SerializeMap, Serialize, Serializer};

use super::{fmt_num, PhaseHistograms};
use crate::{class::ErrorClass, ctx::Event, metric::Metric, TestCtx};

const CLASSES: usize = ErrorClass::ALL.len();

/// A latency quantile (or the max or mean) a check or metric refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Quantile {
    /// Median.
    P50,
    /// 90th percentile.
    P90,
    /// 95th percentile.
    P95,
    /// 99th percentile.
    P99,
    /// 99.9th percentile.
    P999,
    /// The largest value.
    Max,
    /// The arithmetic mean.
    Mean,
}

impl Quantile {
    /// Every quantile, in report order.
    pub const ALL: [Quantile; 7] =
        [Quantile::P50, Quantile::P90, Quantile::P95, Quantile::P99, Quantile::P999, Quantile::Max, Quantile::Mean];

    /// As written in messages: `p95`, `p99.9`, `max`, `mean`.
    pub fn label(self) -> &'static str {
        match self {
            Quantile::P50 => "p50",
            Quantile::P90 => "p90",
            Quantile::P95 => "p95",
            Quantile::P99 => "p99",
            Quantile::P999 => "p99.9",
            Quantile::Max => "max",
            Quantile::Mean => "mean",
        }
    }

    /// The metric name suffix: `p95_ms`, `p999_ms`, `max_ms`, `mean_ms`.
    pub fn metric_suffix(self) -> &'static str {
        match self {
            Quantile::P50 => "p50_ms",
            Quantile::P90 => "p90_ms",
            Quantile::P95 => "p95_ms",
            Quantile::P99 => "p99_ms",
            Quantile::P999 => "p999_ms",
            Quantile::Max => "max_ms",
            Quantile::Mean => "mean_ms",
        }
    }

    /// The quantile as a fraction (`None` for max and mean).
    pub fn fraction(self) -> Option<f64> {
        match self {
            Quantile::P50 => Some(0.5),
            Quantile::P90 => Some(0.9),
            Quantile::P95 => Some(0.95),
            Quantile::P99 => Some(0.99),
            Quantile::P999 => Some(0.999),
            Quantile::Max | Quantile::Mean => None,
        }
    }
}

impl fmt::Display for Quantile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// A latency distribution, in milliseconds. Percentiles come from an HDR
/// histogram with 3 significant figures (each is the highest value
/// equivalent to the true one, within 0.1 %); a percentile `q` of `n` values
/// is the `ceil(q * n)`-th smallest.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Latency {
    /// Number of values.
    pub count: u64,
    /// Mean (exact for [`PhaseStats::latency`]).
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest (exact for [`PhaseStats::latency`]).
    pub max_ms: f64,
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

impl Latency {
    /// Summarises a histogram of nanoseconds.
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Latency::default();
        }
        let q = |x: f64| ms(h.value_at_quantile(x));
        Latency {
            count: h.len(),
            mean_ms: h.mean() / 1e6,
            p50_ms: q(0.5),
            p90_ms: q(0.9),
            p95_ms: q(0.95),
            p99_ms: q(0.99),
            p999_ms: q(0.999),
            max_ms: ms(h.max()),
        }
    }

    fn of_exact(h: &Histogram<u64>, sum_ns: u128, max_ns: u64) -> Self {
        let mut l = Latency::of(h);
        if l.count > 0 {
            l.mean_ms = sum_ns as f64 / l.count as f64 / 1e6;
            l.max_ms = ms(max_ns);
        }
        l
    }

    /// The value of `q`, in ms.
    pub fn get(&self, q: Quantile) -> f64 {
        match q {
            Quantile::P50 => self.p50_ms,
            Quantile::P90 => self.p90_ms,
            Quantile::P95 => self.p95_ms,
            Quantile::P99 => self.p99_ms,
            Quantile::P999 => self.p999_ms,
            Quantile::Max => self.max_ms,
            Quantile::Mean => self.mean_ms,
        }
    }

    fn record(&self, ctx: &TestCtx, prefix: &str, which: &[Quantile]) {
        for q in which {
            ctx.record(Metric::lower(format!("{prefix}.{}", q.metric_suffix()), self.get(*q)));
        }
    }
}

/// The quantiles of [`PhaseStats::distribution`], with their metric suffixes.
pub const DISTRIBUTION: [(&str, f64); 9] = [
    ("p0_ms", 0.0),
    ("p25_ms", 0.25),
    ("p50_ms", 0.5),
    ("p75_ms", 0.75),
    ("p90_ms", 0.9),
    ("p95_ms", 0.95),
    ("p99_ms", 0.99),
    ("p99_9_ms", 0.999),
    ("p99_99_ms", 0.9999),
];

/// Error counts by class. Serialises as `{"acquire_timeout": 3, ...}`;
/// displays as `acquire_timeout 3, connection_broken 1` (or `none`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ErrorCounts(pub(crate) [u64; CLASSES]);

impl ErrorCounts {
    /// The count of `class`.
    pub fn get(&self, class: ErrorClass) -> u64 {
        self.0[class.index()]
    }

    /// All errors.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Whether there were none.
    pub fn is_empty(&self) -> bool {
        self.total() == 0
    }

    /// Every class with its count, in report order.
    pub fn iter(&self) -> impl Iterator<Item = (ErrorClass, u64)> + '_ {
        ErrorClass::ALL.iter().map(|c| (*c, self.get(*c)))
    }

    /// Classes with a non-zero count.
    pub fn nonzero(&self) -> impl Iterator<Item = (ErrorClass, u64)> + '_ {
        self.iter().filter(|(_, n)| *n > 0)
    }
}

impl fmt::Display for ErrorCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        for (i, (c, n)) in self.nonzero().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{c} {n}")?;
        }
        Ok(())
    }
}

impl Serialize for ErrorCounts {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(CLASSES))?;
        for (c, n) in self.iter() {
            m.serialize_entry(c.name(), &n)?;
        }
        m.end()
    }
}

/// One bucket (a second, by default) of a phase's timeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimelineRow {
    /// Start of the bucket, seconds since the test started (the same clock
    /// as the test's events).
    pub t_s: f64,
    /// Ops that completed in the bucket, ok or failed.
    pub ops: u64,
    /// Of which failed.
    pub errors: u64,
    /// Median latency of the ops that completed in the bucket (from their
    /// intended start; 0 when none did). 1 % resolution.
    pub p50_ms: f64,
    /// 99th percentile, likewise.
    pub p99_ms: f64,
    /// Errors by class (omitted when none).
    #[serde(skip_serializing_if = "ErrorCounts::is_empty")]
    pub error_classes: ErrorCounts,
}

/// An error message kept as an example (the first few per class).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorSample {
    /// Its class.
    pub class: ErrorClass,
    /// Its `Display`.
    pub message: String,
}

/// The success-latency histogram of a phase, in nanoseconds (3 significant
/// figures). Derefs to [`hdrhistogram::Histogram`] for custom quantiles.
#[derive(Clone)]
pub struct LatencyHistogram(pub(crate) Histogram<u64>);

impl Deref for LatencyHistogram {
    type Target = Histogram<u64>;
    fn deref(&self) -> &Histogram<u64> {
        &self.0
    }
}

impl fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LatencyHistogram(n={}, max={} ns)", self.0.len(), self.0.max())
    }
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram(crate::load::recorder::histogram(crate::load::recorder::SIGFIG))
    }
}

/// What one phase measured. Accounting: `started = ok + errors + cancelled`;
/// in open loop, `started + missed` = the arrivals due in the phase.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseStats {
    /// The phase's name (`baseline`, `spike`, `step_2`, ...).
    pub name: String,
    /// The load shape, described (`closed loop, 8 workers`).
    pub shape: String,
    /// When the phase started, ms since the test started.
    pub at_ms: f64,
    /// From the phase's start to its last completed op, ms.
    pub elapsed_ms: f64,
    /// Ops started.
    pub started: u64,
    /// Ops that succeeded.
    pub ok: u64,
    /// Ops that failed, by class.
    pub errors: ErrorCounts,
    /// Ops still in flight at the hard stop (deadline + grace), dropped.
    pub cancelled: u64,
    /// Open loop: arrivals due in the phase that were never started
    /// (the hard stop came first).
    pub missed: u64,
    /// Successful ops per second of `elapsed_ms`.
    pub throughput_ops_s: f64,
    /// Open loop: the timetable's mean rate over the phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_rate_ops_s: Option<f64>,
    /// Open loop: ops started per second, between the first and last start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_rate_ops_s: Option<f64>,
    /// Successful ops, from the intended start (open loop: the timetable
    /// slot, so stalls show — coordinated-omission corrected; closed loop and
    /// burst: the actual start / the burst's release).
    pub latency: Latency,
    /// Failed ops, from the intended start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_latency: Option<Latency>,
    /// Open loop, successful ops, from the actual start: what a closed-loop
    /// tool would report (blind to coordinated omission).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<Latency>,
    /// Open loop: how late ops started against their slot (harness pacing
    /// plus queueing when every in-flight slot is busy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_lag: Option<Latency>,
    /// Successful ops that marked their acquire step: start to acquired.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acquire: Option<Latency>,
    /// Likewise: acquired to end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub op_time: Option<Latency>,
    /// The first few error messages per class.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub error_samples: Vec<ErrorSample>,
    /// Per-bucket timeline (attached separately, see [`PhaseStats::record_into`]).
    #[serde(skip)]
    pub timeline: Vec<TimelineRow>,
    /// The test's events during the phase (phase starts, faults).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<Event>,
    /// Success latencies, ns.
    #[serde(skip)]
    pub histogram: LatencyHistogram,
    /// Wall-clock time the phase started (its timetable's origin), Unix ms:
    /// with `--start-at`, the shared start time. Merging reports of several
    /// processes uses it for their common window.
    pub started_unix_ms: f64,
    /// Open loop on a process running one segment of a fleet's load
    /// (`--segment 2/3`): the segment. Its counts, rates and histograms are
    /// that process's share.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segment: Option<String>,
    /// Every latency histogram of the phase (`latency`, and where measured
    /// `error_latency`, `service`, `send_lag`, `acquire`, `op_time`), in
    /// HdrHistogram's V2 compressed form, base64: reports merge exactly.
    #[serde(skip_serializing_if = "PhaseHistograms::is_empty")]
    pub histograms: PhaseHistograms,
}

/// The inputs [`PhaseStats`] is built from (engine-side).
pub(crate) struct PhaseInputs {
    pub(crate) name: String,
    pub(crate) shape: String,
    pub(crate) at_ms: f64,
    pub(crate) elapsed: Duration,
    pub(crate) bucket: Duration,
    pub(crate) missed: u64,
    pub(crate) target_rate: Option<f64>,
    pub(crate) open: bool,
    pub(crate) events: Vec<Event>,
    pub(crate) started_unix_ms: f64,
    pub(crate) segment: Option<String>,
}

impl PhaseStats {
    pub(crate) fn build(
        inp: PhaseInputs,
        m: crate::load::recorder::Merged,
        tl: crate::load::recorder::TimelineAcc,
    ) -> Self {
        let ok = m.ok.len();
        // From nanoseconds so whole milliseconds stay exact.
        let secs = inp.elapsed.as_nanos() as f64 / 1e9;
        let send_rate = if inp.open && m.started > 1 {
            match (m.first_start, m.last_start) {
                (Some(a), Some(b)) if b > a => Some((m.started - 1) as f64 / (b - a).as_secs_f64()),
                _ => None,
            }
        } else {
            None
        };
        let buckets =
            if inp.bucket.is_zero() { 0 } else { (inp.elapsed.as_nanos() / inp.bucket.as_nanos()) as u64 + 1 };
        let last = tl.buckets.keys().next_back().copied().map_or(0, |k| k + 1);
        let timeline = (0..buckets.max(last))
            .map(|i| {
                let t_s = inp.at_ms / 1e3 + i as f64 * inp.bucket.as_secs_f64();
                match tl.buckets.get(&i) {
                    Some(b) => TimelineRow {
                        t_s,
                        ops: b.ops,
                        errors: b.errors.iter().sum(),
                        p50_ms: ms(b.hist.value_at_quantile(0.5)),
                        p99_ms: ms(b.hist.value_at_quantile(0.99)),
                        error_classes: ErrorCounts(b.errors),
                    },
                    None => TimelineRow {
                        t_s,
                        ops: 0,
                        errors: 0,
                        p50_ms: 0.0,
                        p99_ms: 0.0,
                        error_classes: ErrorCounts::default(),
                    },
                }
            })
            .collect();
        let mut histograms = std::collections::BTreeMap::new();
        if !m.ok.is_empty() {
            histograms.insert("latency".to_string(), m.ok.clone());
        }
        for (name, h) in [
            ("error_latency", &m.err),
            ("service", &m.service),
            ("send_lag", &m.lag),
            ("acquire", &m.acquire),
            ("op_time", &m.op_time),
        ] {
            if let Some(h) = h {
                histograms.insert(name.to_string(), h.clone());
            }
        }
        PhaseStats {
            name: inp.name,
            shape: inp.shape,
            at_ms: inp.at_ms,
            elapsed_ms: inp.elapsed.as_nanos() as f64 / 1e6,
            started: m.started,
            ok,
            errors: ErrorCounts(m.errors),
            cancelled: m.cancelled,
            missed: inp.missed,
            throughput_ops_s: if secs > 0.0 { ok as f64 / secs } else { 0.0 },
            target_rate_ops_s: inp.target_rate,
            send_rate_ops_s: send_rate,
            latency: Latency::of_exact(&m.ok, m.ok_sum_ns, m.ok_max_ns),
            error_latency: m.err.as_ref().map(Latency::of),
            service: m.service.as_ref().map(Latency::of),
            send_lag: m.lag.as_ref().map(Latency::of),
            acquire: m.acquire.as_ref().map(Latency::of),
            op_time: m.op_time.as_ref().map(Latency::of),
            error_samples: m.samples.into_iter().map(|(class, message)| ErrorSample { class, message }).collect(),
            timeline,
            events: inp.events,
            histogram: LatencyHistogram(m.ok),
            started_unix_ms: inp.started_unix_ms,
            segment: inp.segment,
            histograms: PhaseHistograms(histograms),
        }
    }

    /// Ops that finished, ok or failed.
    pub fn completed(&self) -> u64 {
        self.ok + self.errors.total()
    }

    /// Failed / completed (0 when nothing completed).
    pub fn error_rate(&self) -> f64 {
        let c = self.completed();
        if c == 0 {
            0.0
        } else {
            self.errors.total() as f64 / c as f64
        }
    }

    /// The full range of the success-latency distribution, for the HTML
    /// report's percentile plot: `(metric suffix, ms)` at p0, p25, p50, p75,
    /// p90, p95, p99, p99.9 and p99.99 ([`DISTRIBUTION`]), straight from the
    /// histogram. Record them as `<prefix>.<suffix>` (over repeats, with
    /// `Metric::from_samples`): the plot draws this run against the
    /// baseline over the whole range.
    pub fn distribution(&self) -> Vec<(&'static str, f64)> {
        DISTRIBUTION.iter().map(|(sfx, q)| (*sfx, self.quantile(*q).as_secs_f64() * 1e3)).collect()
    }

    /// A success-latency quantile (`0.0..=1.0`) straight from the histogram.
    pub fn quantile(&self, q: f64) -> Duration {
        Duration::from_nanos(self.histogram.value_at_quantile(q))
    }

    /// Records this phase's named metrics under `prefix` (no attachments):
    ///
    /// - `<prefix>.p50_ms`, `.p90_ms`, `.p95_ms`, `.p99_ms`, `.p999_ms`,
    ///   `.max_ms`, `.mean_ms`: success latency (lower is better);
    /// - `<prefix>.throughput_ops_s`, `<prefix>.ok` (higher);
    /// - `<prefix>.errors.total`, `<prefix>.errors.<class>` for every class,
    ///   `<prefix>.error_rate_pct`, `<prefix>.cancelled` (lower);
    /// - where ops reported it: `<prefix>.acquire.{p50,p95,p99,max,mean}_ms`
    ///   and `<prefix>.op.{...}_ms`;
    /// - open loop: `<prefix>.service.{p50..p999,max}_ms` (uncorrected),
    ///   `<prefix>.send_lag.{p50,p99,max}_ms`, `<prefix>.send_rate_ops_s`,
    ///   `<prefix>.missed`.
    pub fn record_metrics(&self, ctx: &TestCtx, prefix: &str) {
        self.latency.record(ctx, prefix, &Quantile::ALL);
        ctx.record(Metric::higher(format!("{prefix}.throughput_ops_s"), self.throughput_ops_s));
        ctx.record(Metric::higher(format!("{prefix}.ok"), self.ok as f64));
        ctx.record(Metric::lower(format!("{prefix}.errors.total"), self.errors.total() as f64));
        for (c, n) in self.errors.iter() {
            ctx.record(Metric::lower(format!("{prefix}.errors.{}", c.name()), n as f64));
        }
        ctx.record(Metric::lower(format!("{prefix}.error_rate_pct"), self.error_rate() * 100.0));
        ctx.record(Metric::lower(format!("{prefix}.cancelled"), self.cancelled as f64));
        let short = [Quantile::P50, Quantile::P95, Quantile::P99, Quantile::Max, Quantile::Mean];
        if let Some(a) = &self.acquire {
            a.record(ctx, &format!("{prefix}.acquire"), &short);
        }
        if let Some(o) = &self.op_time {
            o.record(ctx, &format!("{prefix}.op"), &short);
        }
        if let Some(s) = &self.service {
            s.record(ctx, &format!("{prefix}.service"), &Quantile::ALL[..6]);
        }
        if let Some(l) = &self.send_lag {
            l.record(ctx, &format!("{prefix}.send_lag"), &[Quantile::P50, Quantile::P99, Quantile::Max]);
        }
        if let Some(r) = self.send_rate_ops_s {
            ctx.record(Metric::higher(format!("{prefix}.send_rate_ops_s"), r));
        }
        if self.target_rate_ops_s.is_some() {
            ctx.record(Metric::lower(format!("{prefix}.missed"), self.missed as f64));
        }
    }

    /// [`PhaseStats::record_metrics`], plus two attachments: `<prefix>.stats`
    /// (this summary) and `<prefix>.timeline` (`{"phase", "points": [rows],
    /// "events"}`, plotted by the HTML report).
    pub fn record_into(&self, ctx: &TestCtx, prefix: &str) {
        self.record_metrics(ctx, prefix);
        ctx.attach(format!("{prefix}.stats"), self);
        ctx.attach(format!("{prefix}.timeline"), self.timeline_json());
    }

    /// The timeline attachment: `{"phase": name, "points": [TimelineRow], "events": [...]}`.
    pub fn timeline_json(&self) -> serde_json::Value {
        serde_json::json!({ "phase": self.name, "points": self.timeline, "events": self.events })
    }

    /// One line for notes and logs.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "phase {}: {} ok, errors {} in {} s ({} ops/s); p50 {} ms, p99 {} ms, p99.9 {} ms, max {} ms",
            self.name,
            self.ok,
            self.errors,
            fmt_num(self.elapsed_ms / 1e3),
            fmt_num(self.throughput_ops_s),
            fmt_num(self.latency.p50_ms),
            fmt_num(self.latency.p99_ms),
            fmt_num(self.latency.p999_ms),
            fmt_num(self.latency.max_ms),
        );
        if self.cancelled + self.missed > 0 {
            s.push_str(&format!("; cancelled {}, missed {}", self.cancelled, self.missed));
        }
        s
    }
}

/// What a [`crate::load::Plan`] measured: one [`PhaseStats`] per phase, in order.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The phases.
    pub phases: Vec<PhaseStats>,
}

impl Report {
    /// The phase named `name`; the error lists the phases there are.
    pub fn phase(&self, name: &str) -> anyhow::Result<&PhaseStats> {
        self.phases.iter().find(|p| p.name == name).ok_or_else(|| {
            let known: Vec<&str> = self.phases.iter().map(|p| p.name.as_str()).collect();
            anyhow::anyhow!("no phase \"{name}\" in this load report (phases: {})", known.join(", "))
        })
    }

    /// Every phase's timeline, concatenated (time is test-relative, so they line up).
    pub fn timeline(&self) -> Vec<TimelineRow> {
        self.phases.iter().flat_map(|p| p.timeline.iter().cloned()).collect()
    }

    /// Records every phase's metrics under `<prefix>.<phase>` and attaches
    /// `<prefix>.stats` (all phases) and one `<prefix>.timeline` across all
    /// phases (`{"phases": [{name, at_ms}], "points": [...], "events": [...]}`).
    pub fn record_into(&self, ctx: &TestCtx, prefix: &str) {
        for p in &self.phases {
            p.record_metrics(ctx, &format!("{prefix}.{}", p.name));
        }
        ctx.attach(format!("{prefix}.stats"), self);
        let phases: Vec<_> =
            self.phases.iter().map(|p| serde_json::json!({ "name": p.name, "at_ms": p.at_ms })).collect();
        let events: Vec<&Event> = self.phases.iter().flat_map(|p| p.events.iter()).collect();
        ctx.attach(
            format!("{prefix}.timeline"),
            serde_json::json!({ "phases": phases, "points": self.timeline(), "events": events }),
        );
    }
}
