//! Baselines: stored expectations per test instance and metric, compared
//! with noise gating after a run (`--check-baselines`), rewritten with
//! `--update-baselines`.

mod compare;
mod file;
pub mod machine;

use std::{collections::BTreeMap, fmt::Write as _, path::PathBuf};

pub use compare::{compare, spread, Comparison, Verdict, K_NOISE};
pub use file::{load, parse, update_text, Baseline, BaselineLoadError, Baselines, FORMAT_VERSION};

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
            let row = match base.and_then(|b| b.get(&m.name)) {
                Some(b) => {
                    let (delta, verdict) = compare(b, m);
                    Comparison {
                        test: t.name.clone(),
                        metric: m.name.clone(),
                        baseline: Some(b.value),
                        current: Some(m.value),
                        delta,
                        verdict,
                    }
                }
                None => Comparison {
                    test: t.name.clone(),
                    metric: m.name.clone(),
                    baseline: None,
                    current: Some(m.value),
                    delta: None,
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
    let w = rows.iter().map(|r| r.test.len() + r.metric.len() + 1).max().unwrap_or(10).max(12);
    let _ = writeln!(out, "{:<w$}  {:>12}  {:>12}  {:>9}  verdict", "test/metric", "baseline", "current", "delta");
    for r in rows {
        let _ = writeln!(
            out,
            "{:<w$}  {:>12}  {:>12}  {:>9}  {}",
            format!("{}/{}", r.test, r.metric),
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
            "| `{}` | {} | {} | {} | {} | {} |",
            r.test,
            r.metric,
            fmt_num(r.baseline),
            fmt_num(r.current),
            fmt_delta(r.delta),
            if r.verdict == Verdict::Regressed { "**REGRESSED**" } else { r.verdict.label() }
        );
    }
    out
}

/// Measured baselines of every passed test, for `--update-baselines`.
pub fn measured(summary: &RunSummary) -> Baselines {
    let mut out: Baselines = BTreeMap::new();
    for t in summary.tests.iter().filter(|t| t.outcome == Outcome::Passed) {
        for m in &t.metrics {
            if !m.value.is_finite() {
                continue;
            }
            let samples = m.samples.len().max(1) as u64;
            out.entry(t.name.clone()).or_default().insert(
                m.name.clone(),
                Baseline {
                    value: m.value,
                    spread: spread(&m.samples),
                    direction: m.direction,
                    // Repeated samples carry their own noise; single measurements get more room.
                    tolerance: if samples >= 3 { 0.10 } else { 0.5 },
                    samples,
                },
            );
        }
    }
    out
}

/// Runs after the tests: checks and/or updates baselines as the options say.
/// Returns the exit code it wants (regression, usage error), if any.
pub fn post_run(opts: &Options, summary: &RunSummary) -> Option<u8> {
    if !opts.check_baselines && !opts.update_baselines {
        return None;
    }
    let path = path_for(opts);
    let here = machine::Fingerprint::current();
    let recorded_on = std::fs::read_to_string(&path).ok().and_then(|t| machine::read(&t));
    let stored = match load(&path) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            return Some(exit::USAGE);
        }
    };
    let mut code = None;
    if opts.check_baselines {
        let rows = compare_run(&stored, summary);
        let regressed = rows.iter().filter(|r| r.verdict == Verdict::Regressed).count();
        let any_machine = std::env::var(machine::ANY_MACHINE_ENV).is_ok_and(|v| v == "1");
        let (judge, machine_line) = machine::verdict_scope(recorded_on.as_ref(), &here, any_machine);
        println!("\npoolstress: {machine_line}");
        if rows.is_empty() {
            eprintln!("poolstress: no test of this run recorded metrics; nothing to compare with {}", path.display());
        } else {
            println!(
                "\npoolstress: metrics vs {} (regression = beyond tolerance and beyond {K_NOISE}x spread)\n{}",
                path.display(),
                table(&rows)
            );
        }
        let md = format!("> {machine_line}\n\n{}", markdown(&rows, &path.display().to_string()));
        let _ = write_atomic(&opts.report_dir.join("baselines.md"), md.as_bytes());
        if let Some(summary_file) = std::env::var_os("GITHUB_STEP_SUMMARY") {
            use std::io::Write;
            if let Ok(mut f) = std::fs::OpenOptions::new().append(true).create(true).open(summary_file) {
                let _ = f.write_all(md.as_bytes());
            }
        }
        let strict_missing: Vec<&Comparison> =
            rows.iter().filter(|r| matches!(r.verdict, Verdict::New | Verdict::Missing)).collect();
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
        if regressed > 0 && !judge {
            eprintln!(
                "poolstress: {regressed} metric(s) beyond tolerance against {}, recorded on another machine: reported, \
                 not failing (record this machine's baselines with --update-baselines)",
                path.display()
            );
        } else if regressed > 0 {
            eprintln!(
                "poolstress: {regressed} metric(s) regressed against {} (exit code {})",
                path.display(),
                exit::REGRESSION
            );
            code = Some(exit::REGRESSION);
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
        let updates = measured(summary);
        if updates.is_empty() {
            eprintln!("poolstress: no metrics measured; {} left unchanged", path.display());
            return code;
        }
        let existing = std::fs::read_to_string(&path).ok();
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
                    println!("  {test}/{name}: {} -> {}", fmt_num(old), fmt_num(Some(b.value)));
                }
            }
        }
        println!("poolstress: updated {changed} baseline value(s) in {}", path.display());
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
    /// `regressed` (and judged), `regressed, not judged (another machine)`, `ok`.
    pub verdict: String,
    /// Rows per verdict.
    pub regressed: usize,
    /// See `regressed`.
    pub improved: usize,
    /// See `regressed`.
    pub within_noise: usize,
    /// See `regressed`.
    pub new: usize,
    /// See `regressed`.
    pub missing: usize,
    /// Every row that is not within noise, regressions first.
    pub rows: Vec<Comparison>,
}

