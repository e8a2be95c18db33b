//! The same scenario at several layers, side by side: `layers.md` and a
//! table in `report.html`.
//!
//! A scenario is a test name without its instance (`[pool]`) and without
//! the segments that only say where it ran (`layer_1`, `layer_2`, `mock`,
//! `postgres`, `redis`): `chaos::layer_2::cancel_holding[bb8-redis]` and
//! `chaos::postgres::cancel_holding[bb8-postgres]` are both
//! `chaos::cancel_holding`. Its layer comes from the test's tags. Only
//! scenarios that ran at two layers or more are shown, so a failure can be
//! located: a scenario that fails at layer_3 alone points at the server or
//! the network, one that fails at layer_1 at the pool's logic.

use std::{collections::BTreeMap, fmt::Write as _, path::Path, path::PathBuf};

use super::{write_atomic, Outcome, Reporter, RunSummary, TestRecord};

/// The layers, in column order.
pub const LAYERS: [&str; 3] = ["layer_1", "layer_2", "layer_3"];

/// Name segments that say where a scenario ran, not what it is.
const PLACE_SEGMENTS: &[&str] = &["layer_1", "layer_2", "layer_3", "mock", "postgres", "redis"];

/// One layer's results for one scenario.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Cell {
    /// Instances that passed.
    pub passed: usize,
    /// Instances that failed, by instance name.
    pub failed: Vec<String>,
    /// Instances skipped or ignored.
    pub skipped: usize,
}

impl Cell {
    fn text(&self) -> String {
        let ran = self.passed + self.failed.len();
        let mut s = if ran == 0 { "skipped".to_string() } else { format!("{}/{ran} passed", self.passed) };
        if !self.failed.is_empty() {
            let _ = write!(s, "; failed: {}", self.failed.join(", "));
        }
        if self.skipped > 0 && ran > 0 {
            let _ = write!(s, " ({} skipped)", self.skipped);
        }
        s
    }
}

/// A scenario and its cell per layer (`None`: not registered at that layer).
pub type Row = (String, [Option<Cell>; 3]);

/// The scenario key and instance of a test name.
fn scenario_of(name: &str) -> (String, String) {
    let (base, instance) = match name.split_once('[') {
        Some((b, rest)) => (b, rest.trim_end_matches(']').to_string()),
        None => (name, String::new()),
    };
    let key = base.split("::").filter(|s| !PLACE_SEGMENTS.contains(s)).collect::<Vec<_>>().join("::");
    (key, instance)
}

fn layer_of(t: &TestRecord) -> Option<usize> {
    LAYERS.iter().position(|l| t.tags.iter().any(|x| x == l))
}

/// Scenarios that ran at two layers or more, in name order.
pub fn side_by_side(tests: &[TestRecord]) -> Vec<Row> {
    let mut rows: BTreeMap<String, [Option<Cell>; 3]> = BTreeMap::new();
    for t in tests {
        let Some(layer) = layer_of(t) else { continue };
        let (key, instance) = scenario_of(&t.name);
        let cell = rows.entry(key).or_default()[layer].get_or_insert_with(Cell::default);
        let instance = if instance.is_empty() { t.name.clone() } else { instance };
        match t.outcome {
            Outcome::Passed => cell.passed += 1,
            Outcome::Failed => cell.failed.push(instance),
            Outcome::Skipped | Outcome::Ignored => cell.skipped += 1,
        }
    }
    rows.into_iter().filter(|(_, cells)| cells.iter().filter(|c| c.is_some()).count() >= 2).collect()
}

/// The rows as a Markdown table (empty when no scenario ran at two layers).
pub fn markdown(rows: &[Row]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut s =
        String::from("| scenario | layer_1 (mock) | layer_2 (stand-in) | layer_3 (real server) |\n|---|---|---|---|\n");
    for (name, cells) in rows {
        let c: Vec<String> = cells.iter().map(|c| c.as_ref().map(Cell::text).unwrap_or_else(|| "—".into())).collect();
        let _ = writeln!(s, "| `{name}` | {} | {} | {} |", c[0], c[1], c[2]);
    }
    s
}

