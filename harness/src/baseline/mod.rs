//! Baselines: stored expectations per test instance and metric, compared
//! with noise gating after a run (`--check-baselines`), rewritten with
//! `--update-baselines`.

mod compare;
mod file;

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
        if rows.is_empty() {
            eprintln!("poolstress: no test of this run recorded metrics; nothing to compare with {}", path.display());
        } else {
            println!(
                "\npoolstress: metrics vs {} (regression = beyond tolerance and beyond {K_NOISE}x spread)\n{}",
                path.display(),
                table(&rows)
            );
        }
        let md = markdown(&rows, &path.display().to_string());
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
        if regressed > 0 {
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
        let text = match update_text(existing.as_deref(), opts.profile.name(), &updates) {
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
