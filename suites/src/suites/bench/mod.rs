//! Pool benchmarks: the numbers the nightly baselines gate
//! (`bench::<service>::<workload>[<adapter>]`, tags `benchmark`, `layer_3`
//! and the service; exclusive, as every benchmark is).
//!
//! - `point_read`: a closed loop of point reads (`Op::Read`), 8 workers on a
//!   pool of 4, repeated k times (quick 3 x 1 s, nightly 5 x 3 s). Metrics
//!   `read.ops_s`, `read.p50_ms`, `read.p99_ms` carry every repeat as a
//!   sample, so the baseline check gates on tolerance *and* noise.
//!
//! Every pool reaches its server through a fault proxy with no fault
//! active. `POOLSTRESS_INJECT_LATENCY=<humantime>` (e.g. `2ms`) adds that
//! latency to the proxy, both directions: a slowed network, which is how
//! `bench::gate::injected_latency_is_a_regression` proves that the
//! regression gate fires (update → check passes → inject → exit 5 naming the
//! metric), and how a user can check the gate of their own CI.

#[cfg(feature = "redis")]
mod gate;

use std::time::Duration;

use anyhow::{ensure, Context};
use poolstress_fixtures::{
    fault::{FaultKind, FaultSpec},
    pool::{Adapter, Knob, Op, PoolConfig, PoolError},
};
use poolstress_harness::{
    load::{Limit, OpTimer, Phase},
    Direction, Metric, Registry, TestCtx,
};

use crate::kit::NetService;

#[cfg(feature = "redis")]
pub use gate::register_gate;

/// Env var: latency added to every benchmark pool's proxy (humantime).
pub const INJECT_LATENCY_ENV: &str = "POOLSTRESS_INJECT_LATENCY";

/// The latency `POOLSTRESS_INJECT_LATENCY` asks for, if any.
fn injected_latency() -> anyhow::Result<Option<Duration>> {
    match std::env::var(INJECT_LATENCY_ENV) {
        Err(_) => Ok(None),
        Ok(s) if s.trim().is_empty() || s.trim() == "0" => Ok(None),
        Ok(s) => humantime::parse_duration(s.trim())
            .map(Some)
            .with_context(|| format!("{INJECT_LATENCY_ENV}={s:?} is not a duration; use e.g. 2ms or 500us")),
    }
}

async fn point_read<S: NetService>(ctx: TestCtx, a: Adapter<S>) -> anyhow::Result<()> {
    let (reps, secs) = (ctx.profile().pick(3, 5), ctx.profile().pick(Duration::from_secs(1), Duration::from_secs(3)));
    let (workers, max) = (8, 4);
    ctx.step(format!("providing a {} server", S::NAME));
    let fx = S::provide(&ctx).await?;
    let (proxy, via) = S::proxy(&ctx, &fx.target).await?;
    let _slow = match injected_latency()? {
        Some(d) => {
            ctx.note(format!("{INJECT_LATENCY_ENV}: {d:?} of latency added to the proxy, both directions"));
            ctx.event(format!("injected latency {d:?}"));
            Some(proxy.add(FaultSpec::new(FaultKind::latency(d, Duration::ZERO)).both())?)
        }
        None => None,
    };
    let mut cfg = PoolConfig::new(max);
    if a.capabilities().supports(Knob::AcquireTimeout) {
        cfg = cfg.acquire_timeout(Duration::from_secs(10));
    }
    let pool = a.build(&cfg, &via).await.with_context(|| format!("building {} ({})", a.name(), a.version()))?;
    ctx.step("seeding 64 keys");
    for key in 0..64 {
        pool.run(&Op::Write { key, value: format!("v{key}") }).await?;
    }
    let (mut rates, mut p50s, mut p99s) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..reps {
        ctx.step(format!("rep {}/{reps}: {workers} workers reading for {secs:?}", i + 1));
        let p = pool.clone();
        let s = Phase::closed("read", workers, Limit::new(10_000_000, secs))
            .run(&ctx, move |mut t: OpTimer| {
                let pool = p.clone();
                async move {
                    let mut c = pool.acquire().await?;
                    t.acquired();
                    c.run(&Op::Read { key: t.seq() % 64 }).await?;
                    Ok::<_, PoolError>(t)
                }
            })
            .await?;
        s.check_accounted(None)?;
        s.check_only(&[])?;
        ensure!(s.ok > 0, "{}: no read succeeded in {secs:?} ({})", a.name(), s.summary());
        rates.push(s.throughput_ops_s);
        p50s.push(s.latency.p50_ms);
        p99s.push(s.latency.p99_ms);
    }
    let ops = Metric::from_samples("read.ops_s", Direction::HigherIsBetter, rates);
    let p50 = Metric::from_samples("read.p50_ms", Direction::LowerIsBetter, p50s);
    let p99 = Metric::from_samples("read.p99_ms", Direction::LowerIsBetter, p99s);
    ctx.note(format!(
        "{} ({}): {:.0} reads/s, p50 {:.3} ms, p99 {:.3} ms (medians of {reps})",
        a.name(),
        a.version(),
        ops.value,
        p50.value,
        p99.value
    ));
    for m in [ops, p50, p99] {
        ctx.record(m);
    }
    pool.close().await;
    Ok(())
}

/// Registers `bench::<service>::point_read[<pool>]` for `adapters` (a user's pool too).
pub fn register_adapters<S: NetService>(r: &mut Registry, adapters: Vec<Adapter<S>>) {
    for a in adapters {
        let name = format!("bench::{}::point_read[{}]", S::NAME, a.name());
        r.test(name, S::BENCH_TAGS, move |ctx| point_read(ctx, a.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injected_latency_parses_humantime_and_explains_bad_values() {
        // One test touches the variable: no other test reads it.
        std::env::set_var(INJECT_LATENCY_ENV, "2ms");
        assert_eq!(injected_latency().unwrap(), Some(Duration::from_millis(2)));
        std::env::set_var(INJECT_LATENCY_ENV, "0");
        assert_eq!(injected_latency().unwrap(), None);
        std::env::set_var(INJECT_LATENCY_ENV, "fast");
        let e = format!("{:#}", injected_latency().unwrap_err());
        assert!(e.contains(INJECT_LATENCY_ENV) && e.contains("2ms"), "{e}");
        std::env::remove_var(INJECT_LATENCY_ENV);
    }
}
