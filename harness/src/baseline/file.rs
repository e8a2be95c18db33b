//! Baseline files: TOML, one per profile (`baselines/<profile>.toml`),
//! human-editable, validated with file:line errors, updated in place with
//! toml_edit (comments and ordering kept) and written atomically.
//!
//! ```toml
//! format-version = 1
//!
//! ["redis::throughput[deadpool-redis]"]
//! # tolerance: fraction of the baseline a change must exceed to count
//! throughput_ops_s = { value = 9500.0, spread = 120.0, direction = "higher", tolerance = 0.25, samples = 5 }
//! # gated: its regression fails the run; history: the values of the last recorded runs
//! "vs_driver.ops_ratio" = { value = 0.62, spread = 0.01, direction = "higher", tolerance = 0.2, samples = 5, gated = true, history = [0.61, 0.62, 0.64] }
//! ```

use std::{
    collections::BTreeMap,
    ops::Range,
    path::{Path, PathBuf},
};

use toml_edit::{Document, DocumentMut, InlineTable, Item, Value};

use crate::metric::Direction;

/// The format version this build reads and writes.
pub const FORMAT_VERSION: i64 = 1;

/// One stored metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Baseline {
    /// The baseline value (median of its samples).
    pub value: f64,
    /// Robust spread of the samples (1.4826·MAD), 0 when unknown.
    pub spread: f64,
    /// Which way is better.
    pub direction: Direction,
    /// Relative change a regression must exceed (0.25 = 25 %).
    pub tolerance: f64,
    /// How many samples the value came from.
    pub samples: u64,
    /// The values of the last recorded runs (oldest first, at most
    /// [`HISTORY_WINDOW`]); `value` is their median. Empty in files written
    /// before histories were kept.
    pub history: Vec<f64>,
    /// Whether the scenario declared the metric gated (informational: the
    /// scenario's declaration in the run decides).
    pub gated: bool,
}

/// How many recorded runs a metric's history keeps.
pub const HISTORY_WINDOW: usize = 10;

/// Baselines of one file: test instance → metric name → baseline.
pub type Baselines = BTreeMap<String, BTreeMap<String, Baseline>>;

/// A baseline file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BaselineLoadError {
    /// Reading failed.
    #[error("{path}: cannot read baselines: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Not valid TOML, or not the baseline schema.
    #[error("{path}:{line}: {what}\n  fix: {fix}")]
    Invalid {
        /// File.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        what: String,
        /// What to do.
        fix: String,
    },
}

fn line_of(text: &str, span: Option<Range<usize>>) -> usize {
    span.map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1).unwrap_or(1)
}

const METRIC_KEYS: &[&str] = &["value", "spread", "direction", "tolerance", "samples", "gated", "history"];

