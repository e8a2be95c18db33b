//! Smoke tests of the Redis fixture.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use poolstress_fixtures::service::{self, ServerControl};
use poolstress_harness::{tag, ConnectionCounter, Metric, Registry, TestCtx};

use super::HANG;

const REDIS: &[&str] = &[tag::LAYER_3, tag::REDIS];

/// Registers the Redis smoke tests.
pub(super) fn register(r: &mut Registry) {
    r.test("redis::smoke::query", REDIS, redis_query);
    r.test("redis::smoke::restart_survived", REDIS, redis_restart).exclusive(true);
    r.test("redis::smoke::pause_hangs_then_heals", REDIS, redis_pause).exclusive(true);
}

async fn redis_query(ctx: TestCtx) -> anyhow::Result<()> {
    ctx.step("getting the redis server");
    let server = service::redis().await?;
    let db = server.test_db(&ctx).await?;
    let other = server.test_db(&poolstress_harness::TestCtx::detached("smoke other test")).await?;
    ensure!(
        db.target.db != other.target.db || db.target.key_prefix != other.target.key_prefix,
        "two tests share db {} and prefix {}",
        db.target.db,
        db.target.key_prefix
    );

    ctx.step("querying through a real connection");
    let mut c = db.connect().await?;
    let key = format!("{}k", db.target.key_prefix);
    redis::cmd("SET").arg(&key).arg(42).query_async::<()>(&mut c).await?;
    let v: i64 = redis::cmd("GET").arg(&key).query_async(&mut c).await?;
    ensure!(v == 42, "GET {key} = {v}");
    let name: String = redis::cmd("CLIENT").arg("GETNAME").query_async(&mut c).await?;
    ensure!(name == db.target.client_name, "client name {name}, expected {}", db.target.client_name);

    ctx.step("counting connections server side");
    let counter = db.connection_counter();
    let n = counter.count().await?;
    ensure!(n == 1, "CLIENT LIST shows {n} connections named {}, expected 1", db.target.client_name);
    let mut oc = other.connect().await?;
    let seen: Option<i64> = redis::cmd("GET").arg(&key).query_async(&mut oc).await?;
    ensure!(seen.is_none(), "another test sees this test's key");
    ensure!(counter.count().await? == 1, "another test's connection was counted as ours");
    Ok(())
}

async fn redis_restart(ctx: TestCtx) -> anyhow::Result<()> {
    let server = service::redis().await?;
    let db = server.test_db(&ctx).await?;
    let mut before = db.connect().await?;
    let run_id_before = run_id(&mut before).await?;

    ctx.step("restarting the server");
    ctx.event("restart");
    let t = Instant::now();
    server.restart().await.map_err(|e| e.into_test_error(&ctx))?;
    let restart_ms = t.elapsed().as_secs_f64() * 1e3;
    ctx.record(Metric::lower("restart_ms", restart_ms));
    ctx.event("ready again");

    ctx.step("reconnecting to the same address");
    let mut after = db.connect().await.context("connecting to the same host:port after the restart")?;
    let run_id_after = run_id(&mut after).await?;
    ensure!(run_id_after != run_id_before, "same run_id {run_id_after} after a restart: nothing was restarted");
    ctx.note(format!("restart took {restart_ms:.0} ms on the {} backend", server.backend()));
    Ok(())
}

async fn redis_pause(ctx: TestCtx) -> anyhow::Result<()> {
    let server = service::redis().await?;
    let db = server.test_db(&ctx).await?;
    let mut c = db.connect().await?;
    redis::cmd("PING").query_async::<String>(&mut c).await?;

    ctx.step("pausing the server");
    ctx.event("pause");
    server.pause().await.map_err(|e| e.into_test_error(&ctx))?;
    let hung = tokio::time::timeout(HANG, redis::cmd("PING").query_async::<String>(&mut c)).await;
    ensure!(hung.is_err(), "PING to a paused server answered: {hung:?}");

    ctx.step("unpausing the server");
    ctx.event("unpause");
    server.unpause().await.map_err(|e| e.into_test_error(&ctx))?;
    let mut fresh = db.connect().await.context("connecting after unpausing")?;
    let pong: String = tokio::time::timeout(Duration::from_secs(10), redis::cmd("PING").query_async(&mut fresh))
        .await
        .context("no PONG within 10 s of unpausing")??;
    ensure!(pong == "PONG", "PING answered {pong}");
    Ok(())
}

async fn run_id(c: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<String> {
    let info: String = redis::cmd("INFO").arg("server").query_async(c).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("run_id:"))
        .map(|s| s.trim().to_string())
        .context("INFO server has no run_id")
}
