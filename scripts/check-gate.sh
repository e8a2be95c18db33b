#!/usr/bin/env bash
# How quiet is the regression gate on unchanged code? Records baselines into
# a temp dir (never baselines/), then runs the gate K times idle and K times
# with a CPU hog on one core, and prints how many gated metrics each run
# flagged. Any flag on unchanged code is a false regression: exit 1.
#
#   scripts/check-gate.sh                      # 3 recordings, 10 idle + 10 hog runs, every benchmark
#   scripts/check-gate.sh --runs 3 bench::redis::   # fewer runs, one name filter
#   scripts/check-gate.sh --conditions hog     # only with the hog
#
# Options: --runs K (checks per condition, default 10), --record R
# (recordings that build each metric's history, default 3), --conditions
# idle,hog (default both), one optional name filter (as the stress binary
# takes it). The backend is the environment's (POOLSTRESS_BACKEND, images).
# Nothing else should run on the machine meanwhile: that is the point.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=10 record=3 conditions=idle,hog filter=()
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --record) record=$2; shift 2 ;;
    --conditions) conditions=$2; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    --*) echo "check-gate: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) filter=("$1"); shift ;;
  esac
done
case "$runs$record" in *[!0-9]*) echo "check-gate: --runs and --record take a number" >&2; exit 2 ;; esac

stress_bin=$(cargo test --test stress --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "stress" and m.get("executable"):
        print(m["executable"])' | tail -1)
[ -x "$stress_bin" ] || { echo "check-gate: could not build the stress binary (cargo test --test stress --no-run)" >&2; exit 2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/poolstress-gate.XXXXXX")
hog_pid=
cleanup() {
  [ -n "$hog_pid" ] && kill "$hog_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

sel=(--include-tag benchmark "${filter[@]}" --baseline-dir "$work/baselines")
count() { # report.json -> "regressed gated worse"
  python3 - "$1" <<'EOF'
import json, sys
b = json.load(open(sys.argv[1]))["run"].get("baselines") or {}
names = [f'{r["test"]}/{r["metric"]}' for r in b.get("rows", []) if r.get("verdict") == "regressed"]
print(b.get("regressed", 0), b.get("gated", 0), b.get("worse", 0), " ".join(names))
EOF
}

echo "check-gate: recording $record time(s) into $work/baselines ($stress_bin)"
for i in $(seq 1 "$record"); do
  if ! "$stress_bin" "${sel[@]}" --update-baselines --report-dir "$work/record-$i" > "$work/record-$i.log" 2>&1; then
    echo "check-gate: recording $i failed:" >&2; tail -40 "$work/record-$i.log" >&2; exit 2
  fi
done

total_flagged=0
summary=()
for cond in ${conditions//,/ }; do
  case "$cond" in
    idle) hog_pid= ;;
    hog)
      # One core busy: a spinning process, pinned when taskset is there.
      if command -v taskset >/dev/null; then taskset -c 0 sh -c 'while :; do :; done' & else sh -c 'while :; do :; done' & fi
      hog_pid=$! ;;
    *) echo "check-gate: unknown condition $cond (idle, hog)" >&2; exit 2 ;;
  esac
  flagged_runs=0 flagged=0 worse_sum=0 gated=0
  for i in $(seq 1 "$runs"); do
    dir="$work/$cond-$i"
    set +e
    "$stress_bin" "${sel[@]}" --check-baselines --report-dir "$dir" > "$dir.log" 2>&1
    code=$?
    set -e
    if [ ! -f "$dir/report.json" ]; then
      echo "check-gate: $cond run $i wrote no report (exit $code):" >&2; tail -40 "$dir.log" >&2; exit 2
    fi
    read -r reg gated worse names < <(count "$dir/report.json")
    if [ "$code" != 0 ] && [ "$code" != 5 ]; then
      echo "check-gate: $cond run $i failed (exit $code), not a gate verdict:" >&2; grep -E "FAILED|panicked|error" "$dir.log" | head -20 >&2; exit 2
    fi
    printf '  %-4s run %2d/%d: exit %s, %s of %s gated metric(s) flagged, %s recorded metric(s) worse%s\n' \
      "$cond" "$i" "$runs" "$code" "$reg" "$gated" "$worse" "${names:+: $names}"
    flagged=$((flagged + reg)); worse_sum=$((worse_sum + worse))
    [ "$reg" -gt 0 ] && flagged_runs=$((flagged_runs + 1))
  done
  [ -n "$hog_pid" ] && { kill "$hog_pid" 2>/dev/null || true; wait "$hog_pid" 2>/dev/null || true; hog_pid=; }
  summary+=("$cond: $flagged false regression(s) in $flagged_runs of $runs runs ($gated gated metrics each; $worse_sum recorded-metric moves, not gated)")
  total_flagged=$((total_flagged + flagged))
done

echo
echo "check-gate: unchanged code, $record recording(s), ${filter[*]:-every benchmark}:"
for s in "${summary[@]}"; do echo "  $s"; done
[ "$total_flagged" -eq 0 ]
