//! Combinations: a fault landing on a pool in a given state, under a given
//! load, judged by every invariant the test bed watches. Real pool bugs live
//! in such combinations (a silent server while connections idle; a kill
//! while more callers wait than the pool has connections; a checkout used
//! again after one of its commands was cut short), not in one fault at one
//! load level.
//!
//! Names: `combo::<service>::<fault>::<state>[<pool>]`, at layer_3 (the
//! run's real server, through the fault proxy).
//!
//! | dimension | values |
//! |---|---|
//! | [`Fault`] | `kill` (60 % of the test's server connections killed server side), `silent` (the proxy forwards nothing and sends no RST or FIN for longer than the acquire timeout, then heals), `refuse` (new connections refused and open ones cut, then healed), `cut_short` (commands cut short by the caller, the checkout then used again), `restart` (the server restarted; exclusive), `slow` (150 ms each way for a while: recycle checks and ops slow but within the pool's timeouts) |
//! | [`State`] when it lands | `idle` (max_size connections open and idle, no load), `busy` (max_size workers: every connection checked out), `queued` (3 x max_size workers: callers queued behind them), `returning` (mid-recycle: max_size checkouts released together the instant before the fault) |
//! | [`Load`] from the fault on | `below` (max_size / 2 workers), `at` (max_size), `above` (2 x max_size) |
//!
//! The quick profile runs about a quarter of the (fault, state) cells, chosen
//! by the test's seed, each with one load level chosen by the seed; nightly
//! runs every cell with the three load levels one after another. `--seed`
//! replays a run's choices; a failure prints its combination and seed.
//! `POOLSTRESS_COMBO=all` runs every cell in the quick profile too.
//!
//! Two cells also run with the pool's *default* timeouts (nothing set, as a
//! user who configures nothing gets them): `combo::<service>::defaults::
//! silent::busy` and `defaults::kill::queued`, nightly (or with
//! `POOLSTRESS_COMBO=all`); a call running [`DEFAULTS_BOUND`] is unbounded.
//!
//! Every combination checks, hard: every op accounted for and none answered
//! with another op's reply; no acquire or op runs unbounded (the harness's
//! own bound on an op is far above the pool's configured timeouts, and an op
//! reaching it fails the test as unbounded rather than counting as the
//! fault's expected error); never more than max_size checkouts out and never
//! a pool-reported size above max_size; after the heal the same pool serves,
//! holds max_size checkouts at once, every connection answers its own
//! writes, the error rate falls under 1 %, and the server's count of the
//! test's connections settles at or under max_size.
//!
//! The same generator is public: [`run`] takes any [`Combo`], so a user can
//! write the combination their pool worries about in a few lines (see the
//! example on [`run`]).

use std::{
    fmt,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::ensure;
use poolstress_fixtures::{
    fault::{FaultKind, FaultSpec, FaultWindow, Victims},
    pool::{Adapter, Checkout, Knob, Op, Pool, TIMEOUT_SLACK},
};
use poolstress_harness::{tag, Profile, Registry, TestCtx};
use rand::Rng;

use crate::kit::{
    bed::{Bed, Rig, Sampler},
    ledger::{after_fault, note_plan, start_chunked, ChunkedRun, Ledger},
    NetService,
};

/// What goes wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 60 % of the test's server connections killed server side.
    Kill,
    /// The proxy forwards nothing, sends no RST or FIN, for longer than the
    /// pool's acquire timeout; only the pool's own timeouts end a call.
    Silent,
    /// New connections refused and open ones cut, for a while.
    Refuse,
    /// Commands cut short by the caller (a slow command dropped after 20 ms),
    /// the same checkout then used for a write and a read.
    CutShort,
    /// The server restarted (a fast shutdown, then a start): every connection
    /// closed by the server, none accepted until it is back. Exclusive: it is
    /// the run's shared server.
    Restart,
    /// A slow network for a while: every chunk delayed [`SLOW_LATENCY`] each
    /// way, so recycle checks and ops are slow but within the pool's own
    /// timeouts (waiters beyond max_size time out).
    Slow,
}

impl Fault {
    /// Every fault.
    pub const ALL: [Fault; 6] =
        [Fault::Kill, Fault::Silent, Fault::Refuse, Fault::CutShort, Fault::Restart, Fault::Slow];

