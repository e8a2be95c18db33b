//! Comparison with noise gating: a change is a regression only when it is
//! beyond the metric's tolerance AND beyond the noise, the noise being
//! `K_NOISE` times the larger robust spread (1.4826·MAD) of the baseline's and
//! the new samples (median ± k·MAD). One-sample metrics have no measured
//! noise and are gated on the tolerance alone.

use serde::Serialize;

use super::file::Baseline;
use crate::metric::{median, Direction, Metric};

/// How many spreads a change must exceed to be more than noise.
pub const K_NOISE: f64 = 3.0;

/// The answer for one metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Worse beyond tolerance and noise.
    Regressed,
    /// Better beyond tolerance and noise.
    Improved,
    /// Within tolerance or within noise.
    WithinNoise,
    /// Measured, but no baseline stored.
    New,
    /// A baseline exists, but the test ran and did not record it.
    Missing,
}

impl Verdict {
    /// Lowercase label for tables.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Regressed => "REGRESSED",
            Verdict::Improved => "improved",
            Verdict::WithinNoise => "within noise",
            Verdict::New => "new",
            Verdict::Missing => "missing",
        }
    }
}

/// One row of the comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// Test instance.
    pub test: String,
    /// Metric name.
    pub metric: String,
    /// Stored value.
    pub baseline: Option<f64>,
    /// Measured value.
    pub current: Option<f64>,
    /// Relative change, (current - baseline) / |baseline|.
    pub delta: Option<f64>,
    /// The answer.
    pub verdict: Verdict,
}

/// Robust spread of samples: 1.4826 × median absolute deviation (0 for < 2 samples).
pub fn spread(samples: &[f64]) -> f64 {
    if samples.len() < 2 {
        return 0.0;
    }
    let m = median(samples);
    let dev: Vec<f64> = samples.iter().map(|x| (x - m).abs()).collect();
    1.4826 * median(&dev)
}

/// The smallest absolute change of a metric that can count, by the unit
/// its name ends in: 1 ms (`_ms`), 100 µs (`_us`), 100 ns (`_ns`), one
/// percentage point (`_pct`); 0 otherwise. Below these a change is timer
/// and scheduler noise on a shared machine, however large relative to a
/// sub-millisecond value (0.12 → 0.33 ms is +180 % and means nothing; 100 →
/// 1341 ms still counts).
pub fn absolute_floor(metric: &str) -> f64 {
    let unit = metric.rsplit(['.', '_']).next().unwrap_or("");
    match unit {
        "ms" => 1.0,
        "us" => 100.0,
        "ns" => 100.0,
        "pct" => 1.0,
        _ => 0.0,
    }
}

/// Whether a metric is the tail of one run's distribution (max, p99.9):
/// a single stall sets it, so from one sample it moves 2–10x between two
/// runs of an unchanged pool on the same machine.
fn is_tail(metric: &str) -> bool {
    let stem = metric.trim_end_matches("_ms").trim_end_matches("_us").trim_end_matches("_ns");
    stem.ends_with("max") || stem.ends_with("p999") || stem.ends_with("p99_9")
}

