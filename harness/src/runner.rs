//! The runner: tag selection on top of libtest-mimic, deadlines, exclusive
//! scheduling, reports and exit codes.

use std::{
    collections::BTreeMap,
    io::Write,
    panic::AssertUnwindSafe,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use clap::Parser;
use futures::FutureExt;
use libtest_mimic::{Arguments, Completion, Failed, FormatSetting, Trial};
use parking_lot::Mutex;

use crate::{
    cleanup,
    cli::{self, Options},
    ctx::{FixtureFailure, Skipped, TestCtx},
    exit,
    lock::TestLock,
    profile::Profile,
    registry::{Registry, TestDef},
    report::{
        self, JsonReporter, JunitReporter, LayersReporter, Outcome, Reporter, RunSummary, ScorecardReporter, TestRecord,
    },
    tag,
};

/// A hook that looks at the finished run (baseline checks) and may turn a
/// passing run into a failing one by returning an exit code.
pub type PostRun = Box<dyn FnOnce(&Options, &RunSummary) -> Option<u8>>;

/// Runs `registry` with the process's arguments and environment.
/// Call it from the `main` of a `harness = false` test target and return its
/// result, so destructors run:
///
/// ```no_run
/// fn main() -> std::process::ExitCode {
///     let mut r = poolstress_harness::Registry::new();
///     // suites register here
///     poolstress_harness::run(r)
/// }
/// ```
pub fn run(registry: Registry) -> ExitCode {
    run_with(registry, std::env::args().skip(1).collect(), Vec::new())
}

/// Like [`run`] with explicit arguments (without the program name) and post-run hooks.
pub fn run_with(registry: Registry, args: Vec<String>, post_run: Vec<PostRun>) -> ExitCode {
    let code = run_inner(registry, args, post_run);
    cleanup::run_hooks();
    ExitCode::from(code)
}

/// The default deadline for a test with `tags` in `profile`: the largest of
/// its tags' defaults (layer_1 30 s, layer_2 60 s, layer_3 120 s, stress 180 s,
/// chaos and benchmark 300 s; 120 s for other tags), 4x in nightly.
pub fn default_deadline(tags: &[String], profile: Profile) -> Duration {
    let secs = tags
        .iter()
        .map(|t| match t.as_str() {
            tag::LAYER_1 => 30,
            tag::LAYER_2 => 60,
            tag::STRESS => 180,
            tag::CHAOS | tag::BENCHMARK => 300,
            _ => 120,
        })
        .max()
        .unwrap_or(120);
    Duration::from_secs(secs * profile.pick(1, 4))
}

fn run_inner(registry: Registry, args: Vec<String>, post_run: Vec<PostRun>) -> u8 {
    let (opts, rest) = match cli::split_args(args, |k| std::env::var(k).ok()) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e}\n\n{}", cli::HELP);
            return exit::USAGE;
        }
    };
    if !opts.merge.is_empty() {
        return merge_mode(&opts, &rest);
    }
    let argv = std::iter::once("stress".to_string()).chain(rest);
    let mut args = match Arguments::try_parse_from(argv) {
        Ok(a) => a,
        Err(e) => {
            use clap::error::ErrorKind;
            let code = match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => exit::SUCCESS,
                _ => exit::USAGE,
            };
            let _ = e.print();
            if code == exit::SUCCESS {
                println!("\n{}", cli::HELP);
            }
            return code;
        }
    };

    if args.test_threads.is_none() {
        args.test_threads =
            default_test_threads(std::env::var_os("RUST_TEST_THREADS"), std::env::var_os("NEXTEST_RUN_ID"));
    }

    let known = registry.known_tags();
    let unknown = opts.selection.unknown(&known);
    if !unknown.is_empty() {
        let list = |v: Vec<&str>| v.iter().map(|t| format!("\"{t}\"")).collect::<Vec<_>>().join(", ");
        eprintln!(
            "error: unknown tag{} {} (known tags: {}).\nDeclare a custom tag with Registry::declare_tag, or fix the spelling.",
            if unknown.len() > 1 { "s" } else { "" },
            list(unknown),
            known.iter().cloned().collect::<Vec<_>>().join(", ")
        );
        return exit::USAGE;
    }

    let total = registry.tests.len();
    let selected: Vec<TestDef> = registry.tests.into_iter().filter(|t| opts.selection.matches(&t.tags)).collect();
    let tag_filtered = (total - selected.len()) as u64;

    if args.list {
        return list(&args, &selected);
    }

    let seed = opts.seed.unwrap_or_else(run_seed);
    cleanup::install_signal_handler();
    if !args.quiet {
        eprintln!(
            "poolstress: profile {}, seed {seed} (replay with --seed {seed}), {} of {total} tests selected by tag ({}), reports in {}",
            opts.profile,
            selected.len(),
            opts.selection.describe(),
            opts.report_dir.display()
        );
    }
    crate::load::fleet::set(opts.segment, opts.start_at);
    if !opts.segment.is_whole() {
        report::run_fact("segment", opts.segment.to_string());
    }
    if let Some(at) = opts.start_at {
        report::run_fact("start_at_unix_ms", at.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0));
    }
    report::run_fact("build.harness_opt_level", HARNESS_OPT_LEVEL);
    report::run_fact("build.harness_profile", env!("POOLSTRESS_HARNESS_PROFILE"));
    if HARNESS_OPT_LEVEL == "0" {
        eprintln!(
            "poolstress: warning: the harness was built without optimizations (opt-level 0): its load generator \
             is then slower than the pools it measures. Add to your Cargo.toml:\n  \
             [profile.dev.package.\"*\"]\n  opt-level = 2"
        );
    }

    let records: Arc<Mutex<Vec<TestRecord>>> = Arc::new(Mutex::new(Vec::new()));
    let started_unix_s = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let start = Instant::now();
    let mut trials = Vec::with_capacity(selected.len());
    let mut statically_ignored = Vec::new();
    for def in schedule(&selected) {
        let trial = make_trial(def, &opts, seed, records.clone(), start);
        if args.is_ignored(&trial) && !args.is_filtered_out(&trial) {
            statically_ignored.push(TestRecord {
                name: def.name.clone(),
                tags: def.tags.clone(),
                outcome: Outcome::Ignored,
                message: def.ignored.clone(),
                fixture_failure: false,
                duration_ms: 0.0,
                waited_ms: 0.0,
                started_ms: 0.0,
                exclusive: def.is_exclusive(),
                seed: 0,
                metrics: Vec::new(),
                events: Vec::new(),
                attachments: BTreeMap::new(),
                notes: Vec::new(),
            });
        }
        trials.push(trial);
    }
    let existing_tags: Vec<String> = known.iter().cloned().collect();
    let conclusion = libtest_mimic::run(&args, trials);

    let mut tests = std::mem::take(&mut *records.lock());
    tests.extend(statically_ignored);
    tests.sort_by(|a, b| a.name.cmp(&b.name));
    let mut summary = RunSummary {
        format_version: 1,
        started_unix_s,
        profile: opts.profile.to_string(),
        seed,
        selection: opts.selection.describe(),
        passed: conclusion.num_passed,
        failed: conclusion.num_failed,
        ignored: conclusion.num_ignored,
        filtered_out: conclusion.num_filtered_out + tag_filtered,
        duration_ms: start.elapsed().as_secs_f64() * 1e3,
        run: report::take_run_facts(),
        tests,
    };
    let suite_time = report::scorecard::suite_times(&summary.tests);
    // Where the wall time went: exclusive tests add up, shared ones share the threads.
    let threads = args.test_threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let exclusive_ms: f64 = suite_time.iter().map(|s| s.exclusive_ms).sum();
    let shared_ms: f64 = suite_time.iter().map(|s| s.ms - s.exclusive_ms).sum();
    summary.run.insert("suite_time".into(), serde_json::to_value(suite_time).unwrap_or_default());
    summary.run.insert(
        "time_split".into(),
        serde_json::json!({ "exclusive_ms": exclusive_ms.round(), "shared_ms": shared_ms.round(), "threads": threads }),
    );
    if !args.quiet && exclusive_ms > 0.0 && shared_ms > 0.0 && exclusive_ms + shared_ms >= 1000.0 {
        eprintln!(
            "poolstress: wall {:.0} s: exclusive tests {:.0} s (one at a time), shared tests {:.0} s summed over {threads} \
             thread(s) (at least {:.0} s of wall)",
            summary.duration_ms / 1e3,
            exclusive_ms / 1e3,
            shared_ms / 1e3,
            shared_ms / 1e3 / threads as f64
        );
    }
    // The verdict against the baselines reaches every reporter (report.json,
    // report.html and summary.md open with it, junit.xml carries it).
    if let Some(v) = crate::baseline::verdicts(&opts, &summary) {
        summary.run.insert("baselines".into(), serde_json::to_value(v).unwrap_or_default());
    }
    write_reports(&opts, &summary, args.quiet);

    let ran = conclusion.num_passed + conclusion.num_failed;
    // A test that ran and skipped itself (a capability the pool lacks) was
    // selected on purpose: nextest runs every test alone by its exact name,
    // and a skipped one must not fail there. Only a selection that matched
    // nothing runnable is an error.
    let skipped = summary.tests.iter().filter(|t| t.outcome == Outcome::Skipped).count();
    if ran == 0 && skipped == 0 && !opts.allow_empty {
        let filter = args.filter.as_deref().map(|f| format!(", name filter \"{f}\"")).unwrap_or_default();
        eprintln!(
            "error: the selection ran no test ({}{filter}; {} of {total} tests matched the tags, {} ignored or skipped).\n\
             Tags that exist: {}.\nSee them with `--list`; pass --allow-empty (or POOLSTRESS_ALLOW_EMPTY=1) if an empty run is intended.",
            opts.selection.describe(),
            selected.len(),
            conclusion.num_ignored,
            existing_tags.join(", "),
        );
        return exit::NO_TESTS;
    }
    // Baselines are compared (and updates refused) even when tests failed.
    let mut post = crate::baseline::post_run(&opts, &summary);
    for hook in post_run {
        if let Some(c) = hook(&opts, &summary) {
            post = Some(post.map_or(c, |p| p.max(c)));
        }
    }
    if conclusion.num_failed > 0 {
        let failed: Vec<&TestRecord> = summary.tests.iter().filter(|t| t.outcome == Outcome::Failed).collect();
        if !failed.is_empty() && failed.iter().all(|t| t.fixture_failure) {
            eprintln!(
                "poolstress: every failure was a fixture that could not be provided (exit code {})",
                exit::FIXTURE_FAILURE
            );
            return exit::FIXTURE_FAILURE;
        }
        return exit::TEST_FAILURE;
    }
    post.unwrap_or(exit::SUCCESS)
}

