//! poolstress's own flags, taken out of the argument list before libtest-mimic
//! parses the rest (its parser rejects flags it does not know).

use std::{
    path::PathBuf,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::{load::Segment, profile::Profile, tag};

/// poolstress's own options (everything libtest does not have).
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Tag selection (`--include-tag`, `--exclude-tag`, or their env vars).
    pub selection: tag::Selection,
    /// `--allow-empty`: a selection that runs nothing is not an error.
    pub allow_empty: bool,
    /// `--profile quick|nightly`.
    pub profile: Profile,
    /// `--deadline SECS`: overrides every test's deadline.
    pub deadline: Option<Duration>,
    /// `--report-dir DIR` (default `target/poolstress`).
    pub report_dir: PathBuf,
    /// `--seed N`: replays a run's random choices.
    pub seed: Option<u64>,
    /// `--update-baselines`: rewrite the measured keys of the baseline files.
    pub update_baselines: bool,
    /// `--check-baselines`: compare with baselines, fail on regression
    /// (default in the nightly profile).
    pub check_baselines: bool,
    /// `--baseline-dir DIR` (default `baselines`).
    pub baseline_dir: PathBuf,
    /// `--strict-baselines`: with `--check-baselines`, a metric without a
    /// baseline (or a baseline without a measurement) fails too.
    pub strict_baselines: bool,
    /// `--segment i/n`: this process runs the i-th of n equal parts of every
    /// open-loop phase's arrivals (load from many hosts; see
    /// [`crate::load::fleet`]).
    pub segment: Segment,
    /// `--start-at <unix-ms>`: the wall-clock time the first open-loop phase
    /// of this process anchors its timetable at (the fleet's shared start).
    pub start_at: Option<SystemTime>,
    /// `--merge PATH...`: merge these report.json files (directories: every
    /// `*.json` under them) into one report instead of running tests.
    pub merge: Vec<PathBuf>,
}

/// A command line or environment poolstress cannot run with.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Flags that take a value, with their env var.
const VALUE_FLAGS: &[(&str, &str)] = &[
    ("--include-tag", "POOLSTRESS_INCLUDE_TAGS"),
    ("--exclude-tag", "POOLSTRESS_EXCLUDE_TAGS"),
    ("--profile", "POOLSTRESS_PROFILE"),
    ("--deadline", "POOLSTRESS_DEADLINE"),
    ("--report-dir", "POOLSTRESS_REPORT_DIR"),
    ("--seed", "POOLSTRESS_SEED"),
    ("--baseline-dir", "POOLSTRESS_BASELINE_DIR"),
    ("--segment", "POOLSTRESS_SEGMENT"),
    ("--start-at", "POOLSTRESS_START_AT"),
];

/// Switches, with their env var (`1`/`true` turns them on).
const SWITCHES: &[(&str, &str)] = &[
    ("--allow-empty", "POOLSTRESS_ALLOW_EMPTY"),
    ("--update-baselines", "POOLSTRESS_UPDATE_BASELINES"),
    ("--check-baselines", "POOLSTRESS_CHECK_BASELINES"),
    ("--strict-baselines", "POOLSTRESS_STRICT_BASELINES"),
];

/// The help text for poolstress's flags, printed after libtest's on `--help`.
pub const HELP: &str = "\
poolstress options (on top of libtest's):
    --include-tag T     run tests having any of these tags (repeatable, comma lists)
                        [env POOLSTRESS_INCLUDE_TAGS]
    --exclude-tag T     never run tests having these tags; wins over include
                        [env POOLSTRESS_EXCLUDE_TAGS]
    --allow-empty       a selection that runs no test is not an error [env POOLSTRESS_ALLOW_EMPTY]
    --profile P         quick (default) or nightly [env POOLSTRESS_PROFILE]
    --deadline SECS     overrides every test's deadline [env POOLSTRESS_DEADLINE]
    --report-dir DIR    where report.json and junit.xml go (default target/poolstress)
                        [env POOLSTRESS_REPORT_DIR]
    --seed N            replay a run's random choices [env POOLSTRESS_SEED]
    --update-baselines  rewrite the measured baseline keys [env POOLSTRESS_UPDATE_BASELINES]
    --check-baselines   fail with exit code 5 on regression (default in nightly;
                        POOLSTRESS_CHECK_BASELINES=0 turns that off) [env POOLSTRESS_CHECK_BASELINES]
    --strict-baselines  with --check-baselines, a metric with no baseline fails too
                        [env POOLSTRESS_STRICT_BASELINES]
    --baseline-dir DIR  baseline files (default baselines) [env POOLSTRESS_BASELINE_DIR]
    --segment I/N       run the I-th of N equal parts of every open-loop phase's arrivals
                        (load from N hosts) [env POOLSTRESS_SEGMENT]
    --start-at MS       Unix time in ms the first open-loop phase starts at, shared by
                        every host [env POOLSTRESS_START_AT]
    --merge PATH...     run no tests: merge report.json files (directories: every *.json
                        under them) into report.json, junit.xml, report.html in
                        --report-dir, checking baselines with --check-baselines
