//! Fairness: in what order a pool at saturation serves the callers waiting
//! for it (`fairness::<service>::<scenario>[<pool>]`, layer_3).
//!
//! | scenario | pools | what |
//! |---|---|---|
//! | `waiters_in_order` | those declaring [`Knob::FifoWaiters`] | with every connection held, 10 callers queue one after another; one connection comes back and serves them all: they must be served in arrival order (hard), in every round |
//! | `starvation` | every pool with a max size | 4 x max_size callers in a closed loop: each caller's wait for a checkout is measured; `wait_p50_ms`, `wait_max_ms` and `starvation_ratio` (longest / median) are recorded, and a caller waiting more than 50 x the median + 500 ms fails the test as starved |

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::ensure;
use parking_lot::Mutex;
use poolstress_fixtures::pool::{Adapter, Knob, PoolError};
use poolstress_harness::{
    load::{Limit, OpTimer, Phase},
    tag, Metric, Registry, TestCtx,
};

use crate::kit::{
    register_matrix,
    support::{served_order, setup},
    Finding, NetService, Scenario, Tune,
};

/// Known findings: `(scenario, pool, reason)`.
pub const FINDINGS: &[Finding] = &[
    ("starvation", "bb8-postgres", "bb8 0.9.1: at saturation (16 callers on 4 connections) a few callers wait 0.8-1.4 s while the median wait is 0.2 ms (p99 1.2 ms): a released connection goes to whoever asks next, not to the longest waiter, so an unlucky waiter is passed over again and again (deadpool, sqlx and the zoo pools: longest wait 14-31 ms)"),
    ("starvation", "bb8-redis", "bb8 0.9.1: at saturation (16 callers on 4 connections) a few callers wait 0.8-1.4 s while the median wait is 0.2 ms (p99 1.2 ms): a released connection goes to whoever asks next, not to the longest waiter, so an unlucky waiter is passed over again and again (deadpool, sqlx and the zoo pools: longest wait 14-31 ms)"),
];

/// The longest wait allowed, as a multiple of the median, before a caller counts as starved.
pub const STARVED_FACTOR: u32 = 50;
/// Added to the bound, for a busy machine.
pub const STARVED_SLACK: Duration = Duration::from_millis(500);

/// `waiters_in_order` (also run against the zoo's LIFO pool).
pub async fn waiters_in_order<S: NetService>(ctx: TestCtx, a: Adapter<S>) -> anyhow::Result<()> {
    let (waiters, rounds) = (10, ctx.profile().pick(3, 10));
    let cfg = Tune::new(&a.capabilities(), 2).acquire_timeout(Duration::from_secs(10)).done();
    let (_fx, pool) = setup(&ctx, &a, cfg).await?;
    let name = a.name().to_string();
    for round in 0..rounds {
        ctx.step(format!("round {round}: {waiters} callers queue on an exhausted pool of 2"));
        let o = served_order(&pool, waiters, round).await?;
        ensure!(
            o == (0..waiters).collect::<Vec<_>>(),
            "{name} declares FIFO waiters but served {waiters} queued callers out of arrival order in round {round}: \
             {o:?} (LIFO or unordered waiters)"
        );
    }
    ctx.record(Metric::higher("fifo_rounds_in_order", rounds as f64));
    Ok(())
}

async fn starvation<S: NetService>(ctx: TestCtx, a: Adapter<S>) -> anyhow::Result<()> {
    let max = 4;
    let callers = 4 * max;
    let run_for = ctx.profile().pick(Duration::from_secs(2), Duration::from_secs(10));
    let cfg = Tune::new(&a.capabilities(), max).acquire_timeout(Duration::from_secs(30)).done();
    let (_fx, pool) = setup(&ctx, &a, cfg).await?;
    let name = a.name().to_string();
    let waits: Arc<Mutex<Vec<Duration>>> = Arc::default();
    ctx.step(format!("{callers} callers on a pool of {max} for {run_for:?}"));
    let op = {
        let (pool, waits) = (pool.clone(), waits.clone());
        move |mut t: OpTimer| {
            let (pool, waits) = (pool.clone(), waits.clone());
            async move {
                let asked = Instant::now();
                let mut c = pool.acquire().await?;
                t.acquired();
                waits.lock().push(asked.elapsed());
                c.run(&poolstress_fixtures::pool::Op::Ping).await?;
                Ok::<_, PoolError>(t)
            }
        }
    };
    let s = Phase::closed("saturated", callers, Limit::new(1_000_000, run_for)).run(&ctx, op).await?;
    s.record_into(&ctx, "saturated");
    let mut w = waits.lock().clone();
    ensure!(w.len() >= 100, "{name}: only {} checkouts in {run_for:?} at saturation", w.len());
    w.sort();
    let (p50, longest) = (w[w.len() / 2], *w.last().expect("non-empty"));
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    ctx.record(Metric::lower("wait_p50_ms", ms(p50)));
    ctx.record(Metric::lower("wait_p99_ms", ms(w[(w.len() - 1) * 99 / 100])));
    ctx.record(Metric::lower("wait_max_ms", ms(longest)));
    ctx.record(Metric::lower("starvation_ratio", ms(longest) / ms(p50).max(1e-3)));
    let bound = p50 * STARVED_FACTOR + STARVED_SLACK;
    ensure!(
        longest <= bound,
        "{name}: a caller starved: waited {longest:?} for a checkout while the median wait was {p50:?} \
         ({callers} callers on {max} connections; bound {STARVED_FACTOR} x median + {STARVED_SLACK:?})"
    );
    Ok(())
}

/// Registers `fairness::<service>::*` for every adapter.
pub fn register_adapters<S: NetService>(r: &mut Registry, adapters: Vec<Adapter<S>>) {
    let table = vec![
        Scenario::new("waiters_in_order", &[Knob::MaxSize, Knob::FifoWaiters], |c, a| {
            Box::pin(waiters_in_order::<S>(c, a))
        }),
        Scenario::new("starvation", &[Knob::MaxSize], |c, a| Box::pin(starvation::<S>(c, a))),
    ];
    register_matrix(
        r,
        &format!("fairness::{}", S::NAME),
        &[tag::STRESS, tag::LAYER_3, S::NAME],
        table,
        &adapters,
        FINDINGS,
    );
}
