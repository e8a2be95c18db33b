//! layer_2: every pool adapter, with its real client crate, against the
//! in-process stand-ins (`poolstress_fixtures::standin`) — no Docker, no
//! server binaries (`layer2::<service>::<scenario>[<adapter>]`).
//!
//! - `ops_accounted`: 8 workers on a pool of 4 run every operation; each
//!   read sees its write, the shared counter's transactions return exactly
//!   1..=N (no increment lost or doubled), WhoAmI names a live server
//!   connection, the server never sees more than `max_size` of the test's
//!   connections, and a reusing pool opens at most `max_size` of them.
//! - `kill_recovers`: every connection killed server side; the pool serves
//!   again without being rebuilt, each dead connection fails at most one
//!   operation, with `connection_broken`.
//! - `cut_reply_is_connection_broken`: one reply cut in half; at most one
//!   operation fails and it is classified `connection_broken` — or
//!   `connect_refused` when the cut hit a connection being opened (every
//!   checkout of a `direct` adapter), as any I/O failure while connecting
//!   is; the pool serves again.
//! - `stall_then_heal`: replies stall; an operation on a connection checked
//!   out before the stall neither succeeds nor fails with anything but
//!   `op_timeout` while stalled (a client-side op timeout fires during the
//!   stall; Postgres' `statement_timeout` cannot, the server never starts
//!   the query), and the pool serves after healing. (An acquire during the
//!   stall talks to the server too — a validation PING, a new connection's
//!   handshake — and is bounded by the acquire / connect timeouts, not by
//!   `op_timeout`.)
//! - `refused_auth_then_heal`: new connections are refused auth; an acquire
//!   fails `connect_refused` / `acquire_timeout` within its bounds; after
//!   healing the same pool connects again.
//! - `slow_handshake_bounded`: handshakes hang; an acquire gives up within
//!   its connect / acquire timeout; after healing it connects.
//! - `through_fault_proxy`: the same pool through the fault proxy with
//!   latency added: operations succeed and take the added latency.

use std::{
    collections::HashSet,
    future::Future,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context};
use poolstress_fixtures::{
    fault::FaultKind,
    pool::{self, Adapter, Knob, Op, Pool, PoolConfig, PoolError, Stage},
    standin::{Misbehaviour, StandinCounter},
};
use poolstress_harness::{Classify, ErrorClass, Metric, Registry, TestCtx};

use crate::kit::{self, register_matrix, Finding, NetService, Scenario, Standin};

/// Bounds every single operation or acquire in these tests (a hang is a failure, not a deadline).
const WATCHDOG: Duration = Duration::from_secs(10);

/// A known finding: `(scenario, adapter, reason)`; the test stays
/// registered, is marked ignored with the reason, and fails when run.
pub const FINDINGS: &[Finding] = &[
    (
        "slow_handshake_bounded",
        "redis-manager",
        "redis 1.8.1 ConnectionManager: a command issued while the manager reconnects awaits the reconnect with no bound \
         (send_packed_command awaits the shared connection future, src/aio/connection_manager.rs); connection_timeout bounds \
         each attempt only, and a reconnect makes number_of_retries + 1 = 7 attempts with exponential backoff (100 ms x 2^n, \
         jitter): with connect_timeout 300 ms and every handshake hung, the command waits ~8-15 s, and response_timeout does \
         not cover the wait; a failure then surfaces as that command's error, not as a connect failure",
    ),
    (
        "refused_auth_then_heal",
        "redis-manager",
        "redis 1.8.1 ConnectionManager: a reconnect refused by the server (NOAUTH to the handshake's SELECT) reaches the caller \
         only after the whole retry series (~6-13 s), as the command's server_error, and the manager never reconnects again: the \
         failed connection future keeps the non-I/O error and reconnect_if_io_error! (src/aio/connection_manager.rs) reconnects \
         only on I/O errors, so every later command fails with the same NOAUTH after the server has healed",
    ),
];

