//! Baselines: stored expectations per test instance and metric, compared
//! with noise gating after a run (`--check-baselines`), rewritten with
//! `--update-baselines`.

mod compare;
mod file;
pub mod machine;

use std::{collections::BTreeMap, fmt::Write as _, path::PathBuf};

pub use compare::{compare, history_spread, spread, Comparison, Judged, Verdict, K_NOISE, MIN_HISTORY};
pub use file::{load, parse, update_text, Baseline, BaselineLoadError, Baselines, FORMAT_VERSION, HISTORY_WINDOW};

use crate::{
    cli::Options,
    exit,
    report::{write_atomic, Outcome, RunSummary},
};

/// The baseline file of a profile: `<baseline-dir>/<profile>.toml`.
pub fn path_for(opts: &Options) -> PathBuf {
    opts.baseline_dir.join(format!("{}.toml", opts.profile))
}

/// Compares every metric of every passed test with `stored`.
pub fn compare_run(stored: &Baselines, summary: &RunSummary) -> Vec<Comparison> {
    let mut rows = Vec::new();
    for t in summary.tests.iter().filter(|t| t.outcome == Outcome::Passed) {
        let base = stored.get(&t.name);
        for m in &t.metrics {
            let gated = m.gated && m.samples.len() >= crate::metric::MIN_GATED_SAMPLES;
            let row = match base.and_then(|b| b.get(&m.name)) {
                Some(b) => {
                    let j = compare(b, m);
                    Comparison {
                        test: t.name.clone(),
                        metric: m.name.clone(),
                        baseline: Some(b.value),
                        current: Some(m.value),
                        delta: Some(j.delta),
                        gated,
                        threshold: Some(j.threshold),
                        verdict: j.verdict,
                    }
                }
                None => Comparison {
                    test: t.name.clone(),
                    metric: m.name.clone(),
                    baseline: None,
                    current: Some(m.value),
                    delta: None,
                    gated,
                    threshold: None,
                    verdict: Verdict::New,
                },
            };
            rows.push(row);
        }
        if let Some(b) = base {
            for (name, bl) in b {
                if !t.metrics.iter().any(|m| &m.name == name) {
                    rows.push(Comparison {
                        test: t.name.clone(),
                        metric: name.clone(),
                        baseline: Some(bl.value),
                        current: None,
                        delta: None,
                        gated: bl.gated,
                        threshold: None,
                        verdict: Verdict::Missing,
                    });
                }
            }
        }
    }
    rows
}

fn fmt_num(x: Option<f64>) -> String {
    match x {
        None => "-".into(),
        Some(v) if v.abs() >= 1e5 => format!("{v:.3e}"),
        Some(v) if v.abs() >= 100.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.3}"),
    }
}

fn fmt_delta(d: Option<f64>) -> String {
    match d {
        None => "-".into(),
        Some(d) if d.is_infinite() => "new nonzero".into(),
        Some(d) => format!("{:+.1}%", d * 100.0),
    }
}

/// A plain-text table (console).
pub fn table(rows: &[Comparison]) -> String {
    let mut out = String::new();
    let w = rows.iter().map(|r| r.test.len() + r.metric.len() + 10).max().unwrap_or(10).max(12);
    let _ = writeln!(out, "{:<w$}  {:>12}  {:>12}  {:>9}  verdict", "test/metric", "baseline", "current", "delta");
    for r in rows {
        let _ = writeln!(
            out,
            "{:<w$}  {:>12}  {:>12}  {:>9}  {}",
            format!("{}/{}{}", r.test, r.metric, if r.gated { " [gated]" } else { "" }),
            fmt_num(r.baseline),
            fmt_num(r.current),
            fmt_delta(r.delta),
            r.verdict.label()
        );
    }
    out
}