    /// The name in test names.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Silent => "silent",
            Fault::Refuse => "refuse",
            Fault::CutShort => "cut_short",
            Fault::Restart => "restart",
            Fault::Slow => "slow",
        }
    }
}

/// The pool's state when the fault lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// max_size connections open and idle, no load.
    Idle,
    /// max_size workers: every connection checked out.
    Busy,
    /// 3 x max_size workers: callers queued beyond max_size.
    Queued,
    /// Mid-recycle: max_size checkouts released together the instant before
    /// the fault lands, so the pool's return and recycle path meets it.
    Returning,
}

impl State {
    /// Every state.
    pub const ALL: [State; 4] = [State::Idle, State::Busy, State::Queued, State::Returning];

    /// The name in test names.
    pub fn name(self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Busy => "busy",
            State::Queued => "queued",
            State::Returning => "returning",
        }
    }

    fn workers(self, max: usize) -> usize {
        match self {
            State::Idle | State::Returning => 0,
            State::Busy => max,
            State::Queued => 3 * max,
        }
    }
}

/// The closed-loop load from the fault on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Load {
    /// max_size / 2 workers.
    Below,
    /// max_size workers.
    At,
    /// 2 x max_size workers.
    Above,
}

impl Load {
    /// Every level.
    pub const ALL: [Load; 3] = [Load::Below, Load::At, Load::Above];

    /// The name in notes.
    pub fn name(self) -> &'static str {
        match self {
            Load::Below => "below",
            Load::At => "at",
            Load::Above => "above",
        }
    }

    fn workers(self, max: usize) -> usize {
        match self {
            Load::Below => (max / 2).max(1),
            Load::At => max,
            Load::Above => 2 * max,
        }
    }
}

/// One combination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Combo {
    /// What goes wrong.
    pub fault: Fault,
    /// The pool's state when it does.
    pub state: State,
    /// The load from the fault on.
    pub load: Load,
}

impl fmt::Display for Combo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} while {}, load {} capacity", self.fault.name(), self.state.name(), self.load.name())
    }
}

/// How long the pool waits for a connection, opens one and runs an op, in a
/// combination (the pool's own timeouts: the ones that must end every call).
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(1);
/// See [`ACQUIRE_TIMEOUT`].
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// See [`ACQUIRE_TIMEOUT`].
pub const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// The [`Fault::Slow`] delay, each way: a round trip takes 300 ms, a
/// validation ping fits in [`ACQUIRE_TIMEOUT`] and an op in [`OP_TIMEOUT`].
pub const SLOW_LATENCY: Duration = Duration::from_millis(150);

/// Which timeouts the pool is built with in a combination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeouts {
    /// [`ACQUIRE_TIMEOUT`], [`CONNECT_TIMEOUT`] and [`OP_TIMEOUT`], where the
    /// pool has the knob; a call may run [`TIMEOUT_SLACK`] past them.
    Set,
    /// None set: the pool's defaults, as a user who configures nothing gets
    /// them; a call may run [`DEFAULTS_BOUND`].
    Defaults,
}

/// With the pool's default timeouts, how long one call may run before it is
/// called unbounded (a silence lasts longer): above the longest default
/// timeouts of the pools people use (bb8's connection_timeout and sqlx's
/// acquire_timeout are 30 s), so only a call that no default ends gets there.
pub const DEFAULTS_BOUND: Duration = Duration::from_secs(35);

/// The cells also run with the pool's default timeouts (nightly, or
/// `POOLSTRESS_COMBO=all`): `combo::<service>::defaults::<fault>::<state>`.
pub const DEFAULT_CELLS: [(Fault, State); 2] = [(Fault::Silent, State::Busy), (Fault::Kill, State::Queued)];

/// What a combination saw (for a user's own extra checks).
pub struct Outcome {
    /// The bed (pool, proxy, server) after the checks.
    pub bed: Bed,
    /// What every op of the load did.
    pub ledger: Arc<Ledger>,
    /// When the fault landed and when it was healed.
    pub fault_at: Instant,
    /// See `fault_at`.
    pub heal_at: Instant,
}

/// The harness's own bound on one load op: far above what the pool's own
/// timeouts allow (an acquire that opens and validates a connection, then
/// a write and a read), so a pool's hang is seen as one, never cut short
/// into an ordinary timeout.
fn op_bound() -> Duration {
    ACQUIRE_TIMEOUT + CONNECT_TIMEOUT + OP_TIMEOUT * 3 + TIMEOUT_SLACK + Duration::from_secs(1)
}

