//! Hygiene: what a pool must do besides handing out connections, one focused
//! scenario each, judged on the server (layer_3, the run's real server
//! through the fault proxy) and by the test bed's always-on watch.
//!
//! | scenario | what happens | fails naming |
//! |---|---|---|
//! | [`cancel_mid_transaction`] | callers cancelled between `BEGIN` and `COMMIT` (Redis `MULTI` and `EXEC`) | `idle in transaction` |
//! | [`kill_idle_validated`] | with validation=ping, every idle connection killed server side, then sequential checkouts | `dead idle connection handed out` |
//! | [`cold_burst`] | 4 x max_size acquires at once on a pool that has opened nothing yet | `above max_size` |
//! | [`kill_all_reconnects`] | every connection killed server side, then the same pool must serve | `never reconnected` (only when the pool opened no connection while the path accepted them) |
//! | [`discards_close`] | commands cut short by their callers (the pool discards those connections) | `server connections left open` |
//! | [`acquire_paired`] | acquires on the pool and on a reference pool, interleaved on the same server | `slow acquire` |
//!
//! Registered for every pool (`hygiene::<service>::<scenario>[<pool>]`, tags
//! chaos, layer_3, the service) by [`crate::register_pool`]. The zoo
//! ([`crate::zoo`]) runs each against the pool with the matching defect
//! ([`crate::selftest::zoo`]); its correct pools run them like any pool.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure};
use futures::future::join_all;
use poolstress_fixtures::{
    fault::{FaultKind, FaultSpec, Victims},
    pool::{Adapter, Knob, Op, PoolConfig, PoolError, Stage, Validation},
};
use poolstress_harness::{tag, Classify, ErrorClass, Metric, Registry, TestCtx};

use crate::kit::{
    bed::{Bed, Rig, Sampler},
    checks,
    support::{self, wait_drained},
    wait_until, NetService, ServiceFixture,
};
use crate::zoo::{ZooAdapter, ZooDriver};

const MAX: usize = 4;
const ACQUIRE: Duration = Duration::from_secs(2);
const CONNECT: Duration = Duration::from_secs(2);
const OP: Duration = Duration::from_secs(2);
/// Longest the harness waits for one call (far above the pool's own timeouts).
const BOUND: Duration = Duration::from_secs(10);

fn config(rig: &Rig) -> PoolConfig {
    rig.config(MAX, Some(ACQUIRE), Some(CONNECT), Some(OP))
}

/// Holds max_size checkouts at once, pings on each, releases them: the pool
/// has max_size connections open and idle.
async fn warm(bed: &Bed) -> anyhow::Result<()> {
    let what = bed.what();
    let mut held = Vec::new();
    for i in 0..bed.cfg.max_size {
        let c = tokio::time::timeout(BOUND, bed.pool.acquire())
            .await
            .map_err(|_| anyhow::anyhow!("{what}: warming: acquire {i} hung for {BOUND:?}"))?
            .map_err(|e| anyhow::anyhow!("{what}: warming: acquire {i} failed: {e}"))?;
        held.push(c);
    }
    for c in &mut held {
        c.run(&Op::Ping).await.map_err(|e| anyhow::anyhow!("{what}: warming: a ping failed: {e}"))?;
    }
    drop(held);
    wait_drained(&what, &bed.pool, Duration::from_secs(5)).await
}

/// Kills every one of the test's server connections and waits until the
/// server has none; returns how many were killed.
async fn kill_all(ctx: &TestCtx, bed: &Bed) -> anyhow::Result<usize> {
    let k = bed.kill(Victims::All, &mut ctx.rng()).await?;
    ctx.event(format!("killed {} of {} server connections", k.killed, k.seen));
    wait_until(
        &format!("{}: the server to have none of the test's connections", bed.what()),
        Duration::from_secs(5),
        || async { Ok(bed.server_count().await? == 0) },
    )
    .await?;
    Ok(k.killed)
}

