//! The resource monitor: samples this process's RSS, open fds and threads
//! (from `/proc/self`) and the server-side connection counts of the test
//! (through [`ConnectionCounter`]s the fixtures provide) in the background,
//! until it is stopped or dropped.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use serde::Serialize;
use tokio::task::JoinHandle;

use super::series::{Point, Series, Unit};
use crate::{class::ConnectionCounter, metric::Metric, TestCtx};

/// This process's resources at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ProcessSnapshot {
    /// Resident set size.
    pub rss_bytes: u64,
    /// Open file descriptors.
    pub fds: u64,
    /// OS threads.
    pub threads: u64,
}

/// Reads `/proc/self/status` (VmRSS, Threads) and counts `/proc/self/fd`
/// (not counting the descriptor the listing itself uses, nor the runner's
/// lock files, which other test threads open and close). Linux only.
pub fn process_snapshot() -> std::io::Result<ProcessSnapshot> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let field = |name: &str| -> Option<u64> {
        status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.split_whitespace().next()?.parse().ok())
    };
    let missing = |what: &str| std::io::Error::other(format!("/proc/self/status has no {what} line"));
    let rss_kb = field("VmRSS:").ok_or_else(|| missing("VmRSS"))?;
    let threads = field("Threads:").ok_or_else(|| missing("Threads"))?;
    // By file name: the fd's link is the canonical path, temp_dir() may not be.
    let runner = crate::lock::lock_files().map(|p| p.file_name().map(|n| n.to_owned()));
    let listed = std::fs::read_dir("/proc/self/fd")?
        .filter(|e| {
            let link = e.as_ref().ok().and_then(|e| std::fs::read_link(e.path()).ok());
            !link.is_some_and(|l| l.file_name().is_some_and(|n| runner.iter().any(|r| r.as_deref() == Some(n))))
        })
        .count() as u64;
    Ok(ProcessSnapshot { rss_bytes: rss_kb * 1024, fds: listed.saturating_sub(1), threads })
}

/// One sample of the monitor.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResourceSample {
    /// When, ms since the test started.
    pub at_ms: f64,
    /// This process (`None` if `/proc` could not be read).
    pub process: Option<ProcessSnapshot>,
    /// Server-side connections per counter name; a counter that failed or
    /// timed out is missing from this sample.
    pub connections: BTreeMap<String, u64>,
}

struct State {
    samples: Vec<ResourceSample>,
    interval: Duration,
    max_samples: usize,
    errors: u64,
    last_error: Option<String>,
}

struct Shared {
    started: Instant,
    counters: Vec<(String, Arc<dyn ConnectionCounter>)>,
    state: Mutex<State>,
}

impl Shared {
    async fn sample(&self) -> ResourceSample {
        let at_ms = self.started.elapsed().as_secs_f64() * 1e3;
        let process = match process_snapshot() {
            Ok(p) => Some(p),
            Err(e) => {
                self.error(format!("reading /proc/self: {e}"));
                None
            }
        };
        let timeout = self.state.lock().interval.clamp(Duration::from_millis(500), Duration::from_secs(5));
        let mut connections = BTreeMap::new();
        for (name, c) in &self.counters {
            match tokio::time::timeout(timeout, c.count()).await {
                Ok(Ok(n)) => {
                    connections.insert(name.clone(), n);
                }
                Ok(Err(e)) => self.error(format!("counting connections of {name}: {e:#}")),
                Err(_) => self.error(format!("counting connections of {name}: no answer within {timeout:?}")),
            }
        }
        let s = ResourceSample { at_ms, process, connections };
        let mut st = self.state.lock();
        st.samples.push(s.clone());
        if st.samples.len() >= st.max_samples {
            // Bounded memory on long soaks: halve the resolution.
            let mut i = 0;
            st.samples.retain(|_| {
                i += 1;
                i % 2 == 1
            });
            st.interval *= 2;
        }
        s
    }

    fn error(&self, msg: String) {
        let mut st = self.state.lock();
        st.errors += 1;
        st.last_error = Some(msg);
    }
}

/// Configures a [`ResourceMonitor`].
pub struct MonitorBuilder {
    started: Instant,
    interval: Duration,
    max_samples: usize,
    counters: Vec<(String, Arc<dyn ConnectionCounter>)>,
}

impl MonitorBuilder {
    /// Time between samples; default 500 ms, clamped to 10 ms ..= 60 s.
    pub fn interval(mut self, d: Duration) -> Self {
        self.interval = d.clamp(Duration::from_millis(10), Duration::from_secs(60));
        self
    }