/// Set to `all` to run every cell in the quick profile too (one load level each).
pub const ALL_ENV: &str = "POOLSTRESS_COMBO";

/// Whether the quick profile runs this cell with this seed (about one in four).
fn sampled(ctx: &TestCtx) -> bool {
    ctx.profile() == Profile::Nightly
        || ctx.seed().is_multiple_of(4)
        || std::env::var(ALL_ENV).is_ok_and(|v| v == "all")
}

/// Runs `combo` on `rig` with every check; returns what it saw for more.
///
/// ```no_run
/// # use poolstress::{kit::Rig, suites::combo::{self, Combo, Fault, Load, State}, TestCtx};
/// # async fn t(ctx: TestCtx, rig: Rig) -> anyhow::Result<()> {
/// // My pool's risk: a silent server while every connection is idle, then twice its size in callers.
/// let out = combo::run(&ctx, &rig, Combo { fault: Fault::Silent, state: State::Idle, load: Load::Above }).await?;
/// anyhow::ensure!(out.ledger.ok() > 100, "too few ops succeeded");
/// # Ok(()) }
/// ```
pub async fn run(ctx: &TestCtx, rig: &Rig, combo: Combo) -> anyhow::Result<Outcome> {
    run_loads(ctx, rig, combo.fault, combo.state, &[combo.load], Timeouts::Set).await
}

/// [`run`] with the pool built with its default timeouts (none set): a call
/// running [`DEFAULTS_BOUND`] fails the combination as unbounded.
pub async fn run_with_defaults(ctx: &TestCtx, rig: &Rig, combo: Combo) -> anyhow::Result<Outcome> {
    run_loads(ctx, rig, combo.fault, combo.state, &[combo.load], Timeouts::Defaults).await
}

