//! The kit every suite is built from, so that suites import the kit, the
//! harness and the fixtures, and never each other:
//!
//! - [`service`]: what a service gives a test at each layer ([`ServiceFixture`]
//!   for every service, [`NetService`] for Postgres and Redis), the stand-ins,
//!   [`wait_until`];
//! - [`matrix`]: one scenario type and one registration of a scenario table
//!   per pool (skip with the pool's reason, findings kept as ignored tests);
//! - [`bed`]: one test bed across the three layers (mock, stand-in, real
//!   server): target, server-side connection counter, kill, partition, server
//!   control, schedule environment;
//! - [`ledger`]: load through a bed with every op accounted for, and the
//!   recovery checks (serves again, capacity intact, server side bounded);
//! - [`checks`]: server-side checks a scenario can end with (no session left
//!   idle in a transaction, discarded connections closed);
//! - [`support`]: set-up on a target of the test's own, configs fitted to a
//!   pool's capabilities, the load generator's op over a pool, budgets.
//!
//! Adding a scenario is one function plus one table row; adding a suite is
//! one file plus one registration line in `suites/src/suites/mod.rs` and, if
//! it applies to any pool, one line in [`crate::register_pool`].

pub mod bed;
pub mod checks;
pub mod ledger;
pub mod matrix;
pub mod service;
pub mod support;

use std::time::Duration;

use poolstress_fixtures::pool::{Capabilities, Knob, PoolConfig};

pub use self::{
    bed::{Bed, Layer, Rig},
    matrix::{mark, register_matrix, Finding, Needs, Scenario},
    service::{wait_until, NetService, Provided, ServiceFixture, Standin},
    support::Tune,
};

/// A config of `max` with only the timeouts the pool supports among those
/// asked for (a knob it lacks is left at the pool's default, never refused).
pub fn fit(
    caps: &Capabilities,
    max: usize,
    acquire: Option<Duration>,
    connect: Option<Duration>,
    op: Option<Duration>,
) -> PoolConfig {
    let mut cfg = PoolConfig::new(max);
    if let (Some(d), true) = (acquire, caps.supports(Knob::AcquireTimeout)) {
        cfg = cfg.acquire_timeout(d);
    }
    if let (Some(d), true) = (connect, caps.supports(Knob::ConnectTimeout)) {
        cfg = cfg.connect_timeout(d);
    }
    if let (Some(d), true) = (op, caps.supports(Knob::OpTimeout)) {
        cfg = cfg.op_timeout(d);
    }
    cfg
}
