use std::{future::Future, time::Duration};

use poolstress_harness::{Classify, ErrorClass};

/// A retry policy: up to `attempts` tries, waiting `backoff` (doubled each
/// time, capped at `max_backoff`) between them, retrying only errors whose
/// class is in `retry_on`.
///
/// ```
/// use poolstress::util::Retry;
/// let p = Retry::transient(3);
/// assert_eq!(p.attempts, 3);
/// ```
#[derive(Debug, Clone)]
pub struct Retry {
    /// Total tries, including the first (at least 1).
    pub attempts: u32,
    /// Wait before the second try.
    pub backoff: Duration,
    /// Upper bound on the wait.
    pub max_backoff: Duration,
    /// Classes worth retrying.
    pub retry_on: Vec<ErrorClass>,
}

impl Retry {
    /// Retries what a dropped or refused connection causes (broken, refused,
    /// acquire timeout), 10 ms backoff doubling to 200 ms.
    pub fn transient(attempts: u32) -> Retry {
        Retry {
            attempts: attempts.max(1),
            backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(200),
            retry_on: vec![ErrorClass::ConnectionBroken, ErrorClass::ConnectRefused, ErrorClass::AcquireTimeout],
        }
    }
}

/// What a retried call ended with, and how many tries it took.
#[derive(Debug)]
pub struct RetryOutcome<T, E> {
    /// The last result.
    pub result: Result<T, E>,
    /// Tries made (1 = no retry).
    pub tries: u32,
}

/// Runs `op` under `policy`.
pub async fn retry<T, E, F, Fut>(policy: &Retry, mut op: F) -> RetryOutcome<T, E>
where
    E: Classify,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut wait = policy.backoff;
    let mut tries = 0;
    loop {
        tries += 1;
        let result = op().await;
        match &result {
            Err(e) if tries < policy.attempts && policy.retry_on.contains(&e.class()) => {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(policy.max_backoff);
            }
            _ => return RetryOutcome { result, tries },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Debug)]
    struct E(ErrorClass);
    impl Classify for E {
        fn class(&self) -> ErrorClass {
            self.0
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_until_success() {
        let n = AtomicU32::new(0);
        let out = retry(&Retry::transient(3), || async {
            if n.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(E(ErrorClass::ConnectionBroken))
            } else {
                Ok(7)
            }
        })
        .await;
        assert_eq!(out.result.unwrap(), 7);
        assert_eq!(out.tries, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_attempts_and_skips_non_transient() {
        let out = retry(&Retry::transient(3), || async { Err::<(), _>(E(ErrorClass::ConnectionBroken)) }).await;
        assert_eq!(out.tries, 3);
        let out = retry(&Retry::transient(3), || async { Err::<(), _>(E(ErrorClass::ServerError)) }).await;
        assert_eq!(out.tries, 1, "a server error is not retried");
    }
}
