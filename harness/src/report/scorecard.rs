//! The scorecard: every scenario against every pool, one cell per test, at
//! the top of `report.html` and in `summary.md`.
//!
//! A scenario is a test name without its instance (`[pool]`); unlike
//! [`super::layers`] it keeps every segment, so
//! `chaos::postgres::kill_60pct_workers[deadpool-postgres]` and
//! `chaos::redis::kill_60pct_workers[bb8-redis]` are different rows. The
//! columns are the pools, in the order they first appear in the run. Tests
//! without an instance are not on the scorecard; a run with none of them
//! has no scorecard.
//!
//! `summary.md` opens with a one-line verdict (counts, profile, seed) and
//! is appended to `$GITHUB_STEP_SUMMARY` when that is set.

use std::{collections::BTreeMap, fmt::Write as _, path::Path, path::PathBuf};

#[cfg(feature = "html")]
use super::junit::escape;
use super::{write_atomic, Outcome, Reporter, RunSummary, TestRecord};

/// Longest failure reason shown in a cell, in characters.
const FAILED_REASON_CHARS: usize = 100;

/// Longest skip or finding reason shown in a cell, in characters.
const SHORT_REASON_CHARS: usize = 60;

/// What a cell says about one pool's run of one scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Ran and passed.
    Passed,
    /// Ran and failed.
    Failed,
    /// Skipped (a knob the pool lacks).
    Skipped,
    /// Ignored: a known finding, kept failing.
    Finding,
}

impl Status {
    fn of(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Passed => Status::Passed,
            Outcome::Failed => Status::Failed,
            Outcome::Skipped => Status::Skipped,
            Outcome::Ignored => Status::Finding,
        }
    }

    /// The CSS class `report.html` colours this status with.
    #[cfg(feature = "html")]
    fn class(self) -> &'static str {
        match self {
            Status::Passed => "passed",
            Status::Failed => "failed",
            Status::Skipped => "skipped",
            Status::Finding => "ignored",
        }
    }
}

/// One pool's result for one scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    /// How it ended.
    pub status: Status,
    /// One line: `✓ p99_ms 4.21`, `✗ <first line of the failure>`,
    /// `skipped: lacks min_idle`, `finding: <reason>`.
    pub text: String,
    /// The full reason (the test's message), or the test name when it has
    /// none; the HTML cell's tooltip.
    pub detail: String,
    /// The full test name.
    pub test: String,
}

/// Per-pool counts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// Cells that passed.
    pub passed: usize,
    /// Cells that failed.
    pub failed: usize,
    /// Cells skipped.
    pub skipped: usize,
    /// Cells ignored as kept findings.
    pub findings: usize,
}

impl Totals {
    fn add(&mut self, status: Status) {
        match status {
            Status::Passed => self.passed += 1,
            Status::Failed => self.failed += 1,
            Status::Skipped => self.skipped += 1,
            Status::Finding => self.findings += 1,
        }
    }

    /// `3 passed / 1 failed / 2 skipped / 1 finding`.
    pub fn text(&self) -> String {
        format!(
            "{} passed / {} failed / {} skipped / {} finding{}",
            self.passed,
            self.failed,
            self.skipped,
            self.findings,
            if self.findings == 1 { "" } else { "s" }
        )
    }
}

/// A scenario and its cell per pool (`None`: that pool has no such test),
/// in the order of [`Scorecard::pools`].
pub type Row = (String, Vec<Option<Cell>>);

/// The scenario × pool matrix of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Scorecard {
    /// The pools (instances), in order of first appearance in the run.
    pub pools: Vec<String>,
    /// The scenarios, in name order.
    pub rows: Vec<Row>,
    /// Per pool, in the order of `pools`.
    pub totals: Vec<Totals>,
}

/// The scenario and the instance of a test name
/// (`a::b[pool]` → `("a::b", "pool")`), or `None` without an instance.
pub fn split_instance(name: &str) -> Option<(&str, &str)> {
    let base = name.strip_suffix(']')?;
    let (scenario, instance) = base.rsplit_once('[')?;
    (!scenario.is_empty() && !instance.is_empty()).then_some((scenario, instance))
}