/// The test threads when neither `--test-threads` nor `RUST_TEST_THREADS`
/// says: two per core, at most 8. Shared tests wait on servers, proxies and
/// timeouts far more than they compute (measured on 2 cores, every tag,
/// quick: one test per core kept the machine 43 % busy in the shared part,
/// two per core 67 %, and the shared part took 225 s instead of 340 s, with
/// no test failing); exclusive tests run one at a time however many threads
/// there are. The cap keeps a big machine's run within a server's
/// connection limit. Under nextest every process runs one test: nextest's
/// own `--test-threads` applies.
fn default_test_threads(
    rust_test_threads: Option<std::ffi::OsString>,
    nextest: Option<std::ffi::OsString>,
) -> Option<usize> {
    if let Some(n) = rust_test_threads.and_then(|v| v.to_str().and_then(|v| v.trim().parse::<usize>().ok())) {
        return Some(n.max(1));
    }
    if nextest.is_some() {
        return None;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Some((2 * cores).min(8))
}

/// The order tests are handed to the test threads: exclusive tests first,
/// one after another, then the shared ones side by side. Interleaved, every
/// exclusive test would first wait for the shared tests already running to
/// end (a thread idle meanwhile) and then hold every other thread idle.
fn schedule(selected: &[TestDef]) -> impl Iterator<Item = &TestDef> {
    let exclusive = selected.iter().filter(|d| d.is_exclusive());
    exclusive.chain(selected.iter().filter(|d| !d.is_exclusive()))
}

fn list(args: &Arguments, selected: &[TestDef]) -> u8 {
    // nextest parses `--list --format terse`: keep libtest's exact lines there.
    let trials: Vec<Trial> = selected
        .iter()
        .map(|d| Trial::test(d.name.clone(), || Ok(())).with_ignored_flag(d.ignored.is_some()))
        .collect();
    if matches!(args.format, Some(FormatSetting::Terse)) {
        let _listed = libtest_mimic::run(args, trials);
        return exit::SUCCESS;
    }
    let mut out = std::io::stdout().lock();
    let mut n = 0;
    for (d, t) in selected.iter().zip(&trials) {
        if args.is_filtered_out(t) || (args.ignored && d.ignored.is_none()) {
            continue;
        }
        n += 1;
        let mut extra = String::new();
        if d.is_exclusive() {
            extra.push_str(" exclusive");
        }
        if let Some(r) = &d.ignored {
            extra.push_str(&format!(" (ignored: {r})"));
        }
        if let Some(r) = &d.skip {
            extra.push_str(&format!(" (skipped: {r})"));
        }
        let _ = writeln!(out, "{}: test [{}]{extra}", d.name, d.tags.join(", "));
    }
    let _ = writeln!(out, "\n{n} tests");
    exit::SUCCESS
}

fn make_trial(
    def: &TestDef,
    opts: &Options,
    run_seed: u64,
    records: Arc<Mutex<Vec<TestRecord>>>,
    run_start: Instant,
) -> Trial {
    let name = def.name.clone();
    let tags = def.tags.clone();
    let body = def.body.clone();
    let exclusive = def.is_exclusive();
    // Waiting for the fleet's shared start time (`--start-at`) does not
    // count against a test's deadline.
    let start_wait = opts.start_at.and_then(|at| at.duration_since(SystemTime::now()).ok()).unwrap_or_default();
    let deadline =
        opts.deadline.or(def.deadline).unwrap_or_else(|| default_deadline(&def.tags, opts.profile)) + start_wait;
    let profile = opts.profile;
    let report_dir = opts.report_dir.clone();
    let static_skip = def.skip.clone();
    let ignored_reason = def.ignored.clone();
    Trial::ignorable_test(def.name.clone(), move || {
        // The test's time starts when it holds the lock: waiting for an
        // exclusive test (or for shared ones to finish before this exclusive
        // one) is the schedule's time, reported apart as `waited_ms`.
        let asked = Instant::now();
        let lock = match static_skip {
            Some(_) => None,
            None => match TestLock::acquire(exclusive) {
                Ok(l) => Some(l),
                Err(e) => {
                    eprintln!("poolstress: could not take the test lock ({e}); {name} runs without exclusivity");
                    None
                }
            },
        };
        let waited = asked.elapsed();
        let ctx = TestCtx::new(&name, &tags, profile, run_seed, &report_dir);
        let started = Instant::now();
        let (outcome, message, fixture_failure) = if let Some(reason) = static_skip {
            (Outcome::Skipped, Some(reason), false)
        } else {
            execute(&ctx, body, deadline)
        };
        drop(lock);
        let message = match (outcome, message, ignored_reason) {
            (Outcome::Failed, Some(m), Some(r)) => Some(format!("{m}\n(known finding, marked ignored: {r})")),
            (_, m, _) => m,
        };
        let notes = ctx.inner.notes.lock().clone();
        let record = TestRecord {
            name: name.clone(),
            tags: tags.clone(),
            outcome,
            message: message.clone(),
            fixture_failure,
            duration_ms: started.elapsed().as_secs_f64() * 1e3,
            waited_ms: waited.as_secs_f64() * 1e3,
            started_ms: started.duration_since(run_start).as_secs_f64() * 1e3,
            exclusive,
            seed: ctx.seed(),
            metrics: ctx.metrics(),
            events: ctx.events(),
            attachments: ctx.inner.attachments.lock().clone(),
            notes: notes.clone(),
        };
        records.lock().push(record);
        match outcome {
            Outcome::Passed => Ok(Completion::Completed),
            Outcome::Skipped | Outcome::Ignored => Ok(Completion::ignored_with(message.unwrap_or_default())),
            Outcome::Failed => {
                let mut msg = message.unwrap_or_default();
                msg.push_str(&format!("\n(seed {} for this test; replay the run with --seed {run_seed})", ctx.seed()));
                for n in notes {
                    msg.push_str(&format!("\n  note: {n}"));
                }
                Err(Failed::from(msg))
            }
        }
    })
    .with_ignored_flag(def.ignored.is_some())
}

/// Runs one body on its own runtime under its deadline. A panic or a missed
/// deadline fails only this test; the runtime is shut down so every task the
/// test spawned is dropped (and its guards heal).
fn execute(ctx: &TestCtx, body: crate::registry::Body, deadline: Duration) -> (Outcome, Option<String>, bool) {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).max(2))
        .enable_all()
        .thread_name("poolstress-test")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return (Outcome::Failed, Some(format!("could not start a tokio runtime: {e}")), false),
    };
    let fut = ctx.scope(body(ctx.clone()));
    let beat = rt.spawn(heartbeat(ctx.clone(), heartbeat_every()));
    let result = rt.block_on(async { tokio::time::timeout(deadline, AssertUnwindSafe(fut).catch_unwind()).await });
    beat.abort();
    rt.shutdown_timeout(Duration::from_secs(5));
    with_violations(ctx, judge(ctx, result, deadline))
}

