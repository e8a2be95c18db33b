//! A pool's life while it is used.
//!
//! - `close_while_active`: `close()` with 5 connections checked out, one of
//!   them running a long operation (2 s; 600 ms in quick) server side: close
//!   completes within 10 s, the long op ends (either way) without hanging,
//!   nothing of the test is left server side, and a pool's later acquires
//!   fail as `pool_closed`.
//! - `resize_during_use`: 8 callers in closed loop on a pool of (min 2, max
//!   5); midway a pool of (min 5, max 15) is swapped in, and the old one is
//!   closed once no caller holds it: no op fails, and the new pool is used
//!   past the old max.
//! - `acquire_timeout_precision`: with the only connection held, acquires
//!   with timeouts of 100, 500 and 1000 ms (quick: 100 and 500) fail as
//!   acquire timeouts no earlier than the timeout and at most 100 ms after
//!   it; the pool serves again after the release.
//! - `broken_connection_not_reused`: on a pool of one, the checked-out
//!   connection is killed server side and released — once without using it,
//!   once after an op on it failed: each time the next checkout works at
//!   once, on another connection.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context};
use parking_lot::RwLock;
use poolstress_fixtures::pool::{Adapter, Knob, Op, PoolError};
use poolstress_harness::{
    load::{Limit, OpTimer, Phase},
    Classify, ErrorClass, Metric, TestCtx,
};

use crate::kit::{
    support::{accounted, build, monitor, ms, setup},
    wait_until, NetService, Tune,
};

pub(super) async fn close_while_active<S: NetService>(ctx: TestCtx, a: Adapter<S>) -> anyhow::Result<()> {
    let long = ctx.profile().pick(Duration::from_millis(600), Duration::from_secs(2));
    let caps = a.capabilities();
    let cfg =
        Tune::new(&caps, 10).acquire_timeout(Duration::from_secs(2)).op_timeout(long + Duration::from_secs(3)).done();
    let (fx, pool) = setup(&ctx, &a, cfg).await?;
    let name = a.name();
    let probe = S::slow_ops(&fx.target).await?;

    ctx.step("5 connections checked out, one running a long op");
    let mut held = Vec::new();
    for i in 0..5 {
        let mut c = pool.acquire().await.with_context(|| format!("{name}: checkout {i}"))?;
        c.run(&Op::Ping).await.with_context(|| format!("{name}: ping on checkout {i}"))?;
        held.push(c);
    }
    let mut busy = held.pop().expect("5 held");
    let long_op = tokio::spawn(async move {
        let t = Instant::now();
        let r = busy.run(&Op::Slow(long)).await;
        drop(busy);
        (r.map(|_| ()), t.elapsed())
    });
    wait_until(&format!("{name}: the long op running server side"), Duration::from_secs(5), || async {
        Ok(probe.count().await? >= 1)
    })
    .await?;

    ctx.step("close() while they are held");
    let started = Instant::now();
    let closing = {
        let pool = pool.clone();
        tokio::spawn(async move {
            pool.close().await;
            Instant::now()
        })
    };
    // The application gives back what it holds once it learns of the close.
    drop(held);
    let closed_at = tokio::time::timeout(Duration::from_secs(10), closing).await.map_err(|_| {
        anyhow!("{name}: close() with 5 connections checked out and a long op running did not complete within 10 s")
    })??;
    let close_ms = ms(closed_at - started);
    ctx.record(Metric::lower("close_ms", close_ms));
    let (long_result, long_took) = tokio::time::timeout(Duration::from_secs(10), long_op)
        .await
        .map_err(|_| anyhow!("{name}: the long op ({long:?}) had not ended 10 s after close()"))??;
    ctx.note(format!(
        "{name}: close() took {close_ms:.0} ms; the long op {} after {:.0} ms",
        match &long_result {
            Ok(()) => "completed".to_string(),
            Err(e) => format!("failed [{}]", e.class()),
        },
        ms(long_took)
    ));

    ctx.step("nothing left server side");
    wait_until(&format!("{name}: no connection of the test left after close()"), Duration::from_secs(10), || async {
        Ok(fx.counter.count().await? == 0)
    })
    .await?;
    if caps.supports(Knob::Reuse) {
        // A pool (not a new connection per checkout) refuses work once closed.
        match tokio::time::timeout(Duration::from_secs(5), pool.acquire()).await {
            Ok(Err(e)) if e.class() == ErrorClass::PoolClosed => {}
            Ok(Err(e)) => {
                bail!("{name}: an acquire after close() failed with [{}], expected pool_closed: {e}", e.class())
            }
            Ok(Ok(_)) => bail!("{name}: an acquire after close() handed out a connection"),
            Err(_) => bail!("{name}: an acquire after close() hung for 5 s"),
        }
    }
    Ok(())
}

