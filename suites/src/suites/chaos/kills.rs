//! `kill_60pct_workers`: 60 % of the pool's server connections killed while
//! a closed-loop load runs (layer_3: `pg_terminate_backend` / `CLIENT KILL`;
//! layer_2: the stand-in kills them by id; layer_1: the mock server breaks
//! every connection).

use std::time::{Duration, Instant};

use anyhow::ensure;
use poolstress_fixtures::{
    fault::{FaultWindow, Victims},
    pool::Knob,
};
use poolstress_harness::{ErrorClass, Metric, TestCtx};

use crate::kit::{
    bed::{Rig, Sampler},
    ledger::{after_fault, note_plan, size_probe, start_chunked},
};

/// The fraction of server connections killed.
pub const KILL_FRACTION: f64 = 0.6;

/// The scenario body (also run against the deliberately broken adapters).
pub async fn kill_60pct_workers(ctx: TestCtx, rig: Rig) -> anyhow::Result<()> {
    let max = ctx.profile().pick(4, 10);
    let lead = ctx.profile().pick(Duration::from_millis(300), Duration::from_secs(2));
    let after = ctx.profile().pick(Duration::from_millis(700), Duration::from_secs(8));
    let bound = Duration::from_secs(2);
    let cfg = rig.config(max, Some(Duration::from_secs(2)), Some(Duration::from_secs(2)), Some(Duration::from_secs(5)));
    let bed = rig.bed(&ctx, cfg).await?;
    let what = bed.what();
    note_plan(
        &ctx,
        &[format!(
            "after the load is running: kill {:.0}% of the test's server connections ({})",
            KILL_FRACTION * 100.0,
            bed.layer
        )],
    );

    ctx.step(format!("closed-loop load, {max} workers"));
    let load = start_chunked(&ctx, &bed, max, Duration::from_millis(250), bound);
    load.running(20, Duration::from_secs(10)).await?;
    let sampler = Sampler::start(bed.counter());
    // Let the pool fill to its working size before the kill.
    tokio::time::sleep(lead).await; // a point on the load's timeline, not a wait for a condition
    let before = bed.server_count().await.unwrap_or(0);

    ctx.step("killing 60 % of the server connections");
    let fault_at = Instant::now();
    ctx.event(format!("chaos: kill {:.0}% of the server connections", KILL_FRACTION * 100.0));
    let mut rng = ctx.rng();
    let mut killed = bed.kill(Victims::Fraction(KILL_FRACTION), &mut rng).await?;
    if !rig.supports(Knob::Reuse) {
        // Connections live for one op: a kill may find them gone; try a few times.
        for _ in 0..20 {
            if killed.killed > 0 {
                break;
            }
            killed = bed.kill(Victims::Fraction(KILL_FRACTION), &mut rng).await?;
        }
    }
    let heal_at = Instant::now();
    ctx.event(format!("chaos: killed {} of {} server connections", killed.killed, killed.seen));
    ctx.attach("killed", &killed);
    let probe = size_probe(&bed, before.min(max as u64), heal_at, after);
    tokio::time::sleep_until((heal_at + after).into()).await; // the observation window after the kill

    let ledger = load.finish(&ctx, &what).await?;
    let max_seen = sampler.finish().await;
    let mut rec = ledger.recovery(FaultWindow::new(fault_at, heal_at).until(Instant::now()));
    rec.back_to_size = probe.await.ok().flatten();
    rec.record(&ctx, "kill_");
    ctx.record(Metric::lower("killed", killed.killed as f64));

    ensure!(
        killed.seen > 0 && killed.killed > 0,
        "{what}: the kill found {} of the test's connections and killed {}: the fault did not apply",
        killed.seen,
        killed.killed
    );
    if killed.chosen && rig.supports(Knob::Reuse) {
        let want = Victims::Fraction(KILL_FRACTION).of(killed.seen);
        ensure!(
            killed.killed == want,
            "{what}: killed {} of {} connections, wanted {want} (60 %)",
            killed.killed,
            killed.seen
        );
    }
    after_fault(&ctx, &bed, max_seen, killed.killed).await?;
    rec.check_recovered(&what)?;
    // Each killed connection may fail the ops in flight on it (several on a
    // shared multiplexed connection) and one more when handed out dead.
    let after = rec.recovery.errors_after_heal + rec.recovery.errors_during_fault;
    let bound_errors = (killed.killed + max) as u64;
    ensure!(
        after <= bound_errors,
        "{what}: {after} operations failed after {} connections were killed (at most {bound_errors}: one per killed connection plus the ops in flight); by class: {:?}",
        killed.killed,
        rec.errors_after_by_class
    );
    for (class, n) in &rec.errors_after_by_class {
        ensure!(
            !matches!(class, ErrorClass::Other | ErrorClass::PoolClosed | ErrorClass::ServerError),
            "{what}: {n} operations failed [{class}] after the kill (a kill should surface as connection_broken)"
        );
    }
    Ok(())
}
