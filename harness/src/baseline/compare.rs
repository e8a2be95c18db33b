//! Comparison with noise gating: a change counts only when it is beyond the
//! metric's tolerance AND beyond the noise, the noise being `K_NOISE` times
//! the largest robust spread (1.4826·MAD) of: the baseline's samples, this
//! run's samples, and the baseline's history of recorded runs (its window of
//! run-to-run values, once it holds [`MIN_HISTORY`] of them). One-sample
//! metrics have no measured noise and need a doubling.
//!
//! Only a gated metric ([`Metric::gated`], from at least `MIN_GATED_SAMPLES`
//! repeats) can be [`Verdict::Regressed`]; any other metric that moved the
//! wrong way is [`Verdict::Worse`]: shown with its baseline, never failing.

use serde::Serialize;

use super::file::Baseline;
use crate::metric::{median, Direction, Metric, MIN_GATED_SAMPLES};

/// How many spreads a change must exceed to be more than noise.
pub const K_NOISE: f64 = 3.0;

/// How many recorded runs the history needs before its spread counts.
pub const MIN_HISTORY: usize = 3;

/// The answer for one metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// A gated metric, worse beyond tolerance and noise: fails the run.
    Regressed,
    /// A recorded (not gated) metric, worse beyond tolerance and noise:
    /// shown, never fails the run.
    Worse,
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
            Verdict::Worse => "worse (not gated)",
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
    /// Whether the metric is gated (its regression fails the run).
    pub gated: bool,
    /// The change that counts here: max(tolerance, noise) relative to the baseline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
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
    stem.ends_with("max")
        || stem.ends_with("p999")
        || stem.ends_with("p99_9")
        || stem.ends_with("p9999")
        || stem.ends_with("p99_99")
}

/// The spread of a baseline's history of recorded runs, once it holds
/// [`MIN_HISTORY`] values (0 before).
pub fn history_spread(base: &Baseline) -> f64 {
    if base.history.len() < MIN_HISTORY {
        0.0
    } else {
        spread(&base.history)
    }
}

/// One comparison's numbers: the relative change, the verdict, and the
/// relative threshold the change was held to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Judged {
    /// (current - baseline) / |baseline|.
    pub delta: f64,
    /// The answer.
    pub verdict: Verdict,
    /// max(tolerance, noise / |baseline|).
    pub threshold: f64,
}

