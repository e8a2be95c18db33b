//! poolstress's suites, one module per group.

use poolstress_harness::Registry;

pub mod chaos;
pub mod conformance;
pub mod exhaustion;
pub mod faults;
pub mod harness_bench;
pub mod layer2;
pub mod smoke;

/// Registers every suite.
pub fn register(r: &mut Registry) {
    chaos::register(r);
    conformance::register(r);
    exhaustion::register(r);
    faults::register(r);
    harness_bench::register(r);
    layer2::register(r);
    smoke::register(r);
}