/// A Markdown table (for `$GITHUB_STEP_SUMMARY`).
pub fn markdown(rows: &[Comparison], file: &str) -> String {
    let mut out = format!("### poolstress baselines ({file})\n\n| test | metric | baseline | current | delta | verdict |\n|---|---|---:|---:|---:|---|\n");
    for r in rows {
        let _ = writeln!(
            out,
            "| `{}` | {}{} | {} | {} | {} | {} |",
            r.test,
            r.metric,
            if r.gated { " (gated)" } else { "" },
            fmt_num(r.baseline),
            fmt_num(r.current),
            fmt_delta(r.delta),
            if r.verdict == Verdict::Regressed { "**REGRESSED**" } else { r.verdict.label() }
        );
    }
    out
}

/// Measured baselines of every passed test, for `--update-baselines`: each
/// metric's run value is appended to its stored history (the last
/// [`HISTORY_WINDOW`] runs; the new value is their median). Once the history
/// holds [`MIN_HISTORY`] runs, a run that is a step change against it (judged
/// beyond tolerance and the history's noise: an accepted regression or
/// improvement) starts a new history, listed in the returned restarts, so
/// the old level does not hold the gate for the next nine runs.
pub fn measured(summary: &RunSummary, stored: &Baselines) -> (Baselines, Vec<String>) {
    let mut out: Baselines = BTreeMap::new();
    let mut restarts = Vec::new();
    for t in summary.tests.iter().filter(|t| t.outcome == Outcome::Passed) {
        for m in &t.metrics {
            if !m.value.is_finite() {
                continue;
            }
            let samples = m.samples.len().max(1) as u64;
            let old = stored.get(&t.name).and_then(|b| b.get(&m.name));
            let mut history = match old {
                None => Vec::new(),
                Some(o) if o.history.is_empty() => vec![o.value],
                Some(o) => o.history.clone(),
            };
            // A step change needs a known noise: only a history of at least
            // MIN_HISTORY runs can tell a new level from run-to-run spread
            // (before that, every run is appended).
            if let Some(o) = old.filter(|o| o.history.len() >= MIN_HISTORY) {
                let v = compare(o, m).verdict;
                if matches!(v, Verdict::Regressed | Verdict::Worse | Verdict::Improved) {
                    history.clear();
                    if m.gated {
                        restarts.push(format!(
                            "{}/{}: {} -> {} (a step change: history restarted)",
                            t.name,
                            m.name,
                            fmt_num(Some(o.value)),
                            fmt_num(Some(m.value))
                        ));
                    }
                }
            }
            history.push(m.value);
            if history.len() > HISTORY_WINDOW {
                history.drain(..history.len() - HISTORY_WINDOW);
            }
            let gated = m.gated && m.samples.len() >= crate::metric::MIN_GATED_SAMPLES;
            out.entry(t.name.clone()).or_default().insert(
                m.name.clone(),
                Baseline {
                    value: crate::metric::median(&history),
                    spread: spread(&m.samples),
                    direction: m.direction,
                    // Gated metrics: a change of 20 % is what they exist to
                    // catch, beyond their noise. Other repeated samples carry
                    // their own noise; single measurements get more room.
                    tolerance: if let Some(t) = m.tolerance {
                        t
                    } else if gated {
                        0.20
                    } else if samples >= 3 {
                        0.10
                    } else {
                        0.5
                    },
                    samples,
                    history,
                    gated,
                },
            );
        }
    }
    (out, restarts)
}

