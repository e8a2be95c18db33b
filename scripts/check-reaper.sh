#!/usr/bin/env bash
# A run killed with SIGKILL mid-chaos leaves no container behind, not even
# until the next run: its reaper removes them. Starts one chaos test on the
# docker backend, waits until its containers exist and traffic flows, sends
# SIGKILL, and requires every container of that process gone within 10 s.
# Usage: scripts/check-reaper.sh STRESS_BINARY
set -euo pipefail
bin=${1:?usage: scripts/check-reaper.sh STRESS_BINARY}
test_name='chaos::postgres::overlapping_faults[deadpool-postgres]'
log=$(mktemp); trap 'rm -f "$log"' EXIT
# The nightly profile: the scenario runs long enough to be killed mid-fault.
POOLSTRESS_BACKEND=docker "$bin" --exact "$test_name" --profile nightly --report-dir "$(mktemp -d)" >"$log" 2>&1 &
pid=$!
ours() { docker ps -a --filter label=poolstress.pid --format '{{.ID}} {{.Label "poolstress.pid"}}' | awk -v p="$pid:" 'index($2, p) == 1 {print $1}'; }
deadline=$((SECONDS + 90))
until [ -n "$(ours)" ]; do
  kill -0 "$pid" 2>/dev/null || { cat "$log"; echo "the run ended before starting a container"; exit 1; }
  [ $SECONDS -lt $deadline ] || { cat "$log"; kill -9 "$pid"; echo "no container of pid $pid after 90 s"; exit 1; }
  sleep 0.2
done
sleep 3 # into the scenario's load and fault schedule: the point is to kill it mid-run
kill -0 "$pid" 2>/dev/null || { cat "$log"; echo "the run ended before it could be killed mid-chaos"; exit 1; }
before=$(ours | wc -l)
kill -9 "$pid"
wait "$pid" 2>/dev/null || true
deadline=$((SECONDS + 10))
while [ -n "$(ours)" ] && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
left=$(ours | wc -l)
echo "SIGKILLed run (pid $pid) had $before container(s); $left left within 10 s"
[ "$left" = 0 ] || { docker ps -a --filter label=poolstress.pid; exit 1; }
