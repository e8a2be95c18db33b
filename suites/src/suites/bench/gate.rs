//! `bench::gate::injected_regressions_are_caught`: the regression gate end
//! to end on the zoo's correct Redis pool (needs the `redis` feature):
//! record three times (a history per metric, as the README's recipe and
//! scripts/check-gate.sh do), an unchanged rerun flags nothing, and each
//! injected regression (+2 ms on the pool's path, an acquire timeout
//! noticed after 1 s instead of 20 ms, two extra round trips on every
//! checkout) exits 5 naming its gated metric. Not the subtler -30 % regression (`extra-round-trip`):
//! measured in quick rounds on a slow, noisy runner it landed within the
//! noise in several runs.

use std::{path::Path, process::Command, time::Duration};

use anyhow::{bail, ensure, Context};
use poolstress_fixtures::pool;
use poolstress_harness::{exit, tag, Registry, TestCtx};

use super::INJECT_LATENCY_ENV;
use crate::zoo::REGRESSION_ENV;

/// Recordings before the checks (each metric's history; the gate counts a
/// history's spread once it holds [`poolstress_harness::baseline::MIN_HISTORY`]).
const RECORDINGS: usize = 3;
const _: () = assert!(RECORDINGS >= poolstress_harness::baseline::MIN_HISTORY);

/// Registers the gate self-test (`bench::gate::*`).
pub fn register_gate(r: &mut Registry) {
    r.test("bench::gate::injected_regressions_are_caught", &[tag::LAYER_3, tag::REDIS], gate)
        .exclusive(true)
        .deadline(Duration::from_secs(300));
}

/// What a child run of this binary printed.
struct Run {
    code: i32,
    out: String,
}

