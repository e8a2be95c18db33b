//! poolstress's suites, one module per group.

use poolstress_harness::Registry;

pub mod smoke;

/// Registers every suite.
pub fn register(r: &mut Registry) {
    smoke::register(r);
}
