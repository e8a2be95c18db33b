//! Faults under open-loop load (the harness load generator: ops on a
//! timetable, latency from each op's slot), each fault plan a chaos schedule:
//!
//! - `kills_at_500_ops`: 60 % of the server connections killed during a
//!   steady 500 ops/s;
//! - `network_faults_sustained`: latency, then resets of half the proxied
//!   connections, then a short proxy outage, during a sustained rate;
//! - `failures_during_ramp`: connection kills at three points of a ramp
//!   from 20 to 500 ops/s;
//! - `several_at_once`: latency, kills and proxy resets starting at the
//!   same instant.
//!
//! Pools that open a connection per checkout (no reuse) run at a fifth of
//! the rate: at 500 ops/s they would measure the server's connection rate,
//! not a pool.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use poolstress_fixtures::{
    fault::{Action, FaultKind, FaultSpec, FaultWindow, Schedule, StepRecord, Victims},
    pool::Knob,
};
use poolstress_harness::{load::Phase, ErrorClass, Metric, TestCtx};

use crate::kit::{
    bed::{Bed, Rig, Sampler},
    ledger::{after_fault, start_load, Ledger},
};

fn rate(rig: &Rig, per_s: f64) -> f64 {
    if rig.supports(Knob::Reuse) {
        per_s
    } else {
        per_s / 5.0
    }
}

fn config(rig: &Rig, ctx: &TestCtx) -> poolstress_fixtures::pool::PoolConfig {
    let max = ctx.profile().pick(8, 16);
    rig.config(max, Some(Duration::from_secs(1)), Some(Duration::from_secs(1)), Some(Duration::from_secs(5)))
}

/// Runs `phase` with `schedule` started once the load runs; checks the
/// accounting, the fault's effect and the recovery of the step named by
/// `judge` (an index into the schedule's steps).
async fn under_schedule(
    ctx: &TestCtx,
    bed: &Bed,
    phase: Phase,
    schedule: Schedule,
    judge: usize,
) -> anyhow::Result<(Vec<StepRecord>, std::sync::Arc<Ledger>)> {
    let what = bed.what();
    let load = start_load(ctx, bed, phase, Duration::from_secs(2));
    load.running(1, Duration::from_secs(10)).await?;
    let sampler = Sampler::start(bed.counter());
    let run = schedule.start(ctx, &bed.env)?;
    let records = run.finish().await?;
    let (stats, ledger) = load.finish(ctx, &what).await?;
    let end = Instant::now();
    let max_seen = sampler.finish().await;
    if stats.missed > 0 {
        ctx.note(format!("{what}: {} slots were missed (all in-flight slots busy)", stats.missed));
    }
    let r = &records[judge];
    let (at, healed) = (r.started.context("the judged step never started")?, r.ended.unwrap_or(end));
    let rec = ledger.recovery(FaultWindow::new(at, healed).until(end));
    rec.record(ctx, "fault_");
    if let Some(p) = &bed.proxy {
        ensure!(p.active().is_empty() && !p.is_down(), "{what}: proxy faults left active: {:?}", p.active());
    }
    let killed: usize = records
        .iter()
        .filter_map(|r| r.detail.as_deref())
        .filter_map(|d| {
            d.strip_prefix("killed ").and_then(|d| d.split(' ').next()).and_then(|n| n.parse::<usize>().ok())
        })
        .sum();
    after_fault(ctx, bed, max_seen, killed + bed.cfg.max_size).await?;
    rec.check_recovered(&what)?;
    for (class, n) in &rec.errors_after_by_class {
        ensure!(
            !matches!(class, ErrorClass::Other | ErrorClass::PoolClosed),
            "{what}: {n} operations failed [{class}] after the fault: {}",
            stats.error_samples.iter().map(|s| format!("[{}] {}", s.class, s.message)).collect::<Vec<_>>().join("; ")
        );
    }
    ctx.record(Metric::lower("load.missed", stats.missed as f64));
    Ok((records, ledger))
}

