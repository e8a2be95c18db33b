//! What scenarios share: the pool set-up on a target of the test's own,
//! configs that set a knob only where the pool has it ([`Tune`]), the
//! load-generator op over a [`Pool`] ([`pool_op`]), and budget checks that
//! record the catalogue's number and fail only far past it.

use std::{sync::Arc, task::Poll, time::Duration};

use anyhow::Context;
use futures::future::BoxFuture;
use poolstress_fixtures::pool::{Adapter, Capabilities, Knob, Op, Pool, PoolConfig, PoolError};
use poolstress_harness::{
    load::OpTimer,
    metrics::{check_at_least, check_at_most, PhaseStats, ResourceMonitor},
    ConnectionCounter, Metric, TestCtx,
};

use tokio::task::JoinHandle;

use super::service::{wait_until, Provided, ServiceFixture};

/// A target of the test's own and a pool built with `cfg` on it.
pub async fn setup<S: ServiceFixture>(
    ctx: &TestCtx,
    a: &Adapter<S>,
    cfg: PoolConfig,
) -> anyhow::Result<(Provided<S>, Pool)> {
    ctx.step(format!("providing a {} server", S::NAME));
    let fx = S::provide(ctx).await?;
    let pool = build(ctx, a, &cfg, &fx.target).await?;
    // Postgres: the connection that prepared the test's schema is closed on
    // our side; wait until the server has let it go too, so server-side
    // counts from here on are the pool's alone.
    // The pool's size is read at each poll: a pool that pre-warms in the
    // background (min_idle) grows after its build returned.
    let floor = cfg.min_idle.unwrap_or(0).max(usize::from(a.capabilities().supports(Knob::Reuse)));
    let counter = fx.counter.clone();
    wait_until(
        &format!("{}: only the pool's connections server side after building it", a.name()),
        Duration::from_secs(5),
        || async {
            let opened = pool.status().and_then(|s| s.size).unwrap_or(floor);
            Ok(counter.count().await? <= opened as u64)
        },
    )
    .await?;
    Ok((fx, pool))
}

/// Builds `cfg` for `target`, noting the adapter, its version and the config.
pub async fn build<S: ServiceFixture>(
    ctx: &TestCtx,
    a: &Adapter<S>,
    cfg: &PoolConfig,
    target: &S::Target,
) -> anyhow::Result<Pool> {
    ctx.step(format!("building {} with {cfg:?}", a.name()));
    let pool = a.build(cfg, target).await.with_context(|| format!("building {} ({})", a.name(), a.version()))?;
    ctx.note(format!("{} ({}) with {cfg:?}", a.name(), a.version()));
    Ok(pool)
}

/// Sets knobs only where the pool has them: scenarios ask for generous
/// timeouts so waiting is not mistaken for failing, and pools without the
/// knob keep their defaults (never a refused config).
pub struct Tune<'a> {
    caps: &'a Capabilities,
    cfg: PoolConfig,
}

impl<'a> Tune<'a> {
    /// Starts from `PoolConfig::new(max_size)`.
    pub fn new(caps: &'a Capabilities, max_size: usize) -> Self {
        Tune { caps, cfg: PoolConfig::new(max_size) }
    }

    /// Applies `f` when the pool has `knob`.
    pub fn with(mut self, knob: Knob, f: impl FnOnce(PoolConfig) -> PoolConfig) -> Self {
        if self.caps.supports(knob) {
            self.cfg = f(self.cfg);
        }
        self
    }

    /// Sets the acquire timeout where supported.
    pub fn acquire_timeout(self, d: Duration) -> Self {
        self.with(Knob::AcquireTimeout, |c| c.acquire_timeout(d))
    }

    /// Sets the connect timeout where supported.
    pub fn connect_timeout(self, d: Duration) -> Self {
        self.with(Knob::ConnectTimeout, |c| c.connect_timeout(d))
    }

    /// Sets the op timeout where supported.
    pub fn op_timeout(self, d: Duration) -> Self {
        self.with(Knob::OpTimeout, |c| c.op_timeout(d))
    }

    /// Sets min idle where supported.
    pub fn min_idle(self, n: usize) -> Self {
        self.with(Knob::MinIdle, |c| c.min_idle(n))
    }

    /// Sets the idle timeout where supported.
    pub fn idle_timeout(self, d: Duration) -> Self {
        self.with(Knob::IdleTimeout, |c| c.idle_timeout(d))
    }