/// Compares one measured metric against its baseline.
///
/// Without repeats (one sample on both sides) there is no noise estimate:
/// such a metric counts only when it at least doubles or halves (or
/// beyond its tolerance, if larger), and the tail of a single run (max,
/// p99.9) is never judged. Only a gated metric with at least
/// `MIN_GATED_SAMPLES` samples can be `Regressed`; others are `Worse`.
pub fn compare(base: &Baseline, current: &Metric) -> Judged {
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
    let noise = K_NOISE * base.spread.max(spread(&current.samples)).max(history_spread(base));
    let floor = noise.max(absolute_floor(&current.name));
    let threshold = if b != 0.0 { base.tolerance.max(floor / b.abs()) } else { base.tolerance };
    if single && is_tail(&current.name) {
        return Judged { delta, verdict: Verdict::WithinNoise, threshold };
    }
    let factor = if b != 0.0 && v != 0.0 { (v / b).abs().max((b / v).abs()) } else { f64::INFINITY };
    let beyond_tolerance = delta.abs() > base.tolerance && (!single || factor >= 2.0);
    let beyond_noise = diff.abs() > floor;
    let gated = current.gated && current.samples.len() >= MIN_GATED_SAMPLES;
    let verdict = match (beyond_tolerance && beyond_noise, worse, gated) {
        (false, _, _) => Verdict::WithinNoise,
        (true, false, _) => Verdict::Improved,
        (true, true, true) => Verdict::Regressed,
        (true, true, false) => Verdict::Worse,
    };
    Judged { delta, verdict, threshold }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The verdict, as if every metric were gated (the gate itself is tested apart).
    fn cmp(b: &Baseline, m: &Metric) -> (Option<f64>, Verdict) {
        let j = compare(b, &Metric { gated: true, ..m.clone() });
        let v = match j.verdict {
            Verdict::Worse => Verdict::Regressed,
            v => v,
        };
        (Some(j.delta), v)
    }

    #[test]
    fn only_gated_metrics_from_repeats_regress() {
        let b = base(100.0, 2.0, Direction::LowerIsBetter);
        let worse = [125.0, 124.0, 126.0];
        assert_eq!(
            compare(&b, &Metric::gated("x", Direction::LowerIsBetter, worse.to_vec())).verdict,
            Verdict::Regressed
        );
        assert_eq!(compare(&b, &m(&worse)).verdict, Verdict::Worse, "recorded, not gated");
        let two = Metric::gated("x", Direction::LowerIsBetter, vec![125.0, 126.0]);
        assert_eq!(compare(&b, &two).verdict, Verdict::Worse, "two repeats are too few to judge");
    }

    #[test]
    fn the_history_spread_widens_the_gate() {
        let mut b = base(100.0, 1.0, Direction::LowerIsBetter);
        let cur = Metric::gated("x", Direction::LowerIsBetter, vec![118.0, 118.0, 118.0]);
        assert_eq!(compare(&b, &cur).verdict, Verdict::Regressed);
        // Recorded runs ranged 90..110: +18 % is inside 3 x their spread.
        b.history = vec![90.0, 95.0, 100.0, 105.0, 110.0];
        let j = compare(&b, &cur);
        assert_eq!(j.verdict, Verdict::WithinNoise, "{j:?}");
        assert!(j.threshold > 0.18, "{j:?}");
        // Two recorded runs are not a spread yet.
        b.history = vec![90.0, 110.0];
        assert_eq!(compare(&b, &cur).verdict, Verdict::Regressed);
    }

    #[test]
    fn single_samples_need_a_doubling_and_their_tails_are_not_judged() {
        let one = |v| Baseline { tolerance: 0.5, samples: 1, ..base(v, 0.0, Direction::LowerIsBetter) };
        assert_eq!(cmp(&one(10.0), &Metric::lower("burst.p99_ms", 18.0)).1, Verdict::WithinNoise);
        assert_eq!(cmp(&one(10.0), &Metric::lower("burst.p99_ms", 25.0)).1, Verdict::Regressed);
        assert_eq!(cmp(&one(1.1), &Metric::lower("ping.max_ms", 8.5)).1, Verdict::WithinNoise);
        assert_eq!(cmp(&one(5.0), &Metric::lower("sustained.p999_ms", 15.5)).1, Verdict::WithinNoise);
        assert_eq!(cmp(&one(100.0), &Metric::lower("response_ms", 1341.0)).1, Verdict::Regressed);
        let up = Baseline { tolerance: 0.5, samples: 1, ..base(9678.0, 0.0, Direction::HigherIsBetter) };
        assert_eq!(cmp(&up, &Metric::higher("pooled.throughput_ops_s", 2470.0)).1, Verdict::Regressed);
    }

    #[test]
    fn sub_floor_changes_are_noise_whatever_their_ratio() {
        assert_eq!(absolute_floor("ping.p50_ms"), 1.0);
        assert_eq!(absolute_floor("proxy_added_p50_us"), 100.0);
        assert_eq!(absolute_floor("open.timer.rate_error_pct"), 1.0);
        assert_eq!(absolute_floor("read.ops_s"), 0.0);
        let b = base(0.116, 0.0, Direction::LowerIsBetter);
        assert_eq!(cmp(&b, &Metric::lower("ping.p50_ms", 0.326)).1, Verdict::WithinNoise);
        let b = base(100.0, 0.0, Direction::LowerIsBetter);
        assert_eq!(cmp(&b, &Metric::lower("ping.p50_ms", 1341.0)).1, Verdict::Regressed);
        let b = base(0.1, 0.0, Direction::LowerIsBetter);
        assert_eq!(cmp(&b, &Metric::lower("read.p50_ms", 2.1)).1, Verdict::Regressed);
    }

    fn base(value: f64, spread: f64, direction: Direction) -> Baseline {
        Baseline { value, spread, direction, tolerance: 0.10, samples: 5, history: Vec::new(), gated: false }
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
        assert_eq!(cmp(&b, &m(&[125.0, 124.0, 126.0])).1, Verdict::Regressed);
        assert_eq!(cmp(&b, &m(&[75.0, 74.0, 76.0])).1, Verdict::Improved);
        // +5 %: inside tolerance
        assert_eq!(cmp(&b, &m(&[105.0, 105.0, 105.0])).1, Verdict::WithinNoise);
        // +15 % but the new samples are very noisy: within noise
        assert_eq!(cmp(&b, &m(&[115.0, 60.0, 170.0])).1, Verdict::WithinNoise);
        // higher is better flips the sign
        let t = base(1000.0, 10.0, Direction::HigherIsBetter);
        let mut cur = Metric::higher("t", 700.0);
        cur.samples = vec![700.0, 701.0, 699.0];
        assert_eq!(cmp(&t, &cur).1, Verdict::Regressed);
    }

    #[test]
    fn single_sample_is_gated_on_tolerance_only() {
        let b = Baseline { tolerance: 0.5, samples: 1, ..base(100.0, 0.0, Direction::LowerIsBetter) };
        assert_eq!(cmp(&b, &Metric::lower("x", 140.0)).1, Verdict::WithinNoise);
        assert_eq!(cmp(&b, &Metric::lower("x", 1341.0)).1, Verdict::Regressed);
    }
}
