//! The fault suite against the real Postgres server.

use std::sync::atomic::{AtomicBool, Ordering};

use poolstress_fixtures::fault::{Action, TaskKiller};

use super::*;

/// How long a request must stay unanswered to count as hanging.
const HANG: Duration = Duration::from_millis(500);
use poolstress_fixtures::{fault::kill_pg_backends, service::pg_target_config, PgTarget};

const PG: &[&str] = &[tag::CHAOS, tag::LAYER_3, tag::POSTGRES];

/// Registers the Postgres fault tests.
pub(super) fn register(r: &mut Registry) {
    r.test("faults::postgres::latency_delays_every_query", PG, pg_latency);
    r.test("faults::postgres::reset_peer_is_a_connection_reset", PG, pg_reset_peer);
    r.test("faults::postgres::timeout_hangs_until_healed", PG, pg_timeout);
    r.test("faults::postgres::kill_backends_server_side", PG, pg_kill_backends);
    r.test("faults::postgres::abort_workers_mid_checkout", PG, pg_abort_workers);
    r.test("faults::postgres::restart_answers_with_new_backends", PG, pg_restart);
    r.test("faults::postgres::pause_hangs_then_releases", PG, pg_pause);
    r.test("faults::postgres::chaos_schedule_kills_and_restart", PG, pg_schedule);
}

pub(super) async fn pg_conn(t: &PgTarget) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = pg_target_config(t).connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

pub(super) async fn pg_setup(ctx: &TestCtx) -> anyhow::Result<(Arc<service::PgServer>, service::TestDb)> {
    ctx.step("getting the postgres server");
    let server = service::postgres().await?;
    let db = server.test_db(ctx).await?;
    Ok((server, db))
}

async fn pg_latency(ctx: TestCtx) -> anyhow::Result<()> {
    let (_server, db) = pg_setup(&ctx).await?;
    let (proxy, via) = FaultProxy::for_pg(&ctx, &db.target).await?;
    let client = pg_conn(&via).await?;
    let delay = Duration::from_millis(150);
    let _g = proxy.add(FaultSpec::new(FaultKind::latency(delay, Duration::ZERO)).upstream())?;
    ctx.step("timing queries under 150 ms of upstream latency");
    let mut took = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        client.simple_query("SELECT 1").await?;
        took.push(t.elapsed());
    }
    took.sort();
    ensure!(took[0] >= delay, "a query took {:?} under {delay:?} of latency", took[0]);
    ctx.record(Metric::lower("latency_150ms_p50_ms", ms(percentile(&took, 0.5))));
    Ok(())
}