    /// The config.
    pub fn done(self) -> PoolConfig {
        self.cfg
    }
}

/// The load generator's op over `pool`: acquire (marked), run `op`, hold the
/// checkout for `hold` (the caller's work between commands, which is what
/// makes a pool grow), release.
pub fn pool_op(
    pool: &Pool,
    op: Op,
    hold: Duration,
) -> impl Fn(OpTimer) -> BoxFuture<'static, Result<OpTimer, PoolError>> + Send + Sync + 'static {
    let (pool, op) = (pool.clone(), Arc::new(op));
    move |mut t: OpTimer| {
        let (pool, op) = (pool.clone(), op.clone());
        Box::pin(async move {
            let mut c = pool.acquire().await?;
            t.acquired();
            c.run(&op).await?;
            if !hold.is_zero() {
                tokio::time::sleep(hold).await; // simulated work while holding the connection, not a wait
            }
            Ok(t)
        })
    }
}

/// Every op accounted for: `ok + failed + cancelled == started` and
/// `ok + failed == issued`.
pub fn accounted(name: &str, s: &PhaseStats, issued: u64) -> anyhow::Result<()> {
    s.check_accounted(Some(issued)).with_context(|| format!("{name}: not every op was accounted for"))
}

/// The ms.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A performance number: recorded as `metric` (lower is better); a note when
/// it misses the catalogue's `target`; a failure ([`BudgetExceeded`]) only
/// past `generous` (a multiple of the target that no healthy run on a busy
/// 2-core CI machine reaches) — machine speed is for baselines, not gates.
///
/// [`BudgetExceeded`]: poolstress_harness::metrics::BudgetExceeded
pub fn budget_max(
    ctx: &TestCtx,
    adapter: &str,
    metric: &str,
    value: f64,
    target: f64,
    generous: f64,
    unit: &str,
) -> anyhow::Result<()> {
    ctx.record(Metric::lower(metric, value));
    if value > target {
        ctx.note(format!("{adapter}: {metric} {value:.3} {unit} misses the catalogue's target {target} {unit} (gate {generous} {unit})"));
    }
    check_at_most(metric, value, generous, unit, &format!("for {adapter} (catalogue target {target} {unit})"))
}

/// [`budget_max`] for a number where higher is better (throughput).
pub fn budget_min(
    ctx: &TestCtx,
    adapter: &str,
    metric: &str,
    value: f64,
    target: f64,
    generous: f64,
    unit: &str,
) -> anyhow::Result<()> {
    ctx.record(Metric::higher(metric, value));
    if value < target {
        ctx.note(format!("{adapter}: {metric} {value:.1} {unit} misses the catalogue's target {target} {unit} (gate {generous} {unit})"));
    }
    check_at_least(metric, value, generous, unit, &format!("for {adapter} (catalogue target {target} {unit})"))
}

/// A resource monitor sampling this process and the test's server-side
/// connections (series `connections.<service>`) every `every`.
pub fn monitor<S: ServiceFixture>(ctx: &TestCtx, fx: &Provided<S>, every: Duration) -> ResourceMonitor {
    ResourceMonitor::builder(ctx).interval(every).counter(S::NAME, fx.counter.clone()).start()
}

/// The server never saw more than `max` of the test's connections (sampled),
/// nor did the pool report a larger size.
pub fn check_server_peak<S: ServiceFixture>(
    ctx: &TestCtx,
    name: &str,
    mon: &ResourceMonitor,
    pool: &Pool,
    max: usize,
) -> anyhow::Result<()> {
    let s = mon.connections(S::NAME);
    anyhow::ensure!(
        !s.is_empty(),
        "{name}: the monitor took no sample of the server-side connections ({:?})",
        mon.errors()
    );
    let peak = s.max() as u64;
    ctx.record(Metric::lower("server_connections_peak", peak as f64));
    anyhow::ensure!(
        peak <= max as u64,
        "{name}: the server saw {peak} of this test's connections at once (sampled {} times); max_size is {max}",
        s.len()
    );
    if let Some(size) = pool.status().and_then(|st| st.size) {
        anyhow::ensure!(size <= max, "{name}: the pool reports size {size}; max_size is {max}");
    }
    Ok(())
}

