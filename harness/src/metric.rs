//! Named metrics a test records; they flow into the run report and baselines.

use serde::Serialize;

/// Which way is better for a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Latencies, error rates, recovery times, growth.
    LowerIsBetter,
    /// Throughput, success counts.
    HigherIsBetter,
}

/// A named measurement. `samples` holds repeated measurements when a
/// benchmark ran k times; `value` is then their median.
///
/// Only a *gated* metric ([`Metric::gated`]) can fail a run against its
/// baseline: it is declared so by its scenario, from at least
/// [`MIN_GATED_SAMPLES`] repeats, and is best a ratio to a reference measured
/// in the same run (so a slower or busier machine moves both). Every other
/// metric is recorded, compared and shown, and never fails the job.
///
/// ```
/// use poolstress_harness::{Direction, Metric};
/// // Five interleaved pairs: the pool's throughput over the bare driver's.
/// let m = Metric::gated("vs_driver.ops_ratio", Direction::HigherIsBetter, vec![0.61, 0.63, 0.60, 0.62, 0.64]);
/// assert!(m.gated && m.value == 0.62);
/// assert!(!Metric::lower("read.p99_ms", 2.1).gated);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metric {
    /// `p95_ms`, `throughput_ops_s`, `recovery_ms`: the unit is part of the name.
    pub name: String,
    /// The measured value (median of `samples` when there are several).
    pub value: f64,
    /// Which way is better.
    pub direction: Direction,
    /// Repeated samples, if any.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<f64>,
    /// Whether a regression of this metric fails the run (see [`Metric::gated`]).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub gated: bool,
    /// The relative change that counts, as the scenario declares it (see
    /// [`Metric::tolerance`]); `None` takes the default when recorded (0.2
    /// for a gated metric).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tolerance: Option<f64>,
}

/// The fewest repeats a gated metric is judged from; with fewer it is recorded only.
pub const MIN_GATED_SAMPLES: usize = 3;

impl Metric {
    /// A metric where lower is better (latency, errors, time to recover).
    pub fn lower(name: impl Into<String>, value: f64) -> Self {
        Metric {
            name: name.into(),
            value,
            direction: Direction::LowerIsBetter,
            samples: Vec::new(),
            gated: false,
            tolerance: None,
        }
    }

    /// A metric where higher is better (throughput, successes).
    pub fn higher(name: impl Into<String>, value: f64) -> Self {
        Metric {
            name: name.into(),
            value,
            direction: Direction::HigherIsBetter,
            samples: Vec::new(),
            gated: false,
            tolerance: None,
        }
    }

    /// A metric from repeated samples; its value is their median.
    pub fn from_samples(name: impl Into<String>, direction: Direction, samples: Vec<f64>) -> Self {
        let value = median(&samples);
        Metric { name: name.into(), value, direction, samples, gated: false, tolerance: None }
    }

    /// A gated metric from `samples` repeats (at least [`MIN_GATED_SAMPLES`];
    /// fewer are recorded, not judged): its value is their median, and a
    /// regression beyond its tolerance and noise fails the run with exit 5.
    pub fn gated(name: impl Into<String>, direction: Direction, samples: Vec<f64>) -> Self {
        Metric { gated: true, ..Metric::from_samples(name, direction, samples) }
    }

    /// The relative change this metric must exceed (besides its noise) to
    /// count, written into the baselines file when it is first recorded (a
    /// tolerance edited there by hand is kept). For a ratio whose reference
    /// moves differently from the candidate on a busy machine:
    ///
    /// ```
    /// use poolstress_harness::{Direction, Metric};
    /// let m = Metric::gated("vs_driver.ops_ratio", Direction::HigherIsBetter, vec![0.5, 0.52, 0.49]).tolerance(0.3);
    /// assert_eq!(m.tolerance, Some(0.3));
    /// ```
    pub fn tolerance(mut self, tolerance: f64) -> Self {
        self.tolerance = Some(tolerance);
        self
    }
}

/// Median of `xs` (NaN when empty).
pub fn median(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_known_inputs() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!(Metric::from_samples("x", Direction::LowerIsBetter, vec![5.0, 1.0, 9.0]).value, 5.0);
    }
}