fn scenarios<S: NetService>() -> Vec<Scenario<S>> {
    vec![
        Scenario::new("ops_accounted", &[], |c, a| Box::pin(ops_accounted(c, a))),
        Scenario::new("kill_recovers", &[Knob::Reuse], |c, a| Box::pin(kill_recovers(c, a))),
        Scenario::new("cut_reply_is_connection_broken", &[], |c, a| Box::pin(cut_reply(c, a))),
        Scenario::new("stall_then_heal", &[], |c, a| Box::pin(stall_then_heal(c, a))),
        Scenario::new("refused_auth_then_heal", &[], |c, a| Box::pin(refused_auth(c, a))),
        Scenario::new("slow_handshake_bounded", &[], |c, a| Box::pin(slow_handshake(c, a)))
            .needs_one_of(&[Knob::ConnectTimeout, Knob::AcquireTimeout]),
        Scenario::new("through_fault_proxy", &[], |c, a| Box::pin(through_proxy(c, a))),
    ]
}

/// Registers every scenario for `adapters` (a user's pool too).
pub fn register_adapters<S: NetService>(r: &mut Registry, adapters: Vec<Adapter<S>>) {
    let prefix = format!("layer2::{}", S::NAME);
    register_matrix(r, &prefix, S::STANDIN_TAGS, scenarios::<S>(), &adapters, FINDINGS);
}

/// `cfg` with the knobs the adapter supports among those asked for.
fn config<S: NetService>(
    a: &Adapter<S>,
    max: usize,
    acquire: Option<Duration>,
    connect: Option<Duration>,
    op: Option<Duration>,
) -> PoolConfig {
    kit::fit(&a.capabilities(), max, acquire, connect, op)
}

async fn setup<S: NetService>(ctx: &TestCtx, a: &Adapter<S>, cfg: &PoolConfig) -> anyhow::Result<(Standin, Pool)> {
    ctx.step(format!("starting a {} stand-in", S::NAME));
    let (server, target) = S::start_standin(ctx)?;
    ctx.step(format!("building {} with {cfg:?}", a.name()));
    let pool = a
        .build(cfg, &target)
        .await
        .with_context(|| format!("building {} ({}) against the stand-in", a.name(), a.version()))?;
    ctx.note(format!("{} ({}) with {cfg:?} on the {} stand-in", a.name(), a.version(), S::NAME));
    Ok((server, pool))
}

/// Acquires and runs `op` under the watchdog; a hang is an error naming the op.
async fn run(pool: &Pool, op: &Op) -> anyhow::Result<Result<pool::OpOutput, PoolError>> {
    watchdog(&format!("{op} on {}", pool.name()), async { pool.run(op).await }).await
}

async fn watchdog<T>(what: &str, fut: impl Future<Output = T>) -> anyhow::Result<T> {
    tokio::time::timeout(WATCHDOG, fut).await.map_err(|_| anyhow!("{what} hung for {WATCHDOG:?} against the stand-in"))
}

