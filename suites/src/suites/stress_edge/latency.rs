//! Slow networks and slow operations.
//!
//! - `high_network_latency`: the pool behind the fault proxy adding 500 ms to
//!   every server reply: ≥ 15 of 20 concurrent ops succeed, and their mean
//!   latency is over 400 ms (proof the fault applied). Connections are
//!   opened under the latency too (the pool is built before, used after).
//! - `slow_queries_do_not_starve_fast`: 5 slow operations (2 s; 800 ms in
//!   quick) running server side, then 10 fast ones: ≥ 7 of the fast succeed,
//!   each within 500 ms.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use poolstress_fixtures::{
    fault::FaultKind,
    pool::{Adapter, Knob, Op},
};
use poolstress_harness::{load::Phase, Classify, Metric, TestCtx};

use crate::kit::{
    support::{accounted, build, ms, pool_op, setup},
    wait_until, NetService, Tune,
};

pub(super) async fn high_network_latency<S: NetService>(ctx: TestCtx, a: Adapter<S>) -> anyhow::Result<()> {
    let (n, latency) = (20u64, Duration::from_millis(500));
    ctx.step(format!("providing a {} server behind a fault proxy", S::NAME));
    let fx = S::provide(&ctx).await?;
    let (proxy, via) = S::proxy(&ctx, &fx.target).await?;
    let cfg = Tune::new(&a.capabilities(), n as usize)
        .acquire_timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(5))
        .op_timeout(Duration::from_secs(5))
        .done();
    let pool = build(&ctx, &a, &cfg, &via).await?;
    let name = a.name();

    ctx.step(format!("{n} concurrent ops with {latency:?} added to every reply"));
    let _slow = proxy.add(FaultKind::latency(latency, Duration::ZERO))?;
    let s =
        Phase::burst("latency", n, Duration::from_secs(30)).run(&ctx, pool_op(&pool, Op::Ping, Duration::ZERO)).await?;
    s.record_into(&ctx, "latency");
    accounted(name, &s, n)?;
    ensure!(
        s.ok >= 15,
        "{name}: only {} of {n} ops succeeded under {latency:?} of latency (need >= 15); errors {}: {:?}",
        s.ok,
        s.errors,
        s.error_samples.iter().take(3).map(|e| &e.message).collect::<Vec<_>>()
    );
    ensure!(
        s.latency.mean_ms > 400.0,
        "{name}: successful ops took {:.0} ms on average under {latency:?} of injected latency (must be > 400 ms): the fault did not apply",
        s.latency.mean_ms
    );
    ctx.record(Metric::lower("mean_ms", s.latency.mean_ms));
    Ok(())
}

pub(super) async fn slow_queries_do_not_starve_fast<S: NetService>(ctx: TestCtx, a: Adapter<S>) -> anyhow::Result<()> {
    let slow = ctx.profile().pick(Duration::from_millis(800), Duration::from_secs(2));
    let (n_slow, n_fast, fast_budget) = (5, 10, Duration::from_millis(500));
    let caps = a.capabilities();
    let cfg =
        Tune::new(&caps, 10).acquire_timeout(Duration::from_secs(5)).op_timeout(slow + Duration::from_secs(3)).done();
    let (fx, pool) = setup(&ctx, &a, cfg).await?;
    let name = a.name();
    let probe = S::slow_ops(&fx.target).await?;

    ctx.step(format!("{n_slow} slow({slow:?}) ops"));
    let slow_tasks: Vec<_> = (0..n_slow)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                let r = pool.run(&Op::Slow(slow)).await;
                (r.map(|_| ()), t.elapsed())
            })
        })
        .collect();
    // A pool that shares one connection (reuse without max_size) runs its
    // slow ops one after the other: one running is all it ever shows.
    let running = if caps.supports(Knob::MaxSize) || !caps.supports(Knob::Reuse) { n_slow } else { 1 };
    wait_until(&format!("{name}: {running} slow ops running server side"), Duration::from_secs(5), || async {
        Ok(probe.count().await? >= running as u64)
    })
    .await?;

    ctx.step(format!("{n_fast} fast ops while the slow ones run"));
    let fast = futures::future::join_all((0..n_fast).map(|_| {
        let pool = pool.clone();
        async move {
            let t = Instant::now();
            let r = tokio::time::timeout(slow + Duration::from_secs(5), pool.run(&Op::Ping)).await;
            (r, t.elapsed())
        }
    }))
    .await;
    let mut outcomes = Vec::new();
    let mut in_time = 0;
    for (r, took) in &fast {
        match r {
            Ok(Ok(_)) if *took <= fast_budget => {
                in_time += 1;
                outcomes.push(format!("ok {:.0} ms", ms(*took)));
            }
            Ok(Ok(_)) => outcomes.push(format!("ok but {:.0} ms", ms(*took))),
            Ok(Err(e)) => outcomes.push(format!("[{}] after {:.0} ms", e.class(), ms(*took))),
            Err(_) => outcomes.push("no answer".into()),
        }
    }
    let slowest_fast = fast.iter().map(|f| f.1).max().unwrap_or_default();
    ctx.record(Metric::higher("fast_within_budget", in_time as f64));
    ctx.record(Metric::lower("fast_max_ms", ms(slowest_fast)));

    let mut slow_outcomes = Vec::new();
    for t in slow_tasks {
        let (r, took) = t.await.context("a slow op task panicked")?;
        slow_outcomes.push(match r {
            Ok(()) => format!("ok {:.0} ms", ms(took)),
            Err(e) => format!("[{}] after {:.0} ms", e.class(), ms(took)),
        });
    }
    ctx.note(format!("{name}: fast ops {outcomes:?}; slow ops {slow_outcomes:?}"));
    ensure!(
        in_time >= 7,
        "{name}: only {in_time} of {n_fast} fast ops succeeded within {fast_budget:?} while {n_slow} slow({slow:?}) ops ran (need >= 7): {outcomes:?}"
    );
    Ok(())
}
