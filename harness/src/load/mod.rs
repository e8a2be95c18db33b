//! The load generator: load shapes that stop by themselves, driving any
//! async op and recording what it did.
//!
//! Shapes ([`Phase`]): burst (N ops at once), closed loop (N workers),
//! open loop at a constant rate or a ramp (ops on a timetable, latency from
//! each op's slot, so stalls are not hidden: coordinated-omission correct).
//! Plans ([`Plan`]) chain phases: spike (baseline → spike → recovery), step
//! (rates or worker counts), soak (repeated windows). Every phase is bounded
//! by an op count and a duration; stats come per phase
//! ([`crate::metrics::PhaseStats`]).
//!
//! The per-op path is a clock read or two, two histogram records and a few
//! counter bumps in the worker's own memory: no allocation, no lock, no
//! syscall. Workers' histograms are merged when the phase ends; timeline
//! buckets are merged once per bucket per worker.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> anyhow::Result<()> {
//! use std::time::Duration;
//! use poolstress_harness::{load::{Phase, OpTimer}, mock::{MockConfig, MockError, MockPool}, TestCtx};
//! let ctx = TestCtx::detached("doc");
//! let pool = MockPool::new(MockConfig::default());
//! let stats = Phase::open("steady", 1_000.0, Duration::from_millis(200))
//!     .run(&ctx, move |mut t: OpTimer| {
//!         let pool = pool.clone();
//!         async move {
//!             let mut conn = pool.get().await?;
//!             t.acquired();
//!             conn.query().await?;
//!             Ok::<_, MockError>(t)
//!         }
//!     })
//!     .await?;
//! assert_eq!(stats.ok, 200);
//! assert_eq!(stats.acquire.unwrap().count, 200);
//! # Ok(()) }
//! ```

mod engine;
pub mod fleet;
mod op;
mod phase;
pub(crate) mod recorder;
mod schedule;

pub use engine::{LoadError, START_TOLERANCE};
pub use fleet::Segment;
pub use op::{OpDone, OpError, OpTimer};
pub use phase::{Limit, Pacing, Phase, Plan, Shape, Spike, DEFAULT_BUCKET, DEFAULT_GRACE, DEFAULT_IN_FLIGHT};
pub use schedule::Rate;

#[cfg(test)]
mod tests;
