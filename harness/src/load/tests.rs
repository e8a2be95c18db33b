//! Accounting tests with exact expected values. Time is paused where the
//! ops only wait, so every latency is an exact number of milliseconds.

use std::time::Duration;

use super::*;
use crate::{
    class::ErrorClass,
    metrics::{BudgetExceeded, Quantile},
    TestCtx,
};

const MS: Duration = Duration::from_millis(1);
const HOUR: Duration = Duration::from_secs(3600);

/// HDR percentiles are the highest value equivalent to the true one (3
/// significant figures): equal within 0.1 %.
fn near(actual_ms: f64, expected_ms: f64) -> bool {
    (actual_ms - expected_ms).abs() <= expected_ms * 0.001 + 1e-9
}

macro_rules! assert_near {
    ($a:expr, $e:expr) => {
        assert!(near($a, $e), "{} = {} ms, expected {} ms", stringify!($a), $a, $e)
    };
}

fn ctx() -> TestCtx {
    TestCtx::detached("load::tests")
}

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

#[tokio::test(start_paused = true)]
async fn closed_loop_counts_every_class_and_splits_ops_over_workers() {
    let stats = Phase::closed("classes", 3, Limit::new(10, HOUR))
        .run(&ctx(), |t: OpTimer| async move {
            match t.seq() {
                1 | 2 => Err(OpError::new(ErrorClass::AcquireTimeout, "pool exhausted")),
                5 => Err(OpError::bare(ErrorClass::ConnectionBroken)),
                _ => Ok(()),
            }
        })
        .await
        .unwrap();
    assert_eq!((stats.started, stats.ok, stats.cancelled, stats.missed), (10, 7, 0, 0));
    assert_eq!(stats.errors.get(ErrorClass::AcquireTimeout), 2);
    assert_eq!(stats.errors.get(ErrorClass::ConnectionBroken), 1);
    assert_eq!(stats.errors.total(), 3);
    assert_eq!(stats.errors.to_string(), "acquire_timeout 2, connection_broken 1");
    assert_eq!(stats.error_samples.len(), 3, "messages of the first errors per class are kept");
    assert!(stats.error_samples.iter().any(|s| s.message == "acquire_timeout: pool exhausted"));
    stats.check_accounted(Some(10)).unwrap();
    stats.check_only(&[ErrorClass::AcquireTimeout, ErrorClass::ConnectionBroken]).unwrap();
    let e = stats.check_only(&[ErrorClass::AcquireTimeout]).unwrap_err().to_string();
    assert!(
        e.starts_with("unexpected errors in phase classes (n=10): connection_broken 1 (allowed: acquire_timeout)"),
        "{e}"
    );
    let e = stats.check_errors(ErrorClass::AcquireTimeout, 1).unwrap_err().to_string();
    assert!(
        e.starts_with("acquire_timeout errors 2 > budget 1 in phase classes (n=10); first: acquire_timeout:"),
        "{e}"
    );
    let e = stats.check_error_rate(0.1).unwrap_err();
    assert!(
        e.to_string().starts_with(
            "error rate 30% > budget 10% in phase classes (n=10) (3 failed: acquire_timeout 2, connection_broken 1)"
        ),
        "{e}"
    );
    assert!(e.downcast_ref::<BudgetExceeded>().is_some());
}