/// Runs after the tests: checks and/or updates baselines as the options say.
/// Returns the exit code it wants (regression, usage error), if any.
pub fn post_run(opts: &Options, summary: &RunSummary) -> Option<u8> {
    if !opts.check_baselines && !opts.update_baselines {
        return None;
    }
    let path = path_for(opts);
    let stored = match load(&path) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            return Some(exit::USAGE);
        }
    };
    let mut code = None;
    if opts.check_baselines {
        let (v, all) = judge(opts, &stored, summary);
        println!("\npoolstress: {}", v.machine);
        if all.is_empty() {
            eprintln!("poolstress: no test of this run recorded metrics; nothing to compare with {}", path.display());
        } else {
            // Every gated metric, and the recorded ones that moved; the
            // rest (within noise) are counted.
            let shown: Vec<Comparison> =
                all.iter().filter(|r| r.gated || r.verdict != Verdict::WithinNoise).cloned().collect();
            println!(
                "\npoolstress: metrics vs {} (a gated metric regresses beyond its tolerance and {K_NOISE}x its spread; \
                 recorded metrics are shown, never fail)\n{}{} more within noise",
                path.display(),
                table(&shown),
                all.len() - shown.len()
            );
        }
        let md = format!("> {}\n\n{}", v.machine, markdown(&all, &path.display().to_string()));
        let _ = write_atomic(&opts.report_dir.join("baselines.md"), md.as_bytes());
        if let Some(summary_file) = std::env::var_os("GITHUB_STEP_SUMMARY") {
            use std::io::Write;
            if let Ok(mut f) = std::fs::OpenOptions::new().append(true).create(true).open(summary_file) {
                let _ = f.write_all(md.as_bytes());
            }
        }
        let strict_missing: Vec<&Comparison> =
            all.iter().filter(|r| matches!(r.verdict, Verdict::New | Verdict::Missing)).collect();
        if opts.strict_baselines && !strict_missing.is_empty() {
            for r in &strict_missing {
                eprintln!(
                    "error: {} baseline for \"{}\" metric {} in {}; record it with `cargo test --test stress -- --profile {} --update-baselines`",
                    if r.verdict == Verdict::New { "no" } else { "no measurement for the" },
                    r.test,
                    r.metric,
                    path.display(),
                    opts.profile
                );
            }
            code = Some(exit::REGRESSION);
        }
        if v.regressed > 0 && !v.judged {
            eprintln!(
                "poolstress: {} gated metric(s) beyond tolerance against {}, recorded on another machine: reported, \
                 not failing (record this machine's baselines with --update-baselines)",
                v.regressed,
                path.display()
            );
        } else if v.regressed > 0 {
            let names: Vec<String> = v
                .rows
                .iter()
                .filter(|r| r.verdict == Verdict::Regressed)
                .map(|r| format!("{}/{}", r.test, r.metric))
                .collect();
            eprintln!(
                "poolstress: {} gated metric(s) regressed against {} (exit code {}): {}",
                v.regressed,
                path.display(),
                exit::REGRESSION,
                names.join(", ")
            );
            code = Some(exit::REGRESSION);
        }
        if v.worse > 0 {
            println!(
                "poolstress: {} recorded (not gated) metric(s) moved the wrong way; they do not fail the run",
                v.worse
            );
        }
        if (!v.judged || stored.is_empty()) && !opts.update_baselines && summary.failed == 0 {
            // No baselines of this machine: record them beside the reports
            // instead of failing, for the next run (or a pull request) to adopt.
            let (updates, _) = measured(summary, &Baselines::new());
            let own = opts.report_dir.join("baselines").join(format!("{}.toml", opts.profile));
            let here = machine::Fingerprint::current();
            if !updates.is_empty() {
                match update_text(None, opts.profile.name(), &updates, Some(&here))
                    .map_err(std::io::Error::other)
                    .and_then(|t| write_atomic(&own, t.as_bytes()))
                {
                    Ok(()) => println!(
                        "poolstress: {} holds no baselines of this machine; this run's are recorded in {} \
                         (copy it over {} to adopt them)",
                        path.display(),
                        own.display(),
                        path.display()
                    ),
                    Err(e) => {
                        eprintln!("poolstress: could not record this machine's baselines in {}: {e}", own.display())
                    }
                }
            }
        }
    }
    if opts.update_baselines {
        if summary.failed > 0 {
            eprintln!(
                "poolstress: not updating {}: {} test(s) failed in this run; fix them first",
                path.display(),
                summary.failed
            );
            return Some(exit::TEST_FAILURE);
        }
        let (updates, restarts) = measured(summary, &stored);
        if updates.is_empty() {
            eprintln!("poolstress: no metrics measured; {} left unchanged", path.display());
            return code;
        }
        let existing = std::fs::read_to_string(&path).ok();
        let here = machine::Fingerprint::current();
        let text = match update_text(existing.as_deref(), opts.profile.name(), &updates, Some(&here)) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {}: {e}", path.display());
                return Some(exit::USAGE);
            }
        };
        if let Err(e) = write_atomic(&path, text.as_bytes()) {
            eprintln!("error: could not write {}: {e}", path.display());
            return Some(exit::USAGE);
        }
        let mut changed = 0;
        for (test, metrics) in &updates {
            for (name, b) in metrics {
                let old = stored.get(test).and_then(|m| m.get(name)).map(|o| o.value);
                if old != Some(b.value) {
                    changed += 1;
                    if b.gated {
                        println!("  {test}/{name}: {} -> {} (gated)", fmt_num(old), fmt_num(Some(b.value)));
                    }
                }
            }
        }
        for r in &restarts {
            println!("  {r}");
        }
        println!(
            "poolstress: updated {changed} baseline value(s) in {} (each metric's history: its last {HISTORY_WINDOW} recorded runs)",
            path.display()
        );
    }
    code
}

