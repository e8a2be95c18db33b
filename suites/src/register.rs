//! One call registers every suite that applies to a pool.

#[cfg(feature = "postgres")]
use poolstress_fixtures::pool::Postgres;
#[cfg(feature = "redis")]
use poolstress_fixtures::pool::Redis;
use poolstress_fixtures::pool::{self, Adapter, Mock, PoolAdapter};
use poolstress_harness::Registry;

#[cfg(feature = "postgres")]
use crate::suites::stress_pg;
#[cfg(feature = "redis")]
use crate::suites::stress_redis;
use crate::{
    kit::{NetService, Rig, ServiceFixture},
    suites::{bench, chaos, combo, conformance, exhaustion, fairness, hygiene, layer2, peer, stress_edge},
};

/// A service whose pools poolstress has suites for: Postgres, Redis, and the
/// layer_1 mock. [`register_pool`] is generic over it.
pub trait PoolSuites: ServiceFixture {
    /// Registers every suite that applies to `adapter`.
    fn register_suites(r: &mut Registry, adapter: Adapter<Self>);
}

#[cfg(feature = "postgres")]
impl PoolSuites for Postgres {
    fn register_suites(r: &mut Registry, a: Adapter<Self>) {
        register_net(r, a, stress_pg::register_adapters);
    }
}

#[cfg(feature = "redis")]
impl PoolSuites for Redis {
    fn register_suites(r: &mut Registry, a: Adapter<Self>) {
        register_net(r, a, stress_redis::register_adapters);
    }
}

/// Every suite for a network pool; `stress` is its service's catalogue.
#[cfg(any(feature = "postgres", feature = "redis"))]
fn register_net<S: NetService + crate::zoo::ZooDriver + peer::Peer>(
    r: &mut Registry,
    a: Adapter<S>,
    stress: fn(&mut Registry, Vec<Adapter<S>>),
) {
    conformance::register_adapters(r, vec![a.clone()]);
    stress(r, vec![a.clone()]);
    stress_edge::register_adapters(r, vec![a.clone()]);
    chaos::register_rigs(r, chaos::rigs_for(a.clone()));
    combo::register_adapters(r, vec![a.clone()]);
    fairness::register_adapters(r, vec![a.clone()]);
    hygiene::register_adapters(r, vec![a.clone()]);
    exhaustion::register_adapters(r, vec![a.clone()]);
    bench::register_adapters(r, vec![a.clone()]);
    peer::register_adapters(r, vec![a.clone()]);
    layer2::register_adapters(r, vec![a]);
}

impl PoolSuites for Mock {
    fn register_suites(r: &mut Registry, a: Adapter<Self>) {
        conformance::register_adapters(r, vec![a.clone()]);
        chaos::register_rigs(r, vec![Rig::mock(a)]);
    }
}

/// Registers every poolstress suite that applies to `pool`, and nothing
/// else (no self-tests, no built-in pools):
///
/// | service | suites |
/// |---|---|
/// | Postgres, Redis | `conformance::`, `stress::<service>::`, `stress::edge::<service>::`, `chaos::<service>::` (layer_3) and `chaos::layer_2::` (the in-process stand-in), `combo::<service>::`, `fairness::<service>::`, `hygiene::<service>::`, `exhaustion::<service>::`, `bench::<service>::`, `peer::<service>::`, `layer2::<service>::` |
/// | the mock | `conformance::mock::`, `chaos::layer_1::` |
///
/// Each test is named `...[<pool name>]`; a scenario needing a knob the pool
/// does not declare is registered skipped with the pool's reason. Register
/// built-in pools beside it for a side-by-side scorecard:
///
/// ```no_run
/// # use poolstress::fixtures::pool::{self, PoolAdapter};
/// # fn main() -> std::process::ExitCode {
/// # let my_pool = pool::DirectRedis;
/// let mut r = poolstress::Registry::new();
/// poolstress::register_pool(&mut r, my_pool);                 // your PoolAdapter
/// poolstress::register_pool(&mut r, pool::DirectRedis);       // a built-in beside it
/// poolstress::run(r)
/// # }
/// ```
pub fn register_pool<P>(r: &mut Registry, pool: P)
where
    P: PoolAdapter,
    P::Service: PoolSuites,
{
    register_adapter(r, Adapter::new(pool));
}

/// [`register_pool`] for an [`Adapter`] already built.
pub fn register_adapter<S: PoolSuites>(r: &mut Registry, adapter: Adapter<S>) {
    S::register_suites(r, adapter);
}

/// Registers every suite for every built-in pool compiled in (cargo features).
pub fn register_builtin_pools(r: &mut Registry) {
    #[cfg(feature = "postgres")]
    for a in pool::postgres_adapters() {
        register_adapter(r, a);
    }
    #[cfg(feature = "redis")]
    for a in pool::redis_adapters() {
        register_adapter(r, a);
    }
    for a in pool::mock_adapters() {
        register_adapter(r, a);
    }
}
