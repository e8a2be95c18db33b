//! Exclusive scheduling: exclusive tests (chaos, benchmark) never overlap
//! with any other test, in this process or in other processes of the same
//! machine (nextest runs one process per test). One `flock` does both: every
//! test holds it shared, an exclusive test holds it exclusively.
//!
//! `flock` alone lets shared holders starve an exclusive waiter: while two
//! shared tests overlap, a third takes the lock shared beside them, and the
//! exclusive one waits until the shared tests happen to leave a gap (measured:
//! at `--test-threads 4` two benchmarks waited 360 s, the whole shared part of
//! the run, and the run used 2 of its 4 threads). So an exclusive test first
//! announces itself on a second lock file (the *turnstile*), held exclusively
//! until it holds the test lock; a shared test passes the turnstile (takes it
//! shared and lets go) before it takes the test lock. Exclusive tests then wait
//! only for the shared tests already running, and new shared tests queue
//! behind them.

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

fn turnstile_path(lock: &std::path::Path) -> PathBuf {
    let mut p = lock.to_path_buf().into_os_string();
    p.push(".turnstile");
    p.into()
}

/// The runner's two lock files (the test lock and its turnstile). Test
/// threads waiting for their turn hold them open, and a thread opens them
/// for its next test the moment its last one ends: a test counting this
/// process's fds (a leak check) must not count them.
pub(crate) fn lock_files() -> [PathBuf; 2] {
    let lock = lock_path();
    let turnstile = turnstile_path(&lock);
    [lock, turnstile]
}

fn open(path: PathBuf) -> std::io::Result<File> {
    std::fs::OpenOptions::new().create(true).truncate(false).read(true).write(true).open(path)
}

fn flock(file: &File, op: libc::c_int) -> std::io::Result<()> {
    loop {
        // SAFETY: flock on a file descriptor we own; released when it closes.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

impl TestLock {
    /// Blocks until the lock is held (shared or exclusive).
    pub(crate) fn acquire(exclusive: bool) -> std::io::Result<TestLock> {
        Self::acquire_at(lock_path(), exclusive)
    }

    fn acquire_at(path: PathBuf, exclusive: bool) -> std::io::Result<TestLock> {
        let turnstile = open(turnstile_path(&path))?;
        let file = open(path)?;
        if exclusive {
            flock(&turnstile, libc::LOCK_EX)?;
            flock(&file, libc::LOCK_EX)?;
        } else {
            flock(&turnstile, libc::LOCK_SH)?;
            flock(&file, libc::LOCK_SH)?;
        }
        // Closing the turnstile lets the next test through it.
        drop(turnstile);
        Ok(TestLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            atomic::{AtomicBool, AtomicUsize, Ordering},
            mpsc, Arc,
        },
        time::{Duration, Instant},
    };

    use super::*;

    /// The fd counts leave out fds whose link has one of `lock_files()`'s
    /// names: an fd `acquire` opens must have such a link.
    #[test]
    fn the_fds_acquire_opens_link_to_the_lock_files() {
        let [lock, turnstile] = lock_files();
        let names: Vec<_> = lock_files().iter().map(|p| p.file_name().unwrap().to_owned()).collect();
        for path in [lock, turnstile] {
            let f = open(path.clone()).unwrap();
            let link = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd())).unwrap();
            assert!(names.iter().any(|n| Some(n.as_os_str()) == link.file_name()), "{path:?} opened as {link:?}");
        }
    }

    /// Shared tests overlapping without a gap must not starve an exclusive
    /// one: it runs once the shared tests running when it asked have ended.
    /// (With `flock` alone it waited until the shared ones stopped.)
    #[test]
    fn an_exclusive_test_is_not_starved_by_overlapping_shared_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.lock");
        let stop = Arc::new(AtomicBool::new(false));
        let holds = Arc::new(AtomicUsize::new(0));
        let mut workers = Vec::new();
        for i in 0..2u64 {
            let (stop, holds, path) = (stop.clone(), holds.clone(), path.clone());
            workers.push(std::thread::spawn(move || {
                // Staggered holds of 15 ms: the lock is never free.
                std::thread::sleep(Duration::from_millis(7 * i));
                while !stop.load(Ordering::SeqCst) {
                    let l = TestLock::acquire_at(path.clone(), false).unwrap();
                    holds.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(15));
                    drop(l);
                }
            }));
        }
        let start = Instant::now();
        while holds.load(Ordering::SeqCst) < 4 {
            assert!(start.elapsed() < Duration::from_secs(5), "the shared holders never got going");
            std::thread::yield_now();
        }
        let (tx, rx) = mpsc::channel();
        let p = path.clone();
        let exclusive = std::thread::spawn(move || {
            let asked = Instant::now();
            let l = TestLock::acquire_at(p, true).unwrap();
            tx.send(asked.elapsed()).unwrap();
            drop(l);
        });
        let waited = rx.recv_timeout(Duration::from_secs(5));
        stop.store(true, Ordering::SeqCst);
        for w in workers {
            w.join().unwrap();
        }
        exclusive.join().unwrap();
        let waited = waited.expect("the exclusive test was still waiting after 5 s while shared ones kept overlapping");
        assert!(waited < Duration::from_secs(2), "the exclusive test waited {waited:?} behind shared ones");
    }
}