async fn run_loads(
    ctx: &TestCtx,
    rig: &Rig,
    fault: Fault,
    state: State,
    loads: &[Load],
    timeouts: Timeouts,
) -> anyhow::Result<Outcome> {
    let max = ctx.profile().pick(4, 8);
    let (cfg, bound) = match timeouts {
        Timeouts::Set => (rig.config(max, Some(ACQUIRE_TIMEOUT), Some(CONNECT_TIMEOUT), Some(OP_TIMEOUT)), op_bound()),
        Timeouts::Defaults => (rig.config(max, None, None, None), DEFAULTS_BOUND),
    };
    let bed = rig.bed(ctx, cfg).await?;
    let what = bed.what();
    // A silence outlasts every bound the test bed allows a call (so a call
    // only the heal would end is seen as unbounded); a refusal is shorter.
    let outage = match (fault, timeouts) {
        (Fault::Silent, Timeouts::Set) => {
            ACQUIRE_TIMEOUT + CONNECT_TIMEOUT + OP_TIMEOUT + TIMEOUT_SLACK + Duration::from_secs(1)
        }
        (Fault::Silent, Timeouts::Defaults) => DEFAULTS_BOUND + Duration::from_secs(2),
        _ => ctx.profile().pick(ACQUIRE_TIMEOUT * 3 / 2, ACQUIRE_TIMEOUT * 3),
    };
    let server = match (fault, &bed.server) {
        (Fault::Restart, None) => anyhow::bail!("{what}: a restart needs the real server (layer_3)"),
        (_, s) => s.clone(),
    };
    let per_load = ctx.profile().pick(Duration::from_millis(1500), Duration::from_secs(4));
    let names: Vec<&str> = loads.iter().map(|l| l.name()).collect();
    note_plan(
        ctx,
        &[format!(
            "{} while {} (max_size {max}), then load {} capacity for {per_load:?} each; outage {outage:?}; {}",
            fault.name(),
            state.name(),
            names.join(" then "),
            match timeouts {
                Timeouts::Set => "the combination's timeouts",
                Timeouts::Defaults => "the pool's default timeouts",
            },
        )],
    );

    ctx.step("opening max_size connections");
    warm(&bed, max).await?;
    // Mid-recycle: max_size checkouts, all released the instant before the fault.
    let returning = match state {
        State::Returning => hold(&bed, max).await?,
        _ => Vec::new(),
    };
    let sampler = Sampler::start(bed.counter());
    let sizes = SizeWatch::start(&bed.pool);

    let before: Option<ChunkedRun> = match state.workers(max) {
        0 => None,
        n => {
            ctx.step(format!("putting the pool in state {}: {n} workers", state.name()));
            let run = start_chunked(ctx, &bed, n, Duration::from_millis(250), bound);
            run.running(10 * n as u64, Duration::from_secs(10)).await?;
            Some(run)
        }
    };
    if state == State::Queued {
        if let Some(w) = bed.pool.status().and_then(|s| s.waiters) {
            ctx.note(format!("callers waiting when the fault landed: {w}"));
        }
    }

    ctx.step(format!("fault: {}", fault.name()));
    let fault_at = Instant::now();
    ctx.event(format!("combo: {} while {}", fault.name(), state.name()));
    // The load from the fault on: it meets the fault (an idle pool's first
    // callers find the silent or dead connections).
    let first = loads.first().copied().unwrap_or(Load::At);
    let load = start_chunked(ctx, &bed, first.workers(max), Duration::from_millis(250), bound);
    let mut killed = 0;
    drop(returning);
    match fault {
        Fault::Kill => {
            let k = bed.kill(Victims::Fraction(0.6), &mut ctx.rng()).await?;
            ensure!(k.killed > 0 || !rig.supports(Knob::Reuse), "{what}: the kill found no connection to kill ({k:?})");
            killed = k.killed;
            ctx.event(format!("combo: killed {} of {}", k.killed, k.seen));
        }
        Fault::Silent => {
            let p = bed.partition()?;
            tokio::time::sleep(outage).await; // the outage's length, not a wait for a condition
            p.heal()?;
            killed = max; // connections abandoned in the silence may linger server side a moment
        }
        Fault::Refuse => {
            let proxy = bed.proxy.as_ref().ok_or_else(|| anyhow::anyhow!("{what}: no proxy"))?;
            let g = proxy.add(FaultSpec::new(FaultKind::down()))?;
            tokio::time::sleep(outage).await; // the outage's length, not a wait for a condition
            g.heal()?;
        }
        Fault::CutShort => cut_short(ctx, &bed, 5).await?,
        Fault::Restart => {
            let server = server.expect("checked above");
            server.restart().await.map_err(|e| anyhow::anyhow!("{what}: restarting the server: {e}"))?;
            killed = max; // closed by the server; the pool's replacements may overlap them a moment
        }
        Fault::Slow => {
            let proxy = bed.proxy.as_ref().ok_or_else(|| anyhow::anyhow!("{what}: no proxy"))?;
            let g = proxy.add(FaultSpec::new(FaultKind::latency(SLOW_LATENCY, Duration::ZERO)).both())?;
            tokio::time::sleep(outage).await; // the slow spell's length, not a wait for a condition
            g.heal()?;
            killed = max; // connections the pool gave up on in the slow spell close through it, late
        }
    }
    let heal_at = Instant::now();
    ctx.event(format!("combo: {} healed", fault.name()));
    let before = match before {
        Some(run) => Some(run.finish(ctx, &what).await?),
        None => None,
    };
    tokio::time::sleep(per_load).await; // the first load level's observation window
    let ledger = load.finish(ctx, &what).await?;
    let end = Instant::now();
    let mut ledgers = vec![ledger.clone()];
    ledgers.extend(before);
    for &l in loads.iter().skip(1) {
        ctx.step(format!("load {} capacity", l.name()));
        let run = start_chunked(ctx, &bed, l.workers(max), Duration::from_millis(250), bound);
        tokio::time::sleep(per_load).await; // this level's observation window
        ledgers.push(run.finish(ctx, &what).await?);
    }
    let max_seen = sampler.finish().await;
    let max_size_seen = sizes.finish().await;

    for l in &ledgers {
        unbounded(&what, l, bound, timeouts)?;
    }
    if let (true, Some(n)) = (bed.supports(Knob::MaxSize) && bed.supports(Knob::StatusSize), max_size_seen) {
        ensure!(
            n <= max,
            "{what}: the pool reported size {n}, above max_size {max}, throughout {SIZE_HELD_FOR:?} (a sample every 10 ms), \
             after {} while {} \
             (size past max after failures)",
            fault.name(),
            state.name()
        );
    }
    let rec = ledger.recovery(FaultWindow::new(fault_at, heal_at).until(end));
    rec.record(ctx, "combo_");
    // During a silence or a slow spell the server also sees connections the
    // pool has already abandoned (connect attempts and timed-out connections
    // the proxy still holds, delivered or closed only once it heals): their
    // peak says nothing about the pool. Checkouts and the pool's own size are
    // watched throughout; the server side is judged once it settles.
    if matches!(fault, Fault::Silent | Fault::Slow) && max_seen > (max + killed) as u64 {
        ctx.note(format!(
            "the server saw {max_seen} of the test's connections at the peak (max_size {max}): connections the pool \
             abandoned during the {} are still the proxy's; judged after they settle",
            fault.name()
        ));
        killed = max_seen as usize;
    }
    after_fault(ctx, &bed, max_seen, killed).await?;
    rec.check_recovered(&what)?;
    Ok(Outcome { bed, ledger, fault_at, heal_at })
}