/// Parses and validates a baseline file's text.
pub fn parse(path: &Path, text: &str) -> Result<Baselines, BaselineLoadError> {
    let invalid = |span: Option<Range<usize>>, what: String, fix: &str| BaselineLoadError::Invalid {
        path: path.to_path_buf(),
        line: line_of(text, span),
        what,
        fix: fix.to_string(),
    };
    let doc = Document::parse(text.to_string()).map_err(|e| {
        invalid(
            e.span(),
            format!("not valid TOML: {}", e.message().trim()),
            "correct the syntax at that line, or delete the file and rerun with --update-baselines",
        )
    })?;
    let root = doc.as_table();
    match root.get("format-version") {
        None => {
            return Err(invalid(
                Some(0..0),
                "missing `format-version`".into(),
                &format!("add `format-version = {FORMAT_VERSION}` at the top"),
            ))
        }
        Some(item) => match item.as_integer() {
            Some(FORMAT_VERSION) => {}
            Some(v) => {
                return Err(invalid(
                    item.span(),
                    format!("format-version {v} is not supported (this poolstress reads {FORMAT_VERSION})"),
                    "regenerate the file with --update-baselines from this version of poolstress",
                ))
            }
            None => {
                return Err(invalid(
                    item.span(),
                    "`format-version` must be an integer".into(),
                    &format!("write `format-version = {FORMAT_VERSION}`"),
                ))
            }
        },
    }
    let mut out = Baselines::new();
    for (test, item) in root.iter() {
        if test == "format-version" || test == super::machine::MACHINE_KEY {
            continue;
        }
        let key_span = root.key(test).and_then(|k| k.span());
        let Some(table) = item.as_table_like() else {
            return Err(invalid(
                key_span,
                format!("unknown top-level key `{test}`"),
                "top-level entries are `format-version`, `[machine]` and one table per test instance, e.g. [\"redis::throughput[bb8-redis]\"]",
            ));
        };
        let mut metrics = BTreeMap::new();
        for (metric, mitem) in table.iter() {
            let mspan = table.key(metric).and_then(|k| k.span()).or_else(|| mitem.span());
            let Some(m) = mitem.as_table_like() else {
                return Err(invalid(
                    mspan,
                    format!("`{metric}` in [\"{test}\"] must be a table like {{ value = 1.0, direction = \"lower\", tolerance = 0.25 }}"),
                    "write the metric as an inline table",
                ));
            };
            for (k, v) in m.iter() {
                if !METRIC_KEYS.contains(&k) {
                    return Err(invalid(
                        m.key(k).and_then(|x| x.span()).or_else(|| v.span()).or(mspan.clone()),
                        format!("unknown key `{k}` in metric `{metric}` of [\"{test}\"]"),
                        &format!("allowed keys: {}", METRIC_KEYS.join(", ")),
                    ));
                }
            }
            let num = |k: &str| -> Result<Option<f64>, BaselineLoadError> {
                match m.get(k) {
                    None => Ok(None),
                    Some(v) => v.as_float().or_else(|| v.as_integer().map(|i| i as f64)).map(Some).ok_or_else(|| {
                        invalid(
                            v.span().or(mspan.clone()),
                            format!("`{k}` of `{metric}` in [\"{test}\"] must be a number"),
                            "write a number, e.g. 12.5",
                        )
                    }),
                }
            };
            let value = num("value")?.ok_or_else(|| {
                invalid(
                    mspan.clone(),
                    format!("metric `{metric}` of [\"{test}\"] has no `value`"),
                    "add `value = <number>` or delete the metric",
                )
            })?;
            let direction = match m.get("direction").and_then(|d| d.as_str()) {
                None | Some("lower") => Direction::LowerIsBetter,
                Some("higher") => Direction::HigherIsBetter,
                Some(other) => {
                    return Err(invalid(
                        m.get("direction").and_then(|d| d.span()).or(mspan),
                        format!("direction \"{other}\" of `{metric}` in [\"{test}\"]"),
                        "use \"lower\" (latency, errors) or \"higher\" (throughput)",
                    ))
                }
            };
            let tolerance = num("tolerance")?.unwrap_or(0.25);
            if !(0.0..=100.0).contains(&tolerance) {
                return Err(invalid(
                    mspan,
                    format!("tolerance {tolerance} of `{metric}` is out of range"),
                    "use a fraction such as 0.25 for 25 %",
                ));
            }
            let history = match m.get("history") {
                None => Vec::new(),
                Some(h) => h
                    .as_array()
                    .and_then(|a| {
                        a.iter()
                            .map(|x| x.as_float().or_else(|| x.as_integer().map(|i| i as f64)))
                            .collect::<Option<Vec<_>>>()
                    })
                    .ok_or_else(|| {
                        invalid(
                            h.span().or(mspan.clone()),
                            format!("`history` of `{metric}` in [\"{test}\"] must be an array of numbers"),
                            "write e.g. history = [0.61, 0.62], or delete it (the next update starts a new one)",
                        )
                    })?,
            };
            let gated = match m.get("gated") {
                None => false,
                Some(g) => g.as_bool().ok_or_else(|| {
                    invalid(
                        g.span().or(mspan.clone()),
                        format!("`gated` of `{metric}` in [\"{test}\"] must be true or false"),
                        "write gated = true or delete it (the scenario declares which metrics are gated)",
                    )
                })?,
            };
            metrics.insert(
                metric.to_string(),
                Baseline {
                    value,
                    spread: num("spread")?.unwrap_or(0.0).max(0.0),
                    direction,
                    tolerance,
                    samples: num("samples")?.unwrap_or(1.0).max(1.0) as u64,
                    history,
                    gated,
                },
            );
        }
        out.insert(test.to_string(), metrics);
    }
    Ok(out)
}