fn run_self(args: &[&str], env: &[(&str, &str)], report_dir: &Path) -> anyhow::Result<Run> {
    let exe = std::env::current_exe().context("finding the test binary")?;
    let out = Command::new(exe)
        .args(args)
        .arg("--report-dir")
        .arg(report_dir)
        .env_remove("POOLSTRESS_INCLUDE_TAGS")
        .env_remove("POOLSTRESS_EXCLUDE_TAGS")
        .env_remove("POOLSTRESS_UPDATE_BASELINES")
        .env_remove("POOLSTRESS_CHECK_BASELINES")
        .env_remove(INJECT_LATENCY_ENV)
        .env_remove(REGRESSION_ENV)
        .env_remove("NEXTEST_RUN_ID")
        .env("POOLSTRESS_LOCK_FILE", report_dir.join("test.lock"))
        .envs(env.iter().copied())
        .output()
        .context("running the stress binary as a child")?;
    Ok(Run {
        code: out.status.code().unwrap_or(-1),
        out: format!(
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    })
}

/// The regression gate end to end on real benchmarks of the zoo's correct
/// Redis pool: record baselines, check an unchanged rerun (exit 0, nothing
/// flagged), then rerun with each regression injected (exit 5, the
/// regressed gated metric named).
async fn gate(ctx: TestCtx) -> anyhow::Result<()> {
    let pool = "zoo-redis";
    ensure!(
        pool::redis_adapters().iter().all(|a| a.name() != pool),
        "{pool} is registered by the zoo, not among the built-in adapters"
    );
    let selection = format!("[{pool}]");
    let dir = tempfile::tempdir()?;
    let (bdir, rdir) = (dir.path().join("baselines"), dir.path().join("report"));
    std::fs::create_dir_all(&rdir)?;
    let bdir_s = bdir.to_string_lossy().into_owned();
    // Only the bench:: tests: the gated metrics the cases name are theirs.
    // stress::*::performance records nothing gated, and peer:: (gated, and
    // moved by the same regressions) is judged by the same code: running them
    // in each of the seven children cost 40 % of this test's time.
    let base = [
        "--include-tag",
        "benchmark",
        selection.as_str(),
        "--skip",
        "stress::",
        "--skip",
        "peer::",
        "--baseline-dir",
        bdir_s.as_str(),
    ];
    let with = |extra: &[&'static str]| -> Vec<&str> { base.iter().copied().chain(extra.iter().copied()).collect() };
    let run = |args: Vec<&str>, env: Vec<(&'static str, &'static str)>| {
        let (args, rdir): (Vec<String>, _) = (args.iter().map(|s| s.to_string()).collect(), rdir.clone());
        tokio::task::spawn_blocking(move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            run_self(&a, &env, &rdir)
        })
    };

    // As scripts/check-gate.sh and the README's recipe do: several recordings
    // build each metric's history, whose spread is the run-to-run noise an
    // unchanged rerun is judged against (one recording knows only the spread
    // of its own rounds, and a busy machine moves whole runs more than that).
    let mut recorded = String::new();
    for i in 1..=RECORDINGS {
        ctx.step(format!("recording baselines of the benchmarks of {pool} ({i}/{RECORDINGS})"));
        let r = run(with(&["--update-baselines"]), vec![]).await??;
        ensure!(r.code == 0, "recording run {i}/{RECORDINGS} failed:\n{}", r.out);
        recorded = r.out;
    }
    let file = std::fs::read_dir(&bdir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "toml"))
        .with_context(|| format!("--update-baselines wrote no file under {}:\n{recorded}", bdir.display()))?;
    let text = std::fs::read_to_string(&file)?;
    for want in ["vs_driver.ops_ratio", "vs_driver.p50_ratio", "exhausted.timeout_ratio", "gated = true", "history = ["]
    {
        ensure!(text.contains(want), "{} lacks {want}:\n{text}", file.display());
    }

    ctx.step("checking an unchanged rerun against them");
    let c = run(with(&["--check-baselines"]), vec![]).await??;
    ensure!(c.code == 0, "an unchanged rerun did not pass the baseline check:\n{}", c.out);
    ensure!(!c.out.contains("REGRESSED:"), "an unchanged rerun flagged a regression:\n{}", c.out);

    let point = format!("bench::redis::point_read[{pool}]");
    let timeout = format!("bench::redis::acquire_timeout[{pool}]");
    // Each case: what is injected, and the gated metrics any of which must
    // be named (a read made slower by a round trip shows in the throughput
    // ratio and the p50 ratio alike; noise decides which crosses first).
    let cases: [(&str, (&'static str, &'static str), Vec<String>); 3] = [
        (
            "+2 ms on the pool's path",
            (INJECT_LATENCY_ENV, "2ms"),
            vec![format!("{point}/vs_driver.p50_ratio"), format!("{point}/vs_driver.ops_ratio")],
        ),
        (
            "an acquire timeout noticed after 1 s, not 20 ms",
            (REGRESSION_ENV, "acquire-1s"),
            vec![format!("{timeout}/exhausted.timeout_ratio")],
        ),
        (
            "two extra round trips on every checkout (-50 % throughput)",
            (REGRESSION_ENV, "double-round-trips"),
            vec![format!("{point}/vs_driver.ops_ratio"), format!("{point}/vs_driver.p50_ratio")],
        ),
    ];
    let mut caught = Vec::new();
    for (what, env, metrics) in cases {
        ctx.step(format!("rerunning with {}={} ({what})", env.0, env.1));
        let c = run(with(&["--check-baselines"]), vec![env]).await??;
        ctx.attach(format!("regressed_run.{}", env.1), &c.out);
        if c.code != exit::REGRESSION as i32 {
            bail!("{what}: want exit {} (regression), got:\n{}", exit::REGRESSION, c.out);
        }
        let line = c.out.lines().find(|l| l.contains("regressed against")).unwrap_or_default();
        let named: Vec<&String> = metrics.iter().filter(|m| line.contains(m.as_str())).collect();
        ensure!(!named.is_empty(), "{what}: the regression is not named as any of {metrics:?}:\n{}", c.out);
        caught.push(format!("{what} → {}", named.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", ")));
    }
    let after = std::fs::read_to_string(&file)?;
    ensure!(after == text, "a check run rewrote the baselines file:\n{after}");
    ctx.note(format!("update → unchanged check (exit 0, nothing flagged) → each exit 5: {}", caught.join("; ")));
    Ok(())
}
