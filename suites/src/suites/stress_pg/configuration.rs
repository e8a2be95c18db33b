//! Configuration: min idle, max size, idle timeout, max lifetime, warm-up —
//! each checked server side, not by trusting the pool's own report.

use std::{
    collections::BTreeSet,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context};
use poolstress_fixtures::{
    pool::{Adapter, Knob, Op, PoolConfig, PoolError, Postgres},
    service,
};
use poolstress_harness::{
    load::{Limit, OpTimer, Phase},
    Metric, TestCtx,
};

use super::{
    check_idle_timeout, check_server_peak, hold, latency_budget, ms, quantile, setup, ungated, wait_until,
    with_acquire_timeout,
};

/// Catalogue #16: min 5 / max 10: 5 connections exist before first use, a warm
/// acquire is fast (< 50 ms), and the minimum is still there after a burst.
pub async fn min_idle_maintained(ctx: TestCtx, a: Adapter<Postgres>) -> anyhow::Result<()> {
    let (min, max) = (5, 10);
    let fx = setup(&ctx, &a, PoolConfig::new(max).min_idle(min)).await?;
    let name = fx.name.clone();

    ctx.step(format!("waiting for {min} connections before any use"));
    wait_until(
        &format!("{name}: {min} server connections without a checkout (min_idle {min})"),
        Duration::from_secs(10),
        || async { Ok(fx.count().await? >= min as u64) },
    )
    .await?;
    ctx.record(Metric::lower("time_to_min_idle_ms", ms(fx.build_started.elapsed())));
    let n = fx.count().await?;
    ensure!(n <= max as u64, "{name}: {n} server connections with min_idle {min} and max_size {max}");
    if fx.caps.supports(Knob::StatusIdle) {
        wait_until(&format!("{name}: status to report {min} idle"), Duration::from_secs(5), || async {
            Ok(fx.pool.status().and_then(|s| s.idle).unwrap_or(0) >= min)
        })
        .await?;
    }

    ctx.step("warm acquisitions");
    let mut times = Vec::new();
    for _ in 0..min {
        let t = Instant::now();
        let mut c = fx.pool.acquire().await?;
        times.push(ms(t.elapsed()));
        c.run(&Op::Ping).await?;
    }
    let worst = quantile(&mut times, 1.0);
    latency_budget(
        &ctx,
        "warm_acquire_max_ms",
        worst,
        50.0,
        ungated(&fx),
        &format!("over {min} acquisitions of pre-opened connections"),
    )?;

    ctx.step(format!("a burst to {max}, then the minimum must remain"));
    drop(hold(&fx.pool, max, Duration::from_secs(10)).await?);
    wait_until(&format!("{name}: {min} connections to remain after a burst"), Duration::from_secs(5), || async {
        Ok(fx.count().await? >= min as u64)
    })
    .await?;
    if fx.caps.supports(Knob::StatusIdle) {
        wait_until(&format!("{name}: status to report {min} idle after a burst"), Duration::from_secs(5), || async {
            Ok(fx.pool.status().and_then(|s| s.idle).unwrap_or(0) >= min)
        })
        .await?;
    }
    let n = fx.count().await?;
    ensure!(n <= max as u64, "{name}: {n} server connections after a burst; max_size {max}");
    Ok(())
}

