use std::{
    fmt::Write,
    path::{Path, PathBuf},
};

use super::{write_atomic, Outcome, Reporter, RunSummary};

/// Writes `junit.xml` (one testsuite, one testcase per test; metrics as properties).
#[derive(Default)]
pub struct JunitReporter;

pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' && c != '\r' => {}
            c => out.push(c),
        }
    }
    out
}

pub(crate) fn render(s: &RunSummary) -> String {
    let mut x = String::new();
    let skipped = s.tests.iter().filter(|t| matches!(t.outcome, Outcome::Skipped | Outcome::Ignored)).count();
    let _ = writeln!(x, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        x,
        r#"<testsuites name="poolstress" tests="{}" failures="{}" skipped="{}" time="{:.3}">"#,
        s.tests.len(),
        s.failed,
        skipped,
        s.duration_ms / 1e3
    );
    let _ = writeln!(
        x,
        r#"  <testsuite name="stress" tests="{}" failures="{}" skipped="{}" time="{:.3}">"#,
        s.tests.len(),
        s.failed,
        skipped,
        s.duration_ms / 1e3
    );
    let baselines = s
        .run
        .get("baselines")
        .map(|v| {
            let verdict = v.get("verdict").and_then(|x| x.as_str()).unwrap_or("");
            let machine = v.get("machine").and_then(|x| x.as_str()).unwrap_or("");
            format!(r#"<property name="baselines" value="{}"/>"#, escape(&format!("{verdict} ({machine})")))
        })
        .unwrap_or_default();
    let _ = writeln!(
        x,
        r#"    <properties><property name="profile" value="{}"/><property name="seed" value="{}"/>{baselines}</properties>"#,
        escape(&s.profile),
        s.seed
    );
    for t in &s.tests {
        let (classname, name) = match t.name.rsplit_once("::") {
            Some((c, n)) => (c, n),
            None => ("poolstress", t.name.as_str()),
        };
        let _ = write!(
            x,
            r#"    <testcase classname="{}" name="{}" time="{:.3}">"#,
            escape(classname),
            escape(name),
            t.duration_ms / 1e3
        );
        if !t.metrics.is_empty() || !t.tags.is_empty() {
            x.push_str("<properties>");
            let _ = write!(x, r#"<property name="tags" value="{}"/>"#, escape(&t.tags.join(",")));
            for m in &t.metrics {
                let _ = write!(x, r#"<property name="{}" value="{}"/>"#, escape(&m.name), m.value);
            }
            x.push_str("</properties>");
        }
        let msg = t.message.as_deref().unwrap_or("");
        match t.outcome {
            Outcome::Passed => {}
            Outcome::Failed => {
                let kind = if t.fixture_failure { "fixture" } else { "failure" };
                let first = msg.lines().next().unwrap_or("");
                let _ = write!(x, r#"<failure type="{kind}" message="{}">{}</failure>"#, escape(first), escape(msg));
            }
            Outcome::Skipped | Outcome::Ignored => {
                let _ = write!(x, r#"<skipped message="{}"/>"#, escape(msg));
            }
        }
        x.push_str("</testcase>\n");
    }
    x.push_str("  </testsuite>\n</testsuites>\n");
    x
}

impl Reporter for JunitReporter {
    fn name(&self) -> &'static str {
        "junit"
    }

    fn run_finished(&mut self, summary: &RunSummary, dir: &Path) -> std::io::Result<Option<PathBuf>> {
        let path = dir.join("junit.xml");
        write_atomic(&path, render(summary).as_bytes())?;
        Ok(Some(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_control_chars() {
        assert_eq!(escape("a<b>&\"'\u{1}c"), "a&lt;b&gt;&amp;&quot;&apos;c");
    }
}
