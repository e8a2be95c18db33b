//! The cleanup smoke test: child runs holding both servers panic, miss a
//! deadline or are SIGKILLed, and leave nothing behind (needs both services).

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use poolstress_fixtures::service;
use poolstress_harness::{tag, Registry, TestCtx};

use super::CHILD_ENV;

/// Registers the cleanup test (and, in its child runs, the misbehaving tests).
pub(super) fn register(r: &mut Registry) {
    if std::env::var_os(CHILD_ENV).is_some() {
        register_children(r);
    }
    r.test(
        "service::smoke::cleanup_after_panic_deadline_and_sigkill",
        &[tag::LAYER_3, tag::POSTGRES, tag::REDIS],
        cleanup,
    )
    .deadline(Duration::from_secs(240));
}

/// Tests only the cleanup test's child runs have: each takes both servers and
/// then misbehaves.
fn register_children(r: &mut Registry) {
    async fn take_servers(ctx: &TestCtx) -> anyhow::Result<(service::TestDb, service::TestRedis)> {
        let db = service::postgres().await?.test_db(ctx).await?;
        let redis = service::redis().await?.test_db(ctx).await?;
        db.connect().await?.simple_query("SELECT 1").await?;
        Ok((db, redis))
    }
    r.test("smoke_child::panics", &[tag::LAYER_3], |ctx| async move {
        let _servers = take_servers(&ctx).await?;
        panic!("deliberate panic with both servers in use");
    });
    r.test("smoke_child::misses_deadline", &[tag::LAYER_3], |ctx| async move {
        let _servers = take_servers(&ctx).await?;
        futures::future::pending::<()>().await;
        Ok(())
    })
    .deadline(Duration::from_secs(3));
    r.test("smoke_child::hangs_until_killed", &[tag::LAYER_3], |ctx| async move {
        let _servers = take_servers(&ctx).await?;
        let marker = std::env::var("POOLSTRESS_SMOKE_MARKER").context("marker path")?;
        std::fs::write(marker, "ready")?;
        futures::future::pending::<()>().await;
        Ok(())
    });
    r.test("smoke_child::sweeps", &[tag::LAYER_3], |_ctx| async move {
        service::postgres().await?;
        service::redis().await?;
        Ok(())
    });
}

/// Runs this binary as a child with `args`; returns (exit code, stderr).
async fn child(
    args: &[&str],
    marker: Option<&std::path::Path>,
    kill_when_marked: bool,
) -> anyhow::Result<(u32, Option<i32>, String)> {
    let report = tempfile::tempdir()?;
    let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
    cmd.args(args)
        .arg("--report-dir")
        .arg(report.path())
        .env(CHILD_ENV, "1")
        // The child must start servers of its own, not join this run's.
        .env_remove("NEXTEST_RUN_ID")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    if let Some(m) = marker {
        cmd.env("POOLSTRESS_SMOKE_MARKER", m);
    }
    let mut c = cmd.spawn()?;
    let pid = c.id().context("child pid")?;
    let mut stderr = c.stderr.take().context("child stderr")?;
    let read = tokio::spawn(async move {
        let mut s = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut s).await;
        s
    });
    if kill_when_marked {
        let m = marker.context("a marker to wait for")?;
        let until = Instant::now() + Duration::from_secs(120);
        while !m.exists() {
            if let Some(status) = c.try_wait()? {
                bail!("the child exited ({status}) before it had its servers:\n{}", read.await?);
            }
            ensure!(Instant::now() < until, "the child did not get its servers within 120 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        c.start_kill()?; // SIGKILL: no destructor, no at-exit hook runs
    }
    let status =
        tokio::time::timeout(Duration::from_secs(150), c.wait()).await.context("the child run did not end")??;
    Ok((pid, status.code(), read.await?))
}

async fn cleanup(ctx: TestCtx) -> anyhow::Result<()> {
    ctx.step("a child run where one test panics and one misses its deadline");
    let (pid, code, stderr) = child(
        &["smoke_child::", "--skip", "smoke_child::hangs_until_killed", "--skip", "smoke_child::sweeps"],
        None,
        false,
    )
    .await?;
    ensure!(code == Some(101), "the child run should fail its two tests (exit 101), got {code:?}:\n{stderr}");
    ensure!(
        stderr.contains("postgres ready") && stderr.contains("redis ready"),
        "the child never had its servers:\n{stderr}"
    );
    let left = service::leftovers_of(pid).await;
    ensure!(left.is_empty(), "after a panic and a missed deadline the child (pid {pid}) left: {left:?}\n{stderr}");

    ctx.step("a child run killed with SIGKILL while it holds both servers");
    let dir = tempfile::tempdir()?;
    let marker = dir.path().join("ready");
    let (killed, _, stderr) = child(&["smoke_child::hangs_until_killed", "--exact"], Some(&marker), true).await?;
    let left = service::leftovers_of(killed).await;
    ctx.note(format!("SIGKILLed child {killed} left {left:?}"));

    ctx.step("the next run sweeps what the killed run left");
    let (_, code, sweeper) = child(&["smoke_child::sweeps", "--exact"], None, false).await?;
    ensure!(code == Some(0), "the sweeping child failed ({code:?}):\n{sweeper}");
    let still = service::leftovers_of(killed).await;
    ensure!(
        still.is_empty(),
        "the next run did not remove what the SIGKILLed run (pid {killed}) left: {still:?}\n{stderr}\n{sweeper}"
    );
    if !left.is_empty() {
        ensure!(sweeper.contains("removed leftovers"), "the sweep removed {left:?} without saying so:\n{sweeper}");
    }
    Ok(())
}
