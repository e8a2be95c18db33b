//! Small utilities scenarios wrap around a pool: a retry wrapper, a circuit
//! breaker and a cache-or-compute fallback. Each is what a service would put
//! in front of its pool, so scenarios test the pool the way it is used.

mod breaker;
mod fallback;
mod retry;

pub use breaker::{BreakerError, BreakerState, CircuitBreaker};
pub use fallback::{cache_or_compute, Fallback};
pub use retry::{retry, Retry, RetryOutcome};
