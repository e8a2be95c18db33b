//! Run reports. Every format implements [`Reporter`]; the runner hands each
//! the same [`RunSummary`], so a new format touches nothing else.

#[cfg(feature = "html")]
mod html;
mod json;
mod junit;
pub mod layers;
pub mod merge;
pub mod scorecard;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use parking_lot::Mutex;
use serde::{Deserialize, Deserializer, Serialize};

use crate::{
    ctx::Event,
    metric::{Direction, Metric},
};

#[cfg(feature = "html")]
pub use html::HtmlReporter;
pub use json::JsonReporter;
pub use junit::JunitReporter;
pub use layers::LayersReporter;
pub use scorecard::ScorecardReporter;

/// How a test ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Ran and passed.
    Passed,
    /// Ran and failed (error, panic or deadline).
    Failed,
    /// Skipped with a reason (a capability the pool lacks, a missing TLS server).
    Skipped,
    /// Marked ignored and not asked for (`--ignored` runs it).
    Ignored,
}

/// One test's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TestRecord {
    /// Instance name.
    pub name: String,
    /// Tags.
    pub tags: Vec<String>,
    /// How it ended.
    pub outcome: Outcome,
    /// The failure, skip or ignore reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Whether the failure was a fixture that could not be provided.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fixture_failure: bool,
    /// Wall time of the test itself (from when it held the test lock).
    pub duration_ms: f64,
    /// Time spent waiting for the test lock before it ran (an exclusive test
    /// running, or shared ones still running before an exclusive one).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub waited_ms: f64,
    /// When it began to run, in ms since the run started (where the
    /// schedule put it: the report's timeline of the run).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub started_ms: f64,
    /// Whether it ran exclusive (alone: no other test beside it). The run's
    /// wall time is about the exclusive tests' sum plus the shared ones'
    /// sum over the test threads.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exclusive: bool,
    /// The test's seed.
    pub seed: u64,
    /// Named metrics the test recorded.
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "de_metrics")]
    pub metrics: Vec<Metric>,
    /// Timeline events (faults, phases).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<Event>,
    /// Structured data (timelines, per-phase stats).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attachments: BTreeMap<String, serde_json::Value>,
    /// Notes (fault schedules, findings).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

/// Metrics as report.json writes them (`samples` omitted when empty, a
/// non-finite value as `null`).
fn de_metrics<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Metric>, D::Error> {
    #[derive(Deserialize)]
    struct In {
        name: String,
        value: Option<f64>,
        direction: String,
        #[serde(default)]
        samples: Vec<Option<f64>>,
        #[serde(default)]
        gated: bool,
        #[serde(default)]
        tolerance: Option<f64>,
    }
    let v: Vec<In> = Vec::deserialize(d)?;
    v.into_iter()
        .map(|m| {
            let direction = match m.direction.as_str() {
                "lowerisbetter" => Direction::LowerIsBetter,
                "higherisbetter" => Direction::HigherIsBetter,
                other => {
                    return Err(serde::de::Error::custom(format!(
                        "metric {}: direction \"{other}\" is neither \"lowerisbetter\" nor \"higherisbetter\"",
                        m.name
                    )))
                }
            };
            Ok(Metric {
                name: m.name,
                value: m.value.unwrap_or(f64::NAN),
                direction,
                samples: m.samples.into_iter().map(|x| x.unwrap_or(f64::NAN)).collect(),
                gated: m.gated,
                tolerance: m.tolerance,
            })
        })
        .collect()
}

/// The whole run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSummary {
    /// Report format version.
    pub format_version: u32,
    /// Unix time the run started, seconds.
    pub started_unix_s: u64,
    /// Profile name.
    pub profile: String,
    /// The run seed (`--seed` replays it).
    pub seed: u64,
    /// The tag selection, described.
    pub selection: String,
    /// Counts.
    pub passed: u64,
    /// Counts.
    pub failed: u64,
    /// Skipped at run time plus ignored.
    pub ignored: u64,
    /// Filtered out by name or tag.
    pub filtered_out: u64,
    /// Wall time of the run.
    pub duration_ms: f64,
    /// Facts about the run itself (service start-up times, backend, versions).
    #[serde(default)]
    pub run: BTreeMap<String, serde_json::Value>,
    /// Every test that was selected.
    pub tests: Vec<TestRecord>,
}

/// A report format. Every method has a do-nothing default.
pub trait Reporter {
    /// Short name (`json`, `junit`).
    fn name(&self) -> &'static str;
    /// Called once at the end of the run; returns the file written, if any.
    fn run_finished(&mut self, _summary: &RunSummary, _dir: &Path) -> std::io::Result<Option<PathBuf>> {
        Ok(None)
    }
}

static RUN_FACTS: Mutex<BTreeMap<String, serde_json::Value>> = Mutex::new(BTreeMap::new());

/// Records a fact about the run for the report's `run` section (e.g. a
/// service's start-up time). Facts recorded under one key are collected
/// into a list when recorded more than once.
pub fn run_fact(key: impl Into<String>, value: impl Serialize) {
    let v = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
    let mut facts = RUN_FACTS.lock();
    match facts.entry(key.into()) {
        std::collections::btree_map::Entry::Vacant(e) => {
            e.insert(v);
        }
        std::collections::btree_map::Entry::Occupied(mut e) => {
            let cur = e.get_mut();
            if let serde_json::Value::Array(a) = cur {
                a.push(v);
            } else {
                let old = cur.take();
                *cur = serde_json::Value::Array(vec![old, v]);
            }
        }
    }
}

pub(crate) fn take_run_facts() -> BTreeMap<String, serde_json::Value> {
    RUN_FACTS.lock().clone()
}

/// Writes `contents` to `path` atomically (temp file in the same dir, then rename).
pub fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp =
        dir.join(format!(".{}.tmp-{}", path.file_name().and_then(|n| n.to_str()).unwrap_or("out"), std::process::id()));
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}