/// `kills_at_500_ops`.
pub async fn kills_at_500_ops(ctx: TestCtx, rig: Rig) -> anyhow::Result<()> {
    let dur = ctx.profile().pick(Duration::from_millis(1200), Duration::from_secs(10));
    let per_s = rate(&rig, 500.0);
    let bed = rig.bed(&ctx, config(&rig, &ctx)).await?;
    let schedule = Schedule::new().at(dur / 3, Action::kill_connections(Victims::Fraction(0.6)));
    let (records, _) = under_schedule(&ctx, &bed, Phase::open("load", per_s, dur), schedule, 0).await?;
    let detail = records[0].detail.clone().unwrap_or_default();
    if rig.supports(Knob::Reuse) {
        ensure!(
            !detail.starts_with("killed 0 "),
            "{}: the kill at {per_s} ops/s found nothing to kill: {detail}",
            bed.what()
        );
    } else {
        // Connections live for one op: a kill may find none open.
        ctx.note(format!("{}: {detail} (connections live for one operation)", bed.what()));
    }
    Ok(())
}

/// `network_faults_sustained`.
pub async fn network_faults_sustained(ctx: TestCtx, rig: Rig) -> anyhow::Result<()> {
    let dur = ctx.profile().pick(Duration::from_millis(1500), Duration::from_secs(30));
    let per_s = rate(&rig, 200.0);
    let bed = rig.bed(&ctx, config(&rig, &ctx)).await?;
    let latency = Duration::from_millis(60);
    let schedule = Schedule::new()
        .at_for(dur / 5, dur / 5, FaultSpec::new(FaultKind::latency(latency, Duration::from_millis(10))).both())
        .at(dur * 2 / 5 + dur / 10, Action::ResetConnections { proxy: None, victims: Victims::Fraction(0.5) })
        .at_for(dur * 3 / 5, dur / 10, FaultKind::down());
    let (records, ledger) = under_schedule(&ctx, &bed, Phase::open("load", per_s, dur), schedule, 2).await?;
    // latency during vs after: the latency step must have slowed ops
    let lat = &records[0];
    let (from, to) = (lat.started.context("latency never started")?, lat.ended.context("latency never healed")?);
    let mut during: Vec<Duration> = ledger
        .observations()
        .iter()
        .filter(|o| o.class.is_none() && o.at >= from + latency * 3 && o.at < to)
        .map(|o| o.latency)
        .collect();
    during.sort();
    if let Some(p50) = during.get(during.len() / 2) {
        ctx.record(Metric::lower("latency_step_p50_ms", p50.as_secs_f64() * 1e3));
        ensure!(
            *p50 >= latency,
            "{}: ops under {latency:?} of added latency took p50 {p50:?}: the fault did not apply",
            bed.what()
        );
    }
    Ok(())
}

/// `failures_during_ramp`.
pub async fn failures_during_ramp(ctx: TestCtx, rig: Rig) -> anyhow::Result<()> {
    let over = ctx.profile().pick(Duration::from_millis(1600), Duration::from_secs(120));
    let bed = rig.bed(&ctx, config(&rig, &ctx)).await?;
    let kill = || Action::kill_connections(Victims::Fraction(0.6));
    let schedule = Schedule::new().at(over / 4, kill()).at(over / 2, kill()).at(over * 3 / 4, kill());
    let phase = Phase::ramp("load", rate(&rig, 20.0), rate(&rig, 500.0), over);
    let (records, _) = under_schedule(&ctx, &bed, phase, schedule, 2).await?;
    let details: Vec<String> = records.iter().filter_map(|r| r.detail.clone()).collect();
    ctx.note(format!("kills during the ramp: {}", details.join("; ")));
    Ok(())
}

/// `several_at_once`.
pub async fn several_at_once(ctx: TestCtx, rig: Rig) -> anyhow::Result<()> {
    let dur = ctx.profile().pick(Duration::from_millis(1200), Duration::from_secs(20));
    let per_s = rate(&rig, 300.0);
    let bed = rig.bed(&ctx, config(&rig, &ctx)).await?;
    let at = dur / 4;
    let schedule = Schedule::new()
        .at_for(
            at,
            dur / 4,
            FaultSpec::new(FaultKind::latency(Duration::from_millis(50), Duration::from_millis(10))).both(),
        )
        .at(at, Action::kill_connections(Victims::Fraction(0.6)))
        .at(at, Action::ResetConnections { proxy: None, victims: Victims::Fraction(0.3) });
    under_schedule(&ctx, &bed, Phase::open("load", per_s, dur), schedule, 0).await?;
    Ok(())
}