/// The opt-level the harness was compiled at (`0` in a crate with default profiles).
pub const HARNESS_OPT_LEVEL: &str = env!("POOLSTRESS_HARNESS_OPT_LEVEL");

/// Env var: seconds between heartbeat lines of a long test (default 60).
pub const HEARTBEAT_ENV: &str = "POOLSTRESS_HEARTBEAT_SECS";

fn heartbeat_every() -> Duration {
    std::env::var(HEARTBEAT_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(Duration::from_secs(60))
}

/// Every `every`, says on stderr (a terminal and CI logs alike) that the test
/// is still running and what it is doing (its `ctx.step`).
async fn heartbeat(ctx: TestCtx, every: Duration) {
    let mut n = 0u32;
    loop {
        tokio::time::sleep(every).await;
        n += 1;
        eprintln!("poolstress: {} still running after {:.0?}: {}", ctx.name(), every * n, ctx.current_step());
    }
}

/// A body's outcome, failed if the test bed saw an invariant broken.
fn with_violations(ctx: &TestCtx, judged: (Outcome, Option<String>, bool)) -> (Outcome, Option<String>, bool) {
    let v = ctx.take_violations();
    if v.is_empty() {
        return judged;
    }
    let broken = crate::ctx::violations_message(&v);
    match judged {
        (Outcome::Failed, Some(m), f) => (Outcome::Failed, Some(format!("{m}\n{broken}")), f),
        _ => (Outcome::Failed, Some(broken), false),
    }
}

type BodyResult = Result<Result<anyhow::Result<()>, Box<dyn std::any::Any + Send>>, tokio::time::error::Elapsed>;

fn judge(ctx: &TestCtx, result: BodyResult, deadline: Duration) -> (Outcome, Option<String>, bool) {
    match result {
        Err(_elapsed) => (
            Outcome::Failed,
            Some(format!("deadline of {:.1?} exceeded while: {}", deadline, ctx.current_step())),
            false,
        ),
        Ok(Err(panic)) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "non-string panic payload".to_string());
            (Outcome::Failed, Some(format!("panicked: {msg} (while: {})", ctx.current_step())), false)
        }
        Ok(Ok(Ok(()))) => (Outcome::Passed, None, false),
        Ok(Ok(Err(e))) => {
            if let Some(s) = e.downcast_ref::<Skipped>() {
                return (Outcome::Skipped, Some(s.0.clone()), false);
            }
            let fixture = e.chain().any(|c| c.is::<FixtureFailure>());
            (Outcome::Failed, Some(format!("{e:#}")), fixture)
        }
    }
}

