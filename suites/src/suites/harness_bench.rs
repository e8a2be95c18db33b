//! Benchmarks of the harness itself (tags `benchmark`, `layer_1`; exclusive):
//! how many ops/s the load generator drives through a no-op target, how
//! closely open loop keeps its timetable, and that its latency is corrected
//! for coordinated omission; and `open_loop_redis` (`layer_3`, `redis`): open
//! loop against a real server, the fleet scenario of `--segment`. Numbers are recorded as metrics; only the
//! coordinated-omission check and accounting are hard assertions, plus
//! generous floors that catch a harness made 20x slower.

use std::time::Duration;

use anyhow::ensure;
use poolstress_harness::{
    load::{Limit, OpError, OpTimer, Pacing, Phase},
    metrics::{check_at_least, PhaseStats},
    tag, Direction, InstanceName, Metric, Registry, TestCtx,
};

const TAGS: &[&str] = &[tag::BENCHMARK, tag::LAYER_1];

/// The no-op target: a ready future, nothing else.
async fn noop(_t: OpTimer) -> Result<(), OpError> {
    Ok(())
}

#[derive(Clone, Copy)]
struct Workers(usize);

impl InstanceName for Workers {
    fn instance_name(&self) -> String {
        format!("{}_workers", self.0)
    }
}

#[derive(Clone, Copy)]
struct Rate(f64);

impl InstanceName for Rate {
    fn instance_name(&self) -> String {
        format!("{}k_per_s", self.0 / 1000.0)
    }
}

fn clean(s: &PhaseStats) -> anyhow::Result<()> {
    s.check_accounted(None)?;
    s.check_only(&[])?;
    ensure!(s.cancelled == 0 && s.missed == 0, "{}", s.summary());
    Ok(())
}

/// The reference for the no-op loop: `workers` bare tokio tasks that time
/// a ready future and record it in a histogram, nothing else (no
/// timetable, no accounting, no timeline). Returns ops/s.
async fn raw_loop(workers: usize, secs: Duration) -> f64 {
    let start = std::time::Instant::now();
    let until = start + secs;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..workers {
        set.spawn(async move {
            let mut h = hdrhistogram::Histogram::<u64>::new(3).expect("3 significant figures is valid");
            let mut n = 0u64;
            loop {
                let t = std::time::Instant::now();
                if t >= until {
                    break;
                }
                std::hint::black_box(async {}).await;
                h.saturating_record(t.elapsed().as_nanos() as u64);
                n += 1;
                if n.is_multiple_of(64) {
                    tokio::task::yield_now().await;
                }
            }
            n
        });
    }
    let mut total = 0;
    while let Some(n) = set.join_next().await {
        total += n.unwrap_or(0);
    }
    total as f64 / start.elapsed().as_secs_f64()
}

