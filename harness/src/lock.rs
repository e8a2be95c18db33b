//! Exclusive scheduling: exclusive tests (chaos, benchmark) never overlap
//! with any other test, in this process or in other processes of the same
//! machine (nextest runs one process per test). One `flock` does both: every
//! test holds it shared, an exclusive test holds it exclusively.

use std::{fs::File, os::fd::AsRawFd, path::PathBuf};

/// Held for the duration of a test.
pub(crate) struct TestLock {
    _file: File,
}

/// `POOLSTRESS_LOCK_FILE` moves the lock (a nested run of the harness, as
/// the self-tests start, must not wait on its parent's lock). A process
/// running one segment of a fleet load (`--segment i/n`) has a lock of its
/// segment's: the segments of one exclusive benchmark on one machine run
/// side by side, as they must to share a start time.
fn lock_path() -> PathBuf {
    if let Some(p) = std::env::var_os("POOLSTRESS_LOCK_FILE") {
        return PathBuf::from(p);
    }
    let uid = unsafe { libc::geteuid() };
    let seg = crate::load::fleet::segment();
    let name = if seg.is_whole() {
        format!("poolstress-{uid}.lock")
    } else {
        format!("poolstress-{uid}-segment-{}-of-{}.lock", seg.index(), seg.count())
    };
    std::env::temp_dir().join(name)
}

impl TestLock {
    /// Blocks until the lock is held (shared or exclusive).
    pub(crate) fn acquire(exclusive: bool) -> std::io::Result<TestLock> {
        let file = std::fs::OpenOptions::new().create(true).truncate(false).read(true).write(true).open(lock_path())?;
        let op = if exclusive { libc::LOCK_EX } else { libc::LOCK_SH };
        loop {
            // SAFETY: flock on a file descriptor we own; released when it closes.
            let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
            if rc == 0 {
                return Ok(TestLock { _file: file });
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}
