//! layer_3 smoke tests of the service fixtures: a real query, a restart
//! survived, a pause observed as a hang and healed, for each service on
//! whatever backend the run uses (`POOLSTRESS_BACKEND`).
//!
//! Tests that restart or pause the shared server are exclusive: nothing else
//! runs while the server is down.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use poolstress_fixtures::service::{self, ServerControl};
use poolstress_harness::{tag, ConnectionCounter, Metric, Registry, TestCtx};

const PG: &[&str] = &[tag::LAYER_3, tag::POSTGRES];
const REDIS: &[&str] = &[tag::LAYER_3, tag::REDIS];
/// How long a query to a paused server is given before we call it a hang.
const HANG: Duration = Duration::from_millis(500);

/// Set in the child runs of the cleanup test: registers the misbehaving tests they run.
const CHILD_ENV: &str = "POOLSTRESS_SMOKE_CHILD";

/// Registers the smoke tests.
pub fn register(r: &mut Registry) {
    if std::env::var_os(CHILD_ENV).is_some() {
        register_children(r);
    }
    r.test(
        "service::smoke::cleanup_after_panic_deadline_and_sigkill",
        &[tag::LAYER_3, tag::POSTGRES, tag::REDIS],
        cleanup,
    )
    .deadline(Duration::from_secs(240));
    r.test("service::smoke::no_server_names_the_three_ways", &[tag::LAYER_1], no_server);
    r.test("postgres::smoke::query", PG, pg_query);
    r.test("postgres::smoke::restart_survived", PG, pg_restart).exclusive(true);
    r.test("postgres::smoke::pause_hangs_then_heals", PG, pg_pause).exclusive(true);
    r.test("postgres::smoke::tls_when_requested", PG, pg_tls);
    r.test("redis::smoke::query", REDIS, redis_query);
    r.test("redis::smoke::restart_survived", REDIS, redis_restart).exclusive(true);
    r.test("redis::smoke::pause_hangs_then_heals", REDIS, redis_pause).exclusive(true);
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