/// `s` cut to `max` characters, with an ellipsis when cut.
fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.truncate(out.trim_end().len());
    out.push('…');
    out
}

fn first_line(s: &str) -> &str {
    s.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("")
}

/// A metric value with three significant digits (whole numbers from 100
/// up, integers as they are), without trailing zeros.
pub fn format_value(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    if v == v.trunc() && v.abs() < 1e15 {
        return format!("{v:.0}");
    }
    if v.abs() >= 100.0 {
        return format!("{v:.0}");
    }
    let decimals = (2 - v.abs().log10().floor() as i32).clamp(0, 12) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// A skip reason, short: `tiny-pool lacks min_idle: …` → `lacks min_idle`.
fn short_skip(reason: &str, pool: &str) -> String {
    let line = first_line(reason);
    let line = line.strip_prefix(pool).map(str::trim_start).unwrap_or(line);
    let line = line.split_once(": ").map(|(head, _)| head).unwrap_or(line);
    truncate(line, SHORT_REASON_CHARS)
}

/// The metric a test's cell shows: the one it named with
/// [`TestCtx::key_metric`](crate::TestCtx::key_metric), else the first whose
/// name says recovery, a p99, a throughput or a p50, else the first.
pub fn key_metric(t: &TestRecord) -> Option<&crate::metric::Metric> {
    if let Some(name) = t.attachments.get(crate::ctx::KEY_METRIC).and_then(|v| v.as_str()) {
        if let Some(m) = t.metrics.iter().find(|m| m.name == name) {
            return Some(m);
        }
    }
    const PREFERRED: [&str; 5] = ["recovery_ms", "p99", "ops_s", "per_s", "p50"];
    PREFERRED.iter().find_map(|p| t.metrics.iter().find(|m| m.name.contains(p))).or_else(|| t.metrics.first())
}

fn cell_of(t: &TestRecord, pool: &str) -> Cell {
    let status = Status::of(t.outcome);
    let message = t.message.as_deref().map(str::trim).filter(|m| !m.is_empty());
    let text = match status {
        Status::Passed => match key_metric(t) {
            Some(m) => format!("✓ {} {}", m.name, format_value(m.value)),
            None => "✓".to_string(),
        },
        Status::Failed => match message {
            Some(m) => format!("✗ {}", truncate(first_line(m), FAILED_REASON_CHARS)),
            None => "✗ failed".to_string(),
        },
        Status::Skipped => match message {
            Some(m) => format!("skipped: {}", short_skip(m, pool)),
            None => "skipped".to_string(),
        },
        Status::Finding => match message {
            Some(m) => format!("finding: {}", truncate(first_line(m), SHORT_REASON_CHARS)),
            None => "finding".to_string(),
        },
    };
    Cell { status, text, detail: message.unwrap_or(&t.name).to_string(), test: t.name.clone() }
}

/// The scorecard of `tests`; `None` when no test has an instance. When one
/// scenario has two tests for the same pool, the first is shown.
pub fn scorecard(tests: &[TestRecord]) -> Option<Scorecard> {
    let mut pools: Vec<String> = Vec::new();
    let mut by_scenario: BTreeMap<&str, Vec<Option<Cell>>> = BTreeMap::new();
    for t in tests {
        let Some((scenario, pool)) = split_instance(&t.name) else { continue };
        let col = match pools.iter().position(|p| p == pool) {
            Some(i) => i,
            None => {
                pools.push(pool.to_string());
                pools.len() - 1
            }
        };
        let cells = by_scenario.entry(scenario).or_default();
        if cells.len() <= col {
            cells.resize(col + 1, None);
        }
        if cells[col].is_none() {
            cells[col] = Some(cell_of(t, pool));
        }
    }
    if pools.is_empty() {
        return None;
    }
    let mut totals = vec![Totals::default(); pools.len()];
    let rows: Vec<Row> = by_scenario
        .into_iter()
        .map(|(scenario, mut cells)| {
            cells.resize(pools.len(), None);
            for (total, cell) in totals.iter_mut().zip(&cells) {
                if let Some(c) = cell {
                    total.add(c.status);
                }
            }
            (scenario.to_string(), cells)
        })
        .collect();
    Some(Scorecard { pools, rows, totals })
}

/// The verdict line `summary.md` opens with.
pub fn verdict(s: &RunSummary) -> String {
    format!(
        "**{} passed, {} failed, {} skipped/ignored** · profile `{}` · seed {} (replay with `--seed {}`)",
        s.passed, s.failed, s.ignored, s.profile, s.seed, s.seed
    )
}

/// A table cell's text made safe for Markdown: one line, `|` escaped,
/// no HTML tags.
fn md_cell(s: &str) -> String {
    s.replace(['\n', '\r'], " ").replace('|', "\\|").replace('<', "&lt;")
}

/// The scorecard as a Markdown table, with a totals row.
pub fn markdown_table(card: &Scorecard) -> String {
    let mut s = String::from("| scenario |");
    for p in &card.pools {
        let _ = write!(s, " {} |", md_cell(p));
    }
    s.push_str("\n|---|");
    s.push_str(&"---|".repeat(card.pools.len()));
    s.push('\n');
    for (name, cells) in &card.rows {
        let _ = write!(s, "| `{}` |", md_cell(name));
        for c in cells {
            let text = c.as_ref().map(|c| md_cell(&c.text)).unwrap_or_else(|| "–".into());
            let _ = write!(s, " {text} |");
        }
        s.push('\n');
    }
    s.push_str("| **totals** |");
    for t in &card.totals {
        let _ = write!(s, " {} |", t.text());
    }
    s.push('\n');
    s
}

/// `summary.md`: the verdict line, then the scorecard when there is one.
pub fn markdown(s: &RunSummary) -> String {
    let mut md = verdict(s);
    md.push('\n');
    let baselines = crate::baseline::verdict_block(s, false);
    if !baselines.is_empty() {
        let _ = write!(md, "\n{baselines}");
    }
    if let Some(card) = scorecard(&s.tests) {
        let _ = write!(md, "\n## Scorecard\n\n{}", markdown_table(&card));
    }
    let times = suite_times(&s.tests);
    if !times.is_empty() {
        md.push_str("\n## Time per suite\n\n| suite | tests | test time (s) |\n|---|---|---|\n");
        for t in &times {
            let _ = writeln!(md, "| `{}` | {} | {:.1} |", t.suite, t.tests, t.ms / 1e3);
        }
    }
    md
}

/// The test time of one suite in a run.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SuiteTime {
    /// `chaos::postgres`, `stress::redis`, `harness`: a test name's first two
    /// segments (its first alone when it has only two).
    pub suite: String,
    /// Tests of it that ran or were skipped.
    pub tests: usize,
    /// The sum of their wall times (tests may overlap: this is not the run's wall time).
    pub ms: f64,
    /// The part of `ms` of tests that ran exclusive (one at a time: every
    /// ms of it is a ms of the run's wall time).
    pub exclusive_ms: f64,
}

