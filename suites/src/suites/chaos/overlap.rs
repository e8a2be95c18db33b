//! `overlapping_faults`: latency, connection kills and a server restart,
//! overlapping, declared as one chaos schedule in TOML ([`OVERLAP`]) and run
//! under a closed-loop load (layer_3: the restart needs a real server, so the
//! test is exclusive).

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use poolstress_fixtures::fault::{FaultWindow, Schedule};
use poolstress_harness::TestCtx;

use crate::kit::{
    bed::{Rig, Sampler},
    ledger::{after_fault, size_probe, start_chunked},
};

/// The schedule: latency both ways from 200 ms for 1 s; 60 % of the
/// server connections killed at 500 ms (inside the latency); the server
/// restarted at 900 ms (still inside it).
pub const OVERLAP: &str = r#"
[[step]]
at = "200ms"
for = "1s"
type = "latency"
latency = "40ms"
jitter = "10ms"
direction = "both"

[[step]]
at = "500ms"
type = "kill_connections"
fraction = 0.6

[[step]]
at = "900ms"
type = "restart"
"#;

/// The scenario body.
pub async fn overlapping_faults(ctx: TestCtx, rig: Rig) -> anyhow::Result<()> {
    let max = ctx.profile().pick(4, 10);
    let schedule = Schedule::from_toml(OVERLAP)?;
    // Longer than the acquire timeout: an op that started waiting during the
    // restart must be able to end, and the next one to succeed, inside it.
    let after = ctx.profile().pick(Duration::from_millis(3000), Duration::from_secs(10));
    let cfg = rig.config(max, Some(Duration::from_secs(2)), Some(Duration::from_secs(2)), Some(Duration::from_secs(5)));
    let bed = rig.bed(&ctx, cfg).await?;
    let what = bed.what();

    // The load runs until `after` past the restart, however long it takes.
    let load = start_chunked(&ctx, &bed, max, Duration::from_millis(250), Duration::from_secs(3));
    load.running(20, Duration::from_secs(10)).await?;
    let sampler = Sampler::start(bed.counter());
    let before = bed.server_count().await.unwrap_or(0);

    ctx.step("running the overlapping faults");
    let run = schedule.start(&ctx, &bed.env)?;
    let records = run.finish().await?;
    let restart = records.iter().find(|r| r.what.contains("restart")).context("no restart step")?;
    let (fault_at, heal_at) =
        (restart.started.context("restart never started")?, restart.ended.context("restart never ended")?);
    let probe = size_probe(&bed, before.min(max as u64), heal_at, after);
    let first = records.iter().filter_map(|r| r.started).min().unwrap_or(fault_at);
    ctx.step("observing the recovery");
    tokio::time::sleep_until((heal_at + after).into()).await; // the observation window after the restart

    let ledger = load.finish(&ctx, &what).await?;
    let end = Instant::now();
    let max_seen = sampler.finish().await;
    let mut rec = ledger.recovery(FaultWindow::new(fault_at, heal_at).until(end));
    rec.back_to_size = probe.await.ok().flatten();
    rec.record(&ctx, "restart_");
    let all = ledger.recovery(FaultWindow::new(first, heal_at).until(end));
    all.recovery.record(&ctx, "overlap_");
    if let Some(p) = &bed.proxy {
        ensure!(p.active().is_empty(), "{what}: proxy faults left active: {:?}", p.active());
    }
    let killed = records.iter().find(|r| r.what.contains("kill")).and_then(|r| r.detail.clone()).unwrap_or_default();
    ctx.note(killed);
    after_fault(&ctx, &bed, max_seen, max).await?;
    rec.check_recovered(&what)?;
    Ok(())
}
