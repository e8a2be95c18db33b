//! Arrival timetables for open-loop phases: when the k-th op is meant to
//! start, counted from the phase's start.

use std::{fmt, time::Duration};

/// An arrival rate over a phase.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    /// `per_s` arrivals per second, evenly spaced.
    Constant {
        /// Arrivals per second (> 0).
        per_s: f64,
    },
    /// A rate rising (or falling) linearly from `from_per_s` to `to_per_s`
    /// over `over`; after that it stays at `to_per_s`.
    Ramp {
        /// Rate at the phase's start.
        from_per_s: f64,
        /// Rate at `over`.
        to_per_s: f64,
        /// How long the ramp takes.
        over: Duration,
    },
}

impl Rate {
    /// Checks the numbers; the error says what is wrong.
    pub(crate) fn validate(&self) -> Result<(), String> {
        let ok = |x: f64| x.is_finite() && x >= 0.0;
        match *self {
            Rate::Constant { per_s } if ok(per_s) && per_s > 0.0 => Ok(()),
            Rate::Constant { per_s } => Err(format!("rate {per_s}/s must be a finite number > 0")),
            Rate::Ramp { from_per_s: a, to_per_s: b, over } => {
                if !ok(a) || !ok(b) || a + b <= 0.0 {
                    Err(format!("ramp {a}/s -> {b}/s needs finite rates >= 0, not both 0"))
                } else if over.is_zero() {
                    Err("ramp duration must be > 0".to_string())
                } else {
                    Ok(())
                }
            }
        }
    }

    /// When arrival `k` (0-based) is due, from the phase's start; `None` when
    /// it never is (a ramp down to 0 that has ended).
    #[inline]
    pub(crate) fn offset(&self, k: u64) -> Option<Duration> {
        let secs = match *self {
            Rate::Constant { per_s } => k as f64 / per_s,
            Rate::Ramp { from_per_s: a, to_per_s: b, over } => {
                let t = over.as_secs_f64();
                // Arrivals by time x: N(x) = a x + c x², c = (b - a) / 2T.
                let c = (b - a) / (2.0 * t);
                let total = (a + b) / 2.0 * t;
                let k = k as f64;
                if k <= total {
                    if k == 0.0 {
                        0.0
                    } else {
                        // The numerically stable root of c x² + a x - k = 0.
                        let disc = (a * a + 4.0 * c * k).max(0.0);
                        2.0 * k / (a + disc.sqrt())
                    }
                } else if b > 0.0 {
                    t + (k - total) / b
                } else {
                    return None;
                }
            }
        };
        // Nanosecond resolution; f64 keeps it exact far beyond any phase length.
        Some(Duration::from_nanos((secs * 1e9).round() as u64))
    }

    /// How many arrivals are due strictly before `d`.
    pub(crate) fn due_before(&self, d: Duration) -> u64 {
        let secs = d.as_secs_f64();
        let guess = match *self {
            Rate::Constant { per_s } => secs * per_s,
            Rate::Ramp { from_per_s: a, to_per_s: b, over } => {
                let t = over.as_secs_f64();
                if secs <= t {
                    a * secs + (b - a) / (2.0 * t) * secs * secs
                } else {
                    (a + b) / 2.0 * t + b * (secs - t)
                }
            }
        };
        // The closed form is a guess; `offset` is the truth (rounding).
        let mut n = guess.ceil().max(0.0) as u64;
        while n > 0 && self.offset(n - 1).is_none_or(|o| o >= d) {
            n -= 1;
        }
        while self.offset(n).is_some_and(|o| o < d) {
            n += 1;
        }
        n
    }

    /// The mean rate over the first `d` of the phase (the target an achieved
    /// rate is compared with).
    pub(crate) fn mean_over(&self, d: Duration) -> f64 {
        let secs = d.as_secs_f64();
        match *self {
            Rate::Constant { per_s } => per_s,
            Rate::Ramp { from_per_s: a, to_per_s: b, over } => {
                let t = over.as_secs_f64();
                if secs <= 0.0 {
                    a
                } else if secs <= t {
                    a + (b - a) * secs / (2.0 * t)
                } else {
                    ((a + b) / 2.0 * t + b * (secs - t)) / secs
                }
            }
        }
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Rate::Constant { per_s } => write!(f, "{per_s}/s"),
            Rate::Ramp { from_per_s, to_per_s, over } => write!(f, "{from_per_s}/s -> {to_per_s}/s over {over:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn constant_rate_is_evenly_spaced() {
        let r = Rate::Constant { per_s: 1000.0 };
        assert_eq!(r.offset(0), Some(Duration::ZERO));
        assert_eq!(r.offset(1), Some(MS));
        assert_eq!(r.offset(2500), Some(2500 * MS));
        assert_eq!(r.due_before(Duration::from_secs(1)), 1000);
        assert_eq!(r.due_before(Duration::from_micros(1500)), 2);
        let r = Rate::Constant { per_s: 3.0 };
        assert_eq!(r.offset(1), Some(Duration::from_nanos(333_333_333)));
        assert_eq!(r.due_before(Duration::from_secs(1)), 3);
    }

    #[test]
    fn ramp_counts_and_times() {
        // 0 -> 2000/s over 1 s: 1000 arrivals in the first second, N(x) = 1000 x².
        let r = Rate::Ramp { from_per_s: 0.0, to_per_s: 2000.0, over: Duration::from_secs(1) };
        assert_eq!(r.offset(0), Some(Duration::ZERO));
        assert_eq!(r.offset(250), Some(500 * MS)); // N(0.5) = 250
        assert_eq!(r.offset(1000), Some(1000 * MS));
        assert_eq!(r.offset(1002), Some(1001 * MS)); // 2000/s after the ramp
        assert_eq!(r.due_before(Duration::from_secs(1)), 1000);
        assert_eq!(r.mean_over(Duration::from_secs(1)), 1000.0);
        // A ramp down to zero ends.
        let r = Rate::Ramp { from_per_s: 100.0, to_per_s: 0.0, over: Duration::from_secs(2) };
        assert_eq!(r.due_before(Duration::from_secs(2)), 100);
        assert_eq!(r.offset(100), Some(Duration::from_secs(2)));
        assert_eq!(r.offset(101), None);
        assert_eq!(r.due_before(Duration::from_secs(10)), 101);
        // Equal ends are a constant rate.
        let r = Rate::Ramp { from_per_s: 500.0, to_per_s: 500.0, over: Duration::from_secs(1) };
        assert_eq!(r.offset(500), Some(Duration::from_secs(1)));
    }

    #[test]
    fn invalid_rates_say_why() {
        assert!(Rate::Constant { per_s: 0.0 }.validate().unwrap_err().contains("> 0"));
        assert!(Rate::Constant { per_s: f64::NAN }.validate().is_err());
        assert!(Rate::Ramp { from_per_s: 0.0, to_per_s: 0.0, over: MS }.validate().is_err());
        assert!(Rate::Ramp { from_per_s: 1.0, to_per_s: 0.0, over: Duration::ZERO }.validate().is_err());
    }
}
