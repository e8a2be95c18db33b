use std::path::{Path, PathBuf};

use super::{write_atomic, Reporter, RunSummary};

/// Writes `report.json`: every test with its tags, outcome, duration and
/// metrics, plus the run's facts.
#[derive(Default)]
pub struct JsonReporter {
    /// File name inside the report dir (default `report.json`).
    pub file_name: Option<String>,
}

impl Reporter for JsonReporter {
    fn name(&self) -> &'static str {
        "json"
    }

    fn run_finished(&mut self, summary: &RunSummary, dir: &Path) -> std::io::Result<Option<PathBuf>> {
        let path = dir.join(self.file_name.as_deref().unwrap_or("report.json"));
        let body = serde_json::to_vec_pretty(summary).map_err(std::io::Error::other)?;
        write_atomic(&path, &body)?;
        Ok(Some(path))
    }
}
