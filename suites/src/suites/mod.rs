//! poolstress's suites, one module per group.

use poolstress_harness::Registry;

pub mod harness_bench;
pub mod smoke;

/// Registers every suite.
pub fn register(r: &mut Registry) {
    harness_bench::register(r);
    smoke::register(r);
}