/// Waits until the pool reports nothing checked out and nobody waiting
/// (where it reports them): its queue has drained.
pub async fn wait_drained(name: &str, pool: &Pool, within: Duration) -> anyhow::Result<()> {
    let caps = pool.capabilities();
    if !caps.supports(Knob::StatusIdle) && !caps.supports(Knob::StatusWaiters) {
        return Ok(());
    }
    wait_until(&format!("{name}: the pool to report nothing in use and no waiters"), within, || async {
        let s = pool.status().unwrap_or_default();
        Ok(s.in_use().unwrap_or(0) == 0 && s.waiters.unwrap_or(0) == 0)
    })
    .await
    .with_context(|| format!("{name}: pool status {}", pool.status().unwrap_or_default()))
}

/// What this process's open fds point at (`socket:[123]`, paths), sorted;
/// TCP sockets are shown with their addresses and state from
/// `/proc/self/net/tcp{,6}`. For leak messages: diff two listings with
/// [`fds_added`].
pub fn fd_listing() -> Vec<String> {
    let tcp = tcp_sockets();
    let mut out: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .map(|l| {
                    let l = l.display().to_string();
                    let inode = l.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']'));
                    match inode.and_then(|i| tcp.get(i)) {
                        Some(t) => format!("{l} tcp {t}"),
                        None => l,
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Entries of `now` not in `before` (as multisets).
pub fn fds_added(before: &[String], now: &[String]) -> Vec<String> {
    let mut left: Vec<&String> = before.iter().collect();
    now.iter()
        .filter(|x| match left.iter().position(|b| b == x) {
            Some(i) => {
                left.swap_remove(i);
                false
            }
            None => true,
        })
        .cloned()
        .collect()
}

/// inode → "local -> remote (state)" for this process's network namespace.
fn tcp_sockets() -> std::collections::HashMap<String, String> {
    const STATES: [&str; 12] = [
        "?",
        "ESTABLISHED",
        "SYN_SENT",
        "SYN_RECV",
        "FIN_WAIT1",
        "FIN_WAIT2",
        "TIME_WAIT",
        "CLOSE",
        "CLOSE_WAIT",
        "LAST_ACK",
        "LISTEN",
        "CLOSING",
    ];
    let v4 = |hex: &str| -> String {
        let Some((ip, port)) = hex.split_once(':') else { return hex.to_string() };
        match (u32::from_str_radix(ip, 16), u16::from_str_radix(port, 16)) {
            (Ok(ip), Ok(port)) if ip_is_v4(hex) => format!("{}:{port}", std::net::Ipv4Addr::from(ip.swap_bytes())),
            _ => hex.to_string(),
        }
    };
    let mut m = std::collections::HashMap::new();
    for file in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 {
                let st = usize::from_str_radix(f[3], 16).ok().and_then(|s| STATES.get(s)).unwrap_or(&"?");
                m.insert(f[9].to_string(), format!("{} -> {} ({st})", v4(f[1]), v4(f[2])));
            }
        }
    }
    m
}

fn ip_is_v4(hex: &str) -> bool {
    hex.split_once(':').is_some_and(|(ip, _)| ip.len() == 8)
}

/// Polls `f` once right here, so it takes its place in the pool's queue
/// before the caller starts the next one (the arrival order is the order of
/// calls, with no sleep), then runs it as a task. `Err(output)` if it
/// finished on that first poll.
pub async fn start_queued<T: Send + 'static>(mut f: BoxFuture<'static, T>) -> Result<JoinHandle<T>, T> {
    match std::future::poll_fn(|cx| Poll::Ready(f.as_mut().poll(cx))).await {
        Poll::Ready(v) => Err(v),
        Poll::Pending => Ok(tokio::spawn(f)),
    }
}

