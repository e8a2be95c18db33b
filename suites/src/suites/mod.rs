//! poolstress's suites, one module per group.

use poolstress_harness::Registry;

pub mod bench;
pub mod broken;
pub mod chaos;
pub mod conformance;
pub mod exhaustion;
pub mod faults;
pub mod harness_bench;
pub mod layer2;
pub mod smoke;
pub mod stress_edge;
pub mod stress_pg;
pub mod stress_redis;

/// Registers every suite.
pub fn register(r: &mut Registry) {
    bench::register(r);
    broken::register(r);
    chaos::register(r);
    conformance::register(r);
    exhaustion::register(r);
    faults::register(r);
    harness_bench::register(r);
    layer2::register(r);
    smoke::register(r);
    stress_edge::register(r);
    stress_pg::register(r);
    stress_redis::register(r);
}