/// The comparison with the baselines, for every reporter: put in the run
/// summary (`run.baselines` in report.json) before the reports are written,
/// when `--check-baselines` is on and the baselines file loads.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VerdictSummary {
    /// The baselines file.
    pub file: String,
    /// Where it was recorded, and whether its regressions are judged here.
    pub machine: String,
    /// Whether a regression fails the run (false: recorded on another machine).
    pub judged: bool,
    /// `REGRESSED: n metric(s)` (and judged), `... not judged (another machine)`, `ok`.
    pub verdict: String,
    /// Gated metrics compared.
    pub gated: usize,
    /// Rows per verdict: gated metrics that regressed.
    pub regressed: usize,
    /// Recorded (not gated) metrics that moved the wrong way.
    pub worse: usize,
    /// See `regressed`.
    pub improved: usize,
    /// See `regressed`.
    pub within_noise: usize,
    /// See `regressed`.
    pub new: usize,
    /// See `regressed`.
    pub missing: usize,
    /// Every gated row and every row that is not within noise, regressions first.
    pub rows: Vec<Comparison>,
}

/// The verdict summary and every comparison row.
fn judge(opts: &Options, stored: &Baselines, summary: &RunSummary) -> (VerdictSummary, Vec<Comparison>) {
    let path = path_for(opts);
    let recorded_on = std::fs::read_to_string(&path).ok().and_then(|t| machine::read(&t));
    let any_machine = std::env::var(machine::ANY_MACHINE_ENV).is_ok_and(|v| v == "1");
    let (judged, line) = machine::verdict_scope(recorded_on.as_ref(), &machine::Fingerprint::current(), any_machine);
    let all = compare_run(stored, summary);
    let count = |v: Verdict| all.iter().filter(|r| r.verdict == v).count();
    let regressed = count(Verdict::Regressed);
    let mut rows: Vec<Comparison> =
        all.iter().filter(|r| r.gated || r.verdict != Verdict::WithinNoise).cloned().collect();
    rows.sort_by_key(|r| {
        (
            match r.verdict {
                Verdict::Regressed => 0,
                Verdict::Improved => 2,
                Verdict::Worse => 3,
                Verdict::Missing => 4,
                Verdict::New => 5,
                Verdict::WithinNoise => 1,
            },
            !r.gated,
        )
    });
    let verdict = match (regressed, judged) {
        (0, _) => "ok".to_string(),
        (n, true) => format!("REGRESSED: {n} gated metric(s)"),
        (n, false) => format!("{n} gated metric(s) beyond tolerance, not judged (baselines of another machine)"),
    };
    let v = VerdictSummary {
        file: path.display().to_string(),
        machine: line,
        judged,
        verdict,
        gated: all.iter().filter(|r| r.gated).count(),
        regressed,
        worse: count(Verdict::Worse),
        improved: count(Verdict::Improved),
        within_noise: count(Verdict::WithinNoise),
        new: count(Verdict::New),
        missing: count(Verdict::Missing),
        rows,
    };
    (v, all)
}

