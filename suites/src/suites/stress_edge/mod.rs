//! The catalogue's 10 edge cases on both services' adapters, side by side:
//! `stress::edge::<service>::<name>[<adapter>]`, tags `stress`, `layer_3` and the
//! service. Every fault is real: latency is injected by the fault proxy,
//! connections are killed server side, the host name really does not
//! resolve.
//!
//! - [`latency`]: `high_network_latency`, `slow_queries_do_not_starve_fast`
//! - [`load`]: `connection_spike`, `connection_churn`
//! - [`lifecycle`]: `close_while_active`, `resize_during_use`,
//!   `acquire_timeout_precision`, `broken_connection_not_reused`
//! - [`connect`]: `unresolvable_host`; `tls_overhead` is registered skipped
//!   for every adapter (no adapter speaks TLS) and measured with
//!   tokio-postgres itself in `tls_overhead[tokio-postgres]` when the server has TLS

use poolstress_fixtures::pool::{Adapter, Knob};
use poolstress_harness::Registry;

use crate::kit::{register_matrix, Finding, NetService, Scenario};

mod connect;
mod latency;
mod lifecycle;
mod load;
#[cfg(feature = "postgres")]
mod tls;
#[cfg(feature = "postgres")]
mod tls_overhead;

/// Known findings in real pools: `(scenario, adapter, reason)`. The test
/// stays registered, fails when run, and is marked ignored with the reason.
pub const FINDINGS: &[Finding] = &[
    (
        "slow_queries_do_not_starve_fast",
        "redis-manager",
        "redis 1.8.1 ConnectionManager: every caller shares one multiplexed connection, so a blocking command (BLPOP, \
         the Redis slow op) holds up every command queued behind it: with 5 slow ops of 800 ms running, all 10 fast PINGs \
         waited until the 4 s op timeout (head-of-line blocking)",
    ),
    (
        "broken_connection_not_reused",
        "redis-manager",
        "redis 1.8.1 ConnectionManager (RESP2, the default): after the server killed the connection, the next command \
         fails with broken pipe (connection_broken); the manager reconnects only after that failure",
    ),
    (
        "unresolvable_host",
        "redis-manager",
        "redis 1.8.1 ConnectionManager::new_with_config retries a failed connect 6 times with exponential backoff \
         (100 ms base) whatever connection_timeout says: building one for a host that does not resolve fails only \
         after ~9.5 s (bound 6 s)",
    ),
];

/// Registers `stress::edge::postgres::tls_overhead[tokio-postgres]` (TLS
/// measured with the driver itself: no pool adapter speaks TLS).
#[cfg(feature = "postgres")]
pub fn register_tls_driver(r: &mut Registry) {
    tls_overhead::register_tls_driver(r);
}

/// Registers the edge cases for `adapters` of service `S`.
pub fn register_adapters<S: NetService>(r: &mut Registry, adapters: Vec<Adapter<S>>) {
    let table: Vec<Scenario<S>> = vec![
        Scenario::new("high_network_latency", S::LATENCY_NEEDS, |c, a| Box::pin(latency::high_network_latency(c, a))),
        Scenario::new("slow_queries_do_not_starve_fast", S::SLOW_OP_NEEDS, |c, a| {
            Box::pin(latency::slow_queries_do_not_starve_fast(c, a))
        }),
        Scenario::new("connection_spike", &[], |c, a| Box::pin(load::connection_spike(c, a)))
            .skip_if(load::cannot_shrink),
        Scenario::new("connection_churn", &[], |c, a| Box::pin(load::connection_churn(c, a))),
        Scenario::new("close_while_active", &[], |c, a| Box::pin(lifecycle::close_while_active(c, a))),
        Scenario::new("resize_during_use", &[], |c, a| Box::pin(lifecycle::resize_during_use(c, a))),
        Scenario::new("acquire_timeout_precision", &[Knob::MaxSize, Knob::AcquireTimeout], |c, a| {
            Box::pin(lifecycle::acquire_timeout_precision(c, a))
        }),
        Scenario::new("broken_connection_not_reused", &[Knob::Reuse], |c, a| {
            Box::pin(lifecycle::broken_connection_not_reused(c, a))
        }),
        Scenario::new("unresolvable_host", &[], |c, a| Box::pin(connect::unresolvable_host(c, a))),
        // No adapter speaks TLS: registered skipped with the reason, side by side with the others.
        Scenario::new("tls_overhead", &[], |c, a| Box::pin(async move { Err(c.skip(S::no_tls(a.name()))) }))
            .skip_if(|a| Some(S::no_tls(a.name()))),
    ];
    let prefix = format!("stress::edge::{}", S::NAME);
    register_matrix(r, &prefix, S::tags(), table, &adapters, FINDINGS);
}
