//! The machine a baselines file was recorded on: a fingerprint kept in the
//! file's `[machine]` table, so a check on another machine says so at the
//! top and, by default, reports without failing until that machine has
//! recorded its own baselines.
//!
//! ```toml
//! [machine]
//! cpu = "AMD EPYC 7B13"
//! cores = 2
//! kernel = "6.8.0-1019-gcp"
//! build = "opt-level 1"
//! backend = "docker"
//! images = "poolstress/postgres:15-local poolstress/redis:7-local"
//! ```

use std::collections::BTreeMap;

use toml_edit::{Document, DocumentMut, Item, Table};

/// Set to `1` to judge baselines recorded on another machine anyway.
pub const ANY_MACHINE_ENV: &str = "POOLSTRESS_BASELINE_ANY_MACHINE";

/// The key of the fingerprint table in a baselines file.
pub const MACHINE_KEY: &str = "machine";

/// What a baseline depends on besides the code: where it was measured.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fingerprint {
    /// Field name -> value, in file order (`cpu`, `cores`, `kernel`, `build`, `backend`, `images`).
    pub fields: BTreeMap<String, String>,
}

/// The fields compared, in the order they are shown.
pub const FIELDS: [&str; 6] = ["cpu", "cores", "kernel", "build", "backend", "images"];

impl Fingerprint {
    /// This machine and build, now.
    pub fn current() -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| std::env::consts::ARCH.to_string());
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).to_string();
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| std::env::consts::OS.to_string());
        let build = format!("opt-level {}", crate::runner::HARNESS_OPT_LEVEL);
        let backend = std::env::var("POOLSTRESS_BACKEND").unwrap_or_else(|_| "auto".into());
        let images = ["POOLSTRESS_POSTGRES_IMAGE", "POOLSTRESS_REDIS_IMAGE"]
            .iter()
            .filter_map(|k| std::env::var(k).ok())
            .collect::<Vec<_>>()
            .join(" ");
        let images = if images.is_empty() { "default".to_string() } else { images };
        let mut fields = BTreeMap::new();
        for (k, v) in FIELDS.iter().zip([cpu, cores, kernel, build, backend, images]) {
            fields.insert(k.to_string(), v);
        }
        Fingerprint { fields }
    }

    /// `field: theirs -> ours` for every field that differs (empty: the same machine).
    pub fn differences(&self, ours: &Fingerprint) -> Vec<String> {
        FIELDS
            .iter()
            .filter_map(|f| {
                let (a, b) = (self.fields.get(*f), ours.fields.get(*f));
                (a != b).then(|| {
                    format!(
                        "{f}: {} vs {} here",
                        a.map(String::as_str).unwrap_or("-"),
                        b.map(String::as_str).unwrap_or("-")
                    )
                })
            })
            .collect()
    }

    /// One line: `AMD EPYC 7B13, 2 cores, kernel 6.8, opt-level 1, docker`.
    pub fn describe(&self) -> String {
        let g = |k: &str| self.fields.get(k).map(String::as_str).unwrap_or("?");
        format!(
            "{}, {} cores, kernel {}, {}, backend {} ({})",
            g("cpu"),
            g("cores"),
            g("kernel"),
            g("build"),
            g("backend"),
            g("images")
        )
    }
}

/// The `[machine]` table of a baselines file's text, if it has one.
pub fn read(text: &str) -> Option<Fingerprint> {
    let doc = Document::parse(text.to_string()).ok()?;
    let t = doc.as_table().get(MACHINE_KEY)?.as_table_like()?;
    let fields = t
        .iter()
        .filter_map(|(k, v)| {
            let s = v.as_str().map(str::to_string).or_else(|| v.as_integer().map(|i| i.to_string()))?;
            Some((k.to_string(), s))
        })
        .collect();
    Some(Fingerprint { fields })
}

/// Writes `fp` as the `[machine]` table of `doc` (replacing an older one),
/// placed right after `format-version`.
pub fn write(doc: &mut DocumentMut, fp: &Fingerprint) {
    let mut t = Table::new();
    t.set_position(0);
    t.decor_mut().set_prefix(
        "\n# Where these baselines were measured: a check on another machine reports\n\
         # without failing until that machine records its own (--update-baselines).\n",
    );
    for f in FIELDS {
        if let Some(v) = fp.fields.get(f) {
            match (f, v.parse::<i64>()) {
                ("cores", Ok(n)) => t.insert(f, toml_edit::value(n)),
                _ => t.insert(f, toml_edit::value(v.as_str())),
            };
        }
    }
    doc.insert(MACHINE_KEY, Item::Table(t));
}

/// Whether to judge regressions against baselines recorded on `stored`
/// (`None`: a file from before fingerprints, judged as before), and the
/// line to print at the top of the comparison.
pub fn verdict_scope(stored: Option<&Fingerprint>, ours: &Fingerprint, any_machine: bool) -> (bool, String) {
    match stored {
        None => (
            true,
            "baselines recorded on an unknown machine (no [machine] table); judged as recorded here. \
             --update-baselines records this machine's fingerprint"
                .into(),
        ),
        Some(s) => {
            let diff = s.differences(ours);
            if diff.is_empty() {
                (true, format!("baselines recorded on this machine ({})", ours.describe()))
            } else if any_machine {
                (
                    true,
                    format!(
                        "baselines recorded on ANOTHER machine ({}), judged anyway ({ANY_MACHINE_ENV}=1)",
                        diff.join("; ")
                    ),
                )
            } else {
                (
                    false,
                    format!(
                        "baselines recorded on ANOTHER machine ({}): regressions are reported, not judged (exit 0), \
                         until this machine records its own with --update-baselines; {ANY_MACHINE_ENV}=1 judges anyway",
                        diff.join("; ")
                    ),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(cpu: &str) -> Fingerprint {
        let mut fields = BTreeMap::new();
        for (k, v) in FIELDS.iter().zip([cpu, "2", "6.8", "opt-level 1", "docker", "default"]) {
            fields.insert(k.to_string(), v.to_string());
        }
        Fingerprint { fields }
    }

    #[test]
    fn written_table_reads_back_and_parses_as_a_baselines_file() {
        let mut doc: DocumentMut = "format-version = 1\n\n[\"a[x]\"]\nm = { value = 1 }\n".parse().unwrap();
        write(&mut doc, &fp("Some CPU @ 2GHz"));
        let text = doc.to_string();
        assert_eq!(read(&text), Some(fp("Some CPU @ 2GHz")), "{text}");
        assert!(text.contains("cores = 2"), "{text}");
        let b = super::super::parse(std::path::Path::new("x.toml"), &text).unwrap();
        assert_eq!(b.len(), 1, "the machine table is not a test: {b:?}");
        assert!(text.find("[machine]").unwrap() < text.find("[\"a[x]\"]").unwrap(), "{text}");
    }

    #[test]
    fn another_machine_reports_without_judging() {
        let (judge, line) = verdict_scope(Some(&fp("A")), &fp("B"), false);
        assert!(!judge && line.contains("ANOTHER machine") && line.contains("cpu: A vs B here"), "{line}");
        assert!(verdict_scope(Some(&fp("A")), &fp("B"), true).0);
        assert!(verdict_scope(Some(&fp("A")), &fp("A"), false).0);
        assert!(verdict_scope(None, &fp("A"), false).0);
    }
}
