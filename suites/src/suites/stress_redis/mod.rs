//! The catalogue's 20 "Redis pool" scenarios against a real Redis, for every
//! Redis adapter side by side: `stress::redis::<group>::<name>[<adapter>]`,
//! tags `stress`, `layer_3`, `redis` (the performance group also
//! `benchmark`, which makes it exclusive).
//!
//! Every fault is real: the server is restarted through its lifecycle, clients
//! are killed with `CLIENT KILL`, Redis is made unreachable by the fault
//! proxy's `down`. Invariants (every op accounted for, the server-side client
//! count bounded, nothing left after close, the pool recovering) are hard
//! failures naming the adapter, the value and the bound. Latency and
//! throughput are recorded as metrics and gated only far past the catalogue's
//! numbers (`support::budget_max`): machine speed is for baselines.
//!
//! Groups: [`exhaustion`] (1–5), [`performance`] (6–10), [`recovery`]
//! (11–15), [`resources`] (16–20; exclusive, because they read this
//! process's fds and RSS); and beyond the catalogue, [`configuration`]: idle
//! timeout and min idle checked server side.

use poolstress_fixtures::pool::{Adapter, Redis};
use poolstress_harness::Registry;

mod configuration;
mod exhaustion;
mod performance;
mod recovery;
mod resources;

use crate::kit::{register_matrix, Finding, Scenario, ServiceFixture};

/// Known findings in real pools: `(scenario, adapter, reason)`. The test
/// stays registered, fails when run, and is marked ignored with the reason.
pub const FINDINGS: &[Finding] = &[];

/// Registers the suite for `adapters` (a user's Redis pool too).
pub fn register_adapters(r: &mut Registry, adapters: Vec<Adapter<Redis>>) {
    let mut table: Vec<Scenario<Redis>> = Vec::new();
    table.extend(exhaustion::scenarios());
    table.extend(performance::scenarios());
    table.extend(recovery::scenarios());
    table.extend(resources::scenarios());
    table.extend(configuration::scenarios());
    register_matrix(r, "stress::redis", Redis::tags(), table, &adapters, FINDINGS);
}