/// The suite a test belongs to: its name's first two segments, or its first
/// when it has no more than two.
pub fn suite_of(name: &str) -> String {
    let base = name.split('[').next().unwrap_or(name);
    let segs: Vec<&str> = base.split("::").collect();
    if segs.len() > 2 {
        segs[..2].join("::")
    } else {
        segs[0].to_string()
    }
}

/// Test time per suite, longest first, so the next regression in suite time is visible.
pub fn suite_times(tests: &[TestRecord]) -> Vec<SuiteTime> {
    let mut by: Vec<SuiteTime> = Vec::new();
    for t in tests {
        let suite = suite_of(&t.name);
        let exclusive_ms = if t.exclusive { t.duration_ms } else { 0.0 };
        match by.iter_mut().find(|s| s.suite == suite) {
            Some(s) => {
                s.tests += 1;
                s.ms += t.duration_ms;
                s.exclusive_ms += exclusive_ms;
            }
            None => by.push(SuiteTime { suite, tests: 1, ms: t.duration_ms, exclusive_ms }),
        }
    }
    by.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    by
}

/// The scorecard as an HTML heading and table (empty without a scorecard).
#[cfg(feature = "html")]
pub(crate) fn html(tests: &[TestRecord]) -> String {
    let Some(card) = scorecard(tests) else { return String::new() };
    let mut h = String::from("<h2 id=\"scorecard\">Scorecard</h2><table><tr><th>scenario</th>");
    for p in &card.pools {
        let _ = write!(h, "<th>{}</th>", escape(p));
    }
    h.push_str("</tr>");
    let linked: Vec<&str> = tests.iter().filter(|t| super::html::has_section(t)).map(|t| t.name.as_str()).collect();
    for (name, cells) in &card.rows {
        let _ = write!(h, "<tr><td>{}</td>", escape(name));
        for c in cells {
            let Some(c) = c else {
                h.push_str("<td>–</td>");
                continue;
            };
            let text = escape(&c.text);
            let text = if linked.contains(&c.test.as_str()) {
                format!("<a class=\"{}\" href=\"#{}\">{text}</a>", c.status.class(), crate::ctx::slug(&c.test))
            } else {
                text
            };
            let _ = write!(h, "<td class=\"{}\" title=\"{}\">{text}</td>", c.status.class(), escape(&c.detail));
        }
        h.push_str("</tr>");
    }
    h.push_str("<tr><th>totals</th>");
    for t in &card.totals {
        let _ = write!(h, "<th>{}</th>", escape(&t.text()));
    }
    h.push_str("</tr></table>");
    h
}