/// The [`VerdictSummary`] of this run, or `None` when baselines are not checked.
pub fn verdicts(opts: &Options, summary: &RunSummary) -> Option<VerdictSummary> {
    if !opts.check_baselines {
        return None;
    }
    let stored = load(&path_for(opts)).ok()?;
    Some(judge(opts, &stored, summary).0)
}

/// The verdict as HTML (top of report.html) or Markdown (top of summary.md),
/// from `run.baselines` of a summary; empty when baselines were not checked.
pub fn verdict_block(summary: &RunSummary, html: bool) -> String {
    let Some(v) = summary.run.get("baselines") else { return String::new() };
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
    let n = |k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
    let rows = v.get("rows").and_then(|r| r.as_array()).cloned().unwrap_or_default();
    let metric = |r: &serde_json::Value| {
        let name = r.get("metric").and_then(|m| m.as_str()).unwrap_or("-");
        if r.get("gated").and_then(|g| g.as_bool()) == Some(true) {
            format!("{name} (gated)")
        } else {
            name.to_string()
        }
    };
    let cell = |r: &serde_json::Value, k: &str| match r.get(k) {
        Some(serde_json::Value::Number(x)) if k == "delta" => fmt_delta(x.as_f64()),
        Some(serde_json::Value::Number(x)) => fmt_num(x.as_f64()),
        Some(serde_json::Value::String(x)) => x.clone(),
        _ => "-".into(),
    };
    let label = |r: &serde_json::Value| {
        let v = cell(r, "verdict");
        match v.as_str() {
            "regressed" => "REGRESSED".to_string(),
            "worse" => "worse (not gated)".to_string(),
            _ => v.replace('_', " "),
        }
    };
    let counts = format!(
        "{} gated: {} regressed · recorded: {} worse (not gated) · {} improved, {} within noise, {} new, {} missing",
        n("gated"),
        n("regressed"),
        n("worse"),
        n("improved"),
        n("within_noise"),
        n("new"),
        n("missing")
    );
    let mut out = String::new();
    if html {
        let esc = |x: &str| x.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
        let class = if n("regressed") > 0 && v.get("judged").and_then(|j| j.as_bool()) == Some(true) {
            "failed"
        } else {
            "passed"
        };
        let _ = write!(
            out,
            "<h2 id=\"baselines\">Baselines: <span class=\"{class}\">{}</span></h2><p>{} · {} · {}</p>",
            esc(&s("verdict")),
            esc(&s("file")),
            esc(&s("machine")),
            counts
        );
        if !rows.is_empty() {
            out.push_str(
                "<table><tr><th>test</th><th>metric</th><th>baseline</th><th>current</th><th>delta</th><th>verdict</th></tr>",
            );
            for r in &rows {
                let l = label(r);
                let _ = write!(
                    out,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td></tr>",
                    esc(&cell(r, "test")),
                    esc(&metric(r)),
                    cell(r, "baseline"),
                    cell(r, "current"),
                    cell(r, "delta"),
                    if l == "REGRESSED" { "failed" } else { "passed" },
                    l
                );
            }
            out.push_str("</table>");
        }
    } else {
        let _ = writeln!(out, "### Baselines: {}\n\n{} · {} · {}\n", s("verdict"), s("file"), s("machine"), counts);
        if !rows.is_empty() {
            out.push_str("| test | metric | baseline | current | delta | verdict |\n|---|---|---:|---:|---:|---|\n");
            for r in &rows {
                let l = label(r);
                let _ = writeln!(
                    out,
                    "| `{}` | {} | {} | {} | {} | {} |",
                    cell(r, "test"),
                    metric(r),
                    cell(r, "baseline"),
                    cell(r, "current"),
                    cell(r, "delta"),
                    if l == "REGRESSED" { "**REGRESSED**".to_string() } else { l }
                );
            }
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::TestRecord;

    fn run_with(metrics: Vec<Metric>) -> RunSummary {
        RunSummary {
            format_version: 1,
            started_unix_s: 0,
            profile: "quick".into(),
            seed: 1,
            selection: "all".into(),
            passed: 1,
            failed: 0,
            ignored: 0,
            filtered_out: 0,
            duration_ms: 1.0,
            run: BTreeMap::new(),
            tests: vec![TestRecord {
                name: "bench::x[p]".into(),
                tags: vec![],
                outcome: Outcome::Passed,
                message: None,
                fixture_failure: false,
                duration_ms: 1.0,
                waited_ms: 0.0,
                started_ms: 0.0,
                exclusive: false,
                seed: 1,
                metrics,
                events: vec![],
                attachments: BTreeMap::new(),
                notes: vec![],
            }],
        }
    }

    use crate::metric::{Direction, Metric};

    fn ratio(v: f64) -> Metric {
        Metric::gated("ratio", Direction::HigherIsBetter, vec![v, v * 1.01, v * 0.99])
    }

    #[test]
    fn updates_append_to_a_bounded_history_and_a_step_change_restarts_it() {
        let mut stored = Baselines::new();
        for (i, v) in [1.00, 1.02, 0.98, 1.01, 0.99, 1.00, 1.03, 0.97, 1.00, 1.01, 1.02, 0.99].iter().enumerate() {
            let (up, restarts) = measured(&run_with(vec![ratio(*v)]), &stored);
            assert!(restarts.is_empty(), "run {i}: {restarts:?}");
            stored = up;
            let b = &stored["bench::x[p]"]["ratio"];
            assert_eq!(b.history.len(), (i + 1).min(HISTORY_WINDOW), "run {i}");
            assert_eq!(*b.history.last().unwrap(), *v);
            assert!(b.gated && b.tolerance == 0.20);
        }
        let b = &stored["bench::x[p]"]["ratio"];
        assert!((b.value - crate::metric::median(&b.history)).abs() < 1e-12);
        // An accepted 40 % drop is a new level: the history starts again there.
        // (A short history only appends: its noise is not known yet.)
        let mut short = Baselines::new();
        for v in [1.0, 0.6, 1.0] {
            let (up, restarts) = measured(&run_with(vec![ratio(v)]), &short);
            assert!(restarts.is_empty(), "{restarts:?}");
            short = up;
        }
        assert_eq!(short["bench::x[p]"]["ratio"].history, vec![1.0, 0.6, 1.0]);
        let (up, restarts) = measured(&run_with(vec![ratio(0.6)]), &stored);
        assert_eq!(restarts.len(), 1, "{restarts:?}");
        assert!(restarts[0].contains("history restarted"), "{restarts:?}");
        assert_eq!(up["bench::x[p]"]["ratio"].history, vec![0.6]);
        assert_eq!(up["bench::x[p]"]["ratio"].value, 0.6);
    }

    #[test]
    fn a_file_without_history_seeds_it_with_its_value() {
        let mut stored = Baselines::new();
        stored.entry("bench::x[p]".into()).or_default().insert(
            "ratio".into(),
            Baseline {
                value: 1.0,
                spread: 0.01,
                direction: Direction::HigherIsBetter,
                tolerance: 0.2,
                samples: 3,
                history: vec![],
                gated: false,
            },
        );
        let (up, _) = measured(&run_with(vec![ratio(1.02)]), &stored);
        assert_eq!(up["bench::x[p]"]["ratio"].history, vec![1.0, 1.02]);
    }
}
