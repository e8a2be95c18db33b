//! Tests that exist only to be run by the self-tests, in a child process
//! started with `POOLSTRESS_SELFTEST_FIXTURES=1`: one per runner behaviour.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use poolstress_harness::{FixtureFailure, Metric, Registry};

fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

/// Registers the fixture tests (tags start with `fx_`).
pub fn register(r: &mut Registry) {
    r.test("selftest_fixture::pass", &["fx_a"], |ctx| async move {
        ctx.record(Metric::lower("answer_ms", 42.0));
        ctx.event("did the work");
        Ok(())
    });
    r.test("selftest_fixture::fail", &["fx_fail"], |_ctx| async {
        anyhow::bail!("this fixture test fails on purpose")
    });
    r.test("selftest_fixture::panic", &["fx_panic"], |_ctx| async { panic!("this fixture test panics on purpose") });
    r.test("selftest_fixture::deadline", &["fx_deadline"], |ctx| async move {
        ctx.step("waiting for a condition that never comes");
        std::future::pending::<()>().await;
        Ok(())
    })
    .deadline(Duration::from_millis(300));
    r.test("selftest_fixture::skip", &["fx_skip"], |ctx| async move { Err(ctx.skip("no TLS-enabled server")) });
    r.test("selftest_fixture::static_skip", &["fx_static_skip"], |_ctx| async { Ok(()) })
        .skip("tiny-pool lacks min_idle");
    r.test("selftest_fixture::slow", &["fx_slow"], |ctx| async move {
        ctx.step("slowly doing the work");
        tokio::time::sleep(Duration::from_millis(1300)).await;
        Ok(())
    });
    r.test("selftest_fixture::invariant", &["fx_invariant"], |ctx| async move {
        ctx.violation("fx-pool: 3 checkouts out at once, above max_size 2");
        Ok(())
    });
    r.test("selftest_fixture::fixture_missing", &["fx_fixture"], |_ctx| async {
        Err(anyhow::Error::new(FixtureFailure("no Docker engine and no server binaries".into())))
    });
    r.test("selftest_fixture::ignored", &["fx_ignored"], |_ctx| async { anyhow::bail!("known finding") })
        .ignore("finding kept failing on purpose");
    r.test("selftest_fixture::seeded", &["fx_seed"], |ctx| async move {
        use rand::Rng;
        let v: u64 = ctx.rng().random();
        ctx.attach("draw", v);
        Ok(())
    });
    // Baselines: the measured value comes from the environment so a self-test
    // can make it regress.
    r.test("selftest_fixture::measured", &["fx_metric"], |ctx| async move {
        let v: f64 = std::env::var("POOLSTRESS_SELFTEST_VALUE").ok().and_then(|v| v.parse().ok()).unwrap_or(100.0);
        ctx.record(poolstress_harness::Metric::gated(
            "latency_ms",
            poolstress_harness::Direction::LowerIsBetter,
            vec![v * 0.99, v, v * 1.01, v * 1.005, v * 0.995],
        ));
        Ok(())
    });
    // The HTML report's plots: percentiles and a timeline with an event.
    r.test("selftest_fixture::plotted", &["fx_plot"], |ctx| async move {
        for (name, v) in [
            ("steady.p0_ms", 0.3),
            ("steady.p25_ms", 0.8),
            ("steady.p50_ms", 1.2),
            ("steady.p75_ms", 1.7),
            ("steady.p90_ms", 2.5),
            ("steady.p99_ms", 6.0),
            ("steady.p99_9_ms", 14.0),
            ("steady.p99_99_ms", 31.0),
        ] {
            ctx.record(Metric::lower(name, v));
        }
        ctx.event("fault start: latency 300ms");
        let timeline: Vec<serde_json::Value> = (0..10)
            .map(|t: i64| {
                let errors = if t == 4 { 12 } else { 0 };
                let p99 = 5.0 + t as f64;
                serde_json::json!({"t_s": t, "ops": 1000 - 40 * t, "errors": errors, "p99_ms": p99})
            })
            .collect();
        ctx.attach("timeline", timeline);
        Ok(())
    });
    // Exclusive scheduling: each records the wall-clock window it ran in.
    for (name, exclusive) in
        [("excl_a", true), ("excl_b", true), ("shared_1", false), ("shared_2", false), ("shared_3", false)]
    {
        r.test(format!("selftest_fixture::{name}"), &["fx_excl"], |ctx| async move {
            let start = now_ns();
            // The work being scheduled: long enough that overlaps would show.
            tokio::time::sleep(Duration::from_millis(150)).await;
            ctx.attach("window", [start, now_ns()]);
            Ok(())
        })
        .exclusive(exclusive);
    }
}
