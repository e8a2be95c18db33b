//! The context every test body receives.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use rand::{rngs::StdRng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::{metric::Metric, profile::Profile};

/// `invariant broken: <first>; <second>`.
pub(crate) fn violations_message(v: &[String]) -> String {
    format!("invariant broken: {}", v.join("; "))
}

/// The attachment naming a test's key metric ([`TestCtx::key_metric`]).
pub const KEY_METRIC: &str = "key_metric";

/// A marker error: the test was skipped at run time, with a reason
/// (a capability the pool lacks, a TLS server that is not there).
/// Return it with [`TestCtx::skip`]; the console and reports show the reason.
#[derive(Debug, thiserror::Error)]
#[error("skipped: {0}")]
pub struct Skipped(pub String);

/// A marker error: a fixture (a service, an image, a binary) could not be
/// provided. Tests whose only failures are these make the run exit with
/// [`crate::exit::FIXTURE_FAILURE`] so CI can tell a missing service from a bug.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FixtureFailure(pub String);

/// An event on the test's timeline (a fault started or healed, a phase began).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    /// Time since the test started, in milliseconds.
    pub at_ms: f64,
    /// What happened.
    pub label: String,
}

pub(crate) struct Inner {
    pub(crate) name: String,
    pub(crate) tags: Vec<String>,
    pub(crate) profile: Profile,
    pub(crate) seed: u64,
    pub(crate) started: Instant,
    pub(crate) report_dir: PathBuf,
    pub(crate) step: Mutex<String>,
    pub(crate) metrics: Mutex<Vec<Metric>>,
    pub(crate) events: Mutex<Vec<Event>>,
    pub(crate) attachments: Mutex<BTreeMap<String, serde_json::Value>>,
    pub(crate) notes: Mutex<Vec<String>>,
    /// Invariants the test bed saw broken (see [`TestCtx::violation`]).
    pub(crate) violations: Mutex<Vec<String>>,
}

tokio::task_local! {
    /// The test whose body runs on this task (set by the runner).
    static CURRENT: TestCtx;
}

/// What a test knows about its run: name, tags, profile, seed; where it
/// records metrics, events and what it is doing (shown if it misses its deadline).
/// Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct TestCtx {
    pub(crate) inner: Arc<Inner>,
}

