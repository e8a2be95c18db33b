//! Assertions with numbers: each check returns an `anyhow` error whose
//! message has the measured value, the bound, the phase and the sample size,
//! e.g. `p95 12.4 ms > budget 10 ms in phase spike (n=6000)`. Performance
//! budgets fail with [`BudgetExceeded`] inside the error; accounting checks
//! with a plain error.

use std::time::Duration;

use super::{fmt_num, stats::Latency, PhaseStats, Quantile};
use crate::class::ErrorClass;

/// A performance number was outside its budget. Carried inside the `anyhow`
/// error of a failed check (`err.downcast_ref::<BudgetExceeded>()`), so a
/// report can tell a slow run from a wrong one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BudgetExceeded(pub String);

fn budget(msg: String) -> anyhow::Error {
    anyhow::Error::new(BudgetExceeded(msg))
}

/// Both numbers, with more digits when three would make them look equal.
fn pair(value: f64, bound: f64) -> (String, String) {
    let (v, b) = (fmt_num(value), fmt_num(bound));
    if v != b {
        return (v, b);
    }
    let long = |x: f64| {
        let s = format!("{x:.6}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    };
    (long(value), long(bound))
}

/// Fails with "`what` `value` `unit` > budget `max` `unit` `context`" when `value > max`.
///
/// ```
/// use poolstress_harness::metrics::check_at_most;
/// let e = check_at_most("recovery", 840.0, 500.0, "ms", "after kill (n=3)").unwrap_err();
/// assert_eq!(e.to_string(), "recovery 840 ms > budget 500 ms after kill (n=3)");
/// // Digits are added when three would hide the difference.
/// let e = check_at_most("p99", 2.000511, 2.0, "ms", "in phase x (n=10)").unwrap_err();
/// assert_eq!(e.to_string(), "p99 2.000511 ms > budget 2 ms in phase x (n=10)");
/// ```
pub fn check_at_most(what: &str, value: f64, max: f64, unit: &str, context: &str) -> anyhow::Result<()> {
    if value <= max {
        return Ok(());
    }
    let (v, m) = pair(value, max);
    Err(budget(format!("{what} {v} {unit} > budget {m} {unit} {context}")))
}

/// Fails with "`what` `value` `unit` < floor `min` `unit` `context`" when `value < min`.
pub fn check_at_least(what: &str, value: f64, min: f64, unit: &str, context: &str) -> anyhow::Result<()> {
    if value >= min {
        return Ok(());
    }
    let (v, m) = pair(value, min);
    Err(budget(format!("{what} {v} {unit} < floor {m} {unit} {context}")))
}

impl PhaseStats {
    fn ctx(&self) -> String {
        format!("in phase {} (n={})", self.name, self.completed())
    }

    fn check_dist(&self, what: &str, l: Option<&Latency>, q: Quantile, max: Duration) -> anyhow::Result<()> {
        let label = if what.is_empty() { q.label().to_string() } else { format!("{what} {}", q.label()) };
        match l {
            Some(l) if l.count > 0 => check_at_most(
                &label,
                l.get(q),
                max.as_secs_f64() * 1e3,
                "ms",
                &format!("in phase {} (n={})", self.name, l.count),
            ),
            _ => Err(anyhow::anyhow!(
                "no {} to measure {label} on in phase {} ({} started, errors: {})",
                if what.is_empty() { "successful ops" } else { "ops reporting an acquire step" },
                self.name,
                self.started,
                self.errors
            )),
        }
    }

    /// Success latency at `q` must be at most `max`:
    /// `p95 12.4 ms > budget 10 ms in phase spike (n=6000)`.
    pub fn check_latency(&self, q: Quantile, max: Duration) -> anyhow::Result<()> {
        self.check_dist("", Some(&self.latency), q, max)
    }

    /// Acquire time at `q` (ops that marked it) must be at most `max`.
    pub fn check_acquire(&self, q: Quantile, max: Duration) -> anyhow::Result<()> {
        self.check_dist("acquire", self.acquire.as_ref(), q, max)
    }

    /// Throughput (successful ops/s) must be at least `min_ops_s`.
    pub fn check_throughput(&self, min_ops_s: f64) -> anyhow::Result<()> {
        check_at_least(
            "throughput",
            self.throughput_ops_s,
            min_ops_s,
            "ops/s",
            &format!("in phase {} (n={} over {} s)", self.name, self.ok, fmt_num(self.elapsed_ms / 1e3)),
        )
    }

    /// Open loop: the achieved rate (successful ops/s) must be within
    /// `tolerance` (a fraction: 0.01 = ±1 %) of the timetable's rate.
    pub fn check_rate(&self, tolerance: f64) -> anyhow::Result<()> {
        let target = self
            .target_rate_ops_s
            .ok_or_else(|| anyhow::anyhow!("phase {} is not open loop: it has no target rate to check", self.name))?;
        let off = (self.throughput_ops_s - target) / target;
        if off.abs() <= tolerance {
            return Ok(());
        }
        Err(budget(format!(
            "achieved rate {} ops/s is {}% off target {} ops/s > tolerance {}% {}",
            fmt_num(self.throughput_ops_s),
            fmt_num(off * 100.0),
            fmt_num(target),
            fmt_num(tolerance * 100.0),
            self.ctx()
        )))
    }

    /// Failed / completed must be at most `max` (a fraction: 0.01 = 1 %).
    pub fn check_error_rate(&self, max: f64) -> anyhow::Result<()> {
        let r = self.error_rate();
        if r <= max {
            return Ok(());
        }
        Err(budget(format!(
            "error rate {}% > budget {}% {} ({} failed: {}){}",
            fmt_num(r * 100.0),
            fmt_num(max * 100.0),
            self.ctx(),
            self.errors.total(),
            self.errors,
            self.first_samples()
        )))
    }

    /// At most `max` errors of `class`.
    pub fn check_errors(&self, class: ErrorClass, max: u64) -> anyhow::Result<()> {
        let n = self.errors.get(class);
        if n <= max {
            return Ok(());
        }
        Err(anyhow::anyhow!("{class} errors {n} > budget {max} {}{}", self.ctx(), self.first_samples()))
    }

    /// Only errors of the `allowed` classes (none at all when empty).
    pub fn check_only(&self, allowed: &[ErrorClass]) -> anyhow::Result<()> {
        let bad: Vec<String> =
            self.errors.nonzero().filter(|(c, _)| !allowed.contains(c)).map(|(c, n)| format!("{c} {n}")).collect();
        if bad.is_empty() {
            return Ok(());
        }
        let allowed = if allowed.is_empty() {
            "none".to_string()
        } else {
            allowed.iter().map(|c| c.name()).collect::<Vec<_>>().join(", ")
        };
        Err(anyhow::anyhow!(
            "unexpected errors {}: {} (allowed: {allowed}){}",
            self.ctx(),
            bad.join(", "),
            self.first_samples()
        ))
    }

    /// Every started op is accounted for (`started = ok + errors +
    /// cancelled`), and `expected` ops (if given) all completed.
    pub fn check_accounted(&self, expected: Option<u64>) -> anyhow::Result<()> {
        let sum = self.ok + self.errors.total() + self.cancelled;
        anyhow::ensure!(
            sum == self.started,
            "ops not accounted for in phase {}: started {} != ok {} + errors {} + cancelled {}",
            self.name,
            self.started,
            self.ok,
            self.errors.total(),
            self.cancelled
        );
        if let Some(n) = expected {
            anyhow::ensure!(
                self.completed() == n,
                "completed {} of {n} ops in phase {} (ok {}, errors {}, cancelled {}, missed {})",
                self.completed(),
                self.name,
                self.ok,
                self.errors,
                self.cancelled,
                self.missed
            );
        }
        Ok(())
    }

    fn first_samples(&self) -> String {
        if self.error_samples.is_empty() {
            return String::new();
        }
        let s: Vec<String> = self.error_samples.iter().take(3).map(|e| format!("{}: {}", e.class, e.message)).collect();
        format!("; first: {}", s.join(" | "))
    }
}