pub(super) async fn resize_during_use<S: NetService>(ctx: TestCtx, a: Adapter<S>) -> anyhow::Result<()> {
    let (workers, n) = (8, ctx.profile().pick(400u64, 2_000));
    let caps = a.capabilities();
    let small = Tune::new(&caps, 5).min_idle(2).acquire_timeout(Duration::from_secs(5)).done();
    let large = Tune::new(&caps, 15).min_idle(5).acquire_timeout(Duration::from_secs(5)).done();
    let (fx, first) = setup(&ctx, &a, small).await?;
    let name = a.name().to_string();
    let mon = monitor(&ctx, &fx, Duration::from_millis(10));
    let current = Arc::new(RwLock::new(Arc::new(first)));
    let done = Arc::new(AtomicU64::new(0));

    let swapper = {
        let (ctx, a, target, current, done, name) =
            (ctx.clone(), a.clone(), fx.target.clone(), current.clone(), done.clone(), name.clone());
        tokio::spawn(async move {
            wait_until("half the ops done", Duration::from_secs(30), || async {
                Ok(done.load(Ordering::SeqCst) >= n / 2)
            })
            .await?;
            let t = Instant::now();
            let next = Arc::new(build(&ctx, &a, &large, &target).await?);
            let old = std::mem::replace(&mut *current.write(), next);
            ctx.event("swapped in the (5, 15) pool");
            // Callers that took the old pool before the swap finish with it first.
            wait_until(&format!("{name}: callers to let go of the old pool"), Duration::from_secs(10), || async {
                Ok(Arc::strong_count(&old) == 1)
            })
            .await?;
            old.close().await;
            ctx.event("closed the (2, 5) pool");
            anyhow::Ok((done.load(Ordering::SeqCst), ms(t.elapsed())))
        })
    };

    ctx.step(format!("{n} ops from {workers} callers; the pool is swapped midway"));
    let op = {
        let (current, done) = (current.clone(), done.clone());
        move |mut t: OpTimer| {
            let (current, done) = (current.clone(), done.clone());
            async move {
                let pool = current.read().clone();
                let mut c = pool.acquire().await?;
                t.acquired();
                c.run(&Op::Ping).await?;
                tokio::time::sleep(Duration::from_millis(2)).await; // the caller's work while holding it
                drop(c);
                done.fetch_add(1, Ordering::SeqCst);
                Ok::<_, PoolError>(t)
            }
        }
    };
    let s = Phase::closed("resize", workers, Limit::new(n, Duration::from_secs(60))).run(&ctx, op).await?;
    let (swapped_after, swap_ms) = swapper.await?.with_context(|| format!("{name}: swapping the pool"))?;
    mon.sample_now().await;
    s.record_into(&ctx, "resize");
    accounted(&name, &s, n)?;
    ensure!(
        s.errors.is_empty(),
        "{name}: {} of {n} ops failed while the pool was swapped from (2, 5) to (5, 15): {} {:?}",
        s.errors.total(),
        s.errors,
        s.error_samples.iter().take(3).map(|e| &e.message).collect::<Vec<_>>()
    );
    ensure!(swapped_after < n, "{name}: the swap happened after all {n} ops: nothing ran on the new pool");
    ctx.record(Metric::lower("swap_ms", swap_ms));
    let peak = mon.connections(S::NAME).max();
    ctx.record(Metric::lower("server_connections_peak", peak));
    ctx.note(format!(
        "{name}: swapped after {swapped_after} of {n} ops in {swap_ms:.0} ms; peak {peak} server connections"
    ));
    if caps.supports(Knob::MaxSize) {
        ensure!(
            peak <= 5.0 + 15.0,
            "{name}: {peak} server connections with pools of max 5 and 15 (old and new together)"
        );
    }
    if let Some(size) = current.read().status().and_then(|st| st.size) {
        // 8 callers on the (5, 15) pool: it grew past the old max.
        ensure!(size > 5, "{name}: the swapped-in pool of max 15 has {size} connections after serving 8 callers: it did not take the load");
    }
    let kept = if caps.supports(Knob::Reuse) { 15 } else { 0 };
    wait_until(
        &format!("{name}: at most {kept} server connections once the old pool is closed"),
        Duration::from_secs(10),
        || async { Ok(fx.counter.count().await? <= kept) },
    )
    .await?;
    Ok(())
}