impl TestCtx {
    pub(crate) fn new(name: &str, tags: &[String], profile: Profile, run_seed: u64, report_dir: &Path) -> Self {
        TestCtx {
            inner: Arc::new(Inner {
                name: name.to_string(),
                tags: tags.to_vec(),
                profile,
                seed: test_seed(run_seed, name),
                started: Instant::now(),
                report_dir: report_dir.to_path_buf(),
                step: Mutex::new("starting".to_string()),
                metrics: Mutex::new(Vec::new()),
                events: Mutex::new(Vec::new()),
                attachments: Mutex::new(BTreeMap::new()),
                notes: Mutex::new(Vec::new()),
                violations: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The test whose body is running on this task, if any: what the
    /// fixtures use to watch the invariants of a pool built in a test body
    /// without being handed its context. Tasks a body spawns do not see it.
    pub fn current() -> Option<TestCtx> {
        CURRENT.try_with(|c| c.clone()).ok()
    }

    /// Runs `fut` as this test's body: [`TestCtx::current`] is this context inside it.
    pub fn scope<F: std::future::Future>(&self, fut: F) -> impl std::future::Future<Output = F::Output> {
        CURRENT.scope(self.clone(), fut)
    }

    /// Records an invariant the test bed saw broken (a pool handing out more
    /// than max_size checkouts, an acquire or op running far past the pool's
    /// own timeout). The test fails with it even if its body passed; the
    /// same message is kept once.
    pub fn violation(&self, message: impl Into<String>) {
        let m = message.into();
        let mut v = self.inner.violations.lock();
        if !v.contains(&m) {
            self.event(format!("invariant broken: {m}"));
            v.push(m);
        }
    }

    /// Takes the violations recorded so far (a self-test that runs a scenario
    /// against a broken pool and expects them).
    pub fn take_violations(&self) -> Vec<String> {
        std::mem::take(&mut *self.inner.violations.lock())
    }

    /// `r` with the violations recorded so far taken into it: a body that
    /// passed fails with them, a failure carries them as context. What the
    /// runner does to every body, for a self-test that runs a scenario against
    /// a broken pool and must see it fail.
    pub fn with_violations(&self, r: anyhow::Result<()>) -> anyhow::Result<()> {
        let v = self.take_violations();
        if v.is_empty() {
            return r;
        }
        let broken = violations_message(&v);
        match r {
            Ok(()) => Err(anyhow::anyhow!(broken)),
            Err(e) => Err(e.context(broken)),
        }
    }

    /// A context outside a run (unit tests, examples): quick profile, seed 0.
    pub fn detached(name: &str) -> Self {
        Self::new(name, &[], Profile::Quick, 0, &std::env::temp_dir())
    }

    /// The full instance name, e.g. `chaos::postgres::kill_60pct_workers[deadpool]`.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// A short identifier safe for database names and client names:
    /// lowercase ASCII alphanumerics and `_`, at most 40 chars, unique per name.
    pub fn slug(&self) -> String {
        slug(&self.inner.name)
    }

    /// The test's tags.
    pub fn tags(&self) -> &[String] {
        &self.inner.tags
    }

    /// The run's profile.
    pub fn profile(&self) -> Profile {
        self.inner.profile
    }

    /// This test's seed: derived from the run seed and the test name, so the
    /// same `--seed` gives the same value whether the test runs alone or in a
    /// full run (and under nextest).
    pub fn seed(&self) -> u64 {
        self.inner.seed
    }

    /// A fresh RNG seeded with [`TestCtx::seed`].
    pub fn rng(&self) -> StdRng {
        StdRng::seed_from_u64(self.inner.seed)
    }

    /// When the test started.
    pub fn started(&self) -> Instant {
        self.inner.started
    }

    /// Where reports of this run go.
    pub fn report_dir(&self) -> &Path {
        &self.inner.report_dir
    }

    /// Says what the test is doing now; shown when it misses its deadline.
    pub fn step(&self, what: impl Into<String>) {
        *self.inner.step.lock() = what.into();
    }

    /// What the test said it was doing last.
    pub fn current_step(&self) -> String {
        self.inner.step.lock().clone()
    }

    /// Records a named metric for the report and baselines. A metric recorded
    /// twice under one name keeps the last value.
    pub fn record(&self, metric: Metric) {
        let mut m = self.inner.metrics.lock();
        m.retain(|x| x.name != metric.name);
        m.push(metric);
    }

    /// Names the metric the scorecard shows for this test (default: the
    /// first of `recovery_ms`, a p99, a throughput, a p50, then the first
    /// recorded). Stored as the attachment `key_metric`.
    pub fn key_metric(&self, name: impl Into<String>) {
        self.attach(KEY_METRIC, name.into());
    }

    /// Every metric recorded so far.
    pub fn metrics(&self) -> Vec<Metric> {
        self.inner.metrics.lock().clone()
    }

    /// Stamps an event on the test's timeline.
    pub fn event(&self, label: impl Into<String>) {
        let at_ms = self.inner.started.elapsed().as_secs_f64() * 1e3;
        self.inner.events.lock().push(Event { at_ms, label: label.into() });
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<Event> {
        self.inner.events.lock().clone()
    }

    /// Attaches structured data (a timeline, per-phase stats) to the report under `key`.
    pub fn attach(&self, key: impl Into<String>, value: impl Serialize) {
        let v =
            serde_json::to_value(value).unwrap_or_else(|e| serde_json::Value::String(format!("unserializable: {e}")));
        self.inner.attachments.lock().insert(key.into(), v);
    }

    /// A line for the report and, on failure, the console (the fault schedule, a finding).
    pub fn note(&self, line: impl Into<String>) {
        self.inner.notes.lock().push(line.into());
    }

    /// Ends the test as skipped with `reason`: `return Err(ctx.skip("no TLS server"))`.
    pub fn skip(&self, reason: impl Into<String>) -> anyhow::Error {
        anyhow::Error::new(Skipped(reason.into()))
    }

    /// How long the test has run.
    pub fn elapsed(&self) -> Duration {
        self.inner.started.elapsed()
    }
}

/// FNV-1a of the name mixed with the run seed (splitmix64 finaliser).
fn test_seed(run_seed: u64, name: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    let mut z = run_seed ^ h;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    z ^ (z >> 31)
}

pub(crate) fn slug(name: &str) -> String {
    let mut s: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
    while s.contains("__") {
        s = s.replace("__", "_");
    }
    let s = s.trim_matches('_').to_string();
    let h = test_seed(0, name) & 0xffff_ffff;
    let keep: String = s.chars().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect();
    format!("{}_{h:08x}", keep.trim_matches('_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_depends_on_run_seed_and_name_only() {
        assert_eq!(test_seed(7, "a::b"), test_seed(7, "a::b"));
        assert_ne!(test_seed(7, "a::b"), test_seed(8, "a::b"));
        assert_ne!(test_seed(7, "a::b"), test_seed(7, "a::c"));
    }

    #[test]
    fn slug_is_identifier_safe_and_unique() {
        let a = slug("chaos::postgres::kill_60pct_workers[deadpool-postgres]");
        let b = slug("chaos::postgres::kill_60pct_workers[bb8-postgres]");
        assert_ne!(a, b);
        for s in [&a, &b] {
            assert!(s.len() <= 40, "{s}");
            assert!(s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'), "{s}");
        }
    }

    #[test]
    fn record_keeps_last_value_per_name() {
        let ctx = TestCtx::detached("t");
        ctx.record(Metric::lower("p95_ms", 1.0));
        ctx.record(Metric::lower("p95_ms", 2.0));
        assert_eq!(ctx.metrics(), vec![Metric::lower("p95_ms", 2.0)]);
    }
}