/// Writes `summary.md` (verdict and scorecard) and appends it to
/// `$GITHUB_STEP_SUMMARY` when that is set.
#[derive(Default)]
pub struct ScorecardReporter;

/// Writes `summary.md` into `dir` and appends it to `step_summary`, if any.
fn write_summary(summary: &RunSummary, dir: &Path, step_summary: Option<&Path>) -> std::io::Result<PathBuf> {
    let md = markdown(summary);
    let path = dir.join("summary.md");
    write_atomic(&path, md.as_bytes())?;
    if let Some(file) = step_summary {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).create(true).open(file)?;
        f.write_all(format!("{md}\n").as_bytes())?;
    }
    Ok(path)
}

impl Reporter for ScorecardReporter {
    fn name(&self) -> &'static str {
        "summary"
    }

    fn run_finished(&mut self, summary: &RunSummary, dir: &Path) -> std::io::Result<Option<PathBuf>> {
        let step_summary = std::env::var_os("GITHUB_STEP_SUMMARY").filter(|v| !v.is_empty()).map(PathBuf::from);
        write_summary(summary, dir, step_summary.as_deref()).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metric::Metric;

    fn rec(name: &str, outcome: Outcome, message: Option<&str>, metrics: Vec<Metric>) -> TestRecord {
        TestRecord {
            name: name.into(),
            tags: vec![],
            outcome,
            message: message.map(str::to_string),
            fixture_failure: false,
            duration_ms: 1.0,
            waited_ms: 0.0,
            started_ms: 0.0,
            exclusive: false,
            seed: 0,
            metrics,
            events: vec![],
            attachments: Default::default(),
            notes: vec![],
        }
    }

    fn long_failure() -> String {
        format!("pool handed out a dead connection {}\nsecond line with detail", "x".repeat(120))
    }

    fn summary() -> RunSummary {
        let tests = vec![
            rec(
                "stress::postgres::exhaustion::max_size_enforced[tiny-pool]",
                Outcome::Passed,
                None,
                vec![Metric::lower("p99_ms", 4.21875), Metric::higher("ops_s", 1000.0)],
            ),
            rec(
                "stress::postgres::exhaustion::max_size_enforced[deadpool-postgres]",
                Outcome::Failed,
                Some(&long_failure()),
                vec![],
            ),
            rec(
                "chaos::postgres::kill_60pct_workers[deadpool-postgres]",
                Outcome::Skipped,
                Some("deadpool-postgres lacks min_idle: deadpool keeps no idle floor"),
                vec![],
            ),
            rec(
                "chaos::postgres::kill_60pct_workers[tiny-pool]",
                Outcome::Ignored,
                Some("tiny 0.3: a killed worker's connection is returned | not dropped"),
                vec![],
            ),
            rec("conformance::redis::acquire_release[tiny-pool]", Outcome::Passed, None, vec![]),
            rec("mine::smoke", Outcome::Failed, Some("not on the scorecard"), vec![]),
        ];
        RunSummary {
            format_version: 1,
            started_unix_s: 0,
            profile: "quick".into(),
            seed: 42,
            selection: "all tags".into(),
            passed: 2,
            failed: 2,
            ignored: 2,
            filtered_out: 0,
            duration_ms: 10.0,
            run: BTreeMap::new(),
            tests,
        }
    }

    fn cell<'a>(card: &'a Scorecard, scenario: &str, pool: &str) -> Option<&'a Cell> {
        let col = card.pools.iter().position(|p| p == pool).expect(pool);
        let row =
            card.rows.iter().find(|(n, _)| n == scenario).unwrap_or_else(|| panic!("no row {scenario}: {card:?}"));
        row.1[col].as_ref()
    }

    #[test]
    fn baseline_verdict_opens_summary_md_and_report_html() {
        let mut s = summary();
        let row = |verdict: &str, delta: f64| {
            serde_json::json!({"test": "bench::x[p]", "metric": "read.p50_ms", "baseline": 1.0, "current": 1.0 + delta,
                "delta": delta, "verdict": verdict, "gated": verdict == "regressed"})
        };
        s.run.insert(
            "baselines".into(),
            serde_json::json!({"file": "baselines/quick.toml", "machine": "baselines recorded on this machine",
                "judged": true, "verdict": "REGRESSED: 1 gated metric(s)", "gated": 1, "regressed": 1, "worse": 1,
                "improved": 1, "within_noise": 7, "new": 0, "missing": 0,
                "rows": [row("regressed", 2.0), row("improved", -0.5), row("worse", 0.8)]}),
        );
        let md = markdown(&s);
        let at = md.find("### Baselines: REGRESSED: 1 gated metric(s)").expect(&md);
        assert!(at < md.find("## Scorecard").expect(&md), "{md}");
        assert!(
            md.contains("**REGRESSED**")
                && md.contains("+200.0%")
                && md.contains("1 gated: 1 regressed")
                && md.contains("1 worse (not gated)")
                && md.contains("read.p50_ms (gated)"),
            "{md}"
        );
        let html = crate::baseline::verdict_block(&s, true);
        assert!(
            html.contains("class=\"failed\">REGRESSED: 1 gated metric(s)")
                && html.contains("<td class=\"failed\">REGRESSED</td>")
                && html.contains("worse (not gated)"),
            "{html}"
        );
        s.run.remove("baselines");
        assert!(!markdown(&s).contains("Baselines"), "no check, no verdict block");
    }

    #[test]
    fn splits_the_instance_off_the_name() {
        assert_eq!(
            split_instance("chaos::layer_2::cancel_holding[bb8-redis]"),
            Some(("chaos::layer_2::cancel_holding", "bb8-redis"))
        );
        assert_eq!(split_instance("mine::smoke"), None);
        assert_eq!(split_instance("a::b[]"), None);
    }

    #[test]
    fn formats_three_significant_digits() {
        assert_eq!(format_value(4.21875), "4.22");
        assert_eq!(format_value(0.0012345), "0.00123");
        assert_eq!(format_value(12.5), "12.5");
        assert_eq!(format_value(2.5), "2.5");
        assert_eq!(format_value(1234.56), "1235");
        assert_eq!(format_value(1000.0), "1000");
        assert_eq!(format_value(f64::NAN), "NaN");
    }

    #[test]
    fn matrix_has_a_cell_per_pool_and_scenario() {
        let card = scorecard(&summary().tests).expect("a scorecard");
        assert_eq!(card.pools, vec!["tiny-pool", "deadpool-postgres"], "order of first appearance");
        let names: Vec<&str> = card.rows.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "chaos::postgres::kill_60pct_workers",
                "conformance::redis::acquire_release",
                "stress::postgres::exhaustion::max_size_enforced"
            ],
            "sorted by name; tests without an instance left out"
        );

        let passed = cell(&card, "stress::postgres::exhaustion::max_size_enforced", "tiny-pool").unwrap();
        assert_eq!((passed.status, passed.text.as_str()), (Status::Passed, "✓ p99_ms 4.22"));

        let failed = cell(&card, "stress::postgres::exhaustion::max_size_enforced", "deadpool-postgres").unwrap();
        assert_eq!(failed.status, Status::Failed);
        assert!(failed.text.starts_with("✗ pool handed out a dead connection x"), "{}", failed.text);
        assert!(failed.text.ends_with('…'), "{}", failed.text);
        assert_eq!(failed.text.chars().count(), 2 + FAILED_REASON_CHARS, "{}", failed.text);
        assert!(!failed.text.contains("second line"));
        assert_eq!(failed.detail, long_failure(), "the full reason is kept for the tooltip");

        let skipped = cell(&card, "chaos::postgres::kill_60pct_workers", "deadpool-postgres").unwrap();
        assert_eq!((skipped.status, skipped.text.as_str()), (Status::Skipped, "skipped: lacks min_idle"));

        let finding = cell(&card, "chaos::postgres::kill_60pct_workers", "tiny-pool").unwrap();
        assert_eq!(finding.status, Status::Finding);
        assert_eq!(finding.text, "finding: tiny 0.3: a killed worker's connection is returned | not dr…");

        assert_eq!(cell(&card, "conformance::redis::acquire_release", "tiny-pool").unwrap().text, "✓");
        assert_eq!(cell(&card, "conformance::redis::acquire_release", "deadpool-postgres"), None);

        assert_eq!(card.totals[0], Totals { passed: 2, failed: 0, skipped: 0, findings: 1 });
        assert_eq!(card.totals[1], Totals { passed: 0, failed: 1, skipped: 1, findings: 0 });
        assert_eq!(card.totals[1].text(), "0 passed / 1 failed / 1 skipped / 0 findings");
    }

    #[test]
    fn markdown_opens_with_the_verdict_then_the_table() {
        let md = markdown(&summary());
        assert_eq!(
            md.lines().next(),
            Some("**2 passed, 2 failed, 2 skipped/ignored** · profile `quick` · seed 42 (replay with `--seed 42`)")
        );
        assert!(md.contains("| scenario | tiny-pool | deadpool-postgres |\n|---|---|---|\n"), "{md}");
        assert!(md.contains("| `conformance::redis::acquire_release` | ✓ | – |"), "{md}");
        assert!(md.contains("returned \\| not dr…"), "`|` escaped: {md}");
        assert!(md.contains("| **totals** | 2 passed / 0 failed / 0 skipped / 1 finding | 0 passed / 1 failed / 1 skipped / 0 findings |"), "{md}");
        assert!(!md.contains("mine::smoke"));
    }

    #[cfg(feature = "html")]
    #[test]
    fn html_puts_the_scorecard_before_the_test_table() {
        let html = super::super::html::render(&summary(), None);
        let card = html.find("<h2 id=\"scorecard\">Scorecard</h2>").expect("a scorecard");
        let tests = html.find("<th>test</th>").expect("the per-test table");
        assert!(html.find("</p>").unwrap() < card && card < tests, "{html}");
        assert!(html.contains("<td class=\"skipped\" title=\"deadpool-postgres lacks min_idle: deadpool keeps no idle floor\">skipped: lacks min_idle</td>"), "{html}");
        assert!(html.contains("class=\"ignored\" title=\"tiny 0.3: a killed worker&apos;s connection"), "{html}");
        assert!(html.contains("<td class=\"failed\" title=\"pool handed out"), "{html}");
        assert!(html.contains("<td>–</td>"));
    }

    #[test]
    fn no_instance_no_scorecard() {
        let mut s = summary();
        s.tests.retain(|t| split_instance(&t.name).is_none());
        assert!(scorecard(&s.tests).is_none());
        #[cfg(feature = "html")]
        assert!(!super::super::html::render(&s, None).contains("id=\"scorecard\""));
        let md = markdown(&s);
        assert!(md.starts_with("**2 passed") && !md.contains("Scorecard"), "{md}");
    }

    #[test]
    fn reporter_writes_summary_md_and_appends_to_the_step_summary() {
        let dir = tempfile::tempdir().unwrap();
        let step = dir.path().join("step_summary.md");
        std::fs::write(&step, "earlier step\n").unwrap();
        let path = write_summary(&summary(), dir.path(), Some(&step)).unwrap();
        assert_eq!(path, dir.path().join("summary.md"));
        let written = std::fs::read_to_string(&path).unwrap();
        assert!(written.starts_with("**2 passed, 2 failed") && written.contains("## Scorecard"), "{written}");
        assert_eq!(std::fs::read_to_string(&step).unwrap(), format!("earlier step\n{written}\n"));
    }

    #[test]
    fn the_key_metric_is_the_named_one_else_a_preferred_kind_else_the_first() {
        let ms = || {
            vec![
                Metric::higher("load.ok", 10.0),
                Metric::lower("load.p50_ms", 1.0),
                Metric::lower("kill_recovery_ms", 50.0),
            ]
        };
        let t = rec("chaos::postgres::kill[p]", Outcome::Passed, None, ms());
        assert_eq!(key_metric(&t).unwrap().name, "kill_recovery_ms");
        let mut named = rec("chaos::postgres::kill[p]", Outcome::Passed, None, ms());
        named.attachments.insert(crate::ctx::KEY_METRIC.into(), serde_json::json!("load.ok"));
        assert_eq!(key_metric(&named).unwrap().name, "load.ok");
        let plain = rec(
            "x::y[p]",
            Outcome::Passed,
            None,
            vec![Metric::higher("cancelled_workers", 3.0), Metric::higher("n", 1.0)],
        );
        assert_eq!(key_metric(&plain).unwrap().name, "cancelled_workers");
        assert_eq!(cell_of(&t, "p").text, "✓ kill_recovery_ms 50");
    }

    #[test]
    fn suite_times_group_by_the_first_two_segments_longest_first() {
        let t = |n: &str, ms: f64| TestRecord { duration_ms: ms, ..rec(n, Outcome::Passed, None, vec![]) };
        let tests = vec![
            TestRecord { exclusive: true, ..t("chaos::postgres::kill[a]", 1000.0) },
            t("chaos::postgres::cancel[b]", 500.0),
            t("stress::redis::exhaustion::x[a]", 3000.0),
            t("harness::guard", 10.0),
        ];
        let times = suite_times(&tests);
        let got: Vec<(&str, usize, f64, f64)> =
            times.iter().map(|s| (s.suite.as_str(), s.tests, s.ms, s.exclusive_ms)).collect();
        assert_eq!(
            got,
            vec![("stress::redis", 1, 3000.0, 0.0), ("chaos::postgres", 2, 1500.0, 1000.0), ("harness", 1, 10.0, 0.0)]
        );
        let s = RunSummary {
            format_version: 1,
            started_unix_s: 0,
            profile: "quick".into(),
            seed: 1,
            selection: String::new(),
            passed: 4,
            failed: 0,
            ignored: 0,
            filtered_out: 0,
            duration_ms: 3000.0,
            run: Default::default(),
            tests,
        };
        let md = markdown(&s);
        assert!(md.contains("## Time per suite") && md.contains("| `chaos::postgres` | 2 | 1.5 |"), "{md}");
    }
}
