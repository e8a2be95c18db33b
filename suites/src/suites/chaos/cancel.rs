//! `cancel_holding`: workers are aborted while they hold a checkout in the
//! middle of a query (`TaskKiller::kill_holding`, driven by a chaos
//! schedule's `kill_workers` step). Afterwards the pool must not hand out a
//! poisoned connection (every later write is read back, on every connection)
//! nor have lost capacity (max_size checkouts held at once again).
//!
//! Victims are chosen from the test's seed while every worker is inside its
//! query, so `--seed` replays the same choice (`chaos::replay::*` proves it).

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure};
use poolstress_fixtures::{
    fault::{Action, Schedule, TaskKiller, Victims},
    pool::{Op, PoolError},
};
use poolstress_harness::{Classify, Metric, TestCtx};

use crate::kit::wait_until;
use crate::kit::{
    bed::{Rig, Sampler},
    ledger::{after_fault, watchdog},
};

/// The fraction of workers aborted.
pub const CANCEL_FRACTION: f64 = 0.6;

/// Why a worker stopped.
#[derive(Debug)]
enum Stop {
    /// An operation failed.
    Failed(PoolError),
    /// A read returned another answer than the write before it.
    Poisoned(String),
}

/// The scenario body (also run against the deliberately broken adapters).
pub async fn cancel_holding(ctx: TestCtx, rig: Rig) -> anyhow::Result<()> {
    let max = ctx.profile().pick(5, 10);
    let query = ctx.profile().pick(Duration::from_millis(250), Duration::from_millis(400)); // under bb8-redis's fixed 500 ms
    let cfg = rig.config(max, Some(Duration::from_secs(1)), Some(Duration::from_secs(2)), Some(Duration::from_secs(5)));
    let bed = rig.bed(&ctx, cfg).await?;
    let what = bed.what();

    ctx.step(format!("{max} workers, each holding a checkout through a {query:?} query"));
    let killer = TaskKiller::new(ctx.seed());
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for w in 0..max {
        let (pool, stop, done) = (bed.pool.clone(), stop.clone(), done.clone());
        workers.push(killer.spawn(move |hold| async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let mut c = pool.acquire().await.map_err(Stop::Failed)?;
                let _h = hold.enter();
                c.run(&Op::Slow(query)).await.map_err(Stop::Failed)?; // the query a victim is aborted in
                let key = 2_000_000 + (w as u64) * 100_000 + i;
                let value = format!("w{w}-{i}");
                c.run(&Op::Write { key, value: value.clone() }).await.map_err(Stop::Failed)?;
                let got = c.run(&Op::Read { key }).await.map_err(Stop::Failed)?;
                if got.value() != Some(value.as_str()) {
                    return Err(Stop::Poisoned(format!(
                        "worker {w} wrote {value:?} to key {key} and read back {got:?}"
                    )));
                }
                i += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<u64, Stop>(i)
        }));
    }
    wait_until(&format!("{what}: all {max} workers inside their query"), Duration::from_secs(10), || async {
        Ok(killer.holding() == max)
    })
    .await?;
    let sampler = Sampler::start(bed.counter());

    ctx.step("aborting 60 % of the workers mid-query");
    let schedule = Schedule::new().at(Duration::ZERO, Action::kill_workers(Victims::Fraction(CANCEL_FRACTION)));
    let fault_at = Instant::now();
    let run = schedule.start(&ctx, &bed.env.clone().workers(&killer))?;
    let records = run.finish().await?;
    let want = Victims::Fraction(CANCEL_FRACTION).of(max);
    let after_kill = done.load(Ordering::Relaxed);

    ctx.step("the survivors keep working on the pool's connections");
    let survivors = max - want;
    wait_until(
        &format!("{what}: survivors to finish 2 more operations each after the cancellation"),
        Duration::from_secs(15),
        || async {
            Ok(done.load(Ordering::Relaxed) >= after_kill + 2 * survivors as u64
                || workers.iter().all(|h| h.is_finished()))
        },
    )
    .await?;
    stop.store(true, Ordering::Relaxed);
    let mut victims = Vec::new();
    let mut ops = 0;
    for (w, h) in workers.into_iter().enumerate() {
        match watchdog(&format!("worker {w} to stop"), Duration::from_secs(15), h).await? {
            Err(e) if e.is_cancelled() => victims.push(w),
            Err(e) => bail!("{what}: worker {w} panicked: {e}"),
            Ok(Ok(n)) => ops += n,
            Ok(Err(Stop::Poisoned(m))) => bail!("{what}: poisoned connection after the cancellation: {m}"),
            Ok(Err(Stop::Failed(e))) => bail!(
                "{what}: a surviving worker failed after {want} workers were aborted mid-query [{}]: {e}",
                e.class()
            ),
        }
    }
    let serve_again_from = Instant::now();
    ctx.attach("victims", &victims);
    ctx.event(format!("chaos: aborted workers {victims:?}"));
    ctx.note(format!("aborted workers (seed {}): {victims:?}", ctx.seed()));
    ensure!(
        victims.len() == want,
        "{what}: {} workers were aborted ({victims:?}), wanted {want} of {max}; schedule said {:?}",
        victims.len(),
        records.first().and_then(|r| r.detail.clone())
    );
    ctx.record(Metric::lower("cancelled_workers", victims.len() as f64));
    ctx.record(Metric::higher("survivor_ops", ops as f64));

    let max_seen = sampler.finish().await;
    after_fault(&ctx, &bed, max_seen, 0)
        .await
        .map_err(|e| anyhow!("{e:#} (after {} of {max} workers were aborted mid-query)", victims.len()))?;
    ctx.record(Metric::lower("fault_to_serving_ms", (serve_again_from - fault_at).as_secs_f64() * 1e3));
    Ok(())
}