#[tokio::test(start_paused = true)]
async fn percentiles_mean_max_and_timeline_of_known_latencies() {
    // One worker; op n sleeps n+1 ms: latencies are exactly 1..=100 ms.
    let stats = Phase::closed("known", 1, Limit::new(100, HOUR))
        .run(&ctx(), |t: OpTimer| async move {
            sleep_ms(t.seq() + 1).await;
            Ok::<_, OpError>(())
        })
        .await
        .unwrap();
    let l = stats.latency;
    assert_eq!(l.count, 100);
    assert_near!(l.p50_ms, 50.0);
    assert_near!(l.p90_ms, 90.0);
    assert_near!(l.p95_ms, 95.0);
    assert_near!(l.p99_ms, 99.0);
    assert_near!(l.p999_ms, 100.0);
    assert_eq!(l.max_ms, 100.0, "max is exact");
    assert_eq!(l.mean_ms, 50.5, "mean is exact");
    assert_eq!(stats.elapsed_ms, 5050.0);
    assert_eq!(stats.throughput_ops_s, 100.0 / 5.05);
    assert!(near(stats.quantile(0.5).as_secs_f64() * 1e3, 50.0));
    // Op n ends at (n+1)(n+2)/2 ms: 44 end in [0, 1 s), 18 in [1 s, 2 s), ...
    let ops: Vec<u64> = stats.timeline.iter().map(|r| r.ops).collect();
    assert_eq!(ops, vec![44, 18, 14, 12, 11, 1]);
    assert_eq!(ops.iter().sum::<u64>(), 100);
    assert!(stats.timeline.windows(2).all(|w| (w[1].t_s - w[0].t_s - 1.0).abs() < 1e-9));
    // Timeline percentiles have 1 % resolution.
    assert!((stats.timeline[0].p99_ms - 44.0).abs() <= 0.44, "{}", stats.timeline[0].p99_ms);
    assert_eq!(stats.check_latency(Quantile::P95, 100 * MS).ok(), Some(()));
    let e = stats.check_latency(Quantile::P95, 10 * MS).unwrap_err();
    assert_eq!(e.to_string(), "p95 95 ms > budget 10 ms in phase known (n=100)");
    let e = stats.check_throughput(50.0).unwrap_err();
    assert_eq!(e.to_string(), "throughput 19.8 ops/s < floor 50 ops/s in phase known (n=100 over 5.05 s)");
}

#[tokio::test(start_paused = true)]
async fn open_loop_measures_from_the_timetable_so_a_stall_shows() {
    // 1000/s for 1 s, one op in flight; op 100 stalls for 100 ms. Ops 101..199
    // were due during the stall and start at 200 ms: their latency from the
    // timetable is 99..1 ms. From the actual start (the closed-loop view) only
    // the stalled op is slow.
    let stats = Phase::open("co", 1000.0, Duration::from_secs(1))
        .in_flight(1)
        .run(&ctx(), |t: OpTimer| async move {
            if t.seq() == 100 {
                sleep_ms(100).await;
            }
            Ok::<_, OpError>(())
        })
        .await
        .unwrap();
    assert_eq!((stats.started, stats.ok, stats.missed, stats.cancelled), (1000, 1000, 0, 0));
    let l = stats.latency;
    assert_eq!((l.p50_ms, l.p90_ms), (0.0, 0.0), "900 ops on time");
    assert_near!(l.p95_ms, 50.0);
    assert_near!(l.p99_ms, 90.0);
    assert_near!(l.p999_ms, 99.0);
    assert_eq!(l.max_ms, 100.0);
    assert_eq!(l.mean_ms, 5.05, "(1 + .. + 100) ms / 1000");
    let s = stats.service.unwrap();
    assert_eq!((s.p99_ms, s.p999_ms), (0.0, 0.0), "uncorrected: the stall is 1 op in 1000");
    assert_near!(s.max_ms, 100.0);
    let lag = stats.send_lag.unwrap();
    assert_near!(lag.p99_ms, 89.0);
    assert_near!(lag.max_ms, 99.0);
    assert_eq!(stats.target_rate_ops_s, Some(1000.0));
    assert_near!(stats.send_rate_ops_s.unwrap(), 1000.0);
    assert_eq!(stats.elapsed_ms, 999.0);
    stats.check_rate(0.01).unwrap();
}

#[tokio::test(start_paused = true)]
async fn hard_stop_cancels_in_flight_ops_and_counts_missed_arrivals() {
    // 1000/s for 100 ms (100 due) but two in flight at 10 ms each: the
    // backlog is served until the hard stop at 100 + 45 ms. Worker 0 starts
    // at 0, 10, .., 140 ms, worker 1 at 1, 11, .., 141 ms: 30 started, the
    // last two are still running at 145 ms and are dropped.
    let stats = Phase::open("overload", 1000.0, 100 * MS)
        .in_flight(2)
        .grace(45 * MS)
        .run(&ctx(), |_t: OpTimer| async move {
            sleep_ms(10).await;
            Ok::<_, OpError>(())
        })
        .await
        .unwrap();
    assert_eq!((stats.started, stats.ok, stats.cancelled, stats.missed), (30, 28, 2, 70));
    assert_eq!(stats.elapsed_ms, 145.0);
    stats.check_accounted(None).unwrap();
    let e = stats.check_accounted(Some(100)).unwrap_err().to_string();
    assert_eq!(e, "completed 28 of 100 ops in phase overload (ok 28, errors none, cancelled 2, missed 70)");
    // Queueing shows: the last op served was due at 27 ms and ended at 141 ms.
    assert_eq!(stats.latency.max_ms, 114.0);
}