/// Callers cancelled mid-transaction: max_size checkouts each start a
/// transaction while every reply from the server takes [`LATENCY`], and are
/// dropped after 1.5 x [`LATENCY`] — past `BEGIN` (`MULTI`), before `COMMIT`
/// (`EXEC`). With the checkouts back and nothing checked out, no session of
/// the test may stay inside a transaction ([`checks::no_idle_in_transaction`]).
pub async fn cancel_mid_transaction(ctx: TestCtx, rig: Rig) -> anyhow::Result<()> {
    let bed = rig.bed(&ctx, config(&rig)).await?;
    let what = bed.what();
    let Some(proxy) = bed.proxy.clone() else { bail!("{what}: needs the fault proxy (layer 2 or 3)") };
    warm(&bed).await?;
    ctx.step(format!("{MAX} transactions cut short 1.5 x {LATENCY:?} in, every reply delayed {LATENCY:?}"));
    let mut held = Vec::new();
    for _ in 0..MAX {
        held.push(tokio::time::timeout(BOUND, bed.pool.acquire()).await??);
    }
    let slow = proxy.add(FaultSpec::new(FaultKind::latency(LATENCY, Duration::ZERO)).downstream())?;
    if !proxy.settled(Duration::from_secs(1)).await {
        ctx.note("the latency had not reached every open connection within 1 s");
    }
    let cut_at = LATENCY * 3 / 2;
    let outcomes = join_all(held.iter_mut().enumerate().map(|(i, c)| async move {
        tokio::time::timeout(cut_at, c.run(&Op::Transaction { key: 7_000_000 + i as u64 })).await
    }))
    .await;
    slow.heal()?;
    let cut = outcomes.iter().filter(|o| o.is_err()).count();
    ctx.event(format!("{cut} of {MAX} transactions cut short"));
    drop(held);
    if cut == 0 {
        // One round trip (Redis MULTI..EXEC sent as one pipeline): there is no
        // moment inside the transaction to cut, which is the safe design.
        return Err(ctx.skip(format!(
            "{what}: no transaction could be cut short: all {MAX} answered within {cut_at:?} with {LATENCY:?} on every \
             reply (the pool sends the transaction in one round trip, so no caller can leave a session inside one)"
        )));
    }
    wait_drained(&what, &bed.pool, Duration::from_secs(5)).await?;
    ctx.step("checking no session is left inside a transaction");
    checks::no_idle_in_transaction(&bed, Duration::from_secs(3)).await?;
    ctx.step("the pool still serves transactions");
    for i in 0..MAX as u64 {
        tokio::time::timeout(BOUND, bed.pool.run(&Op::Transaction { key: 7_000_100 + i })).await??;
    }
    Ok(())
}

/// The delay on every server reply while [`cancel_mid_transaction`] cuts.
pub const LATENCY: Duration = Duration::from_millis(200);

/// With validation=ping: every idle connection killed server side, then 2 x
/// max_size checkouts one after another; each runs a ping. A pool that
/// validates finds the dead ones and opens new ones: no op fails.
pub async fn kill_idle_validated(ctx: TestCtx, rig: Rig) -> anyhow::Result<()> {
    if !rig.supports(Knob::ValidatePing) {
        return Err(ctx.skip(format!("{} does not declare {}", rig.adapter, Knob::ValidatePing)));
    }
    let bed = rig.bed(&ctx, config(&rig).validation(Validation::Ping)).await?;
    let what = bed.what();
    warm(&bed).await?;
    ctx.step("killing every idle connection server side");
    let killed = kill_all(&ctx, &bed).await?;
    let n = 2 * MAX;
    ctx.step(format!("{n} checkouts one after another, a ping on each"));
    let mut dead: Vec<(ErrorClass, String)> = Vec::new();
    for i in 0..n {
        let mut c = match tokio::time::timeout(BOUND, bed.pool.acquire()).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => bail!(
                "{what}: acquire {i} of {n} failed after its {killed} idle connections were killed server side [{}]: {e}",
                e.class()
            ),
            Err(_) => bail!("{what}: acquire {i} of {n} hung for {BOUND:?} after its idle connections were killed"),
        };
        if let Err(e) = tokio::time::timeout(BOUND, c.run(&Op::Ping)).await? {
            dead.push((e.class(), format!("checkout {i} [{}]: {e}", e.class())));
        }
    }
    let list = dead.iter().map(|(_, d)| d.as_str()).collect::<Vec<_>>().join("; ");
    let broken = dead.iter().filter(|(c, _)| *c == ErrorClass::ConnectionBroken).count();
    ensure!(
        broken == 0,
        "{what}: dead idle connection handed out: with validation=ping, {broken} of {n} checkouts after its {killed} \
         idle connections were killed server side were connections the server had closed (their first op failed \
         as connection_broken): {list}"
    );
    ensure!(dead.is_empty(), "{what}: {} of {n} pings failed after the kill: {list}", dead.len());
    Ok(())
}