async fn pg_reset_peer(ctx: TestCtx) -> anyhow::Result<()> {
    let (_server, db) = pg_setup(&ctx).await?;
    let (proxy, via) = FaultProxy::for_pg(&ctx, &db.target).await?;
    let client = pg_conn(&via).await?;
    client.simple_query("SELECT 1").await.context("before the fault")?;
    let g = proxy.add(FaultSpec::new(FaultKind::reset_peer(Duration::ZERO)).upstream())?;
    ctx.step("querying a connection that gets reset");
    let e = client.simple_query("SELECT 1").await.err().context("a query on a reset connection succeeded")?;
    let kind = io_kind(&e);
    ensure!(
        kind == Some(io::ErrorKind::ConnectionReset) || e.is_closed(),
        "expected a connection reset, got {e} (io kind {kind:?})"
    );
    ctx.note(format!("tokio-postgres saw the reset as: {e} (io kind {kind:?})"));
    // a raw socket sees the RST itself
    let mut raw = tokio::net::TcpStream::connect(proxy.addr()).await?;
    raw.write_all(b"\0\0\0\x08\x04\xd2\x16\x2f").await?; // SSLRequest: any bytes trigger the reset
    let mut b = [0u8; 1];
    let r = raw.read(&mut b).await;
    ensure!(
        matches!(&r, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
        "a raw socket read after the reset gave {r:?}, expected ECONNRESET"
    );
    g.heal()?;
    let fresh = pg_conn(&via).await.context("a new connection after the heal")?;
    fresh.simple_query("SELECT 1").await?;
    Ok(())
}

async fn pg_timeout(ctx: TestCtx) -> anyhow::Result<()> {
    let (_server, db) = pg_setup(&ctx).await?;
    let (proxy, via) = FaultProxy::for_pg(&ctx, &db.target).await?;
    let client = Arc::new(pg_conn(&via).await?);

    ctx.step("blackholing: a query hangs");
    let g = proxy.add(FaultKind::blackhole())?;
    let c = client.clone();
    let started = Instant::now();
    let q = tokio::spawn(async move { c.query_one("SELECT 6 * 7", &[]).await.map(|r| r.get::<_, i32>(0)) });
    tokio::time::sleep(HANG).await; // proving a hang takes time
    ensure!(!q.is_finished(), "the query finished during a blackhole");
    ctx.step("healing: the held query is answered");
    let healed = Instant::now();
    g.heal()?;
    let v = tokio::time::timeout(Duration::from_secs(10), q)
        .await
        .context("the query was not released by the heal")???;
    ensure!(v == 42, "the held query answered {v}");
    ensure!(started.elapsed() >= HANG, "answered too early");
    ctx.record(Metric::lower("release_after_heal_ms", ms(healed.elapsed())));

    ctx.step("timeout 300 ms: the connection is closed when it passes");
    let _g = proxy.add(FaultKind::timeout(Duration::from_millis(300)))?;
    let t = Instant::now();
    let r = client.simple_query("SELECT 1").await;
    ensure!(r.is_err(), "a query succeeded through a timeout fault");
    ensure!(t.elapsed() >= Duration::from_millis(250), "closed after {:?}, before the 300 ms timeout", t.elapsed());
    Ok(())
}

async fn pg_kill_backends(ctx: TestCtx) -> anyhow::Result<()> {
    let (server, db) = pg_setup(&ctx).await?;
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(db.connect().await?);
    }
    ctx.step("terminating 60 % of the test's backends");
    let report =
        kill_pg_backends(&server.admin_target(), &db.target.application_name, Victims::Fraction(0.6), &mut ctx.rng())
            .await?;
    ensure!(report.seen == 5 && report.killed.len() == 3, "expected 3 of 5 killed, got {report:?}");
    let mut failed = 0;
    for c in &clients {
        if c.simple_query("SELECT 1").await.is_err() {
            failed += 1;
        }
    }
    ensure!(failed == 3, "{failed} of 5 connections failed after 3 were terminated");
    Ok(())
}

async fn pg_abort_workers(ctx: TestCtx) -> anyhow::Result<()> {
    let (_server, db) = pg_setup(&ctx).await?;
    let killer = TaskKiller::new(ctx.seed());
    let in_query = Arc::new(Mutex::new(0usize));
    for _ in 0..5 {
        let client = db.connect().await?;
        let in_query = in_query.clone();
        killer.spawn(move |hold| async move {
            for _ in 0..1000 {
                let _h = hold.enter(); // holding the connection for the query
                *in_query.lock() += 1;
                let r = client.simple_query("SELECT pg_sleep(0.05)").await;
                *in_query.lock() -= 1;
                r?;
            }
            Ok::<_, tokio_postgres::Error>(())
        });
    }
    ctx.step("aborting 60 % of the workers mid-query");
    let n = killer.kill_holding(Victims::Fraction(0.6), Duration::from_secs(5)).await;
    ensure!(n == 3, "aborted {n} workers, expected 3 of 5");
    wait_for("three workers to stop", Duration::from_secs(5), || killer.running() == 2).await?;
    ensure!(killer.holding() <= 2, "aborted workers still count as holding");
    // an aborted worker never got past its query: its increment stays
    let n = *in_query.lock();
    ensure!((3..=5).contains(&n), "{n} workers counted in a query; the 3 aborted ones were not aborted mid-query");
    killer.abort_all();
    Ok(())
}