#[tokio::test(start_paused = true)]
async fn closed_loop_stops_at_its_duration() {
    let stats = Phase::closed("timed", 2, Limit::new(1_000_000, 100 * MS))
        .run(&ctx(), |_t: OpTimer| async move {
            sleep_ms(10).await;
            Ok::<_, OpError>(())
        })
        .await
        .unwrap();
    assert_eq!((stats.started, stats.ok), (20, 20), "2 workers x 10 ops of 10 ms in 100 ms");
    assert_eq!(stats.elapsed_ms, 100.0);
    assert_near!(stats.throughput_ops_s, 200.0);
}

#[tokio::test(start_paused = true)]
async fn burst_releases_all_at_once_and_drops_what_hangs() {
    // 51 tasks: 0..=4 fail after 1 ms, 5..=49 sleep (n % 5 + 1) ms (9 each of
    // 1..=5 ms), 50 never ends and is dropped at the hard stop (10 + 10 ms).
    let stats = Phase::burst("burst", 51, 10 * MS)
        .grace(10 * MS)
        .run(&ctx(), |t: OpTimer| async move {
            match t.seq() {
                0..=4 => {
                    sleep_ms(1).await;
                    Err(OpError::new(ErrorClass::OpTimeout, "too slow"))
                }
                50 => {
                    sleep_ms(3_600_000).await;
                    Ok(())
                }
                n => {
                    sleep_ms(n % 5 + 1).await;
                    Ok(())
                }
            }
        })
        .await
        .unwrap();
    assert_eq!((stats.started, stats.ok, stats.cancelled), (51, 45, 1));
    assert_eq!(stats.errors.get(ErrorClass::OpTimeout), 5);
    assert_near!(stats.latency.p50_ms, 3.0);
    assert_eq!(stats.latency.mean_ms, 3.0);
    assert_eq!(stats.latency.max_ms, 5.0);
    assert_near!(stats.error_latency.unwrap().max_ms, 1.0);
    assert_eq!(stats.elapsed_ms, 20.0);
    stats.check_accounted(None).unwrap();
}

#[tokio::test(start_paused = true)]
async fn acquire_and_operation_time_are_split_when_the_op_reports_it() {
    let stats = Phase::closed("split", 1, Limit::new(10, HOUR))
        .run(&ctx(), |mut t: OpTimer| async move {
            sleep_ms(2).await;
            t.acquired();
            sleep_ms(3).await;
            Ok::<_, OpError>(t)
        })
        .await
        .unwrap();
    assert_eq!(stats.latency.mean_ms, 5.0);
    let (a, o) = (stats.acquire.unwrap(), stats.op_time.unwrap());
    assert_eq!((a.count, o.count), (10, 10));
    assert_near!(a.p99_ms, 2.0);
    assert_near!(o.p99_ms, 3.0);
    // HDR reports the highest value equivalent to 2 ms (within 0.1 %).
    stats.check_acquire(Quantile::P99, Duration::from_micros(2002)).unwrap();
    let e = stats.check_acquire(Quantile::P99, MS).unwrap_err().to_string();
    assert_eq!(e, "acquire p99 2 ms > budget 1 ms in phase split (n=10)");
}