/// A burst on a cold pool: 4 x max_size acquires released at once before
/// the pool has opened anything, each holding its connection for a moment.
/// The server must never see more than max_size of the test's connections
/// (the test bed's watch names more than max_size checkouts at once too).
pub async fn cold_burst(ctx: TestCtx, rig: Rig) -> anyhow::Result<()> {
    let bed = rig.bed(&ctx, rig.config(MAX, Some(Duration::from_secs(5)), Some(CONNECT), Some(OP))).await?;
    let what = bed.what();
    // Cold: nothing open but what the pool says it opened while building
    // (sqlx opens one to check the server).
    wait_until(
        &format!("{what}: the server to have only the connections the pool reports open after building"),
        Duration::from_secs(5),
        || async {
            let opened = bed.pool.status().and_then(|s| s.size).unwrap_or(0);
            Ok(bed.server_count().await? <= opened as u64)
        },
    )
    .await?;
    let n = 4 * MAX;
    ctx.step(format!("{n} acquires at once on a cold pool of {MAX}"));
    let sampler = Sampler::start(bed.counter());
    let go = Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (pool, go) = (bed.pool.clone(), go.clone());
            tokio::spawn(async move {
                go.wait().await;
                let mut c = tokio::time::timeout(BOUND, pool.acquire())
                    .await
                    .map_err(|_| "acquire hung".to_string())?
                    .map_err(|e| e.to_string())?;
                c.run(&Op::Ping).await.map_err(|e| e.to_string())?;
                tokio::time::sleep(Duration::from_millis(50)).await; // the caller's work while holding it, not a wait
                Ok::<(), String>(())
            })
        })
        .collect();
    let results = join_all(tasks).await;
    let peak = sampler.finish().await;
    ctx.record(Metric::lower("server_connections_peak", peak as f64));
    let failed: Vec<String> =
        results.into_iter().filter_map(|r| r.map_err(|e| e.to_string()).and_then(|r| r).err()).collect();
    let size = bed.pool.status().and_then(|s| s.size);
    ensure!(
        peak <= MAX as u64,
        "{what}: above max_size: a burst of {n} acquires on a cold pool opened {peak} connections at once server side \
         (max_size {MAX}; pool-reported size now {size:?})"
    );
    if let Some(size) = size {
        ensure!(
            size <= MAX,
            "{what}: above max_size: the pool reports size {size} after a burst of {n} (max_size {MAX})"
        );
    }
    ensure!(failed.is_empty(), "{what}: {} of {n} acquires at once failed: {}", failed.len(), failed.join("; "));
    Ok(())
}