    /// Samples kept before the monitor halves its resolution (drops every
    /// other sample and doubles the interval); default 10 000, at least 16.
    pub fn max_samples(mut self, n: usize) -> Self {
        self.max_samples = n.max(16);
        self
    }

    /// Also samples a server-side connection count under `name`
    /// (`postgres`, `redis`): series `connections.<name>`.
    pub fn counter(mut self, name: impl Into<String>, counter: Arc<dyn ConnectionCounter>) -> Self {
        self.counters.push((name.into(), counter));
        self
    }

    /// Starts sampling on the current tokio runtime (the first sample is
    /// taken at once). Stops when the monitor is stopped or dropped.
    pub fn start(self) -> ResourceMonitor {
        let shared = Arc::new(Shared {
            started: self.started,
            counters: self.counters,
            state: Mutex::new(State {
                samples: Vec::new(),
                interval: self.interval,
                max_samples: self.max_samples,
                errors: 0,
                last_error: None,
            }),
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            let mut next = tokio::time::Instant::now();
            loop {
                s.sample().await;
                next += s.state.lock().interval;
                let now = tokio::time::Instant::now();
                if next < now {
                    next = now; // a slow counter: do not try to catch up
                }
                tokio::time::sleep_until(next).await;
            }
        });
        ResourceMonitor { shared, task }
    }
}

/// Background sampler of process and server-side resources; see the module
/// docs. Dropping it stops the sampling.
///
/// ```no_run
/// # async fn f(ctx: poolstress_harness::TestCtx) -> anyhow::Result<()> {
/// use poolstress_harness::metrics::ResourceMonitor;
/// let mon = ResourceMonitor::builder(&ctx).interval(std::time::Duration::from_millis(200)).start();
/// // ... warm-up phase, soak phases ...
/// mon.fds().plateau(std::time::Duration::from_secs(5)).check_drift_at_most(2.0)?;
/// # Ok(()) }
/// ```
pub struct ResourceMonitor {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl ResourceMonitor {
    /// A builder; sample times are relative to `ctx`'s start (the clock of
    /// its events and phases).
    pub fn builder(ctx: &TestCtx) -> MonitorBuilder {
        MonitorBuilder {
            started: ctx.started(),
            interval: Duration::from_millis(500),
            max_samples: 10_000,
            counters: Vec::new(),
        }
    }

    /// Takes a sample now (in addition to the periodic ones), e.g. at a
    /// phase boundary, and returns it.
    pub async fn sample_now(&self) -> ResourceSample {
        self.shared.sample().await
    }

    /// Every sample so far.
    pub fn samples(&self) -> Vec<ResourceSample> {
        self.shared.state.lock().samples.clone()
    }

    /// How many samples failed (a counter erred or timed out, `/proc`
    /// unreadable), and the last such error.
    pub fn errors(&self) -> (u64, Option<String>) {
        let st = self.shared.state.lock();
        (st.errors, st.last_error.clone())
    }

    fn process_series(&self, name: &str, unit: Unit, f: impl Fn(&ProcessSnapshot) -> u64) -> Series {
        let st = self.shared.state.lock();
        let points = st
            .samples
            .iter()
            .filter_map(|s| s.process.as_ref().map(|p| Point { at_ms: s.at_ms, value: f(p) as f64 }))
            .collect();
        Series::new(name, unit, points)
    }

    /// Resident set size, bytes: series `rss`.
    pub fn rss(&self) -> Series {
        self.process_series("rss", Unit::Bytes, |p| p.rss_bytes)
    }

    /// Open fds: series `fds`.
    pub fn fds(&self) -> Series {
        self.process_series("fds", Unit::Count, |p| p.fds)
    }

    /// OS threads: series `threads`.
    pub fn threads(&self) -> Series {
        self.process_series("threads", Unit::Count, |p| p.threads)
    }

    /// Server-side connections counted by the counter `name`: series
    /// `connections.<name>` (empty if there is no such counter).
    pub fn connections(&self, name: &str) -> Series {
        let st = self.shared.state.lock();
        let points = st
            .samples
            .iter()
            .filter_map(|s| s.connections.get(name).map(|n| Point { at_ms: s.at_ms, value: *n as f64 }))
            .collect();
        Series::new(format!("connections.{name}"), Unit::Count, points)
    }