fn run_seed() -> u64 {
    // Every process of one nextest run shares the run's seed.
    if let Ok(id) = std::env::var("NEXTEST_RUN_ID") {
        let mut h: u64 = 0xcbf29ce484222325;
        for b in id.bytes() {
            h = (h ^ b as u64).wrapping_mul(0x100000001b3);
        }
        return h % 1_000_000_000;
    }
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0) as u64;
    (nanos ^ ((std::process::id() as u64) << 32)) % 1_000_000_000
}

fn write_reports(opts: &Options, summary: &RunSummary, quiet: bool) {
    // Under nextest every test is its own process: keep one report per
    // process, named after its test (`--merge <report-dir>/nextest/<run-id>`
    // combines them).
    let (dir, json_name) = match std::env::var("NEXTEST_RUN_ID") {
        Ok(id) => {
            let first = summary.tests.first().map(|t| crate::ctx::slug(&t.name)).unwrap_or_else(|| "empty".into());
            (opts.report_dir.join("nextest").join(id), Some(format!("{first}.json")))
        }
        Err(_) => (opts.report_dir.clone(), None),
    };
    write_reports_to(opts, summary, quiet, &dir, json_name);
}

#[cfg_attr(not(feature = "html"), allow(unused_variables))]
fn write_reports_to(
    opts: &Options,
    summary: &RunSummary,
    quiet: bool,
    dir: &std::path::Path,
    json_name: Option<String>,
) {
    let mut reporters: Vec<Box<dyn Reporter>> = vec![Box::new(JsonReporter { file_name: json_name.clone() })];
    if json_name.is_none() {
        reporters.push(Box::new(JunitReporter));
        #[cfg(feature = "html")]
        reporters.push(Box::new(report::HtmlReporter {
            baselines: crate::baseline::load(&crate::baseline::path_for(opts)).ok(),
        }));
        #[cfg(not(feature = "html"))]
        if !quiet {
            eprintln!("poolstress: no html report: built without the `html` feature of poolstress (poolstress-harness), which draws its charts with plotters");
        }
        reporters.push(Box::new(LayersReporter));
        reporters.push(Box::new(ScorecardReporter));
    }
    for mut r in reporters {
        match r.run_finished(summary, dir) {
            Ok(Some(path)) if !quiet => eprintln!("poolstress: {} report: {}", r.name(), path.display()),
            Ok(_) => {}
            Err(e) => eprintln!("poolstress: could not write the {} report to {}: {e}", r.name(), dir.display()),
        }
    }
}