/// Compares one measured metric against its baseline.
///
/// Without repeats (one sample on both sides) there is no noise estimate:
/// such a metric counts only when it at least doubles or halves (or
/// beyond its tolerance, if larger), and the tail of a single run (max,
/// p99.9) is never judged. Measure over repeats (`Metric::from_samples`)
/// to gate finer.
pub fn compare(base: &Baseline, current: &Metric) -> (Option<f64>, Verdict) {
    let single = base.samples <= 1 && current.samples.len() <= 1;
    let v = current.value;
    let b = base.value;
    let diff = v - b;
    let delta = if b != 0.0 {
        diff / b.abs()
    } else if diff == 0.0 {
        0.0
    } else {
        f64::INFINITY.copysign(diff)
    };
    let worse = match base.direction {
        Direction::LowerIsBetter => diff > 0.0,
        Direction::HigherIsBetter => diff < 0.0,
    };
    let noise = K_NOISE * base.spread.max(spread(&current.samples));
    if single && is_tail(&current.name) {
        return (Some(delta), Verdict::WithinNoise);
    }
    let factor = if b != 0.0 && v != 0.0 { (v / b).abs().max((b / v).abs()) } else { f64::INFINITY };
    let beyond_tolerance = delta.abs() > base.tolerance && (!single || factor >= 2.0);
    let beyond_noise = diff.abs() > noise.max(absolute_floor(&current.name));
    let verdict = if beyond_tolerance && beyond_noise {
        if worse {
            Verdict::Regressed
        } else {
            Verdict::Improved
        }
    } else {
        Verdict::WithinNoise
    };
    (Some(delta), verdict)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_samples_need_a_doubling_and_their_tails_are_not_judged() {
        let one =
            |v| Baseline { value: v, spread: 0.0, direction: Direction::LowerIsBetter, tolerance: 0.5, samples: 1 };
        assert_eq!(compare(&one(10.0), &Metric::lower("burst.p99_ms", 18.0)).1, Verdict::WithinNoise);
        assert_eq!(compare(&one(10.0), &Metric::lower("burst.p99_ms", 25.0)).1, Verdict::Regressed);
        assert_eq!(compare(&one(1.1), &Metric::lower("ping.max_ms", 8.5)).1, Verdict::WithinNoise);
        assert_eq!(compare(&one(5.0), &Metric::lower("sustained.p999_ms", 15.5)).1, Verdict::WithinNoise);
        assert_eq!(compare(&one(100.0), &Metric::lower("response_ms", 1341.0)).1, Verdict::Regressed);
        let up =
            Baseline { value: 9678.0, spread: 0.0, direction: Direction::HigherIsBetter, tolerance: 0.5, samples: 1 };
        assert_eq!(compare(&up, &Metric::higher("pooled.throughput_ops_s", 2470.0)).1, Verdict::Regressed);
    }

    #[test]
    fn sub_floor_changes_are_noise_whatever_their_ratio() {
        assert_eq!(absolute_floor("ping.p50_ms"), 1.0);
        assert_eq!(absolute_floor("proxy_added_p50_us"), 100.0);
        assert_eq!(absolute_floor("open.timer.rate_error_pct"), 1.0);
        assert_eq!(absolute_floor("read.ops_s"), 0.0);
        let b = base(0.116, 0.0, Direction::LowerIsBetter);
        assert_eq!(compare(&b, &Metric::lower("ping.p50_ms", 0.326)).1, Verdict::WithinNoise);
        let b = base(100.0, 0.0, Direction::LowerIsBetter);
        assert_eq!(compare(&b, &Metric::lower("ping.p50_ms", 1341.0)).1, Verdict::Regressed);
        let b = base(0.1, 0.0, Direction::LowerIsBetter);
        assert_eq!(compare(&b, &Metric::lower("read.p50_ms", 2.1)).1, Verdict::Regressed);
    }

    fn base(value: f64, spread: f64, direction: Direction) -> Baseline {
        Baseline { value, spread, direction, tolerance: 0.10, samples: 5 }
    }

    fn m(samples: &[f64]) -> Metric {
        Metric::from_samples("x", Direction::LowerIsBetter, samples.to_vec())
    }

    #[test]
    fn spread_of_known_samples() {
        assert_eq!(spread(&[1.0]), 0.0);
        // median 3, deviations 2,1,0,1,2 -> MAD 1
        assert!((spread(&[1.0, 2.0, 3.0, 4.0, 5.0]) - 1.4826).abs() < 1e-9);
    }

    #[test]
    fn verdicts() {
        let b = base(100.0, 2.0, Direction::LowerIsBetter);
        // +25 %, far beyond 3 x 2.0 noise
        assert_eq!(compare(&b, &m(&[125.0, 124.0, 126.0])).1, Verdict::Regressed);
        assert_eq!(compare(&b, &m(&[75.0, 74.0, 76.0])).1, Verdict::Improved);
        // +5 %: inside tolerance
        assert_eq!(compare(&b, &m(&[105.0, 105.0, 105.0])).1, Verdict::WithinNoise);
        // +15 % but the new samples are very noisy: within noise
        assert_eq!(compare(&b, &m(&[115.0, 60.0, 170.0])).1, Verdict::WithinNoise);
        // higher is better flips the sign
        let t = base(1000.0, 10.0, Direction::HigherIsBetter);
        let mut cur = Metric::higher("t", 700.0);
        cur.samples = vec![700.0, 701.0, 699.0];
        assert_eq!(compare(&t, &cur).1, Verdict::Regressed);
    }

    #[test]
    fn single_sample_is_gated_on_tolerance_only() {
        let b = Baseline { value: 100.0, spread: 0.0, direction: Direction::LowerIsBetter, tolerance: 0.5, samples: 1 };
        assert_eq!(compare(&b, &Metric::lower("x", 140.0)).1, Verdict::WithinNoise);
        assert_eq!(compare(&b, &Metric::lower("x", 1341.0)).1, Verdict::Regressed);
    }
}