async fn pg_restart(ctx: TestCtx) -> anyhow::Result<()> {
    let (server, db) = pg_setup(&ctx).await?;
    let before = db.connect().await?;
    let row = before.query_one("SELECT pg_backend_pid(), pg_postmaster_start_time()::text", &[]).await?;
    let (pid_before, start_before): (i32, String) = (row.get(0), row.get(1));
    ctx.step("restarting postgres");
    ServerFaults::for_test(&ctx, server.clone()).restart().await.map_err(|e| e.into_test_error(&ctx))?;
    ensure!(before.simple_query("SELECT 1").await.is_err(), "a connection from before the restart still answered");
    let after = db.connect().await.context("connecting after the restart")?;
    let row = after.query_one("SELECT pg_backend_pid(), pg_postmaster_start_time()::text", &[]).await?;
    let (pid_after, start_after): (i32, String) = (row.get(0), row.get(1));
    ensure!(
        start_after != start_before,
        "the postmaster start time did not change ({start_before}): no restart happened"
    );
    ensure!(pid_after != pid_before, "the same backend PID {pid_before} answered after a restart");
    ctx.note(format!("backend pid {pid_before} -> {pid_after}; postmaster started {start_before} -> {start_after}"));
    Ok(())
}

async fn pg_pause(ctx: TestCtx) -> anyhow::Result<()> {
    let (server, db) = pg_setup(&ctx).await?;
    let client = Arc::new(db.connect().await?);
    let faults = ServerFaults::for_test(&ctx, server.clone());
    ctx.step("pausing postgres");
    let paused = faults.pause().await.map_err(|e| e.into_test_error(&ctx))?;
    let c = client.clone();
    let q = tokio::spawn(async move { c.query_one("SELECT 40 + 2", &[]).await.map(|r| r.get::<_, i32>(0)) });
    tokio::time::sleep(HANG).await; // proving a hang takes time
    if q.is_finished() {
        bail!("a query finished against a paused server: {:?}", q.await);
    }
    ctx.step("unpausing");
    paused.heal().await.map_err(|e| e.into_test_error(&ctx))?;
    let v =
        tokio::time::timeout(Duration::from_secs(10), q).await.context("the query stayed stuck after unpause")???;
    ensure!(v == 42, "answered {v}");
    Ok(())
}

async fn pg_schedule(ctx: TestCtx) -> anyhow::Result<()> {
    let (server, db) = pg_setup(&ctx).await?;
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(db.connect().await?);
    }
    let schedule = Schedule::new()
        .at(Duration::from_millis(300), Action::kill_connections(Victims::Fraction(0.6)))
        .at(Duration::from_millis(800), Action::restart());
    let env = ChaosEnv::new()
        .server(&ctx, server.clone())
        .postgres_connections(server.admin_target(), db.target.application_name.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new(Vec::new()));
    let mut workers = tokio::task::JoinSet::new();
    for client in clients {
        let (target, stop, samples) = (db.target.clone(), stop.clone(), samples.clone());
        workers.spawn(async move {
            let mut client = Some(client);
            for _ in 0..100_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let ok = match &client {
                    Some(c) => c.simple_query("SELECT 1").await.is_ok(),
                    None => false,
                };
                samples.lock().push(Sample::new(Instant::now(), ok));
                if !ok {
                    client = pg_conn(&target).await.ok();
                    if client.is_none() {
                        tokio::time::sleep(Duration::from_millis(10)).await; // reconnect backoff
                    }
                }
            }
        });
    }
    ctx.step("running kills and a restart under load");
    let run = schedule.start(&ctx, &env)?;
    let records = run.finish().await?;
    // observe the recovery for a second after the restart returned
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    while workers.join_next().await.is_some() {}
    let kill = records[0].detail.clone().unwrap_or_default();
    ensure!(kill == "killed 3 of 5 server connections", "{kill}");
    let restart = &records[1];
    let r = analyse(
        &samples.lock(),
        &FaultWindow::new(restart.started.context("no start")?, restart.ended.context("no end")?),
    );
    r.record(&ctx, "restart_");
    ensure!(r.first_success_after_heal.is_some(), "nothing succeeded after the restart: {r:?}");
    ensure!(r.error_rate_recovered_after.is_some(), "the error rate never recovered after the restart: {r:?}");
    Ok(())
}
