//! Smoke tests of the Postgres fixture.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use poolstress_fixtures::service::{self, ServerControl};
use poolstress_harness::{tag, ConnectionCounter, Metric, Registry, TestCtx};

use super::HANG;

const PG: &[&str] = &[tag::LAYER_3, tag::POSTGRES];

/// Registers the Postgres smoke tests.
pub(super) fn register(r: &mut Registry) {
    r.test("service::smoke::no_server_names_the_three_ways", &[tag::LAYER_1], no_server);
    r.test("postgres::smoke::query", PG, pg_query);
    r.test("postgres::smoke::restart_survived", PG, pg_restart).exclusive(true);
    r.test("postgres::smoke::pause_hangs_then_heals", PG, pg_pause).exclusive(true);
    r.test("postgres::smoke::tls_when_requested", PG, pg_tls);
}

async fn pg_query(ctx: TestCtx) -> anyhow::Result<()> {
    ctx.step("getting the postgres server");
    let pg = service::postgres().await?;
    let t = Instant::now();
    let db = pg.test_db(&ctx).await?;
    ctx.record(Metric::lower("test_db_ms", t.elapsed().as_secs_f64() * 1e3));
    let other = pg.test_db(&poolstress_harness::TestCtx::detached("smoke other test")).await?;
    ensure!(db.target.dbname != other.target.dbname, "two tests got the same database {}", db.target.dbname);

    ctx.step("querying through a real connection");
    let client = db.connect().await.context("connecting to the test database")?;
    let row = client.query_one("SELECT current_database(), current_setting('application_name'), 40 + 2", &[]).await?;
    let (name, app, answer): (String, String, i32) = (row.get(0), row.get(1), row.get(2));
    ensure!(name == db.target.dbname, "connected to {name}, expected {}", db.target.dbname);
    ensure!(app == ctx.slug(), "application_name {app}, expected {}", ctx.slug());
    ensure!(answer == 42, "40 + 2 = {answer}");
    client.batch_execute("CREATE TABLE t (v int); INSERT INTO t VALUES (1), (2)").await?;

    ctx.step("counting connections server side");
    let counter = db.connection_counter();
    let n = counter.count().await?;
    ensure!(n == 1, "pg_stat_activity shows {n} connections for this test's database, expected the 1 we opened");
    let other_client = other.connect().await?;
    let n = counter.count().await?;
    ensure!(n == 1, "another test's connection was counted as ours ({n})");
    ensure!(
        other_client.query("SELECT 1 FROM pg_tables WHERE tablename = 't'", &[]).await?.is_empty(),
        "another test's database sees this test's table"
    );
    drop(client);
    let n = wait_count(&counter, 0).await?;
    ensure!(n == 0, "{n} connections still counted after closing ours");
    Ok(())
}

async fn pg_restart(ctx: TestCtx) -> anyhow::Result<()> {
    let pg = service::postgres().await?;
    let db = pg.test_db(&ctx).await?;
    let before = db.connect().await?;
    before.batch_execute("CREATE TABLE kept (v int); INSERT INTO kept VALUES (7)").await?;
    let pid_before: i32 = before.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);

    ctx.step("restarting the server");
    ctx.event("restart");
    let t = Instant::now();
    pg.restart().await.map_err(|e| e.into_test_error(&ctx))?;
    let restart_ms = t.elapsed().as_secs_f64() * 1e3;
    ctx.record(Metric::lower("restart_ms", restart_ms));
    ctx.event("ready again");

    ensure!(before.simple_query("SELECT 1").await.is_err(), "a connection from before the restart still answered");
    ctx.step("reconnecting to the same address");
    let after = db.connect().await.context("connecting to the same host:port after the restart")?;
    let pid_after: i32 = after.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
    ensure!(pid_after != pid_before, "same backend pid {pid_after} after a restart: nothing was restarted");
    let v: i32 = after.query_one("SELECT v FROM kept", &[]).await?.get(0);
    ensure!(v == 7, "the test database lost its data across the restart");
    ctx.note(format!("restart took {restart_ms:.0} ms on the {} backend", pg.backend()));
    Ok(())
}

