//! poolstress's suites, one module per suite. A suite imports the kit
//! ([`crate::kit`]), the harness and the fixtures, never another suite.
//!
//! The suites that apply to any pool are registered per pool by
//! [`crate::register_pool`]; [`register`] adds them for the built-in pools
//! and registers poolstress's own checks (servers, faults, the load
//! generator, broken pools caught, the gate).

use poolstress_harness::Registry;

pub mod bench;
pub mod chaos;
pub mod combo;
pub mod conformance;
pub mod exhaustion;
pub mod fairness;
pub mod faults;
pub mod harness_bench;
pub mod hygiene;
pub mod layer2;
pub mod peer;
pub mod smoke;
pub mod stress_edge;
#[cfg(feature = "postgres")]
pub mod stress_pg;
#[cfg(feature = "redis")]
pub mod stress_redis;

/// Registers every suite for every built-in pool, and poolstress's own checks.
pub fn register(r: &mut Registry) {
    crate::register::register_builtin_pools(r);
    #[cfg(feature = "redis")]
    bench::register_gate(r);
    chaos::register_selftests(r);
    faults::register(r);
    harness_bench::register(r);
    smoke::register(r);
    #[cfg(feature = "postgres")]
    stress_edge::register_tls_driver(r);
    #[cfg(feature = "postgres")]
    stress_pg::broken_pools::register(r);
    // The zoo: the correct small pools through every suite, each defect caught by name.
    #[cfg(feature = "postgres")]
    crate::register_adapter(r, crate::zoo::ZooAdapter::<poolstress_fixtures::pool::Postgres>::correct());
    #[cfg(feature = "redis")]
    crate::register_adapter(r, crate::zoo::ZooAdapter::<poolstress_fixtures::pool::Redis>::correct());
    crate::selftest::zoo::register(r);
}