/// One round of queued callers: every one of the pool's `max_size`
/// connections is held, `waiters` callers queue one after another (each in
/// the pool's queue before the next asks, see [`start_queued`]), then one
/// connection comes back and serves them all, one at a time. Returns the
/// order they were served in (arrival order is `0..waiters`).
pub async fn served_order(pool: &Pool, waiters: usize, round: usize) -> anyhow::Result<Vec<usize>> {
    let (name, max) = (pool.name().to_string(), pool.config().max_size);
    let mut held = Vec::with_capacity(max);
    for i in 0..max {
        let c = tokio::time::timeout(Duration::from_secs(10), pool.acquire())
            .await
            .with_context(|| format!("{name}: checkout {i} of {max} hung (round {round})"))?
            .with_context(|| format!("{name}: checkout {i} of {max} (round {round})"))?;
        held.push(c);
    }
    let order: Arc<parking_lot::Mutex<Vec<usize>>> = Arc::default();
    let mut tasks = Vec::with_capacity(waiters);
    for i in 0..waiters {
        let (pool, order) = (pool.clone(), order.clone());
        let f: BoxFuture<'static, Result<(), PoolError>> = Box::pin(async move {
            let c = pool.acquire().await?;
            order.lock().push(i);
            drop(c);
            Ok(())
        });
        match start_queued(f).await {
            Ok(h) => tasks.push(h),
            Err(r) => anyhow::bail!("{name}: caller {i} was served at once with all {max} connections held: {r:?}"),
        }
    }
    if pool.capabilities().supports(Knob::StatusWaiters) {
        wait_until(&format!("{name}: status to report {waiters} waiters"), Duration::from_secs(2), || async {
            Ok(pool.status().and_then(|s| s.waiters).unwrap_or(0) >= waiters)
        })
        .await?;
    }
    // One connection comes back: every caller is served through it, one at a time.
    held.pop();
    for (i, t) in tasks.into_iter().enumerate() {
        tokio::time::timeout(Duration::from_secs(15), t)
            .await
            .with_context(|| format!("{name}: caller {i} was never served (round {round}: {:?})", order.lock()))?
            .context("a caller panicked")?
            .with_context(|| format!("{name}: caller {i} failed (round {round})"))?;
    }
    drop(held);
    let o = order.lock().clone();
    anyhow::ensure!(o.len() == waiters, "{name}: {} of {waiters} callers served in round {round}", o.len());
    Ok(o)
}

/// The idle timeout, judged on the server: `n` connections (ids `before`,
/// as [`Op::WhoAmI`] answers) were released at `released`; the server's
/// count of the test's connections must drop below `n` (never before
/// `idle`), then to none, and a new connection must open on demand.
/// Records `idle_first_close_ms` and `idle_all_closed_ms`.
pub async fn check_idle_timeout(
    ctx: &TestCtx,
    pool: &Pool,
    counter: &Arc<dyn ConnectionCounter>,
    (n, idle): (usize, Duration),
    before: &std::collections::BTreeSet<i64>,
    released: std::time::Instant,
) -> anyhow::Result<()> {
    let name = pool.name().to_string();
    ctx.step(format!("waiting for idle connections to close (idle_timeout {idle:?})"));
    let limit = idle * 3 + Duration::from_secs(2);
    wait_until(&format!("{name}: the server-side count to drop below {n} (idle_timeout {idle:?})"), limit, || async {
        Ok(counter.count().await? < n as u64)
    })
    .await?;
    let first = released.elapsed();
    wait_until(&format!("{name}: every idle connection to close (idle_timeout {idle:?})"), limit, || async {
        Ok(counter.count().await? == 0)
    })
    .await?;
    let all = released.elapsed();
    ctx.record(Metric::lower("idle_first_close_ms", ms(first)));
    ctx.record(Metric::lower("idle_all_closed_ms", ms(all)));
    ctx.note(format!("idle_timeout {idle:?}: first closed after {first:?}, all after {all:?}"));
    anyhow::ensure!(
        first + Duration::from_millis(20) >= idle,
        "{name}: an idle connection was closed {first:?} after release, before the idle_timeout of {idle:?}"
    );
    if pool.capabilities().supports(Knob::StatusSize) {
        wait_until(&format!("{name}: status to report size 0"), Duration::from_secs(2), || async {
            Ok(pool.status().and_then(|s| s.size) == Some(0))
        })
        .await?;
    }
    ctx.step("a new connection on demand");
    let id = tokio::time::timeout(Duration::from_secs(10), pool.run(&Op::WhoAmI))
        .await
        .with_context(|| format!("{name}: an acquire after the idle connections closed hung"))?
        .with_context(|| format!("{name}: an acquire after the idle connections closed failed"))?
        .id()
        .context("who_am_i returned no id")?;
    anyhow::ensure!(!before.contains(&id), "{name}: connection {id} answered after every idle connection was closed");
    anyhow::ensure!(
        counter.count().await? >= 1,
        "{name}: a checkout worked but the server sees no connection of the test"
    );
    Ok(())
}