async fn pg_pause(ctx: TestCtx) -> anyhow::Result<()> {
    let pg = service::postgres().await?;
    let db = pg.test_db(&ctx).await?;
    let client = db.connect().await?;
    client.simple_query("SELECT 1").await?;

    ctx.step("pausing the server");
    ctx.event("pause");
    pg.pause().await.map_err(|e| e.into_test_error(&ctx))?;
    // If anything below fails, dropping `db` brings the server back for the next test.
    let hung = tokio::time::timeout(HANG, client.simple_query("SELECT 1")).await;
    ensure!(hung.is_err(), "a query to a paused server answered: {hung:?}");
    let connect = tokio::time::timeout(HANG, db.connect()).await;
    ensure!(connect.is_err(), "a new connection to a paused server completed");

    ctx.step("unpausing the server");
    ctx.event("unpause");
    let t = Instant::now();
    pg.unpause().await.map_err(|e| e.into_test_error(&ctx))?;
    ctx.record(Metric::lower("unpause_ms", t.elapsed().as_secs_f64() * 1e3));
    tokio::time::timeout(Duration::from_secs(10), client.simple_query("SELECT 1"))
        .await
        .context("the connection from before the pause did not answer within 10 s of unpausing")?
        .context("the connection from before the pause broke")?;
    Ok(())
}

async fn pg_tls(ctx: TestCtx) -> anyhow::Result<()> {
    let requested = matches!(std::env::var("POOLSTRESS_POSTGRES_TLS").as_deref(), Ok("on" | "1" | "true" | "yes"));
    if !requested {
        return Err(ctx.skip("TLS not requested (POOLSTRESS_POSTGRES_TLS=on with poolstress's local postgres image)"));
    }
    let pg = service::postgres().await?;
    ensure!(
        pg.tls_enabled().await?,
        "POOLSTRESS_POSTGRES_TLS=on but the {} server has ssl off; TLS needs the docker backend with poolstress's \
         local image (scripts/build-local-images.sh)",
        pg.backend()
    );
    Ok(())
}

/// With no Docker engine and no server binaries, a layer_3 test fails with
/// the fixture exit code and a message naming the three ways to get a
/// server, under `auto` and under `local`. Needs no server: it proves there
/// is none.
async fn no_server(ctx: TestCtx) -> anyhow::Result<()> {
    let empty = tempfile::tempdir()?;
    for backend in ["auto", "local"] {
        ctx.step(format!(
            "a child run of postgres::smoke::query with POOLSTRESS_BACKEND={backend}, no docker, no binaries"
        ));
        let report = tempfile::tempdir()?;
        let mut cmd = std::process::Command::new(std::env::current_exe()?);
        cmd.args(["--include-tag", "layer_3", "--exact", "postgres::smoke::query", "--report-dir"])
            .arg(report.path())
            .env("POOLSTRESS_BACKEND", backend)
            .env("PATH", empty.path())
            .env("POOLSTRESS_PG_BIN_DIR", empty.path())
            .env("POOLSTRESS_REDIS_BIN_DIR", empty.path())
            .env("DOCKER_HOST", "unix:///nonexistent/poolstress-no-docker.sock")
            .env("POOLSTRESS_LOCK_FILE", report.path().join("test.lock"))
            .env_remove("POOLSTRESS_POSTGRES_URL")
            .env_remove("POOLSTRESS_REDIS_URL")
            .env_remove("POOLSTRESS_INCLUDE_TAGS")
            .env_remove("POOLSTRESS_EXCLUDE_TAGS")
            .env_remove("NEXTEST_RUN_ID");
        let out = tokio::time::timeout(Duration::from_secs(120), tokio::task::spawn_blocking(move || cmd.output()))
            .await
            .context("the child run did not end within 120 s")???;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let code = out.status.code();
        ensure!(
            code == Some(i32::from(poolstress_harness::exit::FIXTURE_FAILURE)),
            "POOLSTRESS_BACKEND={backend} with no server anywhere: want exit {} (no service), got {code:?}:\n{text}",
            poolstress_harness::exit::FIXTURE_FAILURE
        );
        for want in [
            "Three ways to get a server",
            "POOLSTRESS_BACKEND=docker",
            "build-local-images.sh",
            "POOLSTRESS_BACKEND=local",
            "POOLSTRESS_POSTGRES_URL",
        ] {
            ensure!(text.contains(want), "POOLSTRESS_BACKEND={backend}: the message lacks {want:?}:\n{text}");
        }
    }
    Ok(())
}

/// Waits (up to 5 s) for the server to see `want` connections; returns the last count.
async fn wait_count(counter: &dyn ConnectionCounter, want: u64) -> anyhow::Result<u64> {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let n = counter.count().await?;
        if n == want || Instant::now() >= until {
            return Ok(n);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
