//! poolstress's suites, one module per group.

use poolstress_harness::Registry;

/// Registers every suite.
pub fn register(_r: &mut Registry) {}