/// Runs `Ping` until `n` in a row succeed (within `within`); returns the
/// failures seen before that.
async fn until_serving(pool: &Pool, n: usize, within: Duration) -> anyhow::Result<Vec<PoolError>> {
    let end = Instant::now() + within;
    let mut failures = vec![];
    let mut streak = 0;
    while streak < n {
        if Instant::now() > end {
            bail!(
                "{} did not serve {n} operations in a row within {within:?}; failures so far: {}",
                pool.name(),
                describe(&failures)
            );
        }
        match run(pool, &Op::Ping).await? {
            Ok(_) => streak += 1,
            Err(e) => {
                streak = 0;
                failures.push(e);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    Ok(failures)
}

fn describe(errors: &[PoolError]) -> String {
    if errors.is_empty() {
        return "none".into();
    }
    errors.iter().map(|e| format!("[{}] {e}", e.class())).collect::<Vec<_>>().join("; ")
}

/// Samples the server-side count every 2 ms until dropped; keeps the maximum.
struct Sampler {
    max: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    fn start(counter: StandinCounter) -> Self {
        let max = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s) = (max.clone(), stop.clone());
        let task = tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                m.fetch_max(counter.now(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        Sampler { max, stop, task }
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.max.load(Ordering::Relaxed)
    }
}

async fn ops_accounted<S: NetService>(ctx: TestCtx, a: Adapter<S>) -> anyhow::Result<()> {
    const MAX: usize = 4;
    const WORKERS: usize = 8;
    let caps = a.capabilities();
    let cfg = config(&a, MAX, Some(WATCHDOG), Some(Duration::from_secs(5)), None);
    let (server, pool) = setup(&ctx, &a, &cfg).await?;
    let per_worker = ctx.profile().pick(60, 600);
    let server = Arc::new(server);

    ctx.step(format!("{WORKERS} workers x {per_worker} operations on a pool of {MAX}"));
    let sampler = Sampler::start(server.counter());
    let started = Instant::now();
    let mut tasks = vec![];
    for w in 0..WORKERS {
        let (pool, server, slug) = (pool.clone(), server.clone(), ctx.slug());
        tasks.push(tokio::spawn(async move {
            let mut counters = vec![];
            let mut last: Option<(u64, String)> = None;
            for i in 0..per_worker {
                let name = pool.name().to_string();
                let mut c = watchdog("acquire", pool.acquire())
                    .await?
                    .map_err(|e| anyhow!("worker {w} op {i}: acquire failed: [{}] {e}", e.class()))?;
                let op = match i % 5 {
                    0 => {
                        let key = 1000 * (w as u64 + 1) + i;
                        let value = format!("{slug}-{w}-{i}");
                        last = Some((key, value.clone()));
                        Op::Write { key, value }
                    }
                    1 => Op::Read { key: last.as_ref().map_or(1, |l| l.0) },
                    2 => Op::Transaction { key: 1 },
                    3 => Op::Ping,
                    _ => Op::WhoAmI,
                };
                let out = watchdog(&format!("{op}"), c.run(&op))
                    .await?
                    .map_err(|e| anyhow!("worker {w} op {i} ({op}) failed: [{}] {e}", e.class()))?;
                match &op {
                    Op::Read { .. } => {
                        let want = last.as_ref().map(|l| l.1.as_str());
                        ensure!(
                            out.value() == want,
                            "{name}: worker {w} read {:?} after writing {want:?}",
                            out.value()
                        );
                    }
                    Op::Transaction { .. } => {
                        counters.push(out.counter().ok_or_else(|| anyhow!("transaction returned {out:?}"))?)
                    }
                    Op::WhoAmI => {
                        let id = out.id().ok_or_else(|| anyhow!("who_am_i returned {out:?}"))?;
                        ensure!(
                            server.connections().iter().any(|c| c.id == id),
                            "{name}: who_am_i said {id}, which is no live connection of the stand-in"
                        );
                    }
                    _ => {}
                }
                drop(c);
            }
            anyhow::Ok(counters)
        }));
    }
    let mut counters = vec![];
    for t in tasks {
        counters.extend(t.await??);
    }
    let elapsed = started.elapsed();
    let max_seen = sampler.finish().await;

    ctx.step("checking every operation is accounted for");
    let total = counters.len() as i64;
    let distinct: HashSet<i64> = counters.iter().copied().collect();
    ensure!(
        distinct.len() == counters.len(),
        "{}: transactions returned duplicate counter values (an increment counted twice or lost)",
        a.name()
    );
    ensure!(
        counters.iter().all(|&n| (1..=total).contains(&n)),
        "{}: {total} transactions returned counters outside 1..={total}: an increment was lost",
        a.name()
    );
    let next = run(&pool, &Op::Transaction { key: 1 }).await??.counter();
    ensure!(next == Some(total + 1), "{}: after {total} increments the counter's next value is {next:?}", a.name());

    // max_size is a hard bound. Without one (a new connection per checkout)
    // each worker holds at most one connection, but a released one is closed
    // in the background (redis-rs's driver task, tokio-postgres' connection
    // task) and counted by the server until it sees the close: one more per
    // worker may still be closing.
    let bound = if caps.supports(Knob::MaxSize) {
        MAX
    } else if caps.supports(Knob::Reuse) {
        WORKERS
    } else {
        2 * WORKERS
    } as u64;
    ensure!(
        max_seen <= bound,
        "{}: the stand-in saw {max_seen} of the test's connections at once (bound {bound}: max_size {MAX}, {WORKERS} workers)",
        a.name()
    );
    if caps.supports(Knob::Reuse) {
        // The pool's connections plus the adapter's one-off schema connection.
        let accepted = server.accepted();
        ensure!(
            accepted <= MAX as u64 + 1,
            "{}: {accepted} connections were opened for a pool of {MAX}: connections are not reused",
            a.name()
        );
    }
    let ops = (WORKERS as u64 * per_worker) as f64;
    ctx.record(Metric::higher("ops_per_s", ops / elapsed.as_secs_f64()));
    ctx.record(Metric::lower("server_connections_max", max_seen as f64));
    pool.close().await;
    Ok(())
}

async fn kill_recovers<S: NetService>(ctx: TestCtx, a: Adapter<S>) -> anyhow::Result<()> {
    const MAX: usize = 3;
    let cfg = config(&a, MAX, Some(Duration::from_secs(5)), Some(Duration::from_secs(5)), None);
    let (server, pool) = setup(&ctx, &a, &cfg).await?;

    ctx.step("warming the pool: max_size connections at once");
    let mut held = vec![];
    for _ in 0..MAX {
        let mut c = watchdog("acquire", pool.acquire()).await??;
        c.run(&Op::Ping).await?;
        held.push(c);
    }
    drop(held);
    let open = server.counter().now();

    ctx.step("killing every connection server side");
    let killed = server.kill_all();
    ensure!(killed as u64 >= open, "killed {killed} connections, {open} were open");
    server
        .wait_count(|n| n == 0, Duration::from_secs(5))
        .await
        .map_err(|n| anyhow!("{n} connections survived kill_all"))?;
    ctx.event("killed all");

    ctx.step("running until the pool serves again");
    let sampler = Sampler::start(server.counter());
    let t = Instant::now();
    let failures = until_serving(&pool, 10, Duration::from_secs(10)).await?;
    ctx.record(Metric::lower("recovery_ms", t.elapsed().as_secs_f64() * 1000.0));
    ctx.record(Metric::lower("failed_ops_after_kill", failures.len() as f64));
    let max_seen = sampler.finish().await;
    ensure!(
        failures.len() <= open as usize,
        "{}: {} operations failed after {open} connections were killed (each dead connection should fail at most one): {}",
        a.name(),
        failures.len(),
        describe(&failures)
    );
    for e in &failures {
        ensure!(
            e.class() == ErrorClass::ConnectionBroken,
            "{}: an operation on a killed connection failed as [{}], not connection_broken: {e}",
            a.name(),
            e.class()
        );
    }
    ensure!(max_seen <= MAX as u64, "{}: {max_seen} connections at once while recovering (max_size {MAX})", a.name());
    pool.close().await;
    Ok(())
}

async fn cut_reply<S: NetService>(ctx: TestCtx, a: Adapter<S>) -> anyhow::Result<()> {
    let cfg = config(&a, 2, Some(Duration::from_secs(5)), Some(Duration::from_secs(5)), None);
    let (server, pool) = setup(&ctx, &a, &cfg).await?;
    run(&pool, &Op::Ping).await??;

    ctx.step("cutting the next reply in half");
    let cut = server.misbehave_times(Misbehaviour::CutReply, 1);
    let mut failures = vec![];
    for _ in 0..5 {
        if let Err(e) = run(&pool, &Op::Ping).await? {
            failures.push(e);
        }
        if cut.hits() == 1 {
            break;
        }
    }
    ensure!(cut.hits() == 1, "{}: five operations and no reply was cut (hits {})", a.name(), cut.hits());
    ensure!(
        failures.len() <= 1,
        "{}: one cut reply failed {} operations: {}",
        a.name(),
        failures.len(),
        describe(&failures)
    );
    if let Some(e) = failures.first() {
        // A cut that hits a connection being opened means no connection could
        // be had: connect_refused, like every I/O failure while connecting.
        let want = if matches!(e.phase(), Stage::Create | Stage::Acquire) {
            ErrorClass::ConnectRefused
        } else {
            ErrorClass::ConnectionBroken
        };
        ensure!(
            e.class() == want,
            "{}: a reply cut mid-message ({}) was classified [{}], not {want}: {e}",
            a.name(),
            e.phase(),
            e.class()
        );
    } else {
        ctx.note(format!("{}: the cut hit a validation query; no operation saw it", a.name()));
    }
    drop(cut);
    let after = until_serving(&pool, 5, Duration::from_secs(5)).await?;
    ensure!(
        after.is_empty() || after.iter().all(|e| e.class() == ErrorClass::ConnectionBroken),
        "{}: after the cut: {}",
        a.name(),
        describe(&after)
    );
    pool.close().await;
    Ok(())
}

async fn stall_then_heal<S: NetService>(ctx: TestCtx, a: Adapter<S>) -> anyhow::Result<()> {
    const OP_TIMEOUT: Duration = Duration::from_millis(300);
    let caps = a.capabilities();
    let cfg = config(&a, 2, Some(Duration::from_secs(5)), Some(Duration::from_secs(5)), Some(OP_TIMEOUT));
    let (server, pool) = setup(&ctx, &a, &cfg).await?;
    run(&pool, &Op::Ping).await??;
    // Postgres adapters bound operations with statement_timeout: the server
    // enforces it, and a stalled server never starts the query.
    let client_side = cfg.op_timeout.is_some() && caps.note(Knob::OpTimeout) != Some("statement_timeout");

    // Checked out before the stall, so what stalls is the operation, which
    // op_timeout bounds (a checkout may talk to the server: deadpool-redis
    // PINGs on recycle, direct-redis handshakes, neither under op_timeout).
    let mut conn = watchdog("acquire", pool.acquire()).await??;

    ctx.step("stalling every reply");
    let stall = server.misbehave(Misbehaviour::Stall);
    let t = Instant::now();
    let mut op = tokio::spawn(async move { conn.run(&Op::Ping).await });
    ensure!(stall.wait_hits(1, Duration::from_secs(5)).await, "{}: no operation reached the stalled server", a.name());
    let during = tokio::time::timeout(Duration::from_secs(1), &mut op).await;
    match (&during, client_side) {
        (Ok(Ok(Err(e))), true) => {
            ensure!(
                e.class() == ErrorClass::OpTimeout,
                "{}: an operation on a stalled server failed [{}], not op_timeout: {e}",
                a.name(),
                e.class()
            );
            ensure!(
                t.elapsed() < OP_TIMEOUT + Duration::from_millis(900),
                "{}: op_timeout {OP_TIMEOUT:?} fired after {:?}",
                a.name(),
                t.elapsed()
            );
        }
        (Ok(Ok(Ok(out))), _) => bail!("{}: an operation succeeded on a stalled server: {out:?}", a.name()),
        // No op_timeout knob, but the client may have a fixed one (bb8-redis:
        // redis-rs's default 500 ms response timeout): op_timeout is still
        // the only acceptable failure.
        (Ok(Ok(Err(e))), false) if e.class() == ErrorClass::OpTimeout => ctx.note(format!(
            "{}: a built-in client-side timeout ended the stalled operation after {:?}: {e}",
            a.name(),
            t.elapsed()
        )),
        (Ok(Ok(Err(e))), false) => {
            bail!("{}: an operation on a stalled server failed [{}], not op_timeout: {e}", a.name(), e.class())
        }
        (Ok(Err(join)), _) => bail!("the operation task failed: {join}"),
        (Err(_), true) => bail!("{}: op_timeout {OP_TIMEOUT:?} did not end an operation stalled for 1 s", a.name()),
        (Err(_), false) => {
            ctx.note(format!("{}: no client-side op timeout: the stalled operation waits for the server", a.name()))
        }
    }

    ctx.step("healing");
    drop(stall);
    if during.is_err() {
        let r = watchdog("the stalled operation after healing", op).await??;
        ensure!(
            r.is_ok(),
            "{}: the stalled operation failed after healing: {}",
            a.name(),
            r.err().map(|e| format!("[{}] {e}", e.class())).unwrap_or_default()
        );
    }
    let after = until_serving(&pool, 5, Duration::from_secs(5)).await?;
    ensure!(
        after.iter().all(|e| matches!(e.class(), ErrorClass::ConnectionBroken | ErrorClass::OpTimeout)),
        "{}: after the stall healed: {}",
        a.name(),
        describe(&after)
    );
    pool.close().await;
    Ok(())
}

async fn refused_auth<S: NetService>(ctx: TestCtx, a: Adapter<S>) -> anyhow::Result<()> {
    let cfg = config(&a, 2, Some(Duration::from_secs(1)), Some(Duration::from_secs(1)), None);
    let (server, pool) = setup(&ctx, &a, &cfg).await?;
    run(&pool, &Op::Ping).await??;
    // No connection may survive: the next acquire must authenticate anew.
    server.kill_all();
    server
        .wait_count(|n| n == 0, Duration::from_secs(5))
        .await
        .map_err(|n| anyhow!("{n} connections survived kill_all"))?;

    ctx.step("refusing authentication");
    let refuse = server.misbehave(Misbehaviour::RefuseAuth);
    let mut refused = None;
    let mut dead = vec![];
    for _ in 0..5 {
        match run(&pool, &Op::Ping).await? {
            // An operation on a connection killed above (a pool that does not
            // validate, redis-rs's ConnectionManager): not the refusal, which
            // comes with the connection opened next, whether or not that
            // already started. At most one per killed connection.
            Err(e)
                if e.phase() == Stage::Op && e.class() == ErrorClass::ConnectionBroken && dead.len() < cfg.max_size =>
            {
                dead.push(e)
            }
            Err(e) => {
                refused = Some(e);
                break;
            }
            // A dead pooled connection's failure may be followed by a retry: keep going.
            Ok(out) => bail!("{}: an operation succeeded while every authentication is refused: {out:?}", a.name()),
        }
    }
    let e = refused.ok_or_else(|| anyhow!("no failure"))?;
    ensure!(
        matches!(e.class(), ErrorClass::ConnectRefused | ErrorClass::AcquireTimeout | ErrorClass::ConnectionBroken),
        "{}: refused authentication surfaced as [{}]: {e}",
        a.name(),
        e.class()
    );
    ensure!(refuse.hits() >= 1, "{}: the failure was not the refusal: {e}", a.name());
    ctx.note(format!(
        "{}: refused auth -> [{}] {e} (after {} failure(s) of killed connections)",
        a.name(),
        e.class(),
        dead.len()
    ));

    ctx.step("healing: the same pool connects again");
    drop(refuse);
    until_serving(&pool, 3, Duration::from_secs(10)).await?;
    pool.close().await;
    Ok(())
}

async fn slow_handshake<S: NetService>(ctx: TestCtx, a: Adapter<S>) -> anyhow::Result<()> {
    const CONNECT: Duration = Duration::from_millis(300);
    const ACQUIRE: Duration = Duration::from_millis(800);
    let cfg = config(&a, 2, Some(ACQUIRE), Some(CONNECT), None);
    let (server, pool) = setup(&ctx, &a, &cfg).await?;
    run(&pool, &Op::Ping).await??;
    server.kill_all();
    server
        .wait_count(|n| n == 0, Duration::from_secs(5))
        .await
        .map_err(|n| anyhow!("{n} connections survived kill_all"))?;

    ctx.step("holding every handshake");
    let hold = server.misbehave(Misbehaviour::SlowHandshake { delay: Duration::MAX });
    let t = Instant::now();
    let mut failed = None;
    let mut dead = 0;
    for _ in 0..5 {
        if let Err(e) = run(&pool, &Op::Ping).await? {
            // A connection killed above, noticed now (redis-rs's
            // ConnectionManager reconnects only after a command failed): not
            // the hung handshake, whether or not the reconnect already hit it.
            if e.class() == ErrorClass::ConnectionBroken && e.phase() == Stage::Op && dead < cfg.max_size {
                dead += 1;
                continue;
            }
            if hold.hits() >= 1 {
                failed = Some(e);
                break;
            }
        }
    }
    let e = failed.ok_or_else(|| anyhow!("{}: no acquire gave up while every handshake hangs", a.name()))?;
    let bound =
        cfg.connect_timeout.into_iter().chain(cfg.acquire_timeout).max().unwrap_or(WATCHDOG) + Duration::from_secs(1);
    ensure!(
        t.elapsed() <= bound,
        "{}: gave up after {:?} (connect {:?}, acquire {:?})",
        a.name(),
        t.elapsed(),
        cfg.connect_timeout,
        cfg.acquire_timeout
    );
    ensure!(
        matches!(e.class(), ErrorClass::AcquireTimeout | ErrorClass::ConnectRefused),
        "{}: a hung handshake surfaced as [{}]: {e}",
        a.name(),
        e.class()
    );

    ctx.step("healing: the same pool connects again");
    drop(hold);
    until_serving(&pool, 3, Duration::from_secs(10)).await?;
    pool.close().await;
    Ok(())
}

async fn through_proxy<S: NetService>(ctx: TestCtx, a: Adapter<S>) -> anyhow::Result<()> {
    const LATENCY: Duration = Duration::from_millis(50);
    ctx.step(format!("starting a {} stand-in behind the fault proxy", S::NAME));
    let (server, target) = S::start_standin(&ctx)?;
    let (proxy, via) = S::proxy(&ctx, &target).await?;
    let cfg = config(&a, 2, Some(Duration::from_secs(5)), Some(Duration::from_secs(5)), None);
    let pool = a.build(&cfg, &via).await.with_context(|| format!("building {} through the proxy", a.name()))?;
    run(&pool, &Op::Write { key: 1, value: "x".into() }).await??;

    ctx.step(format!("adding {LATENCY:?} of latency"));
    let guard = proxy.add(FaultKind::latency(LATENCY, Duration::ZERO))?;
    // Warm connections first, so the measurement is one round trip.
    run(&pool, &Op::Ping).await??;
    let t = Instant::now();
    let out = run(&pool, &Op::Read { key: 1 }).await??;
    let took = t.elapsed();
    ensure!(out.value() == Some("x"), "{}: read {out:?} through the proxy", a.name());
    ensure!(took >= LATENCY, "{}: a read took {took:?} with {LATENCY:?} of added latency", a.name());
    guard.heal()?;
    // Accepted, not open now: a direct "pool" has closed its connection by here.
    ensure!(server.accepted() > 0, "the stand-in saw no connection through the proxy");
    ctx.record(Metric::lower("read_with_latency_ms", took.as_secs_f64() * 1000.0));
    pool.close().await;
    Ok(())
}