    /// Records `<prefix>.rss_max_mib`, `<prefix>.fds_max`, `<prefix>.threads_max`
    /// and `<prefix>.connections.<name>_max` (lower is better), and attaches
    /// the samples as a timeline under `<prefix>.timeline`
    /// (`t_s`, `rss_mib`, `fds`, `threads`, `conn_<name>`).
    pub fn record_into(&self, ctx: &TestCtx, prefix: &str) {
        let max0 = |s: Series| if s.is_empty() { 0.0 } else { s.max() };
        ctx.record(Metric::lower(format!("{prefix}.rss_max_mib"), max0(self.rss()) / 1048576.0));
        ctx.record(Metric::lower(format!("{prefix}.fds_max"), max0(self.fds())));
        ctx.record(Metric::lower(format!("{prefix}.threads_max"), max0(self.threads())));
        for (name, _) in &self.shared.counters {
            ctx.record(Metric::lower(format!("{prefix}.connections.{name}_max"), max0(self.connections(name))));
        }
        let points: Vec<serde_json::Value> = self
            .samples()
            .iter()
            .filter_map(|s| {
                let p = s.process?;
                let mut o = serde_json::json!({
                    "t_s": s.at_ms / 1e3,
                    "rss_mib": p.rss_bytes as f64 / 1048576.0,
                    "fds": p.fds,
                    "threads": p.threads,
                });
                for (name, _) in &self.shared.counters {
                    // Keep every row's keys alike so plots keep the series.
                    o[format!("conn_{name}")] = serde_json::json!(s.connections.get(name).copied().unwrap_or(0));
                }
                Some(o)
            })
            .collect();
        ctx.attach(format!("{prefix}.timeline"), serde_json::json!({ "points": points }));
    }

    /// Stops sampling and returns every sample.
    pub fn stop(self) -> Vec<ResourceSample> {
        self.task.abort();
        self.samples()
    }
}

impl Drop for ResourceMonitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use futures::future::BoxFuture;

    use super::*;

    #[test]
    fn snapshot_sees_a_new_fd_and_thread() {
        let before = process_snapshot().unwrap();
        assert!(before.rss_bytes > 0 && before.threads >= 1 && before.fds >= 3, "{before:?}");
        let f = std::fs::File::open("/proc/self/status").unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || rx.recv());
        let during = process_snapshot().unwrap();
        drop(tx);
        t.join().unwrap().ok();
        drop(f);
        // Other tests run in parallel threads, so only a lower bound holds.
        assert!(during.fds >= 1 && during.threads >= 2, "{before:?} {during:?}");
    }

    struct Fake(AtomicU64);
    impl ConnectionCounter for Fake {
        fn count(&self) -> BoxFuture<'_, anyhow::Result<u64>> {
            Box::pin(async move {
                let n = self.0.fetch_add(1, Ordering::SeqCst);
                if n == 2 {
                    anyhow::bail!("server gone")
                }
                Ok(n)
            })
        }
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn samples_counters_on_interval_and_stops_on_drop() {
        let ctx = TestCtx::detached("monitor");
        let mon = ResourceMonitor::builder(&ctx)
            .interval(Duration::from_millis(100))
            .counter("fake", Arc::new(Fake(AtomicU64::new(0))))
            .start();
        // Paused clock: sleeping lets exactly the due samples happen.
        tokio::time::sleep(Duration::from_millis(450)).await;
        let n = mon.samples().len();
        assert_eq!(n, 5, "samples at 0, 100, 200, 300, 400 ms");
        let conn = mon.connections("fake");
        assert_eq!(conn.values(), vec![0.0, 1.0, 3.0, 4.0], "the failed count (2) is missing");
        assert_eq!(conn.name, "connections.fake");
        let (errors, last) = mon.errors();
        assert_eq!((errors, last.as_deref()), (1, Some("counting connections of fake: server gone")));
        assert_eq!(mon.fds().len(), 5);
        let weak = Arc::downgrade(&mon.shared);
        drop(mon);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(weak.upgrade().is_none(), "the sampling task ended with the monitor");
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn halves_resolution_when_full() {
        let ctx = TestCtx::detached("monitor");
        let mon = ResourceMonitor::builder(&ctx).interval(Duration::from_millis(10)).max_samples(16).start();
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let n = mon.samples().len();
        assert!(n < 16, "{n}");
        assert!(mon.shared.state.lock().interval > Duration::from_millis(10));
        let all = mon.stop();
        assert!(all.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
    }
}
