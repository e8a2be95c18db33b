//! `report.html`: one self-contained page (opens from disk, no server) with
//! a summary table and SVG plots per test: the latency percentile
//! distribution against its baseline, and each per-second timeline
//! (throughput, errors, p99) with the test's events (faults) marked.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
};

use plotters::prelude::*;

use super::{junit::escape, write_atomic, Outcome, Reporter, RunSummary, TestRecord};
use crate::baseline::Baselines;

/// Writes `report.html`.
#[derive(Default)]
pub struct HtmlReporter {
    /// Baselines to draw the percentile plots against.
    pub baselines: Option<Baselines>,
}

/// Percentile metric suffixes, in plot order, with their quantile
/// (`PhaseStats::record_distribution` writes the full range p0..p99.99).
const PERCENTILES: &[(&str, f64)] = &[
    ("p0_ms", 0.0),
    ("p25_ms", 25.0),
    ("p50_ms", 50.0),
    ("p75_ms", 75.0),
    ("p90_ms", 90.0),
    ("p95_ms", 95.0),
    ("p99_ms", 99.0),
    ("p99_9_ms", 99.9),
    ("p999_ms", 99.9),
    ("p99_99_ms", 99.99),
];

/// Groups a test's percentile metrics by prefix (`phase.p95_ms` → `phase`).
fn percentile_groups(t: &TestRecord) -> BTreeMap<String, Vec<(f64, f64, String)>> {
    let mut groups: BTreeMap<String, Vec<(f64, f64, String)>> = BTreeMap::new();
    for m in &t.metrics {
        let (prefix, last) = match m.name.rsplit_once('.') {
            Some((p, l)) => (p.to_string(), l),
            None => (String::new(), m.name.as_str()),
        };
        if let Some((_, q)) = PERCENTILES.iter().find(|(s, _)| *s == last) {
            if m.value.is_finite() {
                groups.entry(prefix).or_default().push((*q, m.value, m.name.clone()));
            }
        }
    }
    for v in groups.values_mut() {
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    groups.retain(|_, v| v.len() >= 2);
    groups
}

/// The x of a percentile on a "nines" axis (HdrHistogram's 1/(1-q)): 0 → 0,
/// 50 → 0.3, 90 → 1, 99 → 2, 99.9 → 3, 99.99 → 4.
fn nines(q: f64) -> f64 {
    -(1.0 - q / 100.0).log10()
}

fn percentile_svg(title: &str, current: &[(f64, f64, String)], base: &[(f64, f64)]) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (520, 260)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let ymax = current.iter().map(|c| c.1).chain(base.iter().map(|b| b.1)).fold(0.0f64, f64::max).max(1e-3) * 1.15;
        let xmax = current.iter().map(|c| nines(c.0)).fold(3.0f64, f64::max) + 0.3;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 14))
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(48)
            .build_cartesian_2d(0.0f64..xmax, 0.0f64..ymax)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("percentile")
            .y_desc("ms")
            .x_label_formatter(&|x| {
                format!("p{:.4}", 100.0 * (1.0 - 10f64.powf(-x)))
                    .trim_end_matches('0')
                    .trim_end_matches('.')
                    .to_string()
            })
            .draw()
            .map_err(|e| e.to_string())?;
        let cur: Vec<(f64, f64)> = current.iter().map(|(q, v, _)| (nines(*q), *v)).collect();
        chart
            .draw_series(LineSeries::new(cur.clone(), BLUE.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label("this run")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE.stroke_width(2)));
        chart.draw_series(cur.iter().map(|p| Circle::new(*p, 3, BLUE.filled()))).map_err(|e| e.to_string())?;
        if !base.is_empty() {
            let b: Vec<(f64, f64)> = base.iter().map(|(q, v)| (nines(*q), *v)).collect();
            chart
                .draw_series(LineSeries::new(b, RED.stroke_width(1)))
                .map_err(|e| e.to_string())?
                .label("baseline")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED));
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// A gated metric's history: the recorded runs (oldest first), the
/// baseline value (their median) and this run's value.
fn history_svg(title: &str, history: &[f64], baseline: f64, current: f64) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (420, 220)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let all = history.iter().copied().chain([baseline, current]);
        let (lo, hi) = all.fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), x| (l.min(x), h.max(x)));
        let pad = ((hi - lo).abs() * 0.15).max(hi.abs() * 0.05).max(1e-9);
        let n = history.len() as f64 + 1.0;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 13))
            .margin(8)
            .x_label_area_size(26)
            .y_label_area_size(52)
            .build_cartesian_2d(0.5f64..n + 0.5, (lo - pad)..(hi + pad))
            .map_err(|e| e.to_string())?;
        chart.configure_mesh().x_desc("recorded runs, then this run").draw().map_err(|e| e.to_string())?;
        let pts: Vec<(f64, f64)> = history.iter().enumerate().map(|(i, v)| (i as f64 + 1.0, *v)).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), BLUE.stroke_width(1)))
            .map_err(|e| e.to_string())?
            .label("history")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE));
        chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, BLUE.filled()))).map_err(|e| e.to_string())?;
        chart
            .draw_series(LineSeries::new(vec![(0.5, baseline), (n + 0.5, baseline)], BLACK.mix(0.5)))
            .map_err(|e| e.to_string())?
            .label("baseline (median)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK.mix(0.5)));
        chart
            .draw_series([Circle::new((n, current), 5, RED.filled())])
            .map_err(|e| e.to_string())?
            .label("this run")
            .legend(|(x, y)| Circle::new((x + 8, y), 4, RED.filled()));
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// A timeline attachment: an array of objects with a time field and numeric series.
struct Timeline {
    time: Vec<f64>,
    series: BTreeMap<String, Vec<f64>>,
}

const TIME_KEYS: &[&str] = &["t_s", "second", "t", "at_s", "sec"];

fn as_timeline(v: &serde_json::Value) -> Option<Timeline> {
    let rows = v.as_array().or_else(|| v.get("points").and_then(|p| p.as_array()))?;
    let first = rows.first()?.as_object()?;
    let tkey = TIME_KEYS.iter().find(|k| first.contains_key(**k))?;
    let mut tl = Timeline { time: Vec::new(), series: BTreeMap::new() };
    for r in rows {
        let o = r.as_object()?;
        tl.time.push(o.get(*tkey)?.as_f64()?);
        for (k, x) in o {
            if k == tkey {
                continue;
            }
            if let Some(f) = x.as_f64() {
                tl.series.entry(k.clone()).or_default().push(f);
            }
        }
    }
    tl.series.retain(|_, v| v.len() == tl.time.len());
    (!tl.series.is_empty()).then_some(tl)
}

fn timeline_svg(title: &str, tl: &Timeline, events: &[(f64, String)]) -> Result<String, String> {
    let mut svg = String::new();
    {
        let names: Vec<&String> = tl.series.keys().collect();
        let h = 150 * names.len().clamp(1, 4) as u32 + 30;
        let root = SVGBackend::with_string(&mut svg, (720, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let root = root.titled(title, ("sans-serif", 14)).map_err(|e| e.to_string())?;
        let panels = root.split_evenly((names.len().clamp(1, 4), 1));
        let tmax =
            tl.time.iter().copied().fold(0.0f64, f64::max).max(events.iter().map(|e| e.0).fold(0.0, f64::max)).max(1.0);
        let colors = [BLUE, RED, GREEN, MAGENTA];
        for ((name, panel), color) in names.iter().take(4).zip(panels.iter()).zip(colors.iter()) {
            let ys = &tl.series[*name];
            let ymax = ys.iter().copied().fold(0.0f64, f64::max).max(1e-3) * 1.1;
            let mut chart = ChartBuilder::on(panel)
                .margin(6)
                .x_label_area_size(22)
                .y_label_area_size(56)
                .build_cartesian_2d(0.0f64..tmax, 0.0f64..ymax)
                .map_err(|e| e.to_string())?;
            chart.configure_mesh().y_desc(name.as_str()).x_desc("s").draw().map_err(|e| e.to_string())?;
            chart
                .draw_series(LineSeries::new(tl.time.iter().copied().zip(ys.iter().copied()), color.stroke_width(2)))
                .map_err(|e| e.to_string())?;
            for (at, _) in events {
                chart
                    .draw_series(LineSeries::new(vec![(*at, 0.0), (*at, ymax)], BLACK.mix(0.5)))
                    .map_err(|e| e.to_string())?;
            }
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// Whether the page has a section (plots, metrics, failure) for `t`.
pub(crate) fn has_section(t: &TestRecord) -> bool {
    !t.metrics.is_empty() || !t.attachments.is_empty() || t.outcome == Outcome::Failed
}

pub(crate) fn render(s: &RunSummary, baselines: Option<&Baselines>) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>poolstress report</title><style>\
         body{{font-family:sans-serif;margin:1.5em;color:#222}} table{{border-collapse:collapse}} \
         td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}} \
         .passed{{color:#176f2c}} .failed{{color:#b00020;font-weight:bold}} .skipped,.ignored{{color:#8a6d00}} \
         .plots{{display:flex;flex-wrap:wrap;gap:12px}} pre{{white-space:pre-wrap;font-size:12px;background:#f6f6f6;padding:6px}}\
         </style></head><body><h1>poolstress report</h1>\
         <p>profile <b>{}</b> · seed <b>{}</b> (replay with <code>--seed {}</code>) · {} · {} passed, {} failed, {} ignored/skipped · {:.1} s</p>",
        escape(&s.profile),
        s.seed,
        s.seed,
        escape(&s.selection),
        s.passed,
        s.failed,
        s.ignored,
        s.duration_ms / 1e3
    );
    h.push_str(&crate::baseline::verdict_block(s, true));
    h.push_str(&super::scorecard::html(&s.tests));
    let times = super::scorecard::suite_times(&s.tests);
    if !times.is_empty() {
        h.push_str(
            "<h2 id=\"suite-time\">Time per suite</h2><table><tr><th>suite</th><th>tests</th><th>test time</th></tr>",
        );
        for t in &times {
            let _ = write!(h, "<tr><td>{}</td><td>{}</td><td>{:.1} s</td></tr>", escape(&t.suite), t.tests, t.ms / 1e3);
        }
        h.push_str("</table>");
    }
    h.push_str("<table><tr><th>test</th><th>tags</th><th>outcome</th><th>time</th><th>metrics</th></tr>");
    for t in &s.tests {
        let _ = write!(
            h,
            "<tr><td><a href=\"#{id}\">{}</a></td><td>{}</td><td class=\"{o}\">{o}</td><td>{:.2} s</td><td>{}</td></tr>",
            escape(&t.name),
            escape(&t.tags.join(", ")),
            t.duration_ms / 1e3,
            t.metrics.len(),
            id = crate::ctx::slug(&t.name),
            o = serde_json::to_value(t.outcome).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default(),
        );
    }
    h.push_str("</table>");
    h.push_str(&super::layers::html(&super::layers::side_by_side(&s.tests)));
    for t in s.tests.iter().filter(|t| has_section(t)) {
        let _ = write!(h, "<h2 id=\"{}\">{}</h2>", crate::ctx::slug(&t.name), escape(&t.name));
        if let Some(m) = &t.message {
            let _ = write!(h, "<pre>{}</pre>", escape(m));
        }
        h.push_str("<div class=\"plots\">");
        let base = baselines.and_then(|b| b.get(&t.name));
        for (prefix, cur) in percentile_groups(t) {
            let b: Vec<(f64, f64)> =
                cur.iter().filter_map(|(q, _, name)| base.and_then(|b| b.get(name)).map(|bl| (*q, bl.value))).collect();
            let title = if prefix.is_empty() {
                "latency percentiles".to_string()
            } else {
                format!("{prefix}: latency percentiles")
            };
            match percentile_svg(&title, &cur, &b) {
                Ok(svg) => h.push_str(&svg),
                Err(e) => {
                    let _ = write!(h, "<p>plot failed: {}</p>", escape(&e));
                }
            }
        }
        for m in t.metrics.iter().filter(|m| m.gated) {
            let Some(b) = base.and_then(|b| b.get(&m.name)) else { continue };
            let hist = if b.history.is_empty() { vec![b.value] } else { b.history.clone() };
            match history_svg(&format!("{} (gated): history", m.name), &hist, b.value, m.value) {
                Ok(svg) => h.push_str(&svg),
                Err(e) => {
                    let _ = write!(h, "<p>plot failed: {}</p>", escape(&e));
                }
            }
        }
        let events: Vec<(f64, String)> = t.events.iter().map(|e| (e.at_ms / 1e3, e.label.clone())).collect();
        for (key, v) in &t.attachments {
            if let Some(tl) = as_timeline(v) {
                match timeline_svg(&format!("{key} (vertical lines: events)"), &tl, &events) {
                    Ok(svg) => h.push_str(&svg),
                    Err(e) => {
                        let _ = write!(h, "<p>plot failed: {}</p>", escape(&e));
                    }
                }
            }
        }
        h.push_str("</div>");
        if !t.metrics.is_empty() {
            h.push_str("<table><tr><th>metric</th><th>value</th><th>baseline</th></tr>");
            for m in &t.metrics {
                let b =
                    base.and_then(|b| b.get(&m.name)).map(|b| format!("{:.4}", b.value)).unwrap_or_else(|| "-".into());
                let name = if m.gated { format!("{} (gated)", m.name) } else { m.name.clone() };
                let _ = write!(h, "<tr><td>{}</td><td>{:.4}</td><td>{}</td></tr>", escape(&name), m.value, b);
            }
            h.push_str("</table>");
        }
        if !events.is_empty() {
            h.push_str("<p>events:</p><ul>");
            for (at, label) in &events {
                let _ = write!(h, "<li>{at:.2} s: {}</li>", escape(label));
            }
            h.push_str("</ul>");
        }
    }
    h.push_str("</body></html>\n");
    h
}

impl Reporter for HtmlReporter {
    fn name(&self) -> &'static str {
        "html"
    }

    fn run_finished(&mut self, summary: &RunSummary, dir: &Path) -> std::io::Result<Option<PathBuf>> {
        let path = dir.join("report.html");
        write_atomic(&path, render(summary, self.baselines.as_ref()).as_bytes())?;
        Ok(Some(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metric::Metric;

    fn record() -> TestRecord {
        TestRecord {
            name: "redis::throughput[bb8-redis]".into(),
            tags: vec!["redis".into()],
            outcome: Outcome::Passed,
            message: None,
            fixture_failure: false,
            duration_ms: 12.0,
            waited_ms: 0.0,
            started_ms: 0.0,
            exclusive: false,
            seed: 1,
            metrics: vec![Metric::lower("steady.p50_ms", 1.0), Metric::lower("steady.p99_ms", 4.0), Metric::lower("steady.p90_ms", 2.0)],
            events: vec![crate::ctx::Event { at_ms: 1500.0, label: "fault start: latency".into() }],
            attachments: [(
                "timeline".to_string(),
                serde_json::json!([{"t_s": 0, "ops": 10, "errors": 0, "p99_ms": 3.0}, {"t_s": 1, "ops": 12, "errors": 1, "p99_ms": 5.0}]),
            )]
            .into_iter()
            .collect(),
            notes: vec![],
        }
    }

    fn run_of(t: TestRecord) -> RunSummary {
        RunSummary {
            format_version: 1,
            started_unix_s: 0,
            profile: "quick".into(),
            seed: 7,
            selection: "all tags".into(),
            passed: 1,
            failed: 0,
            ignored: 0,
            filtered_out: 0,
            duration_ms: 20.0,
            run: BTreeMap::new(),
            tests: vec![t],
        }
    }

    #[test]
    fn renders_percentile_and_timeline_svgs() {
        let s = run_of(record());
        let html = render(&s, None);
        assert_eq!(html.matches("<svg").count(), 2, "one percentile plot and one timeline");
        assert!(html.contains("fault start: latency") && html.contains("--seed 7"));
        let groups = percentile_groups(&record());
        assert_eq!(groups["steady"].iter().map(|g| g.0).collect::<Vec<_>>(), vec![50.0, 90.0, 99.0]);
    }

    #[test]
    fn full_range_distribution_against_its_baseline_and_a_gated_history() {
        let mut t = record();
        t.attachments.clear();
        for (sfx, v) in [("p0_ms", 0.2), ("p25_ms", 0.5), ("p75_ms", 1.5), ("p99_9_ms", 8.0), ("p99_99_ms", 20.0)] {
            t.metrics.push(Metric::lower(format!("steady.{sfx}"), v));
        }
        t.metrics.push(Metric::gated("vs_driver.ops_ratio", crate::Direction::HigherIsBetter, vec![0.3, 0.31, 0.29]));
        let groups = percentile_groups(&t);
        let qs: Vec<f64> = groups["steady"].iter().map(|g| g.0).collect();
        assert_eq!(qs, vec![0.0, 25.0, 50.0, 75.0, 90.0, 99.0, 99.9, 99.99]);
        assert!((nines(99.99) - 4.0).abs() < 1e-9 && nines(0.0) == 0.0);
        let mut b = Baselines::new();
        let bl = |value: f64, history: Vec<f64>, gated| crate::baseline::Baseline {
            value,
            spread: 0.0,
            direction: crate::Direction::LowerIsBetter,
            tolerance: 0.1,
            samples: 3,
            history,
            gated,
        };
        let e = b.entry(t.name.clone()).or_default();
        e.insert("steady.p99_99_ms".into(), bl(12.0, vec![], false));
        e.insert("steady.p50_ms".into(), bl(0.9, vec![], false));
        e.insert("vs_driver.ops_ratio".into(), bl(0.45, vec![0.44, 0.45, 0.46], true));
        let s = run_of(t);
        let html = render(&s, Some(&b));
        assert_eq!(html.matches("<svg").count(), 2, "the distribution and the gated metric's history");
        assert!(html.contains("p99.99") && html.contains("baseline"), "the percentile axis reaches p99.99");
        assert!(html.contains("vs_driver.ops_ratio (gated): history") && html.contains("this run"));
    }
}