#[tokio::test(start_paused = true)]
async fn spike_plan_has_stats_per_phase_and_phase_events() {
    let ctx = ctx();
    let report = Plan::spike(Spike {
        base_per_s: 100.0,
        spike_per_s: 1000.0,
        baseline: Duration::from_secs(1),
        spike: 500 * MS,
        recovery: Duration::from_secs(1),
    })
    .run(&ctx, |_t: OpTimer| async { Ok::<_, OpError>(()) })
    .await
    .unwrap();
    let names: Vec<&str> = report.phases.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["baseline", "spike", "recovery"]);
    let ok: Vec<u64> = report.phases.iter().map(|p| p.ok).collect();
    assert_eq!(ok, [100, 500, 100]);
    assert_eq!(report.phase("spike").unwrap().target_rate_ops_s, Some(1000.0));
    assert_eq!(report.phase("spike").unwrap().elapsed_ms, 499.0);
    for p in &report.phases {
        assert!(p.events.iter().any(|e| e.label == format!("phase {} start", p.name)), "{:?}", p.events);
    }
    let e = report.phase("nope").unwrap_err().to_string();
    assert_eq!(e, "no phase \"nope\" in this load report (phases: baseline, spike, recovery)");
    report.record_into(&ctx, "spiky");
    let names: Vec<String> = ctx.metrics().into_iter().map(|m| m.name).collect();
    for n in [
        "spiky.spike.p95_ms",
        "spiky.spike.throughput_ops_s",
        "spiky.baseline.errors.acquire_timeout",
        "spiky.recovery.send_lag.p99_ms",
    ] {
        assert!(names.iter().any(|x| x == n), "{n} not in {names:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn ramp_step_and_soak_shapes() {
    let ramp = Phase::ramp("ramp", 0.0, 2000.0, Duration::from_secs(1));
    assert_eq!(ramp.limit(), Limit::new(1000, Duration::from_secs(1)));
    let stats = ramp.run(&ctx(), |_t: OpTimer| async { Ok::<_, OpError>(()) }).await.unwrap();
    assert_eq!((stats.ok, stats.target_rate_ops_s), (1000, Some(1000.0)));
    let steps = Plan::step_rate(&[100.0, 200.0], Duration::from_secs(1));
    let limits: Vec<u64> = steps.phases().iter().map(|p| p.limit().max_ops).collect();
    assert_eq!(limits, [100, 200]);
    let soak = Plan::soak(Phase::closed("soak", 4, Limit::new(100, HOUR)), 3);
    let names: Vec<&str> = soak.phases().iter().map(|p| p.name()).collect();
    assert_eq!(names, ["soak_1", "soak_2", "soak_3"]);
    let report = soak.run(&ctx(), |_t: OpTimer| async { Ok::<_, OpError>(()) }).await.unwrap();
    assert!(report.phases.iter().all(|p| p.ok == 100));
    let w = Plan::step_workers(&[1, 8], Limit::new(10, HOUR));
    assert_eq!(w.phases()[1].shape(), &Shape::Closed { workers: 8 });
}

#[tokio::test(start_paused = true)]
async fn record_into_names_metrics_and_attaches_the_timeline() {
    let ctx = ctx();
    let stats = Phase::closed("rec", 2, Limit::new(20, HOUR))
        .run(&ctx, |t: OpTimer| async move {
            sleep_ms(1).await;
            if t.seq() == 0 {
                Err(OpError::bare(ErrorClass::AcquireTimeout))
            } else {
                Ok(())
            }
        })
        .await
        .unwrap();
    stats.record_into(&ctx, "x");
    let get = |n: &str| ctx.metrics().into_iter().find(|m| m.name == n).map(|m| m.value);
    assert_eq!(get("x.errors.acquire_timeout"), Some(1.0));
    assert_eq!(get("x.errors.server_error"), Some(0.0));
    assert_eq!(get("x.ok"), Some(19.0));
    assert_eq!(get("x.p95_ms"), Some(stats.latency.p95_ms));
    assert_eq!(get("x.error_rate_pct"), Some(5.0));
    assert_eq!(get("x.acquire.p99_ms"), None, "not reported by the op");
    let json = serde_json::to_value(&stats).unwrap();
    assert_eq!(json["errors"]["acquire_timeout"], 1);
    let tl = ctx.inner.attachments.lock().get("x.timeline").cloned().unwrap();
    let points = tl["points"].as_array().unwrap();
    assert_eq!(points.len(), 1);
    assert_eq!(points[0]["ops"], 20);
    assert_eq!(points[0]["errors"], 1);
    assert_eq!(points[0]["error_classes"]["acquire_timeout"], 1);
}

#[tokio::test(start_paused = true)]
async fn panics_and_invalid_phases_are_errors() {
    let e = Phase::closed("boom", 2, Limit::new(10, HOUR))
        .run(&ctx(), |t: OpTimer| async move {
            if t.seq() == 3 {
                panic!("op 3 exploded");
            }
            Ok::<_, OpError>(())
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&e, LoadError::OpPanicked { phase, message } if phase == "boom" && message == "op 3 exploded"),
        "{e}"
    );
    let e = Phase::closed("none", 0, Limit::new(10, HOUR))
        .run(&ctx(), |_t: OpTimer| async { Ok::<_, OpError>(()) })
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "load phase \"none\" is invalid: closed loop needs at least 1 worker");
    let e = Phase::open("zero", 0.0, HOUR).run(&ctx(), |_t: OpTimer| async { Ok::<_, OpError>(()) }).await.unwrap_err();
    assert_eq!(e.to_string(), "load phase \"zero\" is invalid: rate 0/s must be a finite number > 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_clock_open_loop_keeps_its_rate() {
    let stats =
        Phase::open("real", 2000.0, 500 * MS).run(&ctx(), |_t: OpTimer| async { Ok::<_, OpError>(()) }).await.unwrap();
    assert_eq!((stats.started, stats.ok, stats.missed), (1000, 1000, 0));
    // Generous: a loaded CI machine may add a few ms at the end.
    stats.check_rate(0.05).unwrap();
}

#[tokio::test(start_paused = true)]
async fn segments_of_an_open_loop_split_its_timetable_exactly() {
    use std::sync::{Arc, Mutex};
    // 1000/s for 1 s, and the same with a fleet-wide op bound of 10.
    for (bound, shares) in [(None, [334u64, 333, 333]), (Some(10), [4, 3, 3])] {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut target = 0.0;
        for i in 1..=3u32 {
            let seg = Segment::new(i, 3).unwrap();
            let mut phase = Phase::open("fleet", 1_000.0, Duration::from_secs(1)).segment(seg);
            if let Some(n) = bound {
                phase = phase.max_ops(n);
            }
            assert_eq!(phase.limit().max_ops, shares[i as usize - 1], "segment {seg}, bound {bound:?}");
            let s = seen.clone();
            let stats = phase
                .run(&ctx(), move |t: OpTimer| {
                    s.lock().unwrap().push(t.seq());
                    async { Ok::<_, OpError>(()) }
                })
                .await
                .unwrap();
            assert_eq!(stats.started + stats.missed, phase.limit().max_ops);
            assert_eq!((stats.ok, stats.missed), (shares[i as usize - 1], 0));
            assert_eq!(stats.segment.as_deref(), Some(seg.to_string().as_str()));
            assert!(stats.histograms.get("latency").is_some_and(|h| h.len() == stats.ok));
            target += stats.target_rate_ops_s.unwrap();
        }
        let mut all = seen.lock().unwrap().clone();
        all.sort_unstable();
        let whole = bound.unwrap_or(1000);
        assert_eq!(all, (0..whole).collect::<Vec<_>>(), "every arrival of the whole timetable, once");
        assert!((target - 1000.0).abs() < 1e-9, "the segments' targets add up to the rate: {target}");
    }
    // Closed loops are not split.
    let p = Phase::closed("c", 2, Limit::new(10, HOUR)).segment(Segment::new(2, 3).unwrap());
    assert_eq!((p.limit().max_ops, p.segment_of()), (10, Segment::WHOLE));
}

#[tokio::test]
async fn a_shared_start_time_anchors_the_timetable_and_a_missed_one_fails() {
    use std::time::{SystemTime, UNIX_EPOCH};
    let at = SystemTime::now() + Duration::from_millis(300);
    let at_ms = at.duration_since(UNIX_EPOCH).unwrap().as_secs_f64() * 1e3;
    let c = ctx();
    let stats = Phase::open("fleet", 100.0, Duration::from_millis(100))
        .start_at(at)
        .run(&c, |_t: OpTimer| async { Ok::<_, OpError>(()) })
        .await
        .unwrap();
    assert!(SystemTime::now() >= at);
    assert!(
        (stats.started_unix_ms - at_ms).abs() < 5.0,
        "started {} ms, shared start {at_ms} ms",
        stats.started_unix_ms
    );
    assert_eq!(stats.ok, 10);
    // A little late: it starts, anchored in the past, and says so.
    let late = SystemTime::now() - Duration::from_millis(200);
    let stats = Phase::open("late", 100.0, Duration::from_millis(100))
        .start_at(late)
        .run(&c, |_t: OpTimer| async { Ok::<_, OpError>(()) })
        .await
        .unwrap();
    assert_eq!(stats.ok, 10);
    assert!(c.events().iter().any(|e| e.label.contains("shared start time") && e.label.contains("late")));
    // Far too late: an error saying what to do.
    let e = Phase::open("missed", 100.0, Duration::from_millis(100))
        .start_at(SystemTime::now() - Duration::from_secs(5))
        .run(&c, |_t: OpTimer| async { Ok::<_, OpError>(()) })
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("shared start time passed") && e.contains("--start-at"), "{e}");
}
