use std::{
    future::Future,
    time::{Duration, Instant},
};

use parking_lot::Mutex;

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through; consecutive failures are counted.
    Closed,
    /// Calls fail fast until the cool-down has passed.
    Open,
    /// One trial call goes through; success closes, failure re-opens.
    HalfOpen,
}

/// A failed call through the breaker.
#[derive(Debug, thiserror::Error)]
pub enum BreakerError<E> {
    /// The breaker is open: the call was not made.
    #[error("circuit open after {failures} consecutive failures; retry after {retry_in:?}")]
    Open {
        /// Failures that opened it.
        failures: u32,
        /// Time left in the cool-down.
        retry_in: Duration,
    },
    /// The call was made and failed.
    #[error(transparent)]
    Inner(E),
}

struct Inner {
    state: BreakerState,
    failures: u32,
    opened_at: Option<Instant>,
    trial_in_flight: bool,
}

/// A circuit breaker around a pool: after `threshold` consecutive failures
/// callers fail fast for `cool_down`; then one trial call decides whether it
/// closes again.
pub struct CircuitBreaker {
    threshold: u32,
    cool_down: Duration,
    inner: Mutex<Inner>,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(threshold: u32, cool_down: Duration) -> Self {
        CircuitBreaker {
            threshold: threshold.max(1),
            cool_down,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                failures: 0,
                opened_at: None,
                trial_in_flight: false,
            }),
        }
    }

    /// The current state (an open breaker past its cool-down reports half-open).
    pub fn state(&self) -> BreakerState {
        let i = self.inner.lock();
        match (i.state, i.opened_at) {
            (BreakerState::Open, Some(t)) if t.elapsed() >= self.cool_down => BreakerState::HalfOpen,
            (s, _) => s,
        }
    }

    /// Runs `op` unless the breaker is open.
    pub async fn call<T, E, Fut: Future<Output = Result<T, E>>>(
        &self,
        op: impl FnOnce() -> Fut,
    ) -> Result<T, BreakerError<E>> {
        {
            let mut i = self.inner.lock();
            if i.state == BreakerState::Open {
                let since = i.opened_at.map(|t| t.elapsed()).unwrap_or_default();
                if since < self.cool_down || i.trial_in_flight {
                    return Err(BreakerError::Open {
                        failures: i.failures,
                        retry_in: self.cool_down.saturating_sub(since),
                    });
                }
                i.state = BreakerState::HalfOpen;
                i.trial_in_flight = true;
            } else if i.state == BreakerState::HalfOpen && i.trial_in_flight {
                return Err(BreakerError::Open { failures: i.failures, retry_in: Duration::ZERO });
            } else if i.state == BreakerState::HalfOpen {
                i.trial_in_flight = true;
            }
        }
        let result = op().await;
        let mut i = self.inner.lock();
        i.trial_in_flight = false;
        match result {
            Ok(v) => {
                i.state = BreakerState::Closed;
                i.failures = 0;
                i.opened_at = None;
                Ok(v)
            }
            Err(e) => {
                i.failures += 1;
                if i.state == BreakerState::HalfOpen || i.failures >= self.threshold {
                    i.state = BreakerState::Open;
                    i.opened_at = Some(Instant::now());
                }
                Err(BreakerError::Inner(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn opens_after_threshold_fails_fast_then_closes_after_cool_down() {
        let b = CircuitBreaker::new(3, Duration::from_millis(30));
        for _ in 0..3 {
            assert!(matches!(b.call(|| async { Err::<(), _>("down") }).await, Err(BreakerError::Inner("down"))));
        }
        assert_eq!(b.state(), BreakerState::Open);
        let mut called = false;
        let r = b
            .call(|| {
                called = true;
                async { Ok::<_, &str>(()) }
            })
            .await;
        assert!(matches!(r, Err(BreakerError::Open { failures: 3, .. })) && !called, "open breaker must not call");
        // Wait on the condition (cool-down over), with a deadline.
        let deadline = Instant::now() + Duration::from_secs(5);
        while b.state() != BreakerState::HalfOpen {
            assert!(Instant::now() < deadline, "breaker never became half-open");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(b.call(|| async { Ok::<_, &str>(1) }).await.is_ok());
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test]
    async fn failed_trial_reopens() {
        let b = CircuitBreaker::new(1, Duration::ZERO);
        let _ = b.call(|| async { Err::<(), _>(()) }).await;
        assert_eq!(b.state(), BreakerState::HalfOpen, "zero cool-down: trial allowed at once");
        let _ = b.call(|| async { Err::<(), _>(()) }).await;
        let i = b.inner.lock();
        assert_eq!((i.state, i.failures), (BreakerState::Open, 2));
    }
}