/// `--merge PATH...`: no tests run; the reports are merged into one
/// report.json / junit.xml / report.html (and the rest) in the report dir,
/// the baselines checked on the merged result, and the exit code is the one
/// a run with those results would have had.
fn merge_mode(opts: &Options, rest: &[String]) -> u8 {
    use crate::report::merge;
    if !rest.is_empty() {
        eprintln!(
            "error: --merge takes report.json files and directories, not a test filter or libtest flag (got {}); \
             put other poolstress flags (--report-dir, --check-baselines, --profile) before --merge",
            rest.join(" ")
        );
        return exit::USAGE;
    }
    let out = opts.report_dir.join("report.json");
    let fail = |e: merge::MergeError| {
        eprintln!("error: {e}");
        exit::USAGE
    };
    let files = match merge::collect_inputs(&opts.merge, &out) {
        Ok(f) if f.is_empty() => {
            return fail(merge::MergeError("--merge: no report to merge (the only one given is the output)".into()))
        }
        Ok(f) => f,
        Err(e) => return fail(e),
    };
    let mut inputs = Vec::with_capacity(files.len());
    for f in files {
        match merge::read_report(&f) {
            Ok(s) => inputs.push((f, s)),
            Err(e) => return fail(e),
        }
    }
    let n = inputs.len();
    let mut summary = match merge::merge(inputs) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    if summary.profile != opts.profile.to_string() {
        eprintln!(
            "poolstress: note: the reports are of profile {}, this merge checks {}'s baselines (pass --profile {})",
            summary.profile, opts.profile, summary.profile
        );
    }
    let suite_time = report::scorecard::suite_times(&summary.tests);
    summary.run.insert("suite_time".into(), serde_json::to_value(suite_time).unwrap_or_default());
    if let Some(v) = crate::baseline::verdicts(opts, &summary) {
        summary.run.insert("baselines".into(), serde_json::to_value(v).unwrap_or_default());
    }
    eprintln!(
        "poolstress: merged {n} report(s): {} tests ({} passed, {} failed, {} skipped or ignored) into {}",
        summary.tests.len(),
        summary.passed,
        summary.failed,
        summary.ignored,
        opts.report_dir.display()
    );
    write_reports_to(opts, &summary, false, &opts.report_dir, None);
    if summary.tests.is_empty() && !opts.allow_empty {
        eprintln!("error: the merged reports hold no test (pass --allow-empty if that is intended)");
        return exit::NO_TESTS;
    }
    let post = crate::baseline::post_run(opts, &summary);
    let failed: Vec<&TestRecord> = summary.tests.iter().filter(|t| t.outcome == Outcome::Failed).collect();
    if !failed.is_empty() {
        for t in &failed {
            eprintln!("poolstress: failed: {}", t.name);
        }
        return if failed.iter().all(|t| t.fixture_failure) { exit::FIXTURE_FAILURE } else { exit::TEST_FAILURE };
    }
    post.unwrap_or(exit::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Registry;

    #[test]
    fn test_threads_default_to_two_per_core_unless_told() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(default_test_threads(None, None), Some((2 * cores).min(8)));
        assert_eq!(default_test_threads(Some("3".into()), None), Some(3));
        assert_eq!(default_test_threads(Some("0".into()), None), Some(1));
        // nextest runs one test per process and has its own thread count.
        assert_eq!(default_test_threads(None, Some("run-id".into())), None);
        // Not a number: as if unset.
        assert_eq!(default_test_threads(Some("many".into()), None), Some((2 * cores).min(8)));
    }

    #[test]
    fn exclusive_tests_are_scheduled_first_in_registration_order() {
        let mut r = Registry::new();
        r.test("a_shared", &[tag::LAYER_1], |_| async { Ok(()) });
        r.test("b_chaos", &[tag::CHAOS], |_| async { Ok(()) });
        r.test("c_chaos_shared", &[tag::CHAOS], |_| async { Ok(()) }).exclusive(false);
        r.test("d_marked", &[tag::LAYER_3], |_| async { Ok(()) }).exclusive(true);
        r.test("e_bench", &[tag::BENCHMARK], |_| async { Ok(()) });
        let order: Vec<&str> = schedule(&r.tests).map(|d| d.name.as_str()).collect();
        assert_eq!(order, ["b_chaos", "d_marked", "e_bench", "a_shared", "c_chaos_shared"]);
    }
}
