//! Merging the reports of several processes into one: nextest's processes
//! (one report per test), CI shards (`--partition`), and the hosts of one
//! fleet load (`--segment i/n`).
//!
//! - **Tests** are the union of the inputs'. A test in more than one input is
//!   an error naming it and the files, unless the inputs are the segments of
//!   one fleet load (`run.segment` set): then they must be every segment
//!   `1/n ..= n/n`, once each, and become one record.
//! - **Segments** merge exactly: each phase's histograms (`histograms`, V2
//!   compressed, base64) are added ([`hdrhistogram::Histogram::add`]), so the
//!   merged percentiles are those of the union of every op's latency; counts
//!   (started, ok, errors by class, cancelled, missed) and target rates are
//!   summed; the achieved rate is the total ok ops over the common window
//!   (earliest phase start to the last op completed anywhere). The phase
//!   metrics (`<prefix>.p99_ms`, `.throughput_ops_s`, ...) are recomputed from
//!   the merged phases; a test's other metrics were per process and are left
//!   out (a note names them). Timelines and other attachments are kept per
//!   segment (`<key> [segment i/n]`).
//! - The **run** facts are kept where the inputs agree, listed per input where
//!   they differ; `run.merged_from` lists the inputs.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

use super::{Outcome, RunSummary, TestRecord};
use crate::{
    load::Segment,
    metric::Metric,
    metrics::{hist, Latency},
};

/// Why inputs cannot be merged; the message names the file or test and
/// says what to do.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct MergeError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, MergeError> {
    Err(MergeError(msg.into()))
}

/// The report files named by `paths`: files as given, directories walked
/// for every `*.json` under them (sorted). `exclude` (the merged report
/// about to be written) is left out.
pub fn collect_inputs(paths: &[PathBuf], exclude: &Path) -> Result<Vec<PathBuf>, MergeError> {
    let exclude = std::fs::canonicalize(exclude).ok();
    let mut out = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|e| {
            MergeError(format!("--merge {}: {e} (give report.json files or directories holding them)", p.display()))
        })?;
        if meta.is_dir() {
            let mut found = Vec::new();
            walk(p, &mut found).map_err(|e| MergeError(format!("--merge {}: {e}", p.display())))?;
            found.sort();
            if found.is_empty() {
                return err(format!("--merge {}: no *.json file under this directory", p.display()));
            }
            out.extend(found);
        } else {
            out.push(p.clone());
        }
    }
    out.retain(|p| exclude.is_none() || std::fs::canonicalize(p).ok() != exclude);
    let mut seen = BTreeSet::new();
    out.retain(|p| seen.insert(std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())));
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            walk(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "json") {
            out.push(p);
        }
    }
    Ok(())
}

/// Reads one report.json.
pub fn read_report(path: &Path) -> Result<RunSummary, MergeError> {
    let text = std::fs::read(path).map_err(|e| MergeError(format!("{}: {e}", path.display())))?;
    serde_json::from_slice(&text).map_err(|e| {
        MergeError(format!(
            "{}: not a poolstress report.json ({e}); give the report.json files poolstress wrote \
             (under nextest: <report-dir>/nextest/<run-id>/*.json), or directories holding only those",
            path.display()
        ))
    })
}

fn segment_of(s: &RunSummary, file: &Path) -> Result<Option<Segment>, MergeError> {
    match s.run.get("segment") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(v)) => v
            .parse::<Segment>()
            .map(|s| (!s.is_whole()).then_some(s))
            .map_err(|e| MergeError(format!("{}: run.segment: {e}", file.display()))),
        Some(other) => err(format!("{}: run.segment is {other}, expected a string like \"2/3\"", file.display())),
    }
}