/// Opens max_size connections (holds max_size checkouts at once, then
/// releases them) so the fault finds them.
async fn warm(bed: &Bed, max: usize) -> anyhow::Result<()> {
    hold(bed, max).await.map(drop)
}

/// Holds `n` checkouts at once, each used for a ping.
async fn hold(bed: &Bed, n: usize) -> anyhow::Result<Vec<Checkout>> {
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        let c = tokio::time::timeout(op_bound(), bed.pool.acquire())
            .await
            .map_err(|_| anyhow::anyhow!("{}: holding {n} checkouts: acquire {i} hung", bed.what()))?
            .map_err(|e| anyhow::anyhow!("{}: holding {n} checkouts: acquire {i} failed: {e}", bed.what()))?;
        held.push(c);
    }
    for c in &mut held {
        c.run(&Op::Ping)
            .await
            .map_err(|e| anyhow::anyhow!("{}: holding {n} checkouts: ping failed: {e}", bed.what()))?;
    }
    Ok(held)
}

/// Cuts `n` slow commands short after 20 ms and uses the same checkout again
/// for a write and a read: the read must answer the write (an error is
/// fine: the pool or the driver saw the connection could not be trusted).
async fn cut_short(ctx: &TestCtx, bed: &Bed, n: usize) -> anyhow::Result<()> {
    let what = bed.what();
    let mut rng = ctx.rng();
    for i in 0..n {
        let Ok(Ok(mut c)) = tokio::time::timeout(op_bound(), bed.pool.acquire()).await else {
            continue; // the pool's own timeout under the state's load: not this check's business
        };
        let slow = Duration::from_millis(300);
        let cut = tokio::time::timeout(Duration::from_millis(20), c.run(&Op::Slow(slow))).await;
        ensure!(cut.is_err() || cut.as_ref().is_ok_and(|r| r.is_err()), "{what}: a {slow:?} command answered in 20 ms");
        let key = 8_000_000 + rng.random_range(0..1_000_000u64);
        let value = format!("cut-{i}-{key}");
        let r = async {
            c.run(&Op::Write { key, value: value.clone() }).await?;
            c.run(&Op::Read { key }).await
        };
        match tokio::time::timeout(op_bound(), r).await {
            Ok(Ok(got)) => ensure!(
                got.value() == Some(value.as_str()),
                "{what}: reply desync after a command was cut short: the same checkout wrote {value:?} to key {key} \
                 and read back {got:?} (the cut command's reply was still on the connection)"
            ),
            Ok(Err(_)) => {} // the connection refused to be trusted: fine
            Err(_) => anyhow::bail!(
                "{what}: unbounded: a write/read on a checkout whose command was cut short still ran after {:?}",
                op_bound()
            ),
        }
    }
    Ok(())
}