/// The rows as an HTML table.
#[cfg(feature = "html")]
pub(crate) fn html(rows: &[Row]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut h = String::from(
        "<h2>By layer</h2><p>The same scenario at each layer it ran at: a failure at one layer only \
         locates the fault (pool logic, wire protocol, real server).</p>\
         <table><tr><th>scenario</th><th>layer_1 (mock)</th><th>layer_2 (stand-in)</th><th>layer_3 (real server)</th></tr>",
    );
    for (name, cells) in rows {
        let _ = write!(h, "<tr><td>{}</td>", super::junit::escape(name));
        for c in cells {
            match c {
                None => h.push_str("<td>—</td>"),
                Some(c) => {
                    let class = if !c.failed.is_empty() {
                        "failed"
                    } else if c.passed > 0 {
                        "passed"
                    } else {
                        "skipped"
                    };
                    let _ = write!(h, "<td class=\"{class}\">{}</td>", super::junit::escape(&c.text()));
                }
            }
        }
        h.push_str("</tr>");
    }
    h.push_str("</table>");
    h
}

/// Writes `layers.md` when some scenario ran at two layers or more.
#[derive(Default)]
pub struct LayersReporter;

impl Reporter for LayersReporter {
    fn name(&self) -> &'static str {
        "layers"
    }

    fn run_finished(&mut self, summary: &RunSummary, dir: &Path) -> std::io::Result<Option<PathBuf>> {
        let md = markdown(&side_by_side(&summary.tests));
        if md.is_empty() {
            return Ok(None);
        }
        let path = dir.join("layers.md");
        write_atomic(&path, format!("# Scenarios by layer\n\n{md}").as_bytes())?;
        Ok(Some(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, tags: &[&str], outcome: Outcome) -> TestRecord {
        TestRecord {
            name: name.into(),
            tags: tags.iter().map(|s| s.to_string()).collect(),
            outcome,
            message: None,
            fixture_failure: false,
            duration_ms: 1.0,
            waited_ms: 0.0,
            started_ms: 0.0,
            exclusive: false,
            seed: 0,
            metrics: vec![],
            events: vec![],
            attachments: Default::default(),
            notes: vec![],
        }
    }

    #[test]
    fn groups_a_scenario_across_layers_and_names_failing_instances() {
        let tests = vec![
            rec("chaos::layer_1::cancel_holding[mock]", &["chaos", "layer_1"], Outcome::Passed),
            rec("chaos::layer_2::cancel_holding[bb8-redis]", &["chaos", "layer_2"], Outcome::Passed),
            rec("chaos::layer_2::cancel_holding[deadpool-redis]", &["chaos", "layer_2"], Outcome::Failed),
            rec("chaos::postgres::cancel_holding[bb8-postgres]", &["chaos", "layer_3", "postgres"], Outcome::Passed),
            rec("chaos::redis::cancel_holding[direct-redis]", &["chaos", "layer_3", "redis"], Outcome::Skipped),
            // one layer only: not shown
            rec("layer2::redis::stall_then_heal[bb8-redis]", &["layer_2"], Outcome::Passed),
            // no layer tag: not shown
            rec("mine::smoke", &[], Outcome::Passed),
        ];
        let rows = side_by_side(&tests);
        assert_eq!(rows.len(), 1, "{rows:?}");
        let (name, cells) = &rows[0];
        assert_eq!(name, "chaos::cancel_holding");
        assert_eq!(cells[0], Some(Cell { passed: 1, failed: vec![], skipped: 0 }));
        assert_eq!(cells[1], Some(Cell { passed: 1, failed: vec!["deadpool-redis".into()], skipped: 0 }));
        assert_eq!(cells[2], Some(Cell { passed: 1, failed: vec![], skipped: 1 }));
        let md = markdown(&rows);
        assert!(md.contains("| `chaos::cancel_holding` | 1/1 passed | 1/2 passed; failed: deadpool-redis | 1/1 passed (1 skipped) |"), "{md}");
        #[cfg(feature = "html")]
        assert!(html(&rows).contains("class=\"failed\""));
    }

    #[test]
    fn nothing_at_two_layers_writes_nothing() {
        let tests = vec![rec("a::x[p]", &["layer_3"], Outcome::Passed)];
        assert!(markdown(&side_by_side(&tests)).is_empty());
    }
}