/// Loads `path`; a missing file is an empty set of baselines.
pub fn load(path: &Path) -> Result<Baselines, BaselineLoadError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(path, &text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Baselines::new()),
        Err(source) => Err(BaselineLoadError::Io { path: path.to_path_buf(), source }),
    }
}

/// Writes `updates` (test → metric → new baseline) into the text of a
/// baseline file, keeping every comment, ordering and untouched key, and a
/// tolerance someone edited by hand. Returns the new text.
pub fn update_text(
    existing: Option<&str>,
    profile: &str,
    updates: &Baselines,
    machine: Option<&super::machine::Fingerprint>,
) -> Result<String, toml_edit::TomlError> {
    let mut doc: DocumentMut = match existing {
        Some(t) => t.parse()?,
        None => {
            let mut d = DocumentMut::new();
            d.insert("format-version", toml_edit::value(FORMAT_VERSION));
            d.decor_mut().set_prefix(format!(
                "# poolstress baselines for the `{profile}` profile.\n\
                 # Written by `cargo test --test stress -- --profile {profile} --update-baselines`;\n\
                 # review changes in the diff. Per metric: value (median), spread (1.4826 x MAD of the\n\
                 # samples), direction (lower/higher is better), tolerance (relative change that counts),\n\
                 # samples, gated (its regression fails the run; the others are recorded), history (the\n\
                 # last recorded runs; value is their median). Edit a tolerance by hand to loosen or\n\
                 # tighten one gate; updates keep it.\n"
            ));
            d
        }
    };
    if let Some(fp) = machine {
        super::machine::write(&mut doc, fp);
    }
    for (test, metrics) in updates {
        if !doc.contains_key(test) {
            let mut t = toml_edit::Table::new();
            t.set_implicit(false);
            doc.insert(test, Item::Table(t));
        }
        let table = doc[test.as_str()].as_table_like_mut().expect("test entries are tables (validated on load)");
        for (name, b) in metrics {
            let tolerance = table
                .get(name)
                .and_then(|i| i.as_table_like())
                .and_then(|m| m.get("tolerance"))
                .and_then(|t| t.as_float().or_else(|| t.as_integer().map(|i| i as f64)))
                .unwrap_or(b.tolerance);
            let mut it = InlineTable::new();
            it.insert("value", Value::from(round_sig(b.value)));
            it.insert("spread", Value::from(round_sig(b.spread)));
            it.insert(
                "direction",
                Value::from(match b.direction {
                    Direction::LowerIsBetter => "lower",
                    Direction::HigherIsBetter => "higher",
                }),
            );
            it.insert("tolerance", Value::from(tolerance));
            it.insert("samples", Value::from(b.samples as i64));
            if b.gated {
                it.insert("gated", Value::from(true));
            }
            if !b.history.is_empty() {
                let arr: toml_edit::Array = b.history.iter().map(|x| Value::from(round_sig(*x))).collect();
                it.insert("history", Value::Array(arr));
            }
            match table.get_mut(name) {
                // Replace the value in place: the key keeps its comments.
                Some(item) => *item = Item::Value(Value::InlineTable(it)),
                None => {
                    table.insert(name, Item::Value(Value::InlineTable(it)));
                }
            }
        }
    }
    Ok(doc.to_string())
}

/// Keeps 6 significant digits, so diffs stay readable.
fn round_sig(x: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return if x.is_finite() { 0.0 } else { x };
    }
    let mag = 10f64.powi(5 - x.abs().log10().floor() as i32);
    (x * mag).round() / mag
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"# header comment
format-version = 1