/// Every connection killed server side, then the same pool must serve 5
/// pings in a row. When it does not, the message says what the evidence
/// singles out: "never reconnected" only when the pool opened no connection
/// (the proxy in front of the server accepted none, and accepts one from a
/// probe) while acquires failed for reasons other than waiting for a slot;
/// "does not serve again" otherwise, with what was seen.
pub async fn kill_all_reconnects(ctx: TestCtx, rig: Rig) -> anyhow::Result<()> {
    let bed =
        rig.bed(&ctx, rig.config(MAX, Some(Duration::from_secs(1)), Some(Duration::from_secs(1)), Some(OP))).await?;
    let what = bed.what();
    let Some(proxy) = bed.proxy.clone() else { bail!("{what}: needs the fault proxy (layer 2 or 3)") };
    warm(&bed).await?;
    ctx.step("killing every connection server side");
    let killed = kill_all(&ctx, &bed).await?;
    let accepted = proxy.accepted();
    let within = ctx.profile().pick(Duration::from_secs(5), Duration::from_secs(15));
    ctx.step(format!("the same pool must serve 5 pings in a row within {within:?}"));
    let t = Instant::now();
    let mut streak = 0;
    let mut failures: Vec<PoolError> = Vec::new();
    let mut hung = 0;
    while streak < 5 && t.elapsed() < within {
        match tokio::time::timeout(BOUND, bed.pool.run(&Op::Ping)).await {
            Ok(Ok(_)) => streak += 1,
            Ok(Err(e)) => {
                streak = 0;
                failures.push(e);
                tokio::time::sleep(Duration::from_millis(20)).await; // retry pacing, not synchronisation
            }
            Err(_) => {
                streak = 0;
                hung += 1;
            }
        }
    }
    if streak == 5 {
        ctx.record(Metric::lower("serves_again_ms", support::ms(t.elapsed())));
        return Ok(());
    }
    let opened = proxy.accepted() - accepted;
    let probe = tokio::net::TcpStream::connect(proxy.addr()).await.is_ok();
    let waiting = failures.iter().filter(|e| e.phase() == Stage::Wait).count();
    let status = bed.pool.status().map(|s| s.to_string()).unwrap_or_else(|| "not reported".into());
    let last =
        failures.last().map(|e| format!("[{} at {:?}] {e}", e.class(), e.phase())).unwrap_or_else(|| "none".into());
    let seen = format!(
        "{} acquires or pings failed ({waiting} waiting for a slot), {hung} hung for {BOUND:?}; last: {last}; pool status {status}",
        failures.len()
    );
    if opened == 0 && probe && waiting < failures.len() {
        bail!(
            "{what}: never reconnected: after its {killed} connections were killed server side, the pool opened no new \
             connection in {within:?} (the proxy in front of the server accepted none from it, and accepted a probe's) \
             while {seen}"
        );
    }
    if failures.is_empty() || waiting == failures.len() {
        bail!(
            "{what}: does not serve again after its {killed} connections were killed (not a reconnect failure: every \
             failure was a wait for a free slot; the pool opened {opened} new connection(s)): {seen}"
        );
    }
    bail!(
        "{what}: does not serve again after its {killed} connections were killed: the pool opened {opened} new \
         connections (probe accepted: {probe}) but {seen}"
    )
}

/// Commands cut short by their callers (a slow command dropped after 20 ms,
/// 2 x max_size times): the pool must not hand those connections out again,
/// and the ones it throws away must be closed — with the pool idle, the
/// server's count of the test's connections comes down to the pool's size
/// ([`checks::discarded_closed`]).
pub async fn discards_close(ctx: TestCtx, rig: Rig) -> anyhow::Result<()> {
    let bed = rig.bed(&ctx, config(&rig)).await?;
    let what = bed.what();
    warm(&bed).await?;
    let n = 2 * MAX;
    ctx.step(format!("{n} slow commands cut short by their callers"));
    for i in 0..n {
        let mut c = tokio::time::timeout(BOUND, bed.pool.acquire()).await??;
        let cut = tokio::time::timeout(Duration::from_millis(20), c.run(&Op::Slow(Duration::from_millis(300)))).await;
        ensure!(cut.is_err(), "{what}: command {i}, a 300 ms command, was not cut short after 20 ms: {cut:?}");
    }
    wait_drained(&what, &bed.pool, Duration::from_secs(5)).await?;
    ctx.step("checking the server lets go of what the pool threw away");
    checks::discarded_closed(&bed, n, Duration::from_secs(5)).await
}

