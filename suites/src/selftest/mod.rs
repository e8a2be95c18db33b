//! layer_1 self-tests of the runner: each starts this very binary as a child
//! with `POOLSTRESS_SELFTEST_FIXTURES=1` (so only the fixture tests exist)
//! and checks exit codes, console output and reports.

pub mod fixtures;
pub mod zoo;

use std::{path::PathBuf, process::Command};

use anyhow::{ensure, Context};
use poolstress_harness::{exit, tag, Registry};
use serde_json::Value;

const FIXTURE_ENV: &str = "POOLSTRESS_SELFTEST_FIXTURES";

/// Whether this process was started by a self-test.
pub fn fixture_mode() -> bool {
    std::env::var_os(FIXTURE_ENV).is_some()
}

/// What a child run produced.
struct Child {
    code: i32,
    stdout: String,
    stderr: String,
    report: Option<Value>,
    junit: Option<String>,
    _dir: tempfile::TempDir,
}

impl Child {
    fn outcome(&self, test: &str) -> Option<String> {
        let tests = self.report.as_ref()?.get("tests")?.as_array()?;
        let t = tests.iter().find(|t| t["name"] == format!("selftest_fixture::{test}"))?;
        t["outcome"].as_str().map(str::to_string)
    }

    fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .report
            .as_ref()
            .and_then(|r| r["tests"].as_array())
            .map(|a| a.iter().filter_map(|t| t["name"].as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    fn explain(&self) -> String {
        format!("exit {}\n--- stdout\n{}\n--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

async fn run_child(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Child> {
    let dir = tempfile::tempdir()?;
    let exe = std::env::current_exe().context("finding the test binary")?;
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .arg("--report-dir")
        .arg(dir.path())
        .env(FIXTURE_ENV, "1")
        .env("POOLSTRESS_LOCK_FILE", dir.path().join("test.lock"))
        .env_remove("POOLSTRESS_INCLUDE_TAGS")
        .env_remove("POOLSTRESS_EXCLUDE_TAGS")
        .env_remove("NEXTEST_RUN_ID")
        .envs(env.iter().copied());
    let out = tokio::task::spawn_blocking(move || cmd.output()).await??;
    let read = |p: PathBuf| std::fs::read_to_string(p).ok();
    let report = read(dir.path().join("report.json")).map(|s| serde_json::from_str(&s)).transpose()?;
    Ok(Child {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        junit: read(dir.path().join("junit.xml")),
        report,
        _dir: dir,
    })
}

fn selftest(r: &mut Registry, name: &str, body: impl AsyncCheck) {
    r.test(format!("harness::{name}"), &[tag::LAYER_1], move |_ctx| body.clone().check());
}

trait AsyncCheck: Clone + Send + Sync + 'static {
    fn check(self) -> futures::future::BoxFuture<'static, anyhow::Result<()>>;
}

impl<F, Fut> AsyncCheck for F
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    fn check(self) -> futures::future::BoxFuture<'static, anyhow::Result<()>> {
        Box::pin(self())
    }
}

/// Registers the runner's self-tests.
pub fn register(r: &mut Registry) {
    selftest(r, "selection::include_tag_runs_only_tagged", || async {
        let c = run_child(&["--include-tag", "fx_a"], &[]).await?;
        ensure!(c.code == 0, "{}", c.explain());
        ensure!(c.names() == ["selftest_fixture::pass"], "ran {:?}\n{}", c.names(), c.explain());
        Ok(())
    });
    selftest(r, "selection::env_var_selects_like_the_flag", || async {
        let c = run_child(&[], &[("POOLSTRESS_INCLUDE_TAGS", "fx_a,fx_skip")]).await?;
        ensure!(c.code == 0, "{}", c.explain());
        ensure!(c.names() == ["selftest_fixture::pass", "selftest_fixture::skip"], "ran {:?}", c.names());
        Ok(())
    });
    selftest(r, "selection::exclude_wins_over_include", || async {
        let c = run_child(&["--include-tag", "fx_a,fx_fail", "--exclude-tag", "fx_fail"], &[]).await?;
        ensure!(c.code == 0, "{}", c.explain());
        ensure!(c.names() == ["selftest_fixture::pass"], "ran {:?}", c.names());
        Ok(())
    });
    selftest(r, "selection::unknown_tag_is_a_usage_error_listing_known_tags", || async {
        let c = run_child(&["--include-tag", "nosuch"], &[]).await?;
        ensure!(c.code == exit::USAGE as i32, "{}", c.explain());
        ensure!(c.stderr.contains("unknown tag \"nosuch\""), "{}", c.explain());
        for known in ["chaos", "layer_1", "fx_a"] {
            ensure!(c.stderr.contains(known), "known tag {known} not listed:\n{}", c.explain());
        }
        Ok(())
    });
    selftest(r, "selection::libtest_filters_still_work", || async {
        let c =
            run_child(&["--include-tag", "fx_a,fx_fail,fx_seed", "--exact", "selftest_fixture::seeded"], &[]).await?;
        ensure!(c.code == 0 && c.names() == ["selftest_fixture::seeded"], "--exact: {:?}\n{}", c.names(), c.explain());
        let c = run_child(&["--include-tag", "fx_a,fx_fail", "--skip", "fail"], &[]).await?;
        ensure!(c.code == 0 && c.names() == ["selftest_fixture::pass"], "--skip: {:?}\n{}", c.names(), c.explain());
        let c = run_child(&["--include-tag", "fx_ignored", "--ignored"], &[]).await?;
        ensure!(c.code == exit::TEST_FAILURE as i32, "--ignored must run the ignored (failing) test\n{}", c.explain());
        ensure!(c.stdout.contains("known finding"), "{}", c.explain());
        Ok(())
    });
    selftest(r, "guard::zero_tests_is_an_error_naming_the_selection", || async {
        let c = run_child(&["--include-tag", "fx_a", "--exclude-tag", "fx_a"], &[]).await?;
        ensure!(c.code == exit::NO_TESTS as i32, "{}", c.explain());
        ensure!(c.stderr.contains("ran no test") && c.stderr.contains("fx_a"), "{}", c.explain());
        let c = run_child(&["--include-tag", "fx_ignored"], &[]).await?;
        ensure!(c.code == exit::NO_TESTS as i32, "only ignored tests selected: {}", c.explain());
        let c = run_child(&["--include-tag", "fx_a", "--exclude-tag", "fx_a", "--allow-empty"], &[]).await?;
        ensure!(c.code == 0, "--allow-empty: {}", c.explain());
        Ok(())
    });
    selftest(r, "guard::a_skipped_test_run_alone_by_exact_name_exits_0", || async {
        // What nextest does: every test in its own process, by exact name.
        for name in ["selftest_fixture::skip", "selftest_fixture::static_skip"] {
            let c = run_child(&["--exact", name], &[]).await?;
            ensure!(c.code == 0, "{name} alone: {}", c.explain());
            ensure!(
                c.outcome(name.trim_start_matches("selftest_fixture::")).as_deref() == Some("skipped"),
                "{}",
                c.explain()
            );
        }
        Ok(())
    });
    selftest(r, "heartbeat::a_long_test_says_what_it_is_doing", || async {
        let c = run_child(&["--include-tag", "fx_slow"], &[("POOLSTRESS_HEARTBEAT_SECS", "0.4")]).await?;
        ensure!(c.code == 0, "{}", c.explain());
        let beats = c.stderr.lines().filter(|l| l.contains("selftest_fixture::slow still running after")).count();
        ensure!(beats >= 2, "expected heartbeats every 0.4 s over 1.3 s, saw {beats}:\n{}", c.explain());
        ensure!(c.stderr.contains("slowly doing the work"), "the heartbeat must say the step:\n{}", c.explain());
        let c = run_child(&["--include-tag", "fx_a"], &[("POOLSTRESS_HEARTBEAT_SECS", "0.4")]).await?;
        ensure!(!c.stderr.contains("still running"), "a quick test has no heartbeat:\n{}", c.explain());
        Ok(())
    });
    selftest(r, "outcome::a_broken_invariant_fails_a_passing_body", || async {
        let c = run_child(&["--include-tag", "fx_invariant"], &[]).await?;
        ensure!(c.code == exit::TEST_FAILURE as i32, "{}", c.explain());
        ensure!(c.outcome("invariant").as_deref() == Some("failed"), "{}", c.explain());
        ensure!(c.stdout.contains("invariant broken: fx-pool: 3 checkouts out at once"), "{}", c.explain());
        Ok(())
    });
    selftest(r, "isolation::failure_and_panic_fail_only_that_test", || async {
        let c = run_child(&["--include-tag", "fx_a,fx_fail,fx_panic"], &[]).await?;
        ensure!(c.code == exit::TEST_FAILURE as i32, "{}", c.explain());
        ensure!(c.outcome("pass").as_deref() == Some("passed"), "{}", c.explain());
        ensure!(c.outcome("fail").as_deref() == Some("failed"), "{}", c.explain());
        ensure!(c.outcome("panic").as_deref() == Some("failed"), "{}", c.explain());
        ensure!(c.stdout.contains("panics on purpose"), "panic message missing:\n{}", c.explain());
        Ok(())
    });
    selftest(r, "isolation::deadline_fails_the_test_with_its_step", || async {
        let c = run_child(&["--include-tag", "fx_deadline,fx_a"], &[]).await?;
        ensure!(c.code == exit::TEST_FAILURE as i32, "{}", c.explain());
        ensure!(c.outcome("pass").as_deref() == Some("passed"), "run must go on:\n{}", c.explain());
        ensure!(
            c.stdout.contains("deadline") && c.stdout.contains("waiting for a condition that never comes"),
            "message must say what the test was doing:\n{}",
            c.explain()
        );
        Ok(())
    });
    selftest(r, "isolation::deadline_flag_overrides", || async {
        let c =
            run_child(&["--include-tag", "fx_excl", "--exact", "selftest_fixture::excl_a", "--deadline", "0.05"], &[])
                .await?;
        ensure!(c.code == exit::TEST_FAILURE as i32 && c.stdout.contains("deadline"), "{}", c.explain());
        Ok(())
    });
    selftest(r, "isolation::exclusive_tests_never_overlap", || async {
        let c = run_child(&["--include-tag", "fx_excl", "--test-threads", "4"], &[]).await?;
        ensure!(c.code == 0, "{}", c.explain());
        let tests = c.report.as_ref().and_then(|r| r["tests"].as_array()).context("report")?;
        let windows: Vec<(String, u128, u128)> = tests
            .iter()
            .map(|t| {
                let w = &t["attachments"]["window"];
                let n =
                    |i: usize| w[i].as_u64().map(u128::from).or_else(|| w[i].as_f64().map(|f| f as u128)).unwrap_or(0);
                (t["name"].as_str().unwrap_or("").to_string(), n(0), n(1))
            })
            .collect();
        ensure!(windows.len() == 5, "{windows:?}");
        for (a, s1, e1) in &windows {
            if !a.contains("excl_") {
                continue;
            }
            for (b, s2, e2) in &windows {
                ensure!(a == b || e1 <= s2 || e2 <= s1, "exclusive {a} overlapped {b}: {windows:?}");
            }
        }
        Ok(())
    });
    selftest(r, "outcome::skip_is_reported_with_reason", || async {
        let c = run_child(&["--include-tag", "fx_skip,fx_a"], &[]).await?;
        ensure!(c.code == 0, "{}", c.explain());
        ensure!(c.outcome("skip").as_deref() == Some("skipped"), "{}", c.explain());
        ensure!(c.stdout.contains("no TLS-enabled server"), "reason not on console:\n{}", c.explain());
        Ok(())
    });
    selftest(r, "outcome::fixture_failures_have_their_own_exit_code", || async {
        let c = run_child(&["--include-tag", "fx_fixture,fx_a"], &[]).await?;
        ensure!(c.code == exit::FIXTURE_FAILURE as i32, "{}", c.explain());
        let c = run_child(&["--include-tag", "fx_fixture,fx_fail"], &[]).await?;
        ensure!(c.code == exit::TEST_FAILURE as i32, "a real failure wins: {}", c.explain());
        Ok(())
    });
    selftest(r, "reports::json_and_junit_hold_every_test", || async {
        let c = run_child(&["--include-tag", "fx_a,fx_fail,fx_skip"], &[]).await?;
        let report = c.report.as_ref().context("report.json missing")?;
        ensure!(report["failed"] == 1 && report["passed"] == 1, "{report:#}");
        let pass = report["tests"]
            .as_array()
            .context("tests")?
            .iter()
            .find(|t| t["name"] == "selftest_fixture::pass")
            .context("pass")?;
        ensure!(
            pass["tags"][0] == "fx_a"
                && pass["metrics"][0]["name"] == "answer_ms"
                && pass["metrics"][0]["value"] == 42.0,
            "{pass:#}"
        );
        ensure!(pass["events"][0]["label"] == "did the work", "{pass:#}");
        let junit = c.junit.as_deref().context("junit.xml missing")?;
        ensure!(
            junit.contains(r#"name="pass""#) && junit.contains("<failure") && junit.contains("<skipped"),
            "{junit}"
        );
        ensure!(junit.contains("fails on purpose"), "{junit}");
        Ok(())
    });
    selftest(r, "reports::seed_is_printed_and_replays", || async {
        let a = run_child(&["--include-tag", "fx_seed", "--seed", "4242"], &[]).await?;
        let b = run_child(&["--include-tag", "fx_seed", "--seed", "4242"], &[]).await?;
        let c = run_child(&["--include-tag", "fx_seed", "--seed", "4243"], &[]).await?;
        ensure!(a.stderr.contains("--seed 4242"), "{}", a.explain());
        let draw = |c: &Child| c.report.as_ref().map(|r| r["tests"][0]["attachments"]["draw"].clone());
        ensure!(
            draw(&a).is_some() && draw(&a) == draw(&b),
            "same seed, different draws: {:?} {:?}",
            draw(&a),
            draw(&b)
        );
        ensure!(draw(&a) != draw(&c), "different seeds, same draw");
        Ok(())
    });
    selftest(r, "baselines::update_then_check_then_regression", || async {
        let dir = tempfile::tempdir()?;
        let bdir = dir.path().to_str().context("utf8 path")?.to_string();
        let base = ["--include-tag", "fx_metric", "--baseline-dir", bdir.as_str()];
        let with = |extra: &[&'static str]| base.iter().copied().chain(extra.iter().copied()).collect::<Vec<&str>>();
        let c = run_child(&with(&["--update-baselines"]), &[]).await?;
        ensure!(c.code == 0, "update: {}", c.explain());
        let file = dir.path().join("quick.toml");
        let text = std::fs::read_to_string(&file).context("baseline file not written")?;
        ensure!(text.contains("format-version = 1") && text.contains("[\"selftest_fixture::measured\"]"), "{text}");
        let c = run_child(&with(&["--check-baselines"]), &[]).await?;
        ensure!(c.code == 0 && c.stdout.contains("within noise"), "unchanged rerun must pass: {}", c.explain());
        let c = run_child(&with(&["--check-baselines"]), &[("POOLSTRESS_SELFTEST_VALUE", "125")]).await?;
        ensure!(c.code == exit::REGRESSION as i32, "+25 % must regress: {}", c.explain());
        ensure!(
            c.stdout.contains("latency_ms") && c.stdout.contains("REGRESSED") && c.stdout.contains("+25.0%"),
            "{}",
            c.explain()
        );
        // Recorded on another machine: said at the top, reported, not failing (unless asked).
        ensure!(text.contains("[machine]") && text.contains("cores = "), "no machine fingerprint recorded: {text}");
        let recorded = std::fs::read_to_string(&file)?;
        let cpu_line = recorded.lines().find(|l| l.starts_with("cpu = ")).context("no cpu in [machine]")?.to_string();
        std::fs::write(&file, recorded.replace(&cpu_line, "cpu = \"another CPU, elsewhere\""))?;
        let c = run_child(&with(&["--check-baselines"]), &[("POOLSTRESS_SELFTEST_VALUE", "125")]).await?;
        ensure!(
            c.code == 0 && c.stdout.contains("ANOTHER machine") && c.stdout.contains("another CPU, elsewhere"),
            "a regression against another machine's baselines must be reported, exit 0: {}",
            c.explain()
        );
        ensure!(c.stdout.contains("REGRESSED"), "the regression must still be shown: {}", c.explain());
        ensure!(
            c.stdout.contains("holds no baselines of this machine") && c.stdout.contains("baselines/quick.toml"),
            "with no baselines of this machine the check must record this run's beside the reports: {}",
            c.explain()
        );
        let c = run_child(
            &with(&["--check-baselines"]),
            &[("POOLSTRESS_SELFTEST_VALUE", "125"), ("POOLSTRESS_BASELINE_ANY_MACHINE", "1")],
        )
        .await?;
        ensure!(c.code == exit::REGRESSION as i32, "POOLSTRESS_BASELINE_ANY_MACHINE=1 must judge: {}", c.explain());
        std::fs::write(&file, &recorded)?;
        let c = run_child(&with(&["--check-baselines", "--update-baselines"]), &[("POOLSTRESS_SELFTEST_VALUE", "125")])
            .await?;
        let updated = std::fs::read_to_string(&file)?;
        ensure!(
            updated.contains("history = [100.0, 125.0]") && updated.contains("value = 112.5"),
            "update after a regression must append the new value to the history (the value is its median): {updated}"
        );
        drop(c);
        // A failed run must not write.
        let before = std::fs::read_to_string(&file)?;
        let c = run_child(
            &["--include-tag", "fx_metric,fx_fail", "--baseline-dir", bdir.as_str(), "--update-baselines"],
            &[("POOLSTRESS_SELFTEST_VALUE", "1")],
        )
        .await?;
        ensure!(c.code == exit::TEST_FAILURE as i32 && c.stderr.contains("not updating"), "{}", c.explain());
        ensure!(std::fs::read_to_string(&file)? == before, "a failed run rewrote the baselines");
        // Malformed: file and line and a fix.
        std::fs::write(&file, "format-version = 1\n\n[\"x\"]\ny = { value = 1, colour = 2 }\n")?;
        let c = run_child(&with(&["--check-baselines"]), &[]).await?;
        ensure!(c.code == exit::USAGE as i32, "{}", c.explain());
        ensure!(
            c.stderr.contains("quick.toml:4:")
                && c.stderr.contains("unknown key `colour`")
                && c.stderr.contains("fix:"),
            "{}",
            c.explain()
        );
        Ok(())
    });
    selftest(r, "list::shows_tags_and_terse_stays_nextest_compatible", || async {
        let c = run_child(&["--list"], &[]).await?;
        ensure!(c.code == 0, "{}", c.explain());
        ensure!(c.stdout.contains("selftest_fixture::pass: test [fx_a]"), "{}", c.explain());
        ensure!(c.stdout.contains("(ignored: finding kept failing on purpose)"), "{}", c.explain());
        let c = run_child(&["--list", "--format", "terse"], &[]).await?;
        for line in c.stdout.lines().filter(|l| !l.is_empty()) {
            ensure!(line.ends_with(": test") && !line.contains('['), "terse line nextest cannot parse: {line}");
        }
        let c = run_child(&["--list", "--format", "terse", "--ignored"], &[]).await?;
        ensure!(c.stdout.trim() == "selftest_fixture::ignored: test", "{}", c.explain());
        Ok(())
    });
}
