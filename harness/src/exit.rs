//! Exit codes, so CI can tell a failing test from a missing service from a regression.

/// Every selected test passed (and no baseline regressed).
pub const SUCCESS: u8 = 0;
/// Bad command line or environment: unknown tag, unknown profile, malformed flag.
pub const USAGE: u8 = 2;
/// Tests failed, and every failure was a fixture that could not be provided
/// (no Docker, no server binaries, an image that would not start).
pub const FIXTURE_FAILURE: u8 = 3;
/// The selection ran no test (see `--allow-empty`).
pub const NO_TESTS: u8 = 4;
/// Tests passed but a baseline comparison found a regression.
pub const REGRESSION: u8 = 5;
/// At least one test failed (libtest's code).
pub const TEST_FAILURE: u8 = 101;
/// The run was interrupted (Ctrl-C / SIGTERM) after cleaning up.
pub const INTERRUPTED: u8 = 130;