exit codes: 0 ok, 2 usage, 3 fixture (service) failure, 4 no tests ran, 5 baseline
regression, 101 test failure, 130 interrupted";

/// Splits `args` (without the program name) into poolstress's options and
/// the arguments left for libtest-mimic. `env` looks up environment variables.
pub fn split_args(
    args: impl IntoIterator<Item = String>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(Options, Vec<String>), UsageError> {
    let mut values: Vec<(&'static str, String)> = Vec::new();
    let mut switches: Vec<&'static str> = Vec::new();
    let mut rest = Vec::new();
    let mut merge = Vec::new();
    let mut merging = false;
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        if arg == "--merge" {
            merging = true;
            continue;
        }
        if let Some(p) = arg.strip_prefix("--merge=") {
            merge.push(PathBuf::from(p));
            continue;
        }
        if merging && !arg.starts_with('-') {
            merge.push(PathBuf::from(arg));
            continue;
        }
        merging = false;
        if let Some(&(flag, _)) = VALUE_FLAGS.iter().find(|(f, _)| arg == *f || arg.starts_with(&format!("{f}="))) {
            let v = match arg.split_once('=') {
                Some((_, v)) => v.to_string(),
                None => it
                    .next()
                    .ok_or_else(|| UsageError(format!("{flag} needs a value, e.g. `{flag} {}`", example(flag))))?,
            };
            values.push((flag, v));
        } else if let Some(&(flag, _)) = SWITCHES.iter().find(|(f, _)| arg == *f) {
            switches.push(flag);
        } else {
            rest.push(arg);
        }
    }

    // A flag given on the command line wins over its env var.
    let get_all = |flag: &str| -> Vec<String> {
        let from_cli: Vec<String> = values.iter().filter(|(f, _)| *f == flag).map(|(_, v)| v.clone()).collect();
        if !from_cli.is_empty() {
            return from_cli;
        }
        let var = VALUE_FLAGS.iter().find(|(f, _)| *f == flag).map(|(_, v)| *v).expect("known flag");
        env(var).filter(|v| !v.trim().is_empty()).into_iter().collect()
    };
    let get = |flag: &str| get_all(flag).pop();
    let switch = |flag: &str| -> bool {
        if switches.contains(&flag) {
            return true;
        }
        let var = SWITCHES.iter().find(|(f, _)| *f == flag).map(|(_, v)| *v).expect("known switch");
        matches!(env(var).as_deref().map(str::trim), Some("1" | "true" | "yes"))
    };

    let mut selection = tag::Selection::default();
    for v in get_all("--include-tag") {
        selection.include.extend(tag::split_list(&v));
    }
    for v in get_all("--exclude-tag") {
        selection.exclude.extend(tag::split_list(&v));
    }

    let profile = match get("--profile") {
        Some(p) => p.parse::<Profile>().map_err(UsageError)?,
        None => Profile::default(),
    };
    let deadline = match get("--deadline") {
        Some(s) => Some(parse_secs(&s).ok_or_else(|| {
            UsageError(format!(
                "--deadline \"{s}\" is not a number of seconds (e.g. `--deadline 90` or `--deadline 2.5`)"
            ))
        })?),
        None => None,
    };
    let seed = match get("--seed") {
        Some(s) => Some(s.trim().parse::<u64>().map_err(|_| {
            UsageError(format!("--seed \"{s}\" is not an unsigned integer (copy the seed a run printed)"))
        })?),
        None => None,
    };
    let segment = match get("--segment") {
        Some(s) => s.parse::<Segment>().map_err(|e| UsageError(format!("--segment: {e}")))?,
        None => Segment::WHOLE,
    };
    let start_at = match get("--start-at") {
        Some(s) => Some(parse_start_at(&s)?),
        None => None,
    };
    let update_baselines = switch("--update-baselines");
    // Nightly checks by default; POOLSTRESS_CHECK_BASELINES=0 turns that
    // off (the shards of a sharded nightly leave the check to the merge).
    let check_off = !switches.contains(&"--check-baselines")
        && matches!(env("POOLSTRESS_CHECK_BASELINES").as_deref().map(str::trim), Some("0" | "false" | "no"));
    let check_baselines = switch("--check-baselines") || (profile == Profile::Nightly && !check_off);

    let options = Options {
        selection,
        allow_empty: switch("--allow-empty"),
        profile,
        deadline,
        report_dir: get("--report-dir").map(PathBuf::from).unwrap_or_else(default_report_dir),
        seed,
        update_baselines,
        check_baselines,
        baseline_dir: get("--baseline-dir").map(PathBuf::from).unwrap_or_else(default_baseline_dir),
        strict_baselines: switch("--strict-baselines"),
        segment,
        start_at,
        merge,
    };
    Ok((options, rest))
}

/// `--start-at`: Unix time in milliseconds (`date +%s%3N`), at most a day ahead.
fn parse_start_at(s: &str) -> Result<SystemTime, UsageError> {
    let ms: u64 = s.trim().parse().map_err(|_| {
        UsageError(format!(
            "--start-at \"{s}\" is not a Unix time in milliseconds (e.g. `--start-at $(( $(date +%s%3N) + 30000 ))` \
             for 30 s from now; give every host the same value)"
        ))
    })?;
    if ms < 1_000_000_000_000 {
        return Err(UsageError(format!(
            "--start-at {ms} looks like Unix seconds or a duration: give Unix milliseconds (`date +%s%3N`)"
        )));
    }
    let at = UNIX_EPOCH + Duration::from_millis(ms);
    if at.duration_since(SystemTime::now()).is_ok_and(|d| d > Duration::from_secs(86_400)) {
        return Err(UsageError(format!(
            "--start-at {ms} is more than a day ahead of this host's clock: check the value (Unix milliseconds) and the clock"
        )));
    }
    Ok(at)
}

fn parse_secs(s: &str) -> Option<Duration> {
    let s = s.trim().trim_end_matches('s');
    let f: f64 = s.parse().ok()?;
    (f.is_finite() && f > 0.0).then(|| Duration::from_secs_f64(f))
}

fn example(flag: &str) -> &'static str {
    match flag {
        "--include-tag" | "--exclude-tag" => "chaos",
        "--profile" => "nightly",
        "--deadline" => "90",
        "--seed" => "1234",
        _ => "DIR",
    }
}

