//! Time series of resource samples and the leak-check helpers on them:
//! growth between two windows (phases), plateau after warm-up, variance.

use std::time::Duration;

use serde::Serialize;

use super::{check::BudgetExceeded, fmt_num, PhaseStats};

/// What a series counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// Bytes (shown in MiB).
    Bytes,
    /// A count (fds, threads, connections).
    Count,
}

impl Unit {
    fn show(self, v: f64) -> String {
        match self {
            Unit::Bytes => format!("{} MiB", fmt_num(v / (1024.0 * 1024.0))),
            Unit::Count => fmt_num(v),
        }
    }
}

/// One sample of a series.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    /// When, ms since the test started.
    pub at_ms: f64,
    /// The value.
    pub value: f64,
}

/// A named time series (`rss`, `fds`, `threads`, `connections.postgres`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Series {
    /// Its name, used in messages.
    pub name: String,
    /// Its unit.
    pub unit: Unit,
    /// The samples, in time order.
    pub points: Vec<Point>,
}

/// Mean of `xs` (NaN when empty).
pub fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// Population variance of `xs` (NaN when empty).
pub fn variance(xs: &[f64]) -> f64 {
    let m = mean(xs);
    xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / xs.len() as f64
}

/// Population standard deviation of `xs` (NaN when empty).
pub fn stddev(xs: &[f64]) -> f64 {
    variance(xs).sqrt()
}

impl Series {
    /// A series from points.
    pub fn new(name: impl Into<String>, unit: Unit, points: Vec<Point>) -> Self {
        Series { name: name.into(), unit, points }
    }

    /// The samples taken in `[from_ms, to_ms]` (ms since the test started).
    pub fn window(&self, from_ms: f64, to_ms: f64) -> Series {
        let points = self.points.iter().copied().filter(|p| p.at_ms >= from_ms && p.at_ms <= to_ms).collect();
        Series { name: self.name.clone(), unit: self.unit, points }
    }

    /// The samples taken while `phase` ran.
    pub fn during(&self, phase: &PhaseStats) -> Series {
        self.window(phase.at_ms, phase.at_ms + phase.elapsed_ms)
    }

    /// The samples from `from_ms` on.
    pub fn after(&self, from_ms: f64) -> Series {
        self.window(from_ms, f64::INFINITY)
    }

    /// The values.
    pub fn values(&self) -> Vec<f64> {
        self.points.iter().map(|p| p.value).collect()
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// Mean (NaN when empty).
    pub fn mean(&self) -> f64 {
        mean(&self.values())
    }

    /// Population variance (NaN when empty).
    pub fn variance(&self) -> f64 {
        variance(&self.values())
    }

    /// Population standard deviation (NaN when empty).
    pub fn stddev(&self) -> f64 {
        stddev(&self.values())
    }

    /// Median (NaN when empty).
    pub fn median(&self) -> f64 {
        crate::metric::median(&self.values())
    }

    /// Smallest value (NaN when empty).
    pub fn min(&self) -> f64 {
        self.points.iter().map(|p| p.value).reduce(f64::min).unwrap_or(f64::NAN)
    }

    /// Largest value (NaN when empty).
    pub fn max(&self) -> f64 {
        self.points.iter().map(|p| p.value).reduce(f64::max).unwrap_or(f64::NAN)
    }

    /// Least-squares slope, units per second (NaN with fewer than 2 samples
    /// or all at one instant).
    pub fn slope_per_s(&self) -> f64 {
        let n = self.points.len() as f64;
        if self.points.len() < 2 {
            return f64::NAN;
        }
        let mx = self.points.iter().map(|p| p.at_ms / 1e3).sum::<f64>() / n;
        let my = self.points.iter().map(|p| p.value).sum::<f64>() / n;
        let sxx: f64 = self.points.iter().map(|p| (p.at_ms / 1e3 - mx).powi(2)).sum();
        let sxy: f64 = self.points.iter().map(|p| (p.at_ms / 1e3 - mx) * (p.value - my)).sum();
        if sxx == 0.0 {
            f64::NAN
        } else {
            sxy / sxx
        }
    }

    /// Growth from this window to a `later` one, median to median (robust
    /// to a single spike).
    pub fn growth_to(&self, later: &Series) -> Growth {
        Growth {
            name: self.name.clone(),
            unit: self.unit,
            from: self.median(),
            to: later.median(),
            from_n: self.len(),
            to_n: later.len(),
        }
    }

    /// The trend after a warm-up (`warmup` from the first sample on):
    /// least-squares drift across the rest, spread and range.
    pub fn plateau(&self, warmup: Duration) -> Plateau {
        let start = self.points.first().map_or(0.0, |p| p.at_ms) + warmup.as_secs_f64() * 1e3;
        let rest = self.after(start);
        let span_s = match (rest.points.first(), rest.points.last()) {
            (Some(a), Some(b)) => (b.at_ms - a.at_ms) / 1e3,
            _ => 0.0,
        };
        let slope = rest.slope_per_s();
        Plateau {
            name: self.name.clone(),
            unit: self.unit,
            n: rest.len(),
            span_s,
            slope_per_s: slope,
            drift: slope * span_s,
            stddev: rest.stddev(),
            min: rest.min(),
            max: rest.max(),
        }
    }
}

/// Growth of a series between two windows (medians).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Growth {
    /// The series.
    pub name: String,
    /// Its unit.
    pub unit: Unit,
    /// Median of the earlier window.
    pub from: f64,
    /// Median of the later window.
    pub to: f64,
    /// Samples in the earlier window.
    pub from_n: usize,
    /// Samples in the later window.
    pub to_n: usize,
}

