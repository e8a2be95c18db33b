#!/usr/bin/env bash
# As a user would: a crate outside the workspace (a temp dir, poolstress by
# path, no profile settings of its own) registers its own Redis pool with
# one call (scripts/user-crate/tests/stress.rs) and runs
#   cargo test --test stress -- --include-tag chaos
# Passes when that exits 0, runs at least one test, and every test that ran
# carries the pool's name. Extra arguments go to the test binary. Then, with
# the crate's default profiles (opt-level 0), `peer::redis::get[<pool>]`:
# the run must warn that the harness is unoptimized, record
# build.harness_opt_level = "0" in report.json and print its `peer:` line
# (the numbers a user sees before adding the two profile lines).
# Env: USER_CRATE_TARGET_DIR (default: a target dir inside the temp crate,
# removed with it), USER_CRATE_KEEP=1 keeps the crate.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
pool_name=my-redis-pool
dir=$(mktemp -d "${TMPDIR:-/tmp}/poolstress-user-crate.XXXXXX")
[ "${USER_CRATE_KEEP:-0}" = 1 ] || trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/tests"
cat > "$dir/Cargo.toml" <<TOML
[package]
name = "my-redis-pool"
version = "0.1.0"
edition = "2021"
publish = false

[dependencies]
poolstress = { path = "$repo/suites" }
futures = "0.3"
tokio = { version = "1", features = ["full"] }

[[test]]
name = "stress"
harness = false

# Not a member of any workspace above it.
[workspace]
TOML
mkdir -p "$dir/src"
echo '//! My Redis pool (the pool lives in tests/stress.rs for this check).' > "$dir/src/lib.rs"
cp "$repo/scripts/user-crate/tests/stress.rs" "$dir/tests/stress.rs"
# The versions poolstress is tested with (a user's own lock file would be used as is).
cp "$repo/Cargo.lock" "$dir/Cargo.lock"
export CARGO_TARGET_DIR="${USER_CRATE_TARGET_DIR:-$dir/target}"
report="$dir/report"
cd "$dir"
echo "user crate at $dir (target $CARGO_TARGET_DIR)"
cargo test --test stress -- --include-tag chaos --report-dir "$report" "$@"
python3 - "$report/report.json" "$pool_name" <<'PY'
import json, sys
path, pool = sys.argv[1], sys.argv[2]
r = json.load(open(path))
ran = [t for t in r["tests"] if t["outcome"] in ("passed", "failed")]
other = [t["name"] for t in r["tests"] if not t["name"].endswith(f"[{pool}]")]
assert ran, "the user crate's chaos selection ran no test"
assert not other, f"tests that do not carry [{pool}]: {other}"
print(f"user crate: {len(ran)} tests ran ({r['passed']} passed, {r['failed']} failed), every one of them [{pool}]")
PY

# The same crate's default profiles: the harness runs unoptimized there.
peer_log="$dir/peer.log"
cargo test --test stress -- --include-tag benchmark --report-dir "$report-peer" "peer::redis::get[$pool_name]" 2>&1 | tee "$peer_log"
grep -q "the harness was built without optimizations" "$peer_log" \
  || { echo "user crate: no opt-level warning at default profiles" >&2; exit 1; }
grep -q "^peer: redis get" "$peer_log" || { echo "user crate: the peer run printed no 'peer:' line" >&2; exit 1; }
python3 - "$report-peer/report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
lvl = r["run"].get("build.harness_opt_level")
assert lvl == "0", f"report.json records build.harness_opt_level {lvl!r}, expected '0' at default profiles"
assert r["passed"] == 1, f"peer::redis::get did not pass: {r['passed']} passed, {r['failed']} failed"
print("user crate: default profiles: the opt-level warning printed, build.harness_opt_level = 0 recorded")
PY