/// Catalogue #17: max 5 under 4x oversubscription: never more than 5 connections
/// (server side), 5 checkouts held or a reported size above 5.
pub async fn max_size_never_exceeded(ctx: TestCtx, a: Adapter<Postgres>) -> anyhow::Result<()> {
    let max = 5;
    let workers = 4 * max;
    let ops = ctx.profile().pick(100, 400);
    let op = Op::Slow(ctx.profile().pick(Duration::from_millis(5), Duration::from_millis(10)));
    let fx = setup(&ctx, &a, with_acquire_timeout(&a, PoolConfig::new(max), Duration::from_secs(30))).await?;
    let name = fx.name.clone();
    let mon = fx.monitor(&ctx);
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let peak_size = Arc::new(AtomicUsize::new(0));

    ctx.step(format!("{workers} workers, {ops} ops on a pool of {max}"));
    let (pool, fl, pk, ps) = (fx.pool.clone(), in_flight.clone(), peak.clone(), peak_size.clone());
    let stats = Phase::closed("oversubscribed", workers, Limit::new(ops, Duration::from_secs(30)))
        .grace(Duration::from_secs(5))
        .run(&ctx, move |mut t: OpTimer| {
            let (pool, fl, pk, ps, op) = (pool.clone(), fl.clone(), pk.clone(), ps.clone(), op.clone());
            async move {
                let mut c = pool.acquire().await?;
                t.acquired();
                pk.fetch_max(fl.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                if let Some(size) = pool.status().and_then(|s| s.size) {
                    ps.fetch_max(size, Ordering::SeqCst);
                }
                let r = c.run(&op).await;
                fl.fetch_sub(1, Ordering::SeqCst);
                r?;
                Ok::<_, PoolError>(t)
            }
        })
        .await?;
    stats.record_into(&ctx, "oversubscribed");
    ctx.note(stats.summary());
    ensure!(stats.cancelled == 0, "{name}: {} ops hung", stats.cancelled);
    stats.check_accounted(Some(ops))?;
    stats.check_only(&[])?;
    let (p, s) = (peak.load(Ordering::SeqCst), peak_size.load(Ordering::SeqCst));
    ctx.record(Metric::higher("checkouts_in_flight_peak", p as f64));
    ensure!(p <= max, "{name}: {p} checkouts held at once; max_size {max}");
    ensure!(s <= max, "{name}: the pool reported size {s}; max_size {max}");
    ensure!(
        p * 2 >= max,
        "{name}: with {workers} workers at most {p} checkouts were held at once: the pool did not use its {max}"
    );
    check_server_peak(&ctx, &fx, &mon, max as u64, &format!("under {workers} workers")).await
}

/// Catalogue #18: With a 2 s idle timeout, idle connections are closed (the server's
/// count drops, not before the timeout), and new ones are created on demand.
pub async fn idle_timeout_closes(ctx: TestCtx, a: Adapter<Postgres>) -> anyhow::Result<()> {
    let idle = ctx.profile().pick(Duration::from_millis(500), Duration::from_secs(2));
    let n = 5;
    let fx = setup(&ctx, &a, PoolConfig::new(n).idle_timeout(idle)).await?;

    ctx.step(format!("{n} connections used and released"));
    let mut held = hold(&fx.pool, n, Duration::from_secs(10)).await?;
    let mut before = BTreeSet::new();
    for c in &mut held {
        before.insert(c.run(&Op::WhoAmI).await?.id().context("who_am_i returned no id")?);
    }
    drop(held);
    check_idle_timeout(&ctx, &fx.pool, &fx.counter, (n, idle), &before, Instant::now()).await
}

/// The age of a backend server side, from an admin connection.
async fn backend_age(admin: &tokio_postgres::Client, pid: i64) -> anyhow::Result<Duration> {
    let row = admin
        .query_one(
            "SELECT extract(epoch FROM clock_timestamp() - backend_start)::float8 FROM pg_stat_activity WHERE pid = $1",
            &[&(pid as i32)],
        )
        .await
        .with_context(|| format!("looking up backend {pid} in pg_stat_activity"))?;
    Ok(Duration::from_secs_f64(row.get::<_, f64>(0).max(0.0)))
}

/// Catalogue #19: With a short max lifetime, during a run of 10 ops (5 s) connections
/// are recycled: several backends serve, none older than its lifetime
/// (plus the pool's check interval).
pub async fn max_lifetime_recycles(ctx: TestCtx, a: Adapter<Postgres>) -> anyhow::Result<()> {
    let lifetime = ctx.profile().pick(Duration::from_millis(300), Duration::from_secs(1));
    let run = ctx.profile().pick(Duration::from_millis(1500), Duration::from_secs(5));
    let ops = 10u32;
    let fx = setup(&ctx, &a, PoolConfig::new(1).max_lifetime(lifetime)).await?;
    let name = fx.name.clone();
    let (admin, conn) = service::pg_target_config(&fx.server.admin_target()).connect(tokio_postgres::NoTls).await?;
    tokio::spawn(conn);

    ctx.step(format!("{ops} ops over {run:?} with max_lifetime {lifetime:?}"));
    let start = tokio::time::Instant::now();
    let mut uses = Vec::new();
    for i in 0..ops {
        tokio::time::sleep_until(start + run * i / ops).await; // the ops' timetable
        let mut c = fx.pool.acquire().await.with_context(|| format!("{name}: op {i}"))?;
        let pid = c.run(&Op::WhoAmI).await?.id().context("who_am_i returned no id")?;
        let age = backend_age(&admin, pid).await?;
        c.run(&Op::Ping).await?;
        uses.push((pid, age));
    }
    let backends: BTreeSet<i64> = uses.iter().map(|u| u.0).collect();
    let oldest = uses.iter().map(|u| u.1).max().unwrap_or_default();
    // No pool retires a connection at the instant it expires: bb8 checks on
    // return and in its reaper (every quarter lifetime), deadpool at checkout,
    // sqlx on return and in its maintenance task (every lifetime, when no
    // shorter idle_timeout is set). One lifetime of check interval is allowed.
    let allowed = lifetime * 2 + Duration::from_millis(100);
    ctx.record(Metric::higher("backends_used", backends.len() as f64));
    ctx.record(Metric::lower("oldest_backend_at_use_ms", ms(oldest)));
    ctx.note(format!(
        "{} backends served {ops} ops over {run:?} (max_lifetime {lifetime:?}); ages at use {:?}",
        backends.len(),
        uses.iter().map(|u| format!("{}:{:.0}ms", u.0, ms(u.1))).collect::<Vec<_>>()
    ));
    ensure!(
        backends.len() >= 2,
        "{name}: one backend served all {ops} ops over {run:?} with max_lifetime {lifetime:?}: connections were never recycled"
    );
    ensure!(
        oldest <= allowed,
        "{name}: a backend {oldest:?} old was handed out with max_lifetime {lifetime:?} (allowed up to {allowed:?}): not recycled after its lifetime"
    );
    Ok(())
}

/// Catalogue #20: A pool with min 10 is warm within 2 s of being built; an acquire of a
/// pre-warmed connection takes < 20 ms.
pub async fn warmup_on_init(ctx: TestCtx, a: Adapter<Postgres>) -> anyhow::Result<()> {
    let min = 10;
    let fx = setup(&ctx, &a, PoolConfig::new(min).min_idle(min)).await?;
    let name = fx.name.clone();
    ctx.step(format!("waiting for {min} warm connections"));
    wait_until(&format!("{name}: {min} connections opened by min_idle {min}"), Duration::from_secs(20), || async {
        Ok(fx.count().await? >= min as u64)
    })
    .await?;
    let warm = fx.build_started.elapsed();
    ctx.record(Metric::lower("build_ms", ms(fx.build_took)));
    latency_budget(
        &ctx,
        "warmup_ms",
        ms(warm),
        2000.0,
        ungated(&fx),
        &format!("to open {min} connections from the build"),
    )?;
    if fx.caps.supports(Knob::StatusIdle) {
        wait_until(&format!("{name}: status to report {min} idle"), Duration::from_secs(5), || async {
            Ok(fx.pool.status().and_then(|s| s.idle).unwrap_or(0) >= min)
        })
        .await?;
    }

    ctx.step(format!("{min} acquisitions of pre-warmed connections"));
    let mut held = Vec::new();
    let mut times = Vec::new();
    for _ in 0..min {
        let t = Instant::now();
        let c = fx.pool.acquire().await?;
        times.push(ms(t.elapsed()));
        held.push(c);
    }
    for c in &mut held {
        c.run(&Op::Ping).await?;
    }
    let n = fx.count().await?;
    if n > min as u64 {
        bail!("{name}: {n} server connections with {min} pre-warmed ones held; max_size {min}");
    }
    drop(held);
    let mut t2 = times.clone();
    ctx.record(Metric::lower("prewarmed_acquire_p50_ms", quantile(&mut t2, 0.5)));
    let worst = quantile(&mut times, 1.0);
    latency_budget(&ctx, "prewarmed_acquire_max_ms", worst, 20.0, ungated(&fx), &format!("over {min} acquisitions"))
}
