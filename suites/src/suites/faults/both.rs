//! Healing checks that need both servers.

use super::*;
use super::{
    pg::{pg_conn, pg_setup},
    redis::{redis_conn, redis_setup},
};

const BOTH: &[&str] = &[tag::CHAOS, tag::LAYER_3, tag::POSTGRES, tag::REDIS];

/// Registers the healing checks across both servers.
pub(super) fn register(r: &mut Registry) {
    r.test("faults::healing::panic_mid_fault_leaves_proxy_healed_and_server_running", BOTH, panic_heals);
    r.test("faults::healing::zz_next_test_finds_servers_running", BOTH, next_test_finds_servers_running);
}

async fn panic_heals(ctx: TestCtx) -> anyhow::Result<()> {
    let (redis_server, rdb) = redis_setup(&ctx).await?;
    let (pg_server, pdb) = pg_setup(&ctx).await?;
    let (proxy, via) = FaultProxy::for_redis(&ctx, &rdb.target).await?;
    ctx.step("a task takes faults and panics in the middle of them");
    let (p, c, pg) = (proxy.clone(), ctx.clone(), pg_server.clone());
    let task = tokio::spawn(async move {
        let _down = p.add(FaultKind::down()).expect("down");
        let _slow = p.add(FaultKind::latency(Duration::from_secs(1), Duration::ZERO)).expect("latency");
        let _paused = ServerFaults::for_test(&c, pg).pause().await.expect("pause postgres");
        panic!("deliberate panic while the proxy is down and postgres is paused");
    });
    let r = task.await;
    ensure!(r.as_ref().is_err_and(|e| e.is_panic()), "the task was meant to panic: {r:?}");

    ctx.step("the same in a catch_unwind block on this thread");
    let p = proxy.clone();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let _g = p.add(FaultKind::blackhole()).expect("blackhole");
        panic!("deliberate panic while blackholed");
    }));
    ensure!(caught.is_err(), "the block was meant to panic");

    ctx.step("checking everything was healed");
    ensure!(proxy.active().is_empty() && !proxy.is_down(), "proxy faults survived the panic: {:?}", proxy.active());
    let mut c = tokio::time::timeout(Duration::from_secs(5), redis_conn(&via)).await.context("proxy hangs")??;
    let t = Instant::now();
    let _: String = ::redis::cmd("PING").query_async(&mut c).await?;
    ensure!(t.elapsed() < Duration::from_millis(500), "PING took {:?}: latency was not healed", t.elapsed());
    let client =
        tokio::time::timeout(Duration::from_secs(5), pdb.connect()).await.context("postgres still paused")??;
    tokio::time::timeout(Duration::from_secs(5), client.simple_query("SELECT 1"))
        .await
        .context("postgres still paused")??;
    drop(redis_server);
    Ok(())
}

async fn next_test_finds_servers_running(ctx: TestCtx) -> anyhow::Result<()> {
    // Straight to the admin targets: no test_db, whose ensure_running would hide a server left broken.
    let pg = service::postgres().await?;
    let redis_server = service::redis().await?;
    ctx.step("postgres answers");
    let c =
        tokio::time::timeout(Duration::from_secs(5), pg_conn(&pg.admin_target())).await.context("postgres hangs")??;
    c.simple_query("SELECT 1").await?;
    ctx.step("redis answers");
    let mut r = tokio::time::timeout(Duration::from_secs(5), redis_conn(&redis_server.admin_target()))
        .await
        .context("redis hangs")??;
    let _: String = ::redis::cmd("PING").query_async(&mut r).await?;
    Ok(())
}