/// The [`VerdictSummary`] of this run, or `None` when baselines are not checked.
pub fn verdicts(opts: &Options, summary: &RunSummary) -> Option<VerdictSummary> {
    if !opts.check_baselines {
        return None;
    }
    let path = path_for(opts);
    let stored = load(&path).ok()?;
    let recorded_on = std::fs::read_to_string(&path).ok().and_then(|t| machine::read(&t));
    let any_machine = std::env::var(machine::ANY_MACHINE_ENV).is_ok_and(|v| v == "1");
    let (judged, line) = machine::verdict_scope(recorded_on.as_ref(), &machine::Fingerprint::current(), any_machine);
    let all = compare_run(&stored, summary);
    let count = |v: Verdict| all.iter().filter(|r| r.verdict == v).count();
    let regressed = count(Verdict::Regressed);
    let mut rows: Vec<Comparison> = all.iter().filter(|r| r.verdict != Verdict::WithinNoise).cloned().collect();
    rows.sort_by_key(|r| match r.verdict {
        Verdict::Regressed => 0,
        Verdict::Improved => 1,
        Verdict::Missing => 2,
        Verdict::New => 3,
        Verdict::WithinNoise => 4,
    });
    let verdict = match (regressed, judged) {
        (0, _) => "ok".to_string(),
        (n, true) => format!("REGRESSED: {n} metric(s)"),
        (n, false) => format!("{n} metric(s) beyond tolerance, not judged (baselines of another machine)"),
    };
    Some(VerdictSummary {
        file: path.display().to_string(),
        machine: line,
        judged,
        verdict,
        regressed,
        improved: count(Verdict::Improved),
        within_noise: count(Verdict::WithinNoise),
        new: count(Verdict::New),
        missing: count(Verdict::Missing),
        rows,
    })
}

/// The verdict as HTML (top of report.html) or Markdown (top of summary.md),
/// from `run.baselines` of a summary; empty when baselines were not checked.
pub fn verdict_block(summary: &RunSummary, html: bool) -> String {
    let Some(v) = summary.run.get("baselines") else { return String::new() };
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
    let n = |k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
    let rows = v.get("rows").and_then(|r| r.as_array()).cloned().unwrap_or_default();
    let cell = |r: &serde_json::Value, k: &str| match r.get(k) {
        Some(serde_json::Value::Number(x)) if k == "delta" => fmt_delta(x.as_f64()),
        Some(serde_json::Value::Number(x)) => fmt_num(x.as_f64()),
        Some(serde_json::Value::String(x)) => x.clone(),
        _ => "-".into(),
    };
    let label = |r: &serde_json::Value| {
        let v = cell(r, "verdict");
        if v == "regressed" {
            "REGRESSED".to_string()
        } else {
            v.replace('_', " ")
        }
    };
    let counts = format!(
        "{} regressed, {} improved, {} within noise, {} new, {} missing",
        n("regressed"),
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
                    esc(&cell(r, "metric")),
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
                    cell(r, "metric"),
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
