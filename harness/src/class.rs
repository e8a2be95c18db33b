//! The contract between pools and the load generator: every failed
//! operation has a class, decided from typed errors, never from message text.

use std::fmt;

use futures::future::BoxFuture;
use serde::Serialize;

/// Why an operation failed. Counters in reports are named after these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// Waiting for a pool slot (or creating a connection within the acquire
    /// timeout) took too long: `acquire_timeout`.
    AcquireTimeout,
    /// The pool was closed: `pool_closed`.
    PoolClosed,
    /// A new connection was refused by the server or the network: `connect_refused`.
    ConnectRefused,
    /// An established connection was reset, closed or broken: `connection_broken`.
    ConnectionBroken,
    /// The server answered with an error (SQL error, Redis error reply): `server_error`.
    ServerError,
    /// The operation itself ran past its timeout: `op_timeout`.
    OpTimeout,
    /// Anything else: `other`.
    Other,
}

impl ErrorClass {
    /// Every class, in report order.
    pub const ALL: [ErrorClass; 7] = [
        ErrorClass::AcquireTimeout,
        ErrorClass::PoolClosed,
        ErrorClass::ConnectRefused,
        ErrorClass::ConnectionBroken,
        ErrorClass::ServerError,
        ErrorClass::OpTimeout,
        ErrorClass::Other,
    ];

    /// The counter name used in reports and metrics.
    pub fn name(self) -> &'static str {
        match self {
            ErrorClass::AcquireTimeout => "acquire_timeout",
            ErrorClass::PoolClosed => "pool_closed",
            ErrorClass::ConnectRefused => "connect_refused",
            ErrorClass::ConnectionBroken => "connection_broken",
            ErrorClass::ServerError => "server_error",
            ErrorClass::OpTimeout => "op_timeout",
            ErrorClass::Other => "other",
        }
    }

    /// Index into [`ErrorClass::ALL`] (for counter arrays on hot paths).
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An error that knows its class. Pool adapters' errors implement it.
pub trait Classify {
    /// The class of this error.
    fn class(&self) -> ErrorClass;
}

/// Counts a test's connections as the server sees them (pg_stat_activity
/// filtered to the test's application_name; Redis CLIENT LIST filtered to its
/// client name). Fixtures implement it; the resource monitor samples it.
pub trait ConnectionCounter: Send + Sync {
    /// The current count.
    fn count(&self) -> BoxFuture<'_, anyhow::Result<u64>>;
}