pub(super) async fn acquire_timeout_precision<S: NetService>(ctx: TestCtx, a: Adapter<S>) -> anyhow::Result<()> {
    let timeouts: &[u64] = ctx.profile().pick(&[100, 500], &[100, 500, 1000]);
    let slack = Duration::from_millis(100);
    ctx.step(format!("providing a {} server", S::NAME));
    let fx = S::provide(&ctx).await?;
    let name = a.name();
    for &t in timeouts {
        let timeout = Duration::from_millis(t);
        let pool =
            build(&ctx, &a, &Tune::new(&a.capabilities(), 1).acquire_timeout(timeout).done(), &fx.target).await?;
        ctx.step(format!("acquire timeout {timeout:?}: holding the only connection"));
        let mut held = pool.acquire().await?;
        held.run(&Op::Ping).await?;
        let started = Instant::now();
        let r = tokio::time::timeout(timeout + Duration::from_secs(5), pool.acquire()).await;
        let took = started.elapsed();
        let err = match r {
            Err(_) => bail!("{name}: an acquire with acquire_timeout {timeout:?} was still waiting after {took:?}"),
            Ok(Ok(_)) => bail!("{name}: handed out a second connection with max_size 1 and the first held"),
            Ok(Err(e)) => e,
        };
        ensure!(
            err.class() == ErrorClass::AcquireTimeout,
            "{name}: with acquire_timeout {timeout:?} the acquire failed with [{}], expected acquire_timeout: {err}",
            err.class()
        );
        ctx.record(Metric::lower(format!("overshoot_{t}ms_ms"), ms(took.saturating_sub(timeout))));
        ensure!(
            took + Duration::from_millis(1) >= timeout,
            "{name}: an acquire with acquire_timeout {timeout:?} gave up after {took:?}, before its timeout"
        );
        ensure!(
            took <= timeout + slack,
            "{name}: an acquire with acquire_timeout {timeout:?} gave up after {took:?}, more than {slack:?} late"
        );
        drop(held);
        let again = tokio::time::timeout(Duration::from_secs(2), pool.run(&Op::Ping)).await;
        ensure!(
            matches!(again, Ok(Ok(_))),
            "{name}: after the {timeout:?} timeout and a release the pool did not serve again: {again:?}"
        );
        pool.close().await;
    }
    Ok(())
}

pub(super) async fn broken_connection_not_reused<S: NetService>(ctx: TestCtx, a: Adapter<S>) -> anyhow::Result<()> {
    let cfg = Tune::new(&a.capabilities(), 1).acquire_timeout(Duration::from_secs(5)).done();
    let (fx, pool) = setup(&ctx, &a, cfg).await?;
    let name = a.name();
    for used_after_kill in [false, true] {
        let how = if used_after_kill { "after an op on it failed" } else { "without using it" };
        ctx.step(format!("killing the checked-out connection, released {how}"));
        let mut c = pool.acquire().await?;
        let id = c.run(&Op::WhoAmI).await?.id().ok_or_else(|| anyhow!("{name}: who_am_i returned no id"))?;
        (fx.kill)(id).await.with_context(|| format!("{name}: killing connection {id}"))?;
        ctx.event(format!("killed connection {id} while checked out"));
        if used_after_kill {
            if let Ok(out) = c.run(&Op::WhoAmI).await {
                bail!("{name}: connection {id} still answered ({out:?}) after it was killed: the kill did not take");
            }
        }
        drop(c);
        let next = tokio::time::timeout(Duration::from_secs(10), async {
            let mut c = pool.acquire().await?;
            c.run(&Op::Ping).await?;
            c.run(&Op::WhoAmI).await
        })
        .await;
        match next {
            Ok(Ok(out)) if out.id() == Some(id) => bail!("{name}: the killed connection {id} answered again"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bail!(
                "{name} ({}): the first checkout after connection {id} was killed and released {how} failed: [{}] in phase {:?}: {e}",
                a.version(),
                e.class(),
                e.phase()
            ),
            Err(_) => bail!("{name}: the first checkout after connection {id} was killed and released {how} hung for 10 s"),
        }
    }
    Ok(())
}
