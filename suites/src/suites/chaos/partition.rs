//! `partition_then_heal`: the pool is cut off from its server for T while
//! a closed-loop load runs (layers 2 and 3: the fault proxy holds every byte,
//! a blackhole; layer_1: the mock's connections break and creates are
//! refused), then healed. Ops are bounded, so the stalled ones are dropped
//! mid-flight (cancelled) and their connections go back to the pool with a
//! request outstanding: afterwards no connection may be poisoned.

use std::time::{Duration, Instant};

use anyhow::ensure;
use poolstress_fixtures::{fault::FaultWindow, pool::Knob};
use poolstress_harness::TestCtx;

use crate::kit::{
    bed::{Rig, Sampler},
    ledger::{after_fault, note_plan, size_probe, start_chunked},
};

/// The scenario body.
pub async fn partition_then_heal(ctx: TestCtx, rig: Rig) -> anyhow::Result<()> {
    let max = ctx.profile().pick(4, 10);
    let part = ctx.profile().pick(Duration::from_millis(500), Duration::from_secs(5));
    let after = ctx.profile().pick(Duration::from_millis(500), Duration::from_secs(10));
    // A connection per op (no reuse) needs more time per op on a busy machine.
    let bound = ctx.profile().pick(Duration::from_millis(300), Duration::from_secs(1))
        * if rig.supports(Knob::Reuse) { 1 } else { 3 };
    let lead = Duration::from_millis(200);
    let cfg = rig.config(max, Some(Duration::from_millis(500)), Some(Duration::from_millis(500)), None);
    let bed = rig.bed(&ctx, cfg).await?;
    let what = bed.what();
    note_plan(&ctx, &[format!("after the load is running, for {part:?}: partition ({})", partition_kind(&rig))]);

    let load = start_chunked(&ctx, &bed, max, Duration::from_millis(250), bound);
    load.running(20, Duration::from_secs(10)).await?;
    let sampler = Sampler::start(bed.counter());
    tokio::time::sleep(lead).await; // a point on the load's timeline
    let before = bed.server_count().await.unwrap_or(0);

    ctx.step(format!("partitioned for {part:?}"));
    let fault_at = Instant::now();
    ctx.event(format!("chaos: partition start ({})", partition_kind(&rig)));
    let p = bed.partition()?;
    tokio::time::sleep(part).await; // the fault's duration
    p.heal()?;
    let heal_at = Instant::now();
    ctx.event("chaos: partition healed");
    // Ops caught by the partition end by their bound; then watch `after`.
    let after = bound + after;
    let probe = size_probe(&bed, before.min(max as u64), heal_at, after);
    tokio::time::sleep_until((heal_at + after).into()).await; // the observation window after the heal

    let ledger = load.finish(&ctx, &what).await?;
    let max_seen = sampler.finish().await;
    let mut rec = ledger.recovery(FaultWindow::new(fault_at, heal_at).until(Instant::now()));
    rec.back_to_size = probe.await.ok().flatten();
    rec.record(&ctx, "partition_");
    if let Some(p) = &bed.proxy {
        ensure!(p.active().is_empty(), "{what}: proxy faults left active after the heal: {:?}", p.active());
    }
    // Ops caught by the partition fail by their bound (possibly just after
    // the heal) or, held shorter than it, finish late: either shows the fault.
    let hit = ledger.errors_between(fault_at, heal_at + bound);
    let held = ledger
        .observations()
        .iter()
        .filter(|o| o.class.is_none() && o.at >= heal_at && o.at < heal_at + bound)
        .any(|o| o.latency >= part / 2);
    ensure!(
        !hit.is_empty() || held,
        "{what}: during a {part:?} partition no operation failed (op bound {bound:?}) and none was held: \
         the fault did not apply ({:?})",
        rec.recovery
    );
    // Connections the pool dropped during the partition stay open server side
    // until the heal lets their close through (as with a real partition).
    after_fault(&ctx, &bed, max_seen, max).await?;
    rec.check_recovered(&what)?;
    Ok(())
}

fn partition_kind(rig: &Rig) -> &'static str {
    match rig.layer {
        crate::kit::Layer::L1 => "mock connections broken, creates refused",
        _ => "fault proxy blackhole: every byte held",
    }
}