/// Merges reports (with the files they came from, for messages) into one
/// run summary. `run.suite_time` and `run.baselines` are left for the
/// caller to compute.
pub fn merge(inputs: Vec<(PathBuf, RunSummary)>) -> Result<RunSummary, MergeError> {
    if inputs.is_empty() {
        return err("nothing to merge: no report given");
    }
    let profiles: BTreeSet<&str> = inputs.iter().map(|(_, s)| s.profile.as_str()).collect();
    if profiles.len() > 1 {
        return err(format!(
            "the reports come from different profiles ({}): baselines are per profile; merge the reports of one profile",
            profiles.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    let mut segments = Vec::with_capacity(inputs.len());
    for (f, s) in &inputs {
        segments.push(segment_of(s, f)?);
    }
    // Test name -> (input index, record).
    let mut by_name: BTreeMap<String, Vec<(usize, TestRecord)>> = BTreeMap::new();
    for (i, (_, s)) in inputs.iter().enumerate() {
        for t in &s.tests {
            by_name.entry(t.name.clone()).or_default().push((i, t.clone()));
        }
    }
    let mut tests = Vec::with_capacity(by_name.len());
    for (name, copies) in by_name {
        let segs: Vec<Option<Segment>> = copies.iter().map(|(i, _)| segments[*i]).collect();
        if segs.iter().all(Option::is_none) {
            if copies.len() > 1 {
                let files: Vec<String> = copies.iter().map(|(i, _)| inputs[*i].0.display().to_string()).collect();
                return err(format!(
                    "test {name} is in more than one report ({}): every test must come from one shard. \
                     Was the same report given twice, or did two shards run the test? (Reports of one fleet load \
                     run with --segment i/n are merged into one test.)",
                    files.join(", ")
                ));
            }
            tests.push(copies.into_iter().next().map(|(_, t)| t).expect("one copy"));
            continue;
        }
        let files = |i: usize| inputs[i].0.display().to_string();
        if let (Some(seg), Some(whole)) =
            (copies.iter().find(|(i, _)| segments[*i].is_some()), copies.iter().find(|(i, _)| segments[*i].is_none()))
        {
            return err(format!(
                "test {name}: {} ran it as a segment of a fleet load but {} ran it whole; merge one or the other",
                files(seg.0),
                files(whole.0)
            ));
        }
        let mut parts: Vec<(Segment, String, TestRecord)> = Vec::new();
        for ((i, t), s) in copies.into_iter().zip(segs) {
            parts.push((s.expect("every copy is a segment"), files(i), t));
        }
        parts.sort_by_key(|p| p.0.index());
        let n = parts[0].0.count();
        if let Some(p) = parts.iter().find(|p| p.0.count() != n) {
            return err(format!(
                "test {name}: segments of {n} and of {} ({}): merge the segments of one fleet load",
                p.0.count(),
                p.1
            ));
        }
        for w in parts.windows(2) {
            if w[0].0 == w[1].0 {
                return err(format!("test {name}: segment {} is in both {} and {}", w[0].0, w[0].1, w[1].1));
            }
        }
        let have: BTreeSet<u32> = parts.iter().map(|p| p.0.index()).collect();
        let missing: Vec<String> = (1..=n).filter(|i| !have.contains(i)).map(|i| format!("{i}/{n}")).collect();
        if !missing.is_empty() {
            return err(format!(
                "test {name}: segment(s) {} missing: the fleet's rate and percentiles need every segment's report",
                missing.join(", ")
            ));
        }
        tests.push(merge_segments(&name, parts)?);
    }
    tests.sort_by(|a, b| a.name.cmp(&b.name));

    let first = &inputs[0].1;
    let start_ms = inputs.iter().map(|(_, s)| s.started_unix_s as f64 * 1e3).fold(f64::INFINITY, f64::min);
    let end_ms =
        inputs.iter().map(|(_, s)| s.started_unix_s as f64 * 1e3 + s.duration_ms).fold(f64::NEG_INFINITY, f64::max);
    let selections: BTreeSet<&str> = inputs.iter().map(|(_, s)| s.selection.as_str()).collect();
    let count = |o: &[Outcome]| tests.iter().filter(|t| o.contains(&t.outcome)).count() as u64;
    let mut run = merge_facts(&inputs);
    let merged_from: Vec<Value> = inputs
        .iter()
        .zip(&segments)
        .map(|((f, s), seg)| {
            json!({
                "file": f.display().to_string(),
                "tests": s.tests.len(),
                "seed": s.seed,
                "started_unix_s": s.started_unix_s,
                "segment": seg.map(|s| s.to_string()),
            })
        })
        .collect();
    run.insert("merged_from".into(), Value::Array(merged_from));
    Ok(RunSummary {
        format_version: inputs.iter().map(|(_, s)| s.format_version).max().unwrap_or(1),
        started_unix_s: inputs.iter().map(|(_, s)| s.started_unix_s).min().unwrap_or(0),
        profile: first.profile.clone(),
        seed: first.seed,
        selection: selections.into_iter().collect::<Vec<_>>().join(" + "),
        passed: count(&[Outcome::Passed]),
        failed: count(&[Outcome::Failed]),
        ignored: count(&[Outcome::Skipped, Outcome::Ignored]),
        filtered_out: 0,
        duration_ms: (end_ms - start_ms).max(0.0),
        run,
        tests,
    })
}

/// Facts every input agrees on are kept; others become a list of each
/// input's value. Per-run verdicts are dropped (the caller recomputes them).
fn merge_facts(inputs: &[(PathBuf, RunSummary)]) -> BTreeMap<String, Value> {
    const DROP: &[&str] = &["baselines", "suite_time", "segment", "start_at_unix_ms", "merged_from"];
    let keys: BTreeSet<&String> = inputs.iter().flat_map(|(_, s)| s.run.keys()).collect();
    let mut out = BTreeMap::new();
    for k in keys {
        if DROP.contains(&k.as_str()) {
            continue;
        }
        let vals: Vec<&Value> = inputs.iter().filter_map(|(_, s)| s.run.get(k)).collect();
        if vals.len() == inputs.len() && vals.windows(2).all(|w| w[0] == w[1]) {
            out.insert(k.clone(), vals[0].clone());
        } else {
            out.insert(k.clone(), Value::Array(vals.into_iter().cloned().collect()));
        }
    }
    if let Some(Value::String(s)) = inputs[0].1.run.get("segment") {
        if let Ok(seg) = s.parse::<Segment>() {
            out.insert("segments".into(), json!(seg.count()));
        }
    }
    out
}

/// One test's segments (sorted, complete) as one record.
fn merge_segments(name: &str, parts: Vec<(Segment, String, TestRecord)>) -> Result<TestRecord, MergeError> {
    let first = &parts[0].2;
    let outcomes: BTreeSet<String> = parts.iter().map(|p| format!("{:?}", p.2.outcome)).collect();
    let failed = parts.iter().any(|p| p.2.outcome == Outcome::Failed);
    let outcome = if failed || outcomes.len() > 1 { Outcome::Failed } else { first.outcome };
    let mut messages: Vec<String> =
        parts.iter().filter_map(|(s, _, t)| t.message.as_ref().map(|m| format!("segment {s}: {m}"))).collect();
    if !failed && outcomes.len() > 1 {
        let each: Vec<String> = parts.iter().map(|(s, _, t)| format!("{s} {:?}", t.outcome).to_lowercase()).collect();
        messages.insert(0, format!("the segments ended differently ({})", each.join(", ")));
    }
    let mut events: Vec<crate::Event> = parts
        .iter()
        .flat_map(|(s, _, t)| {
            t.events.iter().map(move |e| crate::Event { at_ms: e.at_ms, label: format!("[{s}] {}", e.label) })
        })
        .collect();
    events.sort_by(|a, b| a.at_ms.total_cmp(&b.at_ms));
    let mut notes: Vec<String> =
        parts.iter().flat_map(|(s, _, t)| t.notes.iter().map(move |n| format!("[{s}] {n}"))).collect();

    // Attachments: load stats merged exactly, others kept per segment.
    let keys: BTreeSet<&String> = parts.iter().flat_map(|p| p.2.attachments.keys()).collect();
    let mut attachments = BTreeMap::new();
    let mut phases: Vec<(String, Value)> = Vec::new();
    for key in keys {
        let vals: Vec<(&Segment, &String, Option<&Value>)> =
            parts.iter().map(|(s, f, t)| (s, f, t.attachments.get(key))).collect();
        let stats_like = vals.iter().all(|(_, _, v)| v.is_some_and(is_stats));
        if stats_like {
            let vs: Vec<(&String, &Value)> = vals.iter().map(|(_, f, v)| (*f, v.expect("checked"))).collect();
            let merged = merge_stats(name, key, &vs)?;
            let prefix = key.strip_suffix(".stats").unwrap_or(key).to_string();
            if let Some(ps) = merged.get("phases").and_then(Value::as_array) {
                for p in ps {
                    let pname = p.get("name").and_then(Value::as_str).unwrap_or_default();
                    phases.push((format!("{prefix}.{pname}"), p.clone()));
                }
            } else {
                phases.push((prefix, merged.clone()));
            }
            attachments.insert(key.clone(), merged);
        } else {
            for (i, (s, _, v)) in vals.iter().enumerate() {
                if let Some(v) = v {
                    let k = if i == 0 { key.clone() } else { format!("{key} [segment {s}]") };
                    attachments.insert(k, (*v).clone());
                }
            }
        }
    }
    // Metrics: the phase metrics recomputed from the merged phases.
    let mut metrics = Vec::new();
    let mut dropped = Vec::new();
    for m in &first.metrics {
        match phase_metric(&phases, &m.name) {
            Some(v) => metrics.push(Metric { value: v, samples: Vec::new(), ..m.clone() }),
            None => dropped.push(m.name.clone()),
        }
    }
    if !dropped.is_empty() {
        notes.insert(
            0,
            format!(
                "merged from {} segments: metrics recomputed from the merged load phases; left out (per process, \
                 see each segment's report): {}",
                parts.len(),
                dropped.join(", ")
            ),
        );
    }
    Ok(TestRecord {
        name: name.to_string(),
        tags: first.tags.clone(),
        outcome,
        message: (!messages.is_empty()).then(|| messages.join("\n")),
        fixture_failure: failed && parts.iter().filter(|p| p.2.outcome == Outcome::Failed).all(|p| p.2.fixture_failure),
        duration_ms: parts.iter().map(|p| p.2.duration_ms).fold(0.0, f64::max),
        waited_ms: parts.iter().map(|p| p.2.waited_ms).fold(0.0, f64::max),
        started_ms: parts.iter().map(|p| p.2.started_ms).fold(f64::INFINITY, f64::min),
        exclusive: parts.iter().any(|p| p.2.exclusive),
        seed: first.seed,
        metrics,
        events,
        attachments,
        notes,
    })
}

/// A phase's stats (`record_into`'s `<prefix>.stats`) or a plan's (`{"phases": [...]}`).
fn is_stats(v: &Value) -> bool {
    let phase = |p: &Value| p.get("histograms").is_some_and(Value::is_object) && p.get("ok").is_some();
    phase(v) || v.get("phases").and_then(Value::as_array).is_some_and(|a| !a.is_empty() && a.iter().all(phase))
}

fn merge_stats(test: &str, key: &str, vs: &[(&String, &Value)]) -> Result<Value, MergeError> {
    if vs[0].1.get("phases").is_none() {
        let parts: Vec<&Value> = vs.iter().map(|v| v.1).collect();
        return merge_phases(test, key, &parts);
    }
    let lists: Vec<&Vec<Value>> = vs.iter().filter_map(|v| v.1.get("phases").and_then(Value::as_array)).collect();
    if lists.len() != vs.len() || lists.iter().any(|l| l.len() != lists[0].len()) {
        return err(format!("test {test}: attachment {key} has different phases in different segments ({})", vs[1].0));
    }
    let mut out = vs[0].1.clone();
    let mut merged = Vec::new();
    for i in 0..lists[0].len() {
        let parts: Vec<&Value> = lists.iter().map(|l| &l[i]).collect();
        merged.push(merge_phases(test, key, &parts)?);
    }
    out["phases"] = Value::Array(merged);
    Ok(out)
}

fn num(v: &Value, k: &str) -> f64 {
    v.get(k).and_then(Value::as_f64).unwrap_or(0.0)
}

fn int(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

const LATENCY_FIELDS: [&str; 6] = ["latency", "error_latency", "service", "send_lag", "acquire", "op_time"];

/// The same phase of every segment, merged (see the module docs).
pub fn merge_phases(test: &str, key: &str, parts: &[&Value]) -> Result<Value, MergeError> {
    let name = parts[0].get("name").cloned().unwrap_or(Value::Null);
    if let Some(p) = parts.iter().find(|p| p.get("name").cloned().unwrap_or(Value::Null) != name) {
        return err(format!(
            "test {test}: attachment {key}: phase {name} in one segment is phase {} in another",
            p.get("name").cloned().unwrap_or(Value::Null)
        ));
    }
    let mut out: Map<String, Value> = parts[0].as_object().cloned().unwrap_or_default();
    for k in ["started", "ok", "cancelled", "missed"] {
        out.insert(k.into(), json!(parts.iter().map(|p| int(p, k)).sum::<u64>()));
    }
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for p in parts {
        if let Some(m) = p.get("errors").and_then(Value::as_object) {
            for (c, n) in m {
                *errors.entry(c.clone()).or_default() += n.as_u64().unwrap_or(0);
            }
        }
    }
    out.insert("errors".into(), json!(errors));
    for k in ["target_rate_ops_s", "send_rate_ops_s"] {
        if parts.iter().all(|p| p.get(k).is_some_and(Value::is_number)) {
            out.insert(k.into(), json!(parts.iter().map(|p| num(p, k)).sum::<f64>()));
        }
    }
    // The common window: the earliest start to the last op completed anywhere.
    let start = parts.iter().map(|p| num(p, "started_unix_ms")).fold(f64::INFINITY, f64::min);
    let end = parts.iter().map(|p| num(p, "started_unix_ms") + num(p, "elapsed_ms")).fold(f64::NEG_INFINITY, f64::max);
    let elapsed_ms = (end - start).max(0.0);
    let ok = int(&Value::Object(out.clone()), "ok");
    out.insert("started_unix_ms".into(), json!(start));
    out.insert("elapsed_ms".into(), json!(elapsed_ms));
    out.insert("throughput_ops_s".into(), json!(if elapsed_ms > 0.0 { ok as f64 / (elapsed_ms / 1e3) } else { 0.0 }));
    // Histograms: added exactly; every latency summary recomputed from them.
    let mut hists = Map::new();
    for field in LATENCY_FIELDS {
        let mut merged: Option<Histogram<u64>> = None;
        for p in parts {
            let Some(s) = p.get("histograms").and_then(|h| h.get(field)).and_then(Value::as_str) else { continue };
            let h = hist::decode(s)
                .map_err(|e| MergeError(format!("test {test}: attachment {key}: histogram {field}: {e}")))?;
            match merged.as_mut() {
                None => merged = Some(h),
                Some(m) => m.add(&h).map_err(|e| MergeError(format!("test {test}: {key}: {field}: {e:?}")))?,
            }
        }
        let Some(h) = merged else { continue };
        let mut l = Latency::of(&h);
        if field == "latency" {
            // Mean and max are exact in each phase: keep them exact.
            let n: u64 = parts.iter().map(|p| p.get(field).map_or(0, |l| int(l, "count"))).sum();
            if n > 0 {
                let sum: f64 =
                    parts.iter().filter_map(|p| p.get(field)).map(|l| num(l, "mean_ms") * int(l, "count") as f64).sum();
                l.mean_ms = sum / n as f64;
                l.max_ms = parts.iter().filter_map(|p| p.get(field)).map(|l| num(l, "max_ms")).fold(0.0, f64::max);
            }
        }
        out.insert(field.into(), serde_json::to_value(l).unwrap_or_default());
        hists.insert(
            field.into(),
            Value::String(hist::encode(&h).map_err(|e| MergeError(format!("test {test}: {key}: {field}: {e}")))?),
        );
    }
    let lacking: Vec<usize> =
        (0..parts.len()).filter(|i| parts[*i].get("histograms").is_none_or(|h| h.get("latency").is_none())).collect();
    if !lacking.is_empty() && lacking.len() < parts.len() && int(parts[lacking[0]], "ok") > 0 {
        return err(format!(
            "test {test}: attachment {key}: a segment with ok ops has no latency histogram (a report from an older poolstress?): \
             rerun every segment with this version"
        ));
    }
    out.insert("histograms".into(), Value::Object(hists));
    // Error samples: the first few per class, across segments.
    let mut samples: Vec<Value> = Vec::new();
    for p in parts {
        for s in p.get("error_samples").and_then(Value::as_array).into_iter().flatten() {
            let class = s.get("class");
            if samples.iter().filter(|x| x.get("class") == class).count() < 3 {
                samples.push(s.clone());
            }
        }
    }
    if !samples.is_empty() {
        out.insert("error_samples".into(), Value::Array(samples));
    }
    out.remove("segment");
    let segs: Vec<Value> = parts.iter().filter_map(|p| p.get("segment").cloned()).collect();
    if !segs.is_empty() {
        out.insert("segments".into(), Value::Array(segs));
    }
    Ok(Value::Object(out))
}

/// A phase metric (`PhaseStats::record_metrics`'s names) of the merged phases.
fn phase_metric(phases: &[(String, Value)], metric: &str) -> Option<f64> {
    // The longest prefix wins (`load.spike` over `load`).
    let (prefix, p) = phases
        .iter()
        .filter(|(pre, _)| {
            metric.len() > pre.len() && metric.starts_with(pre.as_str()) && metric.as_bytes()[pre.len()] == b'.'
        })
        .max_by_key(|(pre, _)| pre.len())?;
    let rest = &metric[prefix.len() + 1..];
    let errors_total: u64 =
        p.get("errors").and_then(Value::as_object).map(|m| m.values().filter_map(Value::as_u64).sum()).unwrap_or(0);
    let v = match rest {
        "throughput_ops_s" | "send_rate_ops_s" => p.get(rest)?.as_f64()?,
        "ok" | "cancelled" | "missed" => int(p, rest) as f64,
        "errors.total" => errors_total as f64,
        "error_rate_pct" => {
            let done = int(p, "ok") + errors_total;
            if done == 0 {
                0.0
            } else {
                errors_total as f64 / done as f64 * 100.0
            }
        }
        _ => {
            if let Some(class) = rest.strip_prefix("errors.") {
                return p.get("errors")?.get(class)?.as_u64().map(|n| n as f64);
            }
            let (field, q) = match rest.split_once('.') {
                Some(("acquire", q)) => ("acquire", q),
                Some(("op", q)) => ("op_time", q),
                Some(("service", q)) => ("service", q),
                Some(("send_lag", q)) => ("send_lag", q),
                None => ("latency", rest),
                _ => return None,
            };
            if !q.ends_with("_ms") {
                return None;
            }
            p.get(field)?.get(q)?.as_f64()?
        }
    };
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        load::{OpError, Phase},
        TestCtx,
    };
    use std::time::Duration;

    fn summary(tests: Vec<TestRecord>, segment: Option<&str>) -> RunSummary {
        let mut run = BTreeMap::new();
        if let Some(s) = segment {
            run.insert("segment".to_string(), json!(s));
        }
        RunSummary {
            format_version: 1,
            started_unix_s: 1_800_000_000,
            profile: "quick".into(),
            seed: 1,
            selection: "all".into(),
            passed: tests.len() as u64,
            failed: 0,
            ignored: 0,
            filtered_out: 0,
            duration_ms: 10.0,
            run,
            tests,
        }
    }

    fn rec(name: &str) -> TestRecord {
        TestRecord {
            name: name.into(),
            tags: vec!["layer_1".into()],
            outcome: Outcome::Passed,
            message: None,
            fixture_failure: false,
            duration_ms: 1.0,
            waited_ms: 0.0,
            started_ms: 0.0,
            exclusive: false,
            seed: 7,
            metrics: vec![],
            events: vec![],
            attachments: BTreeMap::new(),
            notes: vec![],
        }
    }

    /// A segment's record of one open-loop phase whose ops take `f(k)` ms
    /// (k: the whole timetable's index), so segments differ.
    async fn segment_record(seg: Segment) -> (TestRecord, Histogram<u64>) {
        let ctx = TestCtx::detached("fleet::open");
        let stats = Phase::open("load", 2_000.0, Duration::from_millis(300))
            .segment(seg)
            .run(&ctx, |t: crate::load::OpTimer| async move {
                let k = t.seq();
                tokio::time::sleep(Duration::from_micros(200 + (k % 37) * 150)).await;
                Ok::<_, OpError>(())
            })
            .await
            .unwrap();
        stats.record_into(&ctx, "load");
        ctx.record(Metric::higher("custom_per_process", 1.0));
        let mut r = rec("fleet::open");
        r.metrics = ctx.metrics();
        r.attachments = ctx.inner.attachments.lock().clone();
        (r, stats.histogram.0.clone())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn segments_merge_exactly() {
        let mut inputs = Vec::new();
        let mut union = Histogram::<u64>::new(3).unwrap();
        let mut ok = 0;
        for i in 1..=3 {
            let seg = Segment::new(i, 3).unwrap();
            let (r, h) = segment_record(seg).await;
            union.add(&h).unwrap();
            ok += h.len();
            // Through JSON and back, as the files go.
            let s = summary(vec![r], Some(&seg.to_string()));
            let s: RunSummary = serde_json::from_slice(&serde_json::to_vec(&s).unwrap()).unwrap();
            inputs.push((PathBuf::from(format!("seg{i}.json")), s));
        }
        let m = merge(inputs).unwrap();
        assert_eq!(m.tests.len(), 1);
        let t = &m.tests[0];
        let st = &t.attachments["load.stats"];
        assert_eq!(int(st, "ok"), ok);
        assert_eq!(ok, 600, "every arrival of the whole timetable ran once");
        assert_eq!(st["target_rate_ops_s"].as_f64().unwrap().round(), 2000.0);
        for (q, f) in [(0.5, "p50_ms"), (0.99, "p99_ms"), (0.999, "p999_ms")] {
            assert_eq!(st["latency"][f].as_f64().unwrap(), union.value_at_quantile(q) as f64 / 1e6, "{f}");
        }
        let p99 = t.metrics.iter().find(|m| m.name == "load.p99_ms").unwrap();
        assert_eq!(p99.value, union.value_at_quantile(0.99) as f64 / 1e6);
        let merged_h = hist::decode(st["histograms"]["latency"].as_str().unwrap()).unwrap();
        assert_eq!(merged_h.len(), union.len());
        assert!(!t.metrics.iter().any(|m| m.name == "custom_per_process"));
        assert!(t.notes[0].contains("custom_per_process"), "{:?}", t.notes);
        assert_eq!(st["segments"], json!(["1/3", "2/3", "3/3"]));
        assert!(t.attachments.contains_key("load.timeline [segment 2/3]"));
    }

    #[test]
    fn duplicates_and_missing_segments_are_errors_naming_them() {
        let a = (PathBuf::from("a.json"), summary(vec![rec("x"), rec("y")], None));
        let b = (PathBuf::from("b.json"), summary(vec![rec("y")], None));
        let e = merge(vec![a.clone(), b]).unwrap_err().0;
        assert!(e.contains("test y") && e.contains("a.json") && e.contains("b.json"), "{e}");
        let ok = merge(vec![a, (PathBuf::from("c.json"), summary(vec![rec("z")], None))]).unwrap();
        assert_eq!(ok.tests.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["x", "y", "z"]);
        assert_eq!(ok.passed, 3);
        let s1 = (PathBuf::from("s1.json"), summary(vec![rec("f")], Some("1/3")));
        let s3 = (PathBuf::from("s3.json"), summary(vec![rec("f")], Some("3/3")));
        let e = merge(vec![s1.clone(), s3]).unwrap_err().0;
        assert!(e.contains("2/3 missing"), "{e}");
        let e = merge(vec![s1.clone(), s1.clone()]).unwrap_err().0;
        assert!(e.contains("segment 1/3 is in both"), "{e}");
        let whole = (PathBuf::from("whole.json"), summary(vec![rec("f")], None));
        let e = merge(vec![whole, s1]).unwrap_err().0;
        assert!(e.contains("s1.json ran it as a segment") && e.contains("whole.json ran it whole"), "{e}");
        let mut n = summary(vec![rec("q")], None);
        n.profile = "nightly".into();
        let e =
            merge(vec![(PathBuf::from("q.json"), n), (PathBuf::from("r.json"), summary(vec![], None))]).unwrap_err().0;
        assert!(e.contains("different profiles"), "{e}");
    }

    #[test]
    fn malformed_reports_say_what_was_expected() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.json");
        std::fs::write(&p, b"{\"tests\": 3}").unwrap();
        let e = read_report(&p).unwrap_err().0;
        assert!(e.contains("bad.json") && e.contains("not a poolstress report.json"), "{e}");
        let e = collect_inputs(&[dir.path().join("nope")], Path::new("x")).unwrap_err().0;
        assert!(e.contains("nope"), "{e}");
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert!(collect_inputs(&[empty], Path::new("x")).unwrap_err().0.contains("no *.json"));
    }

    #[test]
    fn a_report_round_trips_through_json() {
        let mut r = rec("t");
        r.metrics = vec![Metric::lower("nan_ms", f64::NAN), Metric::higher("x", 2.0)];
        let s = summary(vec![r], None);
        let back: RunSummary = serde_json::from_slice(&serde_json::to_vec_pretty(&s).unwrap()).unwrap();
        assert!(back.tests[0].metrics[0].value.is_nan());
        assert_eq!(back.tests[0].metrics[1].value, 2.0);
        assert_eq!(back.tests[0].metrics[1].direction, crate::Direction::HigherIsBetter);
    }
}
