//! Profiles: how big a run is.

use std::{fmt, str::FromStr, time::Duration};

/// How large every load is. `nightly` uses the scenario catalogue's sizes;
/// `quick` (the default) scales them so the whole suite stays CI-sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// CI-sized: counts and durations scaled down (see [`Profile::factor`]).
    #[default]
    Quick,
    /// The catalogue's sizes.
    Nightly,
}

impl Profile {
    /// Every profile, for help texts.
    pub const ALL: &'static [Profile] = &[Profile::Quick, Profile::Nightly];

    /// The factor counts and durations are multiplied by: 1.0 for nightly, 0.2 for quick.
    pub fn factor(self) -> f64 {
        match self {
            Profile::Quick => 0.2,
            Profile::Nightly => 1.0,
        }
    }

    /// Scales a count (ops, requests, cycles), never below `min(n, 1)`.
    ///
    /// ```
    /// use poolstress_harness::Profile;
    /// assert_eq!(Profile::Nightly.count(1000), 1000);
    /// assert_eq!(Profile::Quick.count(1000), 200);
    /// assert_eq!(Profile::Quick.count(1), 1);
    /// ```
    pub fn count(self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        ((n as f64 * self.factor()).round() as u64).max(1)
    }

    /// Scales a duration, never below 100 ms (or `d` if shorter).
    pub fn duration(self, d: Duration) -> Duration {
        d.mul_f64(self.factor()).max(d.min(Duration::from_millis(100)))
    }

    /// Picks one of two explicit values.
    pub fn pick<T>(self, quick: T, nightly: T) -> T {
        match self {
            Profile::Quick => quick,
            Profile::Nightly => nightly,
        }
    }

    /// The profile's name as used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Quick => "quick",
            Profile::Nightly => "nightly",
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Profile {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "quick" => Ok(Profile::Quick),
            "nightly" => Ok(Profile::Nightly),
            other => Err(format!("unknown profile \"{other}\" (known profiles: quick, nightly)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling() {
        assert_eq!(Profile::Quick.count(0), 0);
        assert_eq!(Profile::Quick.count(3), 1);
        assert_eq!(Profile::Quick.duration(Duration::from_secs(5)), Duration::from_secs(1));
        assert_eq!(Profile::Quick.duration(Duration::from_millis(50)), Duration::from_millis(50));
        assert_eq!(Profile::Nightly.duration(Duration::from_secs(5)), Duration::from_secs(5));
    }

    #[test]
    fn parse() {
        assert_eq!("nightly".parse::<Profile>().unwrap(), Profile::Nightly);
        let e = "fast".parse::<Profile>().unwrap_err();
        assert!(e.contains("quick, nightly"), "{e}");
    }
}