/// `baselines/` of the workspace the test binary was built in (cargo runs
/// test binaries from the package dir, not the workspace root), else `./baselines`.
fn default_baseline_dir() -> PathBuf {
    if let Ok(exe) = std::env::current_exe() {
        if let Some(target) = exe.ancestors().find(|p| p.file_name().is_some_and(|n| n == "target")) {
            if let Some(root) = target.parent() {
                if root.join("baselines").is_dir() {
                    return root.join("baselines");
                }
            }
        }
    }
    PathBuf::from("baselines")
}

/// `$CARGO_TARGET_DIR/poolstress`, else `poolstress/` in the target dir the
/// test binary was built in (found from its path), else `./target/poolstress`.
fn default_report_dir() -> PathBuf {
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(t).join("poolstress");
    }
    if let Ok(exe) = std::env::current_exe() {
        // <target dir>/<profile>/deps/<test binary> or .../examples/<example>,
        // whatever the target dir is called (`build.target-dir`).
        let dir = exe.parent();
        if dir.and_then(|d| d.file_name()).is_some_and(|n| n == "deps" || n == "examples") {
            if let Some(target) = dir.and_then(|d| d.parent()).and_then(|p| p.parent()) {
                return target.join("poolstress");
            }
        }
        if let Some(target) = exe.ancestors().find(|p| p.file_name().is_some_and(|n| n == "target")) {
            return target.join("poolstress");
        }
    }
    PathBuf::from("target/poolstress")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn split(args: &[&str], env: &[(&str, &str)]) -> Result<(Options, Vec<String>), UsageError> {
        let env: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        split_args(args.iter().map(|s| s.to_string()), |k| env.get(k).cloned())
    }

    fn set(xs: &[&str]) -> std::collections::BTreeSet<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn takes_out_our_flags_and_keeps_libtests() {
        let (o, rest) = split(
            &[
                "--include-tag",
                "chaos",
                "--exact",
                "--include-tag=redis,layer_2",
                "filter",
                "--exclude-tag",
                "layer_3",
                "--nocapture",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(o.selection.include, set(&["chaos", "redis", "layer_2"]));
        assert_eq!(o.selection.exclude, set(&["layer_3"]));
        assert_eq!(rest, vec!["--exact", "filter", "--nocapture"]);
    }

    #[test]
    fn env_is_used_when_no_flag_given() {
        let (o, _) =
            split(&[], &[("POOLSTRESS_INCLUDE_TAGS", "layer_1, layer_2"), ("POOLSTRESS_PROFILE", "nightly")]).unwrap();
        assert_eq!(o.selection.include, set(&["layer_1", "layer_2"]));
        assert_eq!(o.profile, Profile::Nightly);
        assert!(o.check_baselines, "nightly checks baselines by default");
        let (o, _) = split(&[], &[("POOLSTRESS_PROFILE", "nightly"), ("POOLSTRESS_CHECK_BASELINES", "0")]).unwrap();
        assert!(!o.check_baselines, "an explicit 0 turns nightly's default off");
        let (o, _) =
            split(&["--check-baselines"], &[("POOLSTRESS_PROFILE", "nightly"), ("POOLSTRESS_CHECK_BASELINES", "0")])
                .unwrap();
        assert!(o.check_baselines, "the flag wins over the env var");
    }

    #[test]
    fn flag_wins_over_env() {
        let (o, _) = split(&["--include-tag", "chaos"], &[("POOLSTRESS_INCLUDE_TAGS", "layer_1")]).unwrap();
        assert_eq!(o.selection.include, set(&["chaos"]));
    }

    #[test]
    fn switches_and_values() {
        let (o, rest) = split(
            &[
                "--allow-empty",
                "--seed",
                "42",
                "--deadline=2.5",
                "--profile",
                "quick",
                "--report-dir",
                "/tmp/r",
                "--update-baselines",
            ],
            &[],
        )
        .unwrap();
        assert!(o.allow_empty && o.update_baselines && !o.check_baselines);
        assert_eq!(o.seed, Some(42));
        assert_eq!(o.deadline, Some(Duration::from_millis(2500)));
        assert_eq!(o.report_dir, PathBuf::from("/tmp/r"));
        assert!(rest.is_empty());
    }

    #[test]
    fn bad_values_are_usage_errors_that_say_what_to_do() {
        for (args, needle) in [
            (&["--include-tag"][..], "needs a value"),
            (&["--profile", "fast"][..], "quick, nightly"),
            (&["--seed", "x"][..], "unsigned integer"),
            (&["--deadline", "-1"][..], "number of seconds"),
        ] {
            let e = split(args, &[]).unwrap_err();
            assert!(e.0.contains(needle), "{args:?}: {e}");
        }
    }

    #[test]
    fn segment_start_at_and_merge() {
        let (o, rest) = split(
            &["--segment", "2/3", "--start-at=1700000000000", "--merge", "a.json", "dir", "--check-baselines"],
            &[],
        )
        .unwrap();
        assert_eq!(o.segment.to_string(), "2/3");
        assert_eq!(o.start_at, Some(UNIX_EPOCH + Duration::from_millis(1_700_000_000_000)));
        assert_eq!(o.merge, vec![PathBuf::from("a.json"), PathBuf::from("dir")]);
        assert!(o.check_baselines && rest.is_empty());
        let (o, _) = split(&[], &[("POOLSTRESS_SEGMENT", "3/3")]).unwrap();
        assert_eq!(o.segment.index(), 3);
        let (o, _) = split(&[], &[]).unwrap();
        assert!(o.segment.is_whole() && o.start_at.is_none() && o.merge.is_empty());
        for (args, needle) in [
            (&["--segment", "4/3"][..], "1/3, 2/3 or 3/3"),
            (&["--segment", "x"][..], "is not i/n"),
            (&["--start-at", "soon"][..], "milliseconds"),
            (&["--start-at", "1800000000"][..], "looks like Unix seconds"),
            (&["--start-at", "99999999999999"][..], "more than a day ahead"),
        ] {
            let e = split(args, &[]).unwrap_err();
            assert!(e.0.contains(needle), "{args:?}: {e}");
        }
    }

    #[test]
    fn env_switch_values() {
        let (o, _) = split(&[], &[("POOLSTRESS_ALLOW_EMPTY", "1"), ("POOLSTRESS_UPDATE_BASELINES", "0")]).unwrap();
        assert!(o.allow_empty);
        assert!(!o.update_baselines);
    }
}
