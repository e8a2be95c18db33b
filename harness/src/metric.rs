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
}

impl Metric {
    /// A metric where lower is better (latency, errors, time to recover).
    pub fn lower(name: impl Into<String>, value: f64) -> Self {
        Metric { name: name.into(), value, direction: Direction::LowerIsBetter, samples: Vec::new() }
    }

    /// A metric where higher is better (throughput, successes).
    pub fn higher(name: impl Into<String>, value: f64) -> Self {
        Metric { name: name.into(), value, direction: Direction::HigherIsBetter, samples: Vec::new() }
    }

    /// A metric from repeated samples; its value is their median.
    pub fn from_samples(name: impl Into<String>, direction: Direction, samples: Vec<f64>) -> Self {
        let value = median(&samples);
        Metric { name: name.into(), value, direction, samples }
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
