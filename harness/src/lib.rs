//! poolstress-harness: the runner (tags, profiles, deadlines, exclusive
//! tests, reports) that poolstress's suites run in. Users normally depend on
//! the `poolstress` facade crate instead.
#![deny(missing_docs)]

pub mod baseline;
mod class;
pub mod cleanup;
pub mod cli;
mod ctx;
pub mod exit;
pub mod load;
mod lock;
mod metric;
pub mod metrics;
pub mod mock;
mod profile;
mod registry;
pub mod report;
mod runner;
pub mod tag;

pub use class::{Classify, ConnectionCounter, ErrorClass};
pub use ctx::{Event, FixtureFailure, Skipped, TestCtx};
pub use metric::{median, Direction, Metric, MIN_GATED_SAMPLES};
pub use profile::Profile;
pub use registry::{InstanceName, Registry, TestDef, TestResult};
pub use runner::{default_deadline, run, run_with, PostRun};
