//! `chaos::replay::*`: `--seed` replays a chaos test's choices, and a failing
//! chaos test prints its seed and fault schedule. Like the runner's
//! self-tests, these start this very binary as a child: a layer_1 chaos
//! scenario run against a deliberately broken adapter (so it fails, as a
//! real finding would), three times: twice with one seed, once with another.

use std::{path::PathBuf, process::Command};

use anyhow::{ensure, Context};
use poolstress_harness::{exit, tag, Registry, TestCtx};
use serde_json::Value;

use super::broken::RAW_ENV;

/// The child's test: workers aborted mid-query, victims chosen from the seed.
const CHILD_TEST: &str = "chaos::broken::raw::loses_capacity_on_cancel[mock]";

struct Child {
    code: i32,
    stdout: String,
    stderr: String,
    test: Option<Value>,
}

impl Child {
    fn victims(&self) -> Option<Value> {
        self.test.as_ref().map(|t| t["attachments"]["victims"].clone()).filter(|v| v.is_array())
    }

    fn explain(&self) -> String {
        format!("exit {}\n--- stdout\n{}\n--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

async fn run_child(seed: u64) -> anyhow::Result<Child> {
    let dir = tempfile::tempdir()?;
    // This very binary even if a build replaced the file meanwhile (/proc/self/exe survives that).
    let proc_exe = PathBuf::from("/proc/self/exe");
    let exe = if proc_exe.exists() { proc_exe } else { std::env::current_exe().context("finding the test binary")? };
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", CHILD_TEST, "--seed", &seed.to_string(), "--report-dir"])
        .arg(dir.path())
        .env(RAW_ENV, "1")
        // The parent holds the run's test lock; the child takes its own.
        .env("POOLSTRESS_LOCK_FILE", dir.path().join("test.lock"))
        .env_remove("POOLSTRESS_INCLUDE_TAGS")
        .env_remove("POOLSTRESS_EXCLUDE_TAGS")
        .env_remove("POOLSTRESS_SEED")
        .env_remove("NEXTEST_RUN_ID");
    let out = tokio::task::spawn_blocking(move || cmd.output()).await??;
    let read = |p: PathBuf| std::fs::read_to_string(p).ok();
    let report: Option<Value> = read(dir.path().join("report.json")).map(|s| serde_json::from_str(&s)).transpose()?;
    let test =
        report.and_then(|r| r["tests"].as_array().and_then(|a| a.iter().find(|t| t["name"] == CHILD_TEST).cloned()));
    Ok(Child {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        test,
    })
}

/// Registers the replay tests (layer_1, chaos; no server needed).
pub fn register(r: &mut Registry) {
    r.test(
        "chaos::replay::same_seed_same_victims_and_failure_prints_seed_and_schedule",
        &[tag::CHAOS, tag::LAYER_1],
        replay,
    )
    .exclusive(false);
}

async fn replay(ctx: TestCtx) -> anyhow::Result<()> {
    ctx.step("running the failing chaos test three times (seeds 4242, 4242, 4243)");
    let (a, b, c) = (run_child(4242).await?, run_child(4242).await?, run_child(4243).await?);
    for x in [&a, &b, &c] {
        ensure!(
            x.code == exit::TEST_FAILURE as i32,
            "the broken scenario must fail (exit {}): {}",
            exit::TEST_FAILURE,
            x.explain()
        );
        ensure!(x.stdout.contains("lost capacity"), "the failure must name lost capacity:\n{}", x.explain());
        // What the runner prints on a failure: the test's seed, how to replay, and the schedule's note.
        ensure!(
            x.stdout.contains("seed ") && x.stdout.contains("replay the run with --seed"),
            "no seed printed:\n{}",
            x.explain()
        );
        ensure!(x.stdout.contains("chaos schedule (seed "), "no fault schedule printed:\n{}", x.explain());
    }
    let (va, vb, vc) =
        (a.victims().context(a.explain())?, b.victims().context(b.explain())?, c.victims().context(c.explain())?);
    ctx.attach("victims", serde_json::json!({"4242": va, "4242 again": vb, "4243": vc}));
    ensure!(va == vb, "the same --seed chose different victims: {va} then {vb}");
    ensure!(va != vc, "seeds 4242 and 4243 chose the same victims {va}: the choice does not depend on the seed");
    let note = |x: &Child| {
        x.test.as_ref().and_then(|t| {
            t["notes"].as_array().and_then(|n| {
                n.iter().find_map(|n| n.as_str().filter(|s| s.starts_with("chaos schedule")).map(str::to_string))
            })
        })
    };
    ensure!(
        note(&a).is_some() && note(&a) == note(&b),
        "the schedule notes differ for one seed: {:?} vs {:?}",
        note(&a),
        note(&b)
    );
    ctx.note(format!("seed 4242 aborted workers {va}, seed 4243 aborted {vc}"));
    Ok(())
}
