//! `gradual_exhaustion`: a slow leak. While a closed-loop load runs, a
//! careless code path in the load keeps one more checkout every step instead
//! of releasing it, until all of them are kept; the load's latency and errors are
//! recorded per stage (`stage_<k>.*`: k connections leaked). Then the leak is
//! released. While everything is leaked, ops may fail only with
//! `acquire_timeout` (and some must: otherwise the pool handed out more than
//! max_size); afterwards the same pool recovers with its capacity intact.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::ensure;
use parking_lot::Mutex;
use poolstress_fixtures::{fault::FaultWindow, pool::Checkout};
use poolstress_harness::{
    load::{Limit, Phase},
    ErrorClass, Metric, TestCtx,
};

use crate::kit::wait_until;

use crate::kit::{
    bed::{Rig, Sampler},
    ledger::{after_fault, note_plan, start_load_with, Keep},
};

/// The leak: keeps one more checkout each `step`, up to `max`, until released.
struct Leaker {
    max: usize,
    step: Duration,
    state: Mutex<LeakState>,
}

struct LeakState {
    kept: Vec<Checkout>,
    next_at: Instant,
    at: Vec<Instant>,
    released: bool,
}

impl Leaker {
    fn offer(&self, c: Checkout) -> Option<Checkout> {
        let mut s = self.state.lock();
        let now = Instant::now();
        if s.released || s.kept.len() >= self.max || now < s.next_at {
            return Some(c);
        }
        s.kept.push(c);
        s.at.push(now);
        s.next_at = now + self.step;
        None
    }

    fn kept(&self) -> usize {
        self.state.lock().kept.len()
    }

    fn release(&self) -> Vec<Instant> {
        let mut s = self.state.lock();
        s.released = true;
        s.kept.clear();
        s.at.clone()
    }
}

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
    note_plan(&ctx, &[format!("from the load's start, every {step:?}: one more checkout kept by the load until all {max} are; hold {exhausted:?}; release")]);

    let leaker = Arc::new(Leaker {
        max,
        step,
        state: Mutex::new(LeakState {
            kept: Vec::new(),
            next_at: Instant::now() + step,
            at: Vec::new(),
            released: false,
        }),
    });
    let keep: Keep = {
        let l = leaker.clone();
        Arc::new(move |c| l.offer(c))
    };
    let total = step * (max as u32 + 2) + exhausted + after + Duration::from_millis(500);
    let load = start_load_with(
        &ctx,
        &bed,
        Phase::closed("load", max, Limit::new(1_000_000, total)),
        Duration::from_secs(2),
        Some(keep),
    );
    let start = Instant::now();
    load.running(5, Duration::from_secs(10)).await?;
    let sampler = Sampler::start(bed.counter());
    ctx.step("leaking one checkout per step");
    wait_until(
        &format!("{what}: all {max} checkouts leaked"),
        step * (max as u32 + 2) + Duration::from_secs(5),
        || async { Ok(leaker.kept() == max) },
    )
    .await?;
    let fault_at = Instant::now();
    ctx.event(format!("chaos: all {max} checkouts leaked"));
    tokio::time::sleep(exhausted).await; // how long the pool stays exhausted
    let mut stages = vec![start];
    stages.extend(leaker.release());
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
    if during.is_empty() {
        // Either the callers waited through it (the acquire timeout was not
        // applied) or they were served (more than max_size handed out).
        let longest = obs.iter().filter(|o| o.at >= fault_at).map(|o| o.latency).max().unwrap_or_default();
        ensure!(
            longest <= acquire * 3 / 2,
            "{what}: acquire timeout ignored: no operation failed while all {max} checkouts were leaked for \
             {exhausted:?}, and callers waited up to {longest:?} (acquire timeout {acquire:?})"
        );
        anyhow::bail!(
            "{what}: no operation failed while all {max} checkouts were leaked for {exhausted:?} (acquire timeout \
             {acquire:?}) and no caller waited past it: the pool handed out more than max_size"
        );
    }
    let other: Vec<_> = during.iter().filter(|c| **c != ErrorClass::AcquireTimeout).collect();
    ensure!(
        other.is_empty(),
        "{what}: while exhausted, {} ops failed with something else than acquire_timeout: {other:?}",
        other.len()
    );
    // A pool may discard a connection whose check timed out under the short
    // acquire timeout (deadpool applies it to recycling too) and open another
    // before the server has seen the old one go: allow one such straggler.
    after_fault(&ctx, &bed, max_seen, 1).await?;
    rec.check_recovered(&what)?;
    Ok(())
}
