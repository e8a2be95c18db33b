//! Tags: the labels suites are selected by.

use std::collections::BTreeSet;

/// Load and soak suites.
pub const STRESS: &str = "stress";
/// Performance scenarios whose numbers go to baselines. Exclusive by default.
pub const BENCHMARK: &str = "benchmark";
/// Fault injection under load. Exclusive by default.
pub const CHAOS: &str = "chaos";
/// Pool logic in process, no I/O (mock connections).
pub const LAYER_1: &str = "layer_1";
/// Real wire protocol on loopback against an in-process stand-in server.
pub const LAYER_2: &str = "layer_2";
/// Real Postgres / Redis servers.
pub const LAYER_3: &str = "layer_3";
/// Needs a Postgres server (layer_3) or speaks its protocol (layer_2).
pub const POSTGRES: &str = "postgres";
/// Needs a Redis server (layer_3) or speaks its protocol (layer_2).
pub const REDIS: &str = "redis";

/// The tags poolstress itself defines. Users may declare more with
/// [`crate::Registry::declare_tag`].
pub const BUILTIN: &[&str] = &[STRESS, BENCHMARK, CHAOS, LAYER_1, LAYER_2, LAYER_3, POSTGRES, REDIS];

/// Tags whose tests never overlap with any other test: faults and measurements
/// must not poison each other.
pub const EXCLUSIVE_BY_DEFAULT: &[&str] = &[CHAOS, BENCHMARK];

/// A tag selection: which tags were asked for and which were excluded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// A test runs if it has any of these (all tests when empty).
    pub include: BTreeSet<String>,
    /// A test with any of these never runs; wins over `include`.
    pub exclude: BTreeSet<String>,
}

impl Selection {
    /// Whether a test with `tags` is selected.
    pub fn matches<S: AsRef<str>>(&self, tags: &[S]) -> bool {
        let has = |set: &BTreeSet<String>| tags.iter().any(|t| set.contains(t.as_ref()));
        if has(&self.exclude) {
            return false;
        }
        self.include.is_empty() || has(&self.include)
    }

    /// Every tag named in the selection that is not in `known`.
    pub fn unknown<'a>(&'a self, known: &'a BTreeSet<String>) -> Vec<&'a str> {
        self.include.iter().chain(self.exclude.iter()).filter(|t| !known.contains(*t)).map(String::as_str).collect()
    }

    /// Human description, for the zero-test message.
    pub fn describe(&self) -> String {
        let join = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(", ");
        match (self.include.is_empty(), self.exclude.is_empty()) {
            (true, true) => "all tags".to_string(),
            (false, true) => format!("include tags [{}]", join(&self.include)),
            (true, false) => format!("all tags except [{}]", join(&self.exclude)),
            (false, false) => format!("include tags [{}] minus [{}]", join(&self.include), join(&self.exclude)),
        }
    }
}

/// Splits `a,b , c` into tags, dropping empty parts.
pub(crate) fn split_list(s: &str) -> impl Iterator<Item = String> + '_ {
    s.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(inc: &[&str], exc: &[&str]) -> Selection {
        Selection {
            include: inc.iter().map(|s| s.to_string()).collect(),
            exclude: exc.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn empty_selection_matches_everything() {
        assert!(sel(&[], &[]).matches(&["chaos"]));
        assert!(sel(&[], &[]).matches::<&str>(&[]));
    }

    #[test]
    fn include_is_any_of() {
        let s = sel(&["chaos", "redis"], &[]);
        assert!(s.matches(&["redis", "stress"]));
        assert!(!s.matches(&["postgres", "stress"]));
    }

    #[test]
    fn exclude_wins_over_include() {
        let s = sel(&["chaos"], &["chaos"]);
        assert!(!s.matches(&["chaos"]));
        let s = sel(&["stress"], &["layer_3"]);
        assert!(!s.matches(&["stress", "layer_3"]));
        assert!(s.matches(&["stress", "layer_1"]));
    }

    #[test]
    fn unknown_tags_are_reported() {
        let known: BTreeSet<String> = BUILTIN.iter().map(|s| s.to_string()).collect();
        let s = sel(&["chaos", "nosuch"], &["other"]);
        assert_eq!(s.unknown(&known), vec!["nosuch", "other"]);
    }

    #[test]
    fn list_splitting_trims() {
        assert_eq!(split_list(" a, b,,c ").collect::<Vec<_>>(), vec!["a", "b", "c"]);
    }
}
