//! Run-level teardown: things that live for the whole run (shared servers,
//! temp dirs) register here and are torn down at the end of the run, and on
//! Ctrl-C / SIGTERM before the process exits.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Once,
};

use parking_lot::Mutex;

type Hook = Box<dyn FnOnce() + Send>;

static HOOKS: Mutex<Vec<(String, Hook)>> = Mutex::new(Vec::new());
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static HANDLER: Once = Once::new();

/// Registers `hook` to run once at the end of the run (last registered runs
/// first), or on Ctrl-C / SIGTERM. `what` names it in error output.
pub fn at_exit(what: impl Into<String>, hook: impl FnOnce() + Send + 'static) {
    HOOKS.lock().push((what.into(), Box::new(hook)));
}

/// Runs every registered hook now, newest first. A hook that panics is
/// reported and the others still run. Returns the names of hooks that panicked.
pub fn run_hooks() -> Vec<String> {
    let hooks: Vec<(String, Hook)> = std::mem::take(&mut *HOOKS.lock());
    let mut failed = Vec::new();
    for (what, hook) in hooks.into_iter().rev() {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(hook)).is_err() {
            eprintln!("poolstress: cleanup of {what} panicked; check for leftovers (docker ps -a, ps)");
            failed.push(what);
        }
    }
    failed
}

/// Whether the run was interrupted by a signal.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Installs the Ctrl-C / SIGTERM handler (once): it runs the hooks and exits
/// with [`crate::exit::INTERRUPTED`]. Called by the runner.
pub(crate) fn install_signal_handler() {
    HANDLER.call_once(|| {
        let r = ctrlc::set_handler(|| {
            if INTERRUPTED.swap(true, Ordering::SeqCst) {
                return; // second signal while cleaning up: let cleanup finish
            }
            eprintln!("\npoolstress: interrupted; cleaning up servers, containers and temp dirs");
            run_hooks();
            // The main thread still owns test guards; the hooks above released
            // everything that outlives a process, so exiting here loses nothing.
            std::process::exit(crate::exit::INTERRUPTED as i32);
        });
        if let Err(e) = r {
            eprintln!("poolstress: could not install the Ctrl-C handler ({e}); an interrupted run may leave servers behind for the next run's sweep");
        }
    });
}
