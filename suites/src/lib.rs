//! poolstress: stress, chaos and benchmark suites for connection pools.
//!
//! This is the one crate a user depends on. It re-exports the harness
//! (registry, runner, tags, profiles, metrics) and the fixtures (servers,
//! faults, pool adapters), and holds poolstress's own suites.
//!
//! A user's `tests/stress.rs` (with `harness = false`):
//!
//! ```no_run
//! fn main() -> std::process::ExitCode {
//!     let mut r = poolstress::Registry::new();
//!     poolstress::register_all(&mut r); // poolstress's suites (optional)
//!     r.test("mine::smoke", &[poolstress::tag::LAYER_1], |_ctx| async { Ok(()) });
//!     poolstress::run(r)
//! }
//! ```
#![deny(missing_docs)]

pub use poolstress_fixtures as fixtures;
pub use poolstress_harness as harness;
pub use poolstress_harness::{
    cleanup, exit, report, tag, Direction, Event, FixtureFailure, InstanceName, Metric, Profile, Registry, Skipped,
    TestCtx, TestDef, TestResult,
};

pub mod kit;
mod register;
pub mod selftest;
pub mod suites;
pub mod util;
pub mod zoo;

pub use register::{register_adapter, register_builtin_pools, register_pool, PoolSuites};

/// Registers every poolstress suite.
pub fn register_all(r: &mut Registry) {
    if selftest::fixture_mode() {
        // The binary was started by a self-test to exercise the runner.
        selftest::fixtures::register(r);
        return;
    }
    selftest::register(r);
    suites::register(r);
}

/// Runs `registry` with the process's arguments (see [`poolstress_harness::run`]).
pub fn run(registry: Registry) -> std::process::ExitCode {
    poolstress_harness::run(registry)
}

/// The `main` of poolstress's own `stress` test target.
pub fn main() -> std::process::ExitCode {
    let mut r = Registry::new();
    register_all(&mut r);
    run(r)
}