/// Hard: no op ran into the harness's own bound (only a pool without its
/// own timeouts gets there: the hang is the finding).
fn unbounded(what: &str, ledger: &Ledger, bound: Duration, timeouts: Timeouts) -> anyhow::Result<()> {
    let obs = ledger.observations();
    let hung = obs.iter().filter(|o| o.latency >= bound).count();
    match timeouts {
        Timeouts::Set => ensure!(
            hung == 0,
            "{what}: unbounded: {hung} acquire+op calls still running after {bound:?}, far past the pool's own \
             timeouts (acquire {ACQUIRE_TIMEOUT:?}, connect {CONNECT_TIMEOUT:?}, op {OP_TIMEOUT:?}): the pool has no \
             timeout that ends them"
        ),
        Timeouts::Defaults => ensure!(
            hung == 0,
            "{what}: unbounded with the pool's default timeouts: {hung} acquire+op calls still running after \
             {bound:?}, past the 30 s defaults of bb8 and sqlx (nothing configured: no default timeout of the pool \
             ends a call on a silent network; a user who sets none waits as long as the silence)"
        ),
    }
    Ok(())
}

/// Samples the pool's own reported size every 10 ms; keeps the largest
/// size that held through [`SIZE_HELD_FOR`] of wall time (at least
/// [`SIZE_HELD_SAMPLES`] samples). A count taken while a connection moves
/// between idle and in use may read one too many for as long as the thread
/// moving it is descheduled: on a busy 2-core runner that was once 3 samples
/// in a row (a user's pool that pushes to its idle list before it releases
/// the slot). An oversubscribed pool stays above its size for as long as the
/// load lasts, far past this window.
struct SizeWatch {
    max: Arc<AtomicU64>,
    seen: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

/// How long a reported size must hold to count.
const SIZE_HELD_FOR: Duration = Duration::from_millis(150);
/// The fewest samples in that window (the sampler may itself be delayed).
const SIZE_HELD_SAMPLES: usize = 5;

impl SizeWatch {
    fn start(pool: &Pool) -> Self {
        let (max, seen, stop) =
            (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let (m, s, st, pool) = (max.clone(), seen.clone(), stop.clone(), pool.clone());
        let task = tokio::spawn(async move {
            let mut window: std::collections::VecDeque<(Instant, u64)> = std::collections::VecDeque::new();
            while !st.load(Ordering::Relaxed) {
                if let Some(n) = pool.status().and_then(|s| s.size) {
                    let now = Instant::now();
                    window.push_back((now, n as u64));
                    // Keep the newest sample at least SIZE_HELD_FOR old as the window's start.
                    while window.len() >= 2 && now - window[1].0 >= SIZE_HELD_FOR {
                        window.pop_front();
                    }
                    if now - window[0].0 >= SIZE_HELD_FOR && window.len() >= SIZE_HELD_SAMPLES {
                        m.fetch_max(window.iter().map(|&(_, n)| n).min().expect("not empty"), Ordering::Relaxed);
                    }
                    s.store(true, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        SizeWatch { max, seen, stop, task }
    }

    async fn finish(self) -> Option<usize> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.seen.load(Ordering::Relaxed).then(|| self.max.load(Ordering::Relaxed) as usize)
    }
}

/// The test body of one cell: the quick profile samples (one load level
/// chosen by the seed, about a quarter of the cells), nightly walks all.
async fn cell(ctx: TestCtx, rig: Rig, fault: Fault, state: State) -> anyhow::Result<()> {
    if !sampled(&ctx) {
        return Err(ctx.skip(format!(
            "sampled out by this run's seed in the quick profile (about 1 in 4 cells run; nightly runs every cell; \
             another --seed picks others): {} while {}",
            fault.name(),
            state.name()
        )));
    }
    let loads: Vec<Load> = match ctx.profile() {
        Profile::Nightly => Load::ALL.to_vec(),
        Profile::Quick => vec![Load::ALL[(ctx.seed() / 4 % 3) as usize]],
    };
    run_loads(&ctx, &rig, fault, state, &loads, Timeouts::Set).await.map(|_| ())
}

/// A cell with the pool's default timeouts: nightly (or `POOLSTRESS_COMBO=all`), load at capacity.
async fn defaults_cell(ctx: TestCtx, rig: Rig, fault: Fault, state: State) -> anyhow::Result<()> {
    if ctx.profile() == Profile::Quick && !std::env::var(ALL_ENV).is_ok_and(|v| v == "all") {
        return Err(ctx.skip(format!(
            "nightly only (a silence must outlast {DEFAULTS_BOUND:?}): {ALL_ENV}=all runs it in the quick profile too"
        )));
    }
    run_loads(&ctx, &rig, fault, state, &[Load::At], Timeouts::Defaults).await.map(|_| ())
}

/// Knobs a cell needs: its own timeouts end every call (a pool without one
/// hangs in `silent`, which is the finding the cell exists for, so only
/// `cut_short`, which needs slow ops, asks more).
fn needs<S: NetService>(fault: Fault) -> &'static [Knob] {
    match fault {
        Fault::CutShort => S::SLOW_OP_NEEDS,
        _ => &[],
    }
}

/// Known findings: `(cell, pool, reason)`, cell as `<fault>::<state>`.
/// Whether a cell meets the silence mid-query depends on timing (an idle
/// pool's check may take the hit instead), so every state is listed.
pub const FINDINGS: &[crate::kit::Finding] = &[
    ("silent::busy", "deadpool-postgres", "tokio-postgres 0.7.18 has no client-side query timeout and deadpool-postgres 0.14.2 maps op_timeout to the server's statement_timeout, which cannot fire while the network is silent: a query on a connection that meets a silent server (no RST, no FIN) runs until the network heals (10 s here; forever without TCP keepalive)"),
    ("silent::queued", "deadpool-postgres", "tokio-postgres 0.7.18 has no client-side query timeout and deadpool-postgres 0.14.2 maps op_timeout to the server's statement_timeout, which cannot fire while the network is silent: a query on a connection that meets a silent server (no RST, no FIN) runs until the network heals (10 s here; forever without TCP keepalive)"),
    ("silent::idle", "deadpool-postgres", "tokio-postgres 0.7.18 has no client-side query timeout and deadpool-postgres 0.14.2 (RecyclingMethod::Fast: idle connections are handed out unchecked) maps op_timeout to the server's statement_timeout, which cannot fire while the network is silent: a query on a connection that meets a silent server (no RST, no FIN) runs until the network heals (10 s here; forever without TCP keepalive)"),
    ("silent::busy", "bb8-postgres", "tokio-postgres 0.7.18 has no client-side query timeout and bb8 0.9.1 / bb8-postgres maps op_timeout to the server's statement_timeout, which cannot fire while the network is silent: a query on a connection that meets a silent server (no RST, no FIN) runs until the network heals (10 s here; forever without TCP keepalive)"),
    ("silent::queued", "bb8-postgres", "tokio-postgres 0.7.18 has no client-side query timeout and bb8 0.9.1 / bb8-postgres maps op_timeout to the server's statement_timeout, which cannot fire while the network is silent: a query on a connection that meets a silent server (no RST, no FIN) runs until the network heals (10 s here; forever without TCP keepalive)"),
    ("silent::idle", "bb8-postgres", "tokio-postgres 0.7.18 has no client-side query timeout and bb8 0.9.1 / bb8-postgres maps op_timeout to the server's statement_timeout, which cannot fire while the network is silent: a query on a connection that meets a silent server (no RST, no FIN) runs until the network heals (10 s here; forever without TCP keepalive)"),
    ("silent::busy", "direct-postgres", "tokio-postgres 0.7.18 has no client-side query timeout and the direct (no pool) adapter maps op_timeout to the server's statement_timeout, which cannot fire while the network is silent: a query on a connection that meets a silent server (no RST, no FIN) runs until the network heals (10 s here; forever without TCP keepalive)"),
    ("silent::queued", "direct-postgres", "tokio-postgres 0.7.18 has no client-side query timeout and the direct (no pool) adapter maps op_timeout to the server's statement_timeout, which cannot fire while the network is silent: a query on a connection that meets a silent server (no RST, no FIN) runs until the network heals (10 s here; forever without TCP keepalive)"),
    ("silent::idle", "direct-postgres", "tokio-postgres 0.7.18 has no client-side query timeout and the direct (no pool) adapter maps op_timeout to the server's statement_timeout, which cannot fire while the network is silent: a query on a connection that meets a silent server (no RST, no FIN) runs until the network heals (10 s here; forever without TCP keepalive)"),
    ("silent::idle", "sqlx-postgres", "sqlx 0.9.0 has no per-query timeout; its acquire_timeout bounds only the checkout: a query on a connection that meets a silent server (no RST, no FIN) runs until the network heals (10 s here; forever without TCP keepalive)"),
    ("silent::busy", "sqlx-postgres", "sqlx 0.9.0 has no per-query timeout; its acquire_timeout bounds only the checkout: a query on a connection that meets a silent server (no RST, no FIN) runs until the network heals (10 s here; forever without TCP keepalive)"),
    ("silent::queued", "sqlx-postgres", "sqlx 0.9.0 has no per-query timeout; its acquire_timeout bounds only the checkout: a query on a connection that meets a silent server (no RST, no FIN) runs until the network heals (10 s here; forever without TCP keepalive)"),
    ("silent::returning", "deadpool-postgres", "tokio-postgres 0.7.18 has no client-side query timeout and deadpool-postgres 0.14.2 maps op_timeout to the server's statement_timeout, which cannot fire while the network is silent: a query on a connection that meets a silent server (no RST, no FIN) runs until the network heals (10 s here; forever without TCP keepalive)"),
    ("silent::returning", "bb8-postgres", "tokio-postgres 0.7.18 has no client-side query timeout and bb8 0.9.1 / bb8-postgres maps op_timeout to the server's statement_timeout, which cannot fire while the network is silent: a query on a connection that meets a silent server (no RST, no FIN) runs until the network heals (10 s here; forever without TCP keepalive)"),
    ("silent::returning", "direct-postgres", "tokio-postgres 0.7.18 has no client-side query timeout and the direct (no pool) adapter maps op_timeout to the server's statement_timeout, which cannot fire while the network is silent: a query on a connection that meets a silent server (no RST, no FIN) runs until the network heals (10 s here; forever without TCP keepalive)"),
    ("silent::returning", "sqlx-postgres", "sqlx 0.9.0 has no per-query timeout; its acquire_timeout bounds only the checkout: a query on a connection that meets a silent server (no RST, no FIN) runs until the network heals (10 s here; forever without TCP keepalive)"),
    ("defaults::silent::busy", "deadpool-postgres", "deadpool-postgres 0.14.2 sets no timeout by default (Timeouts { wait, create, recycle } all None) and tokio-postgres 0.7.18 has no query timeout: with the defaults, calls on a silent server (no RST, no FIN) ran past 35 s: they end only when the network heals"),
    ("defaults::silent::busy", "bb8-postgres", "bb8 0.9.1's default connection_timeout (30 s) bounds only the wait for a connection; a query on a checked-out tokio-postgres 0.7.18 connection has no default timeout: with the defaults, calls on a silent server (no RST, no FIN) ran past 35 s"),
    ("defaults::silent::busy", "sqlx-postgres", "sqlx 0.9.0's default acquire_timeout (30 s) bounds only the checkout and there is no query timeout: with the defaults, calls on a silent server (no RST, no FIN) ran past 35 s"),
    ("defaults::silent::busy", "direct-postgres", "tokio-postgres 0.7.18 connects and queries with no timeout by default: with the defaults, calls on a silent server (no RST, no FIN) ran past 35 s"),
];

/// Registers `combo::<service>::<fault>::<state>[<pool>]` for every adapter.
pub fn register_adapters<S: NetService>(r: &mut Registry, adapters: Vec<Adapter<S>>) {
    for a in adapters {
        for fault in Fault::ALL {
            for state in State::ALL {
                let cell_name = format!("{}::{}", fault.name(), state.name());
                let name = format!("combo::{}::{cell_name}[{}]", S::NAME, a.name());
                let rig = Rig::real(a.clone());
                let def = r.test(name, &[tag::CHAOS, tag::LAYER_3, S::NAME], move |ctx| {
                    Box::pin(cell(ctx, rig.clone(), fault, state))
                });
                def.exclusive(fault == Fault::Restart);
                let skip = crate::kit::Needs::all(needs::<S>(fault)).missing(a.name(), &a.capabilities());
                crate::kit::mark(def, &cell_name, a.name(), skip, FINDINGS);
            }
        }
        for (fault, state) in DEFAULT_CELLS {
            let cell_name = format!("defaults::{}::{}", fault.name(), state.name());
            let name = format!("combo::{}::{cell_name}[{}]", S::NAME, a.name());
            let rig = Rig::real(a.clone());
            let def = r.test(name, &[tag::CHAOS, tag::LAYER_3, S::NAME], move |ctx| {
                Box::pin(defaults_cell(ctx, rig.clone(), fault, state))
            });
            def.exclusive(fault == Fault::Restart);
            crate::kit::mark(def, &cell_name, a.name(), None, FINDINGS);
        }
    }
}
