//! `gradual_exhaustion`: a slow leak. While a closed-loop load runs, a
//! careless caller takes one more checkout every step and never gives it
//! back, until it holds all of them; the load's latency and errors are
//! recorded per stage (`stage_<k>.*`: k connections leaked). Then the leak is
//! released. While everything is leaked, ops may fail only with
//! `acquire_timeout` (and some must: otherwise the pool handed out more than
//! max_size); afterwards the same pool recovers with its capacity intact.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use poolstress_fixtures::fault::FaultWindow;
use poolstress_harness::{
    load::{Limit, Phase},
    Classify, ErrorClass, Metric, TestCtx,
};

use super::{
    bed::{Rig, Sampler},
    ledger::{after_fault, note_plan, start_load},
};

/// The scenario body.
pub async fn gradual_exhaustion(ctx: TestCtx, rig: Rig) -> anyhow::Result<()> {
    let max = ctx.profile().pick(4, 10);
    let step = ctx.profile().pick(Duration::from_millis(150), Duration::from_secs(1));
    let exhausted = ctx.profile().pick(Duration::from_millis(500), Duration::from_secs(5));
    let after = ctx.profile().pick(Duration::from_millis(800), Duration::from_secs(5));
    let acquire = ctx.profile().pick(Duration::from_millis(100), Duration::from_millis(250));
    let cfg = rig.config(max, Some(acquire), Some(Duration::from_secs(2)), None);
    let bed = rig.bed(&ctx, cfg).await?;
    let what = bed.what();
    note_plan(&ctx, &[format!("from the load's start, every {step:?}: leak one more checkout until all {max} are held; hold {exhausted:?}; release")]);

    let sampler = Sampler::start(bed.counter());
    let total = step * max as u32 + exhausted + after + Duration::from_millis(500);
    let load = start_load(&ctx, &bed, Phase::closed("load", max, Limit::new(1_000_000, total)), Duration::from_secs(2));
    load.running(10, Duration::from_secs(10)).await?;

    let mut leaked = Vec::new();
    let mut stages = vec![Instant::now()];
    for k in 1..=max {
        ctx.step(format!("leaking checkout {k} of {max}"));
        tokio::time::sleep(step).await; // the leak's pace
        let end = Instant::now() + Duration::from_secs(10);
        let c = loop {
            // The leaker competes with the load for a slot.
            match bed.pool.acquire().await {
                Ok(c) => break c,
                Err(e) if e.class() == ErrorClass::AcquireTimeout && Instant::now() < end => continue,
                Err(e) => bail!("{what}: the leaker could not take checkout {k} of {max} [{}]: {e}", e.class()),
            }
        };
        leaked.push(c);
        stages.push(Instant::now());
        ctx.event(format!("chaos: leaked {k} of {max}"));
    }
    let fault_at = Instant::now();
    tokio::time::sleep(exhausted).await; // how long the pool stays exhausted
    drop(leaked);
    let heal_at = Instant::now();
    ctx.event("chaos: leak released");

    let (_stats, ledger) = load.finish(&ctx, &what).await?;
    let max_seen = sampler.finish().await;
    stages.push(heal_at);
    let obs = ledger.observations();
    for (k, w) in stages.windows(2).enumerate() {
        let inside: Vec<_> = obs.iter().filter(|o| o.at >= w[0] && o.at < w[1]).collect();
        let errors = inside.iter().filter(|o| o.class.is_some()).count();
        let mut lat: Vec<Duration> = inside.iter().filter(|o| o.class.is_none()).map(|o| o.latency).collect();
        lat.sort();
        let rate = if inside.is_empty() { 0.0 } else { errors as f64 / inside.len() as f64 * 100.0 };
        ctx.record(Metric::lower(format!("stage_{k}.error_rate_pct"), rate));
        if let Some(p99) = lat.get(((lat.len().max(1) - 1) as f64 * 0.99).round() as usize) {
            ctx.record(Metric::lower(format!("stage_{k}.p99_ms"), p99.as_secs_f64() * 1e3));
        }
        ctx.record(Metric::higher(format!("stage_{k}.ops"), inside.len() as f64));
    }
    let rec = ledger.recovery(FaultWindow::new(fault_at, heal_at).until(Instant::now()));
    rec.record(&ctx, "exhausted_");

    let during = ledger.errors_between(fault_at, heal_at);
    ensure!(
        !during.is_empty(),
        "{what}: no operation failed while all {max} checkouts were leaked for {exhausted:?} (acquire timeout {acquire:?}): \
         the pool handed out more than max_size"
    );
    let other: Vec<_> = during.iter().filter(|c| **c != ErrorClass::AcquireTimeout).collect();
    ensure!(other.is_empty(), "{what}: while exhausted, {} ops failed with something else than acquire_timeout: {other:?}", other.len());
    after_fault(&ctx, &bed, max_seen, 0).await?;
    rec.check_recovered(&what)?;
    Ok(())
}
