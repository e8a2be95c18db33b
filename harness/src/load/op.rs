//! What an operation is to the load generator: an async closure that takes
//! an [`OpTimer`] and returns `Result<T, E>` where `T: OpDone` and
//! `E: Classify`.

use std::{borrow::Cow, fmt};

use tokio::time::Instant;

use crate::class::{Classify, ErrorClass};

/// Handed to every operation by value. It is 32 bytes on the stack: no
/// allocation, no shared state.
///
/// An operation that can tell acquiring a connection from using it calls
/// [`OpTimer::acquired`] right after the checkout and returns the timer as
/// its success value; the generator then records acquire time and operation
/// time separately. Operations that cannot tell return `Ok(())`.
///
/// ```
/// use poolstress_harness::load::{OpError, OpTimer};
/// # async fn checkout() -> Result<(), OpError> { Ok(()) }
/// # async fn query() -> Result<(), OpError> { Ok(()) }
/// let op = |mut t: OpTimer| async move {
///     let conn = checkout().await?;
///     t.acquired();
///     query().await?;
///     Ok::<_, OpError>(t)
/// };
/// # let _ = op;
/// ```
#[derive(Debug, Clone, Copy)]
pub struct OpTimer {
    pub(crate) seq: u64,
    pub(crate) worker: u32,
    pub(crate) acquired: Option<Instant>,
}

impl OpTimer {
    pub(crate) fn new(seq: u64, worker: u32) -> Self {
        OpTimer { seq, worker, acquired: None }
    }

    /// Marks the end of the acquire step (one `Instant::now()`).
    #[inline]
    pub fn acquired(&mut self) {
        self.acquired = Some(Instant::now());
    }

    /// The operation's sequence number within its phase, unique per phase:
    /// the slot number in open loop (its place on the timetable), the task
    /// number in a burst, `n * workers + worker` in closed loop. Use it to
    /// pick keys or to inject a fault at a known op.
    #[inline]
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The worker (or burst task) running this op, `0..workers`.
    #[inline]
    pub fn worker(&self) -> usize {
        self.worker as usize
    }
}

/// The success value of an operation: it may carry the end of its acquire
/// step. Implemented for `()` (no split) and [`OpTimer`].
pub trait OpDone: Send + 'static {
    /// When the acquire step ended, if the op marked it.
    fn acquired_at(&self) -> Option<Instant>;
}

impl OpDone for () {
    #[inline]
    fn acquired_at(&self) -> Option<Instant> {
        None
    }
}

impl OpDone for OpTimer {
    #[inline]
    fn acquired_at(&self) -> Option<Instant> {
        self.acquired
    }
}

/// A ready-made op error for targets without their own typed error: a class
/// and a message. Static messages do not allocate.
///
/// ```
/// use poolstress_harness::{load::OpError, Classify, ErrorClass};
/// let e = OpError::new(ErrorClass::OpTimeout, "GET took longer than 50 ms");
/// assert_eq!(e.class(), ErrorClass::OpTimeout);
/// assert_eq!(e.to_string(), "op_timeout: GET took longer than 50 ms");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpError {
    /// Why the op failed.
    pub class: ErrorClass,
    /// What happened, for error samples in reports.
    pub message: Cow<'static, str>,
}

impl OpError {
    /// An error of `class` with a message.
    pub fn new(class: ErrorClass, message: impl Into<Cow<'static, str>>) -> Self {
        OpError { class, message: message.into() }
    }

    /// An error of `class` without a message (no allocation).
    pub const fn bare(class: ErrorClass) -> Self {
        OpError { class, message: Cow::Borrowed("") }
    }
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.is_empty() {
            write!(f, "{}", self.class)
        } else {
            write!(f, "{}: {}", self.class, self.message)
        }
    }
}

impl std::error::Error for OpError {}

impl Classify for OpError {
    fn class(&self) -> ErrorClass {
        self.class
    }
}

impl From<ErrorClass> for OpError {
    fn from(class: ErrorClass) -> Self {
        OpError::bare(class)
    }
}
