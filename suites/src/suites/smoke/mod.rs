//! layer_3 smoke tests of the service fixtures: a real query, a restart
//! survived, a pause observed as a hang and healed, for each service on
//! whatever backend the run uses (`POOLSTRESS_BACKEND`).
//!
//! Tests that restart or pause the shared server are exclusive: nothing else
//! runs while the server is down.

#[cfg(all(feature = "postgres", feature = "redis"))]
mod both;
#[cfg(feature = "postgres")]
mod pg;
#[cfg(feature = "redis")]
mod redis;

use std::time::Duration;

use poolstress_harness::Registry;

/// How long a query to a paused server is given before we call it a hang.
const HANG: Duration = Duration::from_millis(500);

/// Set in the child runs of the cleanup test: registers the misbehaving tests they run.
#[cfg(all(feature = "postgres", feature = "redis"))]
const CHILD_ENV: &str = "POOLSTRESS_SMOKE_CHILD";

/// Registers the smoke tests of the services compiled in (the cleanup test
/// needs both).
pub fn register(r: &mut Registry) {
    #[cfg(all(feature = "postgres", feature = "redis"))]
    both::register(r);
    #[cfg(feature = "postgres")]
    pg::register(r);
    #[cfg(feature = "redis")]
    redis::register(r);
}