impl Growth {
    /// `to - from`.
    pub fn delta(&self) -> f64 {
        self.to - self.from
    }

    /// `to / from`.
    pub fn ratio(&self) -> f64 {
        self.to / self.from
    }

    /// Fails when the series grew by more than `max` (in its unit):
    /// `rss grew 12.4 MiB (40.1 MiB -> 52.5 MiB, medians of 10 and 12 samples) > budget 8 MiB between warmup and soak_3`.
    pub fn check_at_most(&self, max: f64, between: &str) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.from_n > 0 && self.to_n > 0,
            "cannot tell whether {} grew {between}: {} and {} samples in the two windows (sample more often or run longer)",
            self.name,
            self.from_n,
            self.to_n
        );
        if self.delta() <= max {
            return Ok(());
        }
        Err(anyhow::Error::new(BudgetExceeded(format!(
            "{} grew {} ({} -> {}, medians of {} and {} samples) > budget {} {between}",
            self.name,
            self.unit.show(self.delta()),
            self.unit.show(self.from),
            self.unit.show(self.to),
            self.from_n,
            self.to_n,
            self.unit.show(max)
        ))))
    }
}

/// The trend of a series after warm-up.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plateau {
    /// The series.
    pub name: String,
    /// Its unit.
    pub unit: Unit,
    /// Samples after warm-up.
    pub n: usize,
    /// Their time span, s.
    pub span_s: f64,
    /// Least-squares slope, units per second.
    pub slope_per_s: f64,
    /// `slope_per_s * span_s`: how much the trend moved across the span.
    pub drift: f64,
    /// Population standard deviation.
    pub stddev: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
}