/// Closed loop over the no-op target: the harness's per-op cost, in pairs
/// interleaved with a bare tokio loop (the reference that cancels the
/// machine: the gated metric is their ratio, `noop.vs_raw_ratio`).
async fn noop_closed_loop(ctx: TestCtx, w: Workers) -> anyhow::Result<()> {
    let reps = ctx.profile().pick(5, 7);
    let secs = ctx.profile().pick(Duration::from_millis(500), Duration::from_secs(2));
    let (mut rates, mut raws, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let mut last = None;
    for i in 0..reps {
        ctx.step(format!("pair {}/{reps}: {} workers for {secs:?}, harness and bare loop", i + 1, w.0));
        // The op bound is far above what the duration allows: time decides.
        let phase = Phase::closed("noop", w.0, Limit::new(1_000_000_000, secs));
        let (s, raw) = if i % 2 == 0 {
            let s = phase.run(&ctx, noop).await?;
            (s, raw_loop(w.0, secs).await)
        } else {
            let raw = raw_loop(w.0, secs).await;
            (phase.run(&ctx, noop).await?, raw)
        };
        clean(&s)?;
        rates.push(s.throughput_ops_s);
        raws.push(raw);
        ratios.push(s.throughput_ops_s / raw.max(1.0));
        last = Some(s);
    }
    let m = Metric::from_samples("noop.ops_s", Direction::HigherIsBetter, rates);
    let raw = Metric::from_samples("noop.raw_ops_s", Direction::HigherIsBetter, raws);
    let ratio = Metric::gated("noop.vs_raw_ratio", Direction::HigherIsBetter, ratios);
    let ops_s = m.value;
    ctx.note(format!(
        "{} workers: {ops_s:.0} ops/s, a bare tokio loop {:.0} ops/s: {:.3}x (medians of {reps} interleaved pairs)",
        w.0, raw.value, ratio.value
    ));
    ctx.key_metric("noop.vs_raw_ratio");
    ctx.record(ratio);
    ctx.record(m);
    ctx.record(raw);
    ctx.record(Metric::lower("noop.ns_per_op", 1e9 / ops_s));
    let s = last.expect("reps >= 1");
    // The latency of a no-op is the harness's own overhead per op.
    ctx.record(Metric::lower("noop.overhead_p50_ns", s.latency.p50_ms * 1e6));
    ctx.record(Metric::lower("noop.overhead_p99_ns", s.latency.p99_ms * 1e6));
    check_at_least("no-op throughput", ops_s, 100_000.0, "ops/s", &format!("with {} workers", w.0))
}

/// Open loop over the no-op target: achieved rate vs the timetable, and how
/// late sends are, with both pacings.
async fn open_loop_rate(ctx: TestCtx, r: Rate) -> anyhow::Result<()> {
    let secs = ctx.profile().pick(Duration::from_secs(2), Duration::from_secs(5));
    for (pacing, name) in [(Pacing::Timer, "timer"), (Pacing::Spin, "spin")] {
        ctx.step(format!("{} ops/s for {secs:?}, {name} pacing", r.0));
        let s = Phase::open(format!("open_{name}"), r.0, secs).pacing(pacing).run(&ctx, noop).await?;
        clean(&s)?;
        let due = (r.0 * secs.as_secs_f64()).round() as u64;
        ensure!(s.started == due, "{} of {due} arrivals started ({})", s.started, s.summary());
        let off_pct = (s.throughput_ops_s - r.0) / r.0 * 100.0;
        let lag = s.send_lag.expect("open loop measures send lag");
        ctx.record(Metric::higher(format!("open.{name}.achieved_ops_s"), s.throughput_ops_s));
        ctx.record(Metric::lower(format!("open.{name}.rate_error_pct"), off_pct.abs()));
        ctx.record(Metric::lower(format!("open.{name}.send_lag_p50_ms"), lag.p50_ms));
        ctx.record(Metric::lower(format!("open.{name}.send_lag_p99_ms"), lag.p99_ms));
        ctx.record(Metric::lower(format!("open.{name}.send_lag_max_ms"), lag.max_ms));
        ctx.note(format!(
            "{name} pacing at {} ops/s: achieved {:.1} ops/s ({off_pct:+.3} %), send lag p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            r.0, s.throughput_ops_s, lag.p50_ms, lag.p99_ms, lag.max_ms
        ));
        // Generous; the ±1 % target is what the metric shows.
        s.check_rate(0.05)?;
    }
    Ok(())
}

/// A 200 ms stall of a no-op target at 10k ops/s: the latency measured from
/// the timetable shows it at p99.9; the latency from the actual send (what a
/// closed-loop tool reports) does not.
async fn coordinated_omission(ctx: TestCtx) -> anyhow::Result<()> {
    let secs = ctx.profile().pick(Duration::from_secs(2), Duration::from_secs(5));
    let rate = 10_000.0;
    let stall_at = (rate * secs.as_secs_f64() / 4.0) as u64;
    let stall = Duration::from_millis(200);
    let s = Phase::open("co", rate, secs)
        .in_flight(1)
        .run(&ctx, move |t: OpTimer| async move {
            if t.seq() == stall_at {
                tokio::time::sleep(stall).await;
            }
            Ok::<_, OpError>(())
        })
        .await?;
    clean(&s)?;
    let corrected = s.latency.p999_ms;
    let uncorrected = s.service.expect("open loop measures service time").p999_ms;
    ctx.record(Metric::lower("co.corrected_p999_ms", corrected));
    ctx.record(Metric::lower("co.uncorrected_p999_ms", uncorrected));
    ctx.record(Metric::lower("co.corrected_max_ms", s.latency.max_ms));
    ctx.note(format!(
        "200 ms stall at op {stall_at}: p99.9 corrected {corrected:.2} ms, uncorrected {uncorrected:.3} ms"
    ));
    ensure!(
        corrected >= 150.0,
        "coordinated omission: the corrected p99.9 is {corrected:.2} ms, it should show the 200 ms stall (>= 150 ms; n={})",
        s.ok
    );
    ensure!(
        uncorrected < 20.0,
        "the uncorrected p99.9 is {uncorrected:.2} ms; one stalled op in {} should not reach it (< 20 ms)",
        s.ok
    );
    Ok(())
}

/// Registers the harness benchmarks.
pub fn register(r: &mut Registry) {
    r.per_instance(
        "harness_bench::noop_closed_loop",
        TAGS,
        vec![Workers(1), Workers(8), Workers(64)],
        noop_closed_loop,
    );
    r.per_instance(
        "harness_bench::open_loop_rate",
        TAGS,
        vec![Rate(1_000.0), Rate(10_000.0), Rate(50_000.0)],
        open_loop_rate,
    );
    r.test("harness_bench::coordinated_omission", TAGS, coordinated_omission);
    #[cfg(feature = "redis")]
    r.test("harness_bench::open_loop_redis", &[tag::BENCHMARK, tag::LAYER_3, tag::REDIS], open_loop_redis);
}

/// Open loop against a real Redis server: PINGs at 3000/s on one
/// multiplexed connection (no pool), 3 s (nightly 10 s). The fleet
/// scenario: on `--segment i/n` each process sends its share of the rate
/// and `--merge` gives the fleet's achieved rate and exact percentiles
/// (docs/scale.md). Hard: every arrival accounted for, no error, none missed.
/// Recorded: `load.*` (achieved rate, latency from each slot, send lag).
#[cfg(feature = "redis")]
async fn open_loop_redis(ctx: TestCtx) -> anyhow::Result<()> {
    use poolstress_harness::ErrorClass;
    let rate = 3_000.0;
    let secs = ctx.profile().pick(Duration::from_secs(3), Duration::from_secs(10));
    ctx.step("getting the redis server");
    let server = poolstress_fixtures::service::redis().await?;
    let db = server.test_db(&ctx).await?;
    let conn = db.connect().await?;
    let mut warm = conn.clone();
    redis::cmd("PING").query_async::<String>(&mut warm).await?;
    let phase = Phase::open("load", rate, secs).in_flight(256);
    let due = phase.limit().max_ops;
    let s = phase
        .run(&ctx, move |_t: OpTimer| {
            let mut c = conn.clone();
            async move {
                redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .map(|_| ())
                    .map_err(|e| OpError::new(ErrorClass::Other, e.to_string()))
            }
        })
        .await?;
    s.record_into(&ctx, "load");
    ctx.note(s.summary());
    s.check_accounted(Some(due))?;
    clean(&s)?;
    // Generous: a harness that cannot send a tenth of a modest rate is broken.
    let share = s.target_rate_ops_s.unwrap_or(rate);
    check_at_least("achieved rate", s.throughput_ops_s, share / 10.0, "ops/s", &format!("(target {share:.0} ops/s)"))?;
    Ok(())
}
