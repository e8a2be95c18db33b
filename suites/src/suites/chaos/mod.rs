//! Chaos: faults while traffic flows, recovery measured, at three layers.
//!
//! Names: `chaos::<service>::<scenario>[<adapter>]` against real servers
//! (layer_3), `chaos::layer_2::<scenario>[<adapter>]` against the stand-ins
//! through the fault proxy, `chaos::layer_1::<scenario>[mock]` on the mock
//! pool: the same scenario body at each layer, the same metric names, so the
//! report shows them side by side.
//!
//! | scenario | layers | fault |
//! |---|---|---|
//! | `kill_60pct_workers` | 1, 2, 3 | 60 % of the pool's server connections killed under closed-loop load |
//! | `cancel_holding` | 1, 2, 3 | 60 % of the workers aborted mid-query while holding a checkout |
//! | `partition_then_heal` | 1, 2, 3 | pool cut off from the server for T (proxy blackhole), then healed |
//! | `gradual_exhaustion` | 1, 3 | one more checkout leaked every step until none is left, then released |
//! | `overlapping_faults` | 3 (exclusive) | latency + kills + a server restart, one TOML schedule |
//! | `kills_at_500_ops` | 3 | kills during 500 ops/s open loop |
//! | `network_faults_sustained` | 3 | latency, proxy resets, a proxy outage during a sustained rate |
//! | `failures_during_ramp` | 3 | kills at three points of a 20 → 500 ops/s ramp |
//! | `several_at_once` | 3 | latency, kills and resets starting together |
//!
//! Every scenario records the recovery metrics (`<fault>_errors_during_fault`,
//! `_first_success_after_heal_ms`, `_recovery_ms` (< 1 % errors),
//! `_back_to_size_ms`, `_latency_during_p99_ms` / `_latency_after_p99_ms`)
//! and fails hard when a recovery invariant breaks: the same pool (never
//! rebuilt) serves again; max_size checkouts can be held at once again
//! (capacity); every write is read back on every connection (no poisoned
//! connection); every op is accounted for exactly once (the load
//! generator's counts equal the ops' own); the server never sees more than
//! max_size connections (plus killed ones that may linger). Each test notes
//! its seed and fault plan (printed when it fails); `--seed` replays the
//! choices (`chaos::replay::*`). `chaos::broken::*` proves the suite catches
//! a pool that loses capacity on cancellation and one that never reconnects.
//!
//! Only tests that restart the shared server are exclusive; the others act
//! on their own proxy, their own connections (by name) or their own
//! stand-in, and may run beside other tests.

pub mod broken;
pub mod cancel;
pub mod kills;
pub mod leak;
pub mod open_loop;
pub mod overlap;
pub mod partition;
pub mod replay;

use futures::future::BoxFuture;
use poolstress_fixtures::pool::{Adapter, Knob};
use poolstress_harness::{tag, Registry, TestCtx};

use crate::kit::{mark, Finding, Layer, Needs, NetService, Rig};

/// Known findings in real pools: `(scenario, pool, reason)`.
pub const FINDINGS: &[Finding] = &[];

type Body = fn(TestCtx, Rig) -> BoxFuture<'static, anyhow::Result<()>>;

struct Scenario {
    name: &'static str,
    layers: &'static [Layer],
    needs: &'static [Knob],
    /// Restarts the shared server.
    exclusive: bool,
    body: Body,
}

const ALL: &[Layer] = &[Layer::L1, Layer::L2, Layer::L3];

fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "kill_60pct_workers",
            layers: ALL,
            needs: &[],
            exclusive: false,
            body: |c, r| Box::pin(kills::kill_60pct_workers(c, r)),
        },
        Scenario {
            name: "cancel_holding",
            layers: ALL,
            needs: &[],
            exclusive: false,
            body: |c, r| Box::pin(cancel::cancel_holding(c, r)),
        },
        Scenario {
            name: "partition_then_heal",
            layers: ALL,
            needs: &[],
            exclusive: false,
            body: |c, r| Box::pin(partition::partition_then_heal(c, r)),
        },
        Scenario {
            name: "gradual_exhaustion",
            layers: &[Layer::L1, Layer::L3],
            needs: &[Knob::MaxSize, Knob::AcquireTimeout],
            exclusive: false,
            body: |c, r| Box::pin(leak::gradual_exhaustion(c, r)),
        },
        Scenario {
            name: "overlapping_faults",
            layers: &[Layer::L3],
            needs: &[],
            exclusive: true,
            body: |c, r| Box::pin(overlap::overlapping_faults(c, r)),
        },
        Scenario {
            name: "kills_at_500_ops",
            layers: &[Layer::L3],
            needs: &[],
            exclusive: false,
            body: |c, r| Box::pin(open_loop::kills_at_500_ops(c, r)),
        },
        Scenario {
            name: "network_faults_sustained",
            layers: &[Layer::L3],
            needs: &[],
            exclusive: false,
            body: |c, r| Box::pin(open_loop::network_faults_sustained(c, r)),
        },
        Scenario {
            name: "failures_during_ramp",
            layers: &[Layer::L3],
            needs: &[],
            exclusive: false,
            body: |c, r| Box::pin(open_loop::failures_during_ramp(c, r)),
        },
        Scenario {
            name: "several_at_once",
            layers: &[Layer::L3],
            needs: &[],
            exclusive: false,
            body: |c, r| Box::pin(open_loop::several_at_once(c, r)),
        },
    ]
}

/// The rigs of a network pool: on the stand-in (layer_2) and on the real
/// server (layer_3).
pub fn rigs_for<S: NetService>(a: Adapter<S>) -> Vec<Rig> {
    vec![Rig::standin(a.clone()), Rig::real(a)]
}

/// The test name of `scenario` on `rig`.
pub fn test_name(scenario: &str, rig: &Rig) -> String {
    match rig.layer {
        Layer::L3 => format!("chaos::{}::{scenario}[{}]", rig.service, rig.adapter),
        _ => format!("chaos::{}::{scenario}[{}]", rig.layer, rig.adapter),
    }
}

fn tags(rig: &Rig) -> Vec<&'static str> {
    let mut t = vec![tag::CHAOS, rig.layer.tag()];
    if rig.layer != Layer::L1 {
        t.push(rig.service);
    }
    t
}

/// Registers the chaos suite's self-tests (broken pools caught, replay).
pub fn register_selftests(r: &mut Registry) {
    broken::register(r);
    replay::register(r);
}

/// Registers every scenario on `rigs` at the layers it runs at (a user's
/// pool: `register_rigs(r, rigs_for(Adapter::new(MyPool)))`).
pub fn register_rigs(r: &mut Registry, rigs: Vec<Rig>) {
    for sc in scenarios() {
        for rig in rigs.iter().filter(|g| sc.layers.contains(&g.layer)) {
            let name = test_name(sc.name, rig);
            let (body, rig2) = (sc.body, rig.clone());
            let def = r.test(name, &tags(rig), move |ctx| body(ctx, rig2.clone()));
            def.exclusive(sc.exclusive && rig.layer == Layer::L3);
            let skip = Needs::all(sc.needs).missing(&rig.adapter, &rig.caps);
            mark(def, sc.name, &rig.adapter, skip, FINDINGS);
        }
    }
}