impl Plateau {
    /// Fails when the trend drifted up by more than `max` (in the series'
    /// unit) after warm-up, or when there are fewer than 3 samples to tell:
    /// `fds drift 31 over 60 s after warm-up (slope 0.517/s, n=60, range 40..71) > budget 5`.
    pub fn check_drift_at_most(&self, max: f64) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.n >= 3 && self.span_s > 0.0,
            "cannot tell whether {} plateaued: {} samples over {} s after warm-up (sample more often or run longer)",
            self.name,
            self.n,
            fmt_num(self.span_s)
        );
        if self.drift <= max {
            return Ok(());
        }
        Err(anyhow::Error::new(BudgetExceeded(format!(
            "{} drift {} over {} s after warm-up (slope {}/s, n={}, range {}..{}) > budget {}",
            self.name,
            self.unit.show(self.drift),
            fmt_num(self.span_s),
            fmt_num(self.slope_per_s),
            self.n,
            self.unit.show(self.min),
            self.unit.show(self.max),
            self.unit.show(max)
        ))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(vals: &[(f64, f64)]) -> Series {
        Series::new("fds", Unit::Count, vals.iter().map(|&(t, v)| Point { at_ms: t * 1e3, value: v }).collect())
    }

    #[test]
    fn variance_and_stddev_of_known_values() {
        let xs = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0];
        assert_eq!(mean(&xs), 5.0);
        assert_eq!(variance(&xs), 4.0);
        assert_eq!(stddev(&xs), 2.0);
        assert!(mean(&[]).is_nan());
    }

    #[test]
    fn growth_between_windows_uses_medians() {
        let s = series(&[(0.0, 10.0), (1.0, 10.0), (2.0, 99.0), (3.0, 10.0), (10.0, 14.0), (11.0, 15.0), (12.0, 14.0)]);
        let g = s.window(0.0, 3000.0).growth_to(&s.window(10_000.0, 12_000.0));
        assert_eq!((g.from, g.to, g.from_n, g.to_n), (10.0, 14.0, 4, 3));
        assert_eq!(g.delta(), 4.0);
        g.check_at_most(4.0, "between warmup and soak").unwrap();
        let e = g.check_at_most(3.0, "between warmup and soak").unwrap_err();
        assert_eq!(
            e.to_string(),
            "fds grew 4 (10 -> 14, medians of 4 and 3 samples) > budget 3 between warmup and soak"
        );
        assert!(e.downcast_ref::<BudgetExceeded>().is_some());
        let empty = s.window(50_000.0, 60_000.0);
        assert!(s.growth_to(&empty).check_at_most(1.0, "x").unwrap_err().to_string().contains("0 samples"));
    }

    #[test]
    fn plateau_after_warmup() {
        // Rises during a 5 s warm-up, then flat: no drift.
        let mut pts: Vec<(f64, f64)> = (0..5).map(|i| (i as f64, 10.0 * i as f64)).collect();
        pts.extend((5..=20).map(|i| (i as f64, 50.0)));
        let p = series(&pts).plateau(Duration::from_secs(5));
        assert_eq!((p.n, p.span_s, p.slope_per_s, p.drift, p.stddev), (16, 15.0, 0.0, 0.0, 0.0));
        p.check_drift_at_most(0.0).unwrap();
        // One more fd per second after warm-up: drift 15 over 15 s.
        let leak: Vec<(f64, f64)> = (0..=20).map(|i| (i as f64, 40.0 + i as f64)).collect();
        let p = series(&leak).plateau(Duration::from_secs(5));
        assert_eq!((p.slope_per_s, p.drift), (1.0, 15.0));
        assert_eq!(
            p.check_drift_at_most(5.0).unwrap_err().to_string(),
            "fds drift 15 over 15 s after warm-up (slope 1/s, n=16, range 45..60) > budget 5"
        );
        assert!(series(&[(0.0, 1.0)]).plateau(Duration::ZERO).check_drift_at_most(1.0).is_err());
    }

    #[test]
    fn bytes_show_in_mib() {
        let s = Series::new(
            "rss",
            Unit::Bytes,
            vec![Point { at_ms: 0.0, value: 40.0 * 1048576.0 }, Point { at_ms: 1e3, value: 52.5 * 1048576.0 }],
        );
        let g = s.window(0.0, 0.0).growth_to(&s.window(1e3, 1e3));
        let e = g.check_at_most(8.0 * 1048576.0, "between warmup and soak_3").unwrap_err().to_string();
        assert_eq!(e, "rss grew 12.5 MiB (40 MiB -> 52.5 MiB, medians of 1 and 1 samples) > budget 8 MiB between warmup and soak_3");
    }
}