/// Paired, never a fixed time budget: acquires on `a` and on `reference`
/// (another pool on the same server, same config), interleaved in rounds so
/// both meet the same machine load; fails naming "slow acquire" when the
/// median acquire of `a` is over [`SLOW_RATIO`] times the reference's and
/// over [`SLOW_EXTRA`] more. Absolute numbers go to the baselines (`bench::`).
pub async fn acquire_paired<S: ServiceFixture>(
    ctx: TestCtx,
    a: Adapter<S>,
    reference: Adapter<S>,
) -> anyhow::Result<()> {
    let caps = a.capabilities();
    let cfg = crate::kit::fit(&caps, 2, Some(ACQUIRE), Some(CONNECT), Some(OP));
    let (fx, pool) = support::setup(&ctx, &a, cfg.clone()).await?;
    let refpool = support::build(&ctx, &reference, &cfg, &fx.target).await?;
    pool.run(&Op::Ping).await?;
    refpool.run(&Op::Ping).await?;
    let (rounds, per) = (20, 10);
    ctx.step(format!("{rounds} rounds of {per} acquires on each pool, interleaved"));
    let (mut mine, mut theirs) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        let order = if r % 2 == 0 { [(&pool, 0), (&refpool, 1)] } else { [(&refpool, 1), (&pool, 0)] };
        for (p, which) in order {
            for _ in 0..per {
                let t = Instant::now();
                let c = tokio::time::timeout(BOUND, p.acquire()).await??;
                let took = t.elapsed();
                drop(c);
                if which == 0 {
                    mine.push(took)
                } else {
                    theirs.push(took)
                }
            }
        }
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (m, r) = (median(&mut mine), median(&mut theirs));
    let ratio = m.as_secs_f64() / r.as_secs_f64().max(1e-6);
    ctx.record(Metric::lower("acquire_median_ms", support::ms(m)));
    ctx.record(Metric::lower("reference_acquire_median_ms", support::ms(r)));
    ctx.note(format!(
        "median acquire {:.3} ms vs {:.3} ms for {} ({ratio:.1}x)",
        support::ms(m),
        support::ms(r),
        reference.name()
    ));
    ensure!(
        !(ratio > SLOW_RATIO && m > r + SLOW_EXTRA),
        "{}: slow acquire: median acquire {:.2} ms vs {:.2} ms for the reference pool {} on the same server, \
         interleaved ({} acquires each): {ratio:.1}x (flagged over {SLOW_RATIO}x and over {SLOW_EXTRA:?} more)",
        a.name(),
        support::ms(m),
        support::ms(r),
        reference.name(),
        mine.len()
    );
    Ok(())
}

/// [`acquire_paired`] flags a median acquire over this many times the reference's...
pub const SLOW_RATIO: f64 = 3.0;
/// ...and over this much more.
pub const SLOW_EXTRA: Duration = Duration::from_millis(3);

/// Known findings: `(scenario, pool, reason)`.
pub const FINDINGS: &[crate::kit::Finding] = &[];

type RigBody = fn(TestCtx, Rig) -> futures::future::BoxFuture<'static, anyhow::Result<()>>;

/// The scenarios on a rig, with the knobs each needs.
fn table<S: NetService>() -> [(&'static str, &'static [Knob], RigBody); 5] {
    [
        ("cancel_mid_transaction", &[], |c, r| Box::pin(cancel_mid_transaction(c, r))),
        ("kill_idle_validated", &[Knob::ValidatePing], |c, r| Box::pin(kill_idle_validated(c, r))),
        ("cold_burst", &[Knob::MaxSize], |c, r| Box::pin(cold_burst(c, r))),
        ("kill_all_reconnects", &[], |c, r| Box::pin(kill_all_reconnects(c, r))),
        ("discards_close", S::SLOW_OP_NEEDS, |c, r| Box::pin(discards_close(c, r))),
    ]
}

/// Registers `hygiene::<service>::<scenario>[<pool>]` for every adapter
/// (layer_3; `acquire_paired` against the zoo's correct pool as the reference).
pub fn register_adapters<S: NetService + ZooDriver>(r: &mut Registry, adapters: Vec<Adapter<S>>) {
    for a in adapters {
        for (scenario, needs, body) in table::<S>() {
            let rig = Rig::real(a.clone());
            let def = r.test(format!("hygiene::{}::{scenario}[{}]", S::NAME, a.name()), &tags::<S>(), move |ctx| {
                body(ctx, rig.clone())
            });
            def.exclusive(false);
            let skip = crate::kit::Needs::all(needs).missing(a.name(), &a.capabilities());
            crate::kit::mark(def, scenario, a.name(), skip, FINDINGS);
        }
        let pool = a.clone();
        let def = r.test(format!("hygiene::{}::acquire_paired[{}]", S::NAME, a.name()), &tags::<S>(), move |ctx| {
            Box::pin(acquire_paired::<S>(ctx, pool.clone(), ZooAdapter::<S>::correct()))
        });
        def.exclusive(false);
        // A pool that opens a connection per checkout is slow to acquire by design.
        let skip = crate::kit::Needs::all(&[Knob::Reuse]).missing(a.name(), &a.capabilities());
        crate::kit::mark(def, "acquire_paired", a.name(), skip, FINDINGS);
    }
}

fn tags<S: NetService>() -> [&'static str; 3] {
    [tag::CHAOS, tag::LAYER_3, S::NAME]
}