["a::b[x]"]
# keep me
p95_ms = { value = 12.5, spread = 0.5, direction = "lower", tolerance = 0.1, samples = 5 }
rate = { value = 100, direction = "higher" }
"#;

    #[test]
    fn parses_a_good_file() {
        let b = parse(Path::new("q.toml"), GOOD).unwrap();
        let m = &b["a::b[x]"];
        assert_eq!(
            m["p95_ms"],
            Baseline {
                value: 12.5,
                spread: 0.5,
                direction: Direction::LowerIsBetter,
                tolerance: 0.1,
                samples: 5,
                history: Vec::new(),
                gated: false
            }
        );
        assert_eq!(m["rate"].direction, Direction::HigherIsBetter);
        assert_eq!(m["rate"].tolerance, 0.25);
    }

    #[test]
    fn errors_name_file_line_and_fix() {
        let cases: &[(&str, usize, &str)] = &[
            ("format-version = 1\n[\"a\"]\nx = { value = \n", 3, "not valid TOML"),
            ("format-version = 1\n\n[\"a\"]\nx = { value = 1, colour = \"red\" }\n", 4, "unknown key `colour`"),
            ("format-version = 1\nstray = 3\n", 2, "unknown top-level key `stray`"),
            ("[\"a\"]\n", 1, "missing `format-version`"),
            ("format-version = 9\n", 1, "not supported"),
            ("format-version = 1\n[\"a\"]\nx = { spread = 1 }\n", 3, "has no `value`"),
            ("format-version = 1\n[\"a\"]\nx = { value = 1, direction = \"up\" }\n", 3, "direction \"up\""),
            ("format-version = 1\n[\"a\"]\nx = { value = 1, history = [1, \"two\"] }\n", 3, "array of numbers"),
            ("format-version = 1\n[\"a\"]\nx = { value = 1, gated = 1 }\n", 3, "true or false"),
        ];
        for (text, line, needle) in cases {
            let e = parse(Path::new("baselines/quick.toml"), text).unwrap_err().to_string();
            assert!(e.starts_with(&format!("baselines/quick.toml:{line}:")), "{text:?} -> {e}");
            assert!(e.contains(needle) && e.contains("fix:"), "{text:?} -> {e}");
        }
    }

    #[test]
    fn update_keeps_comments_order_and_hand_edited_tolerance() {
        let mut up = Baselines::new();
        up.entry("a::b[x]".into()).or_default().insert(
            "p95_ms".into(),
            Baseline {
                value: 13.0,
                spread: 0.25,
                direction: Direction::LowerIsBetter,
                tolerance: 0.25,
                samples: 5,
                history: Vec::new(),
                gated: false,
            },
        );
        up.entry("new::test".into()).or_default().insert(
            "rate".into(),
            Baseline {
                value: 1.0,
                spread: 0.0,
                direction: Direction::HigherIsBetter,
                tolerance: 0.5,
                samples: 1,
                history: vec![1.0],
                gated: true,
            },
        );
        let text = update_text(Some(GOOD), "quick", &up, None).unwrap();
        assert!(text.starts_with("# header comment"), "{text}");
        assert!(text.contains("# keep me"), "{text}");
        assert!(
            text.contains(
                "p95_ms = { value = 13.0, spread = 0.25, direction = \"lower\", tolerance = 0.1, samples = 5 }"
            ),
            "{text}"
        );
        assert!(text.contains("rate = { value = 100, direction = \"higher\" }"), "untouched key changed: {text}");
        assert!(text.find("a::b[x]").unwrap() < text.find("new::test").unwrap());
        let back = parse(Path::new("x"), &text).unwrap();
        assert_eq!(back["new::test"]["rate"].tolerance, 0.5);
        assert_eq!(back["new::test"]["rate"].history, vec![1.0]);
        assert!(back["new::test"]["rate"].gated);
    }

    #[test]
    fn new_file_has_header_and_version() {
        let text = update_text(None, "nightly", &Baselines::new(), None).unwrap();
        assert!(text.contains("format-version = 1") && text.contains("`nightly` profile"), "{text}");
        parse(Path::new("x"), &text).unwrap();
    }
}
