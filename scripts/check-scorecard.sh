#!/usr/bin/env bash
# Checks that a run's reports open with the scorecard showing the given pools
# side by side, and takes a headless-Chromium screenshot of report.html
# (through scripts/check-html-report.sh).
# Usage: scripts/check-scorecard.sh REPORT_DIR POOL [POOL...]
set -euo pipefail
dir=$1; shift
html="$dir/report.html"; md="$dir/summary.md"; png="$dir/scorecard.png"
[ -f "$html" ] && [ -f "$md" ] || { echo "no report.html / summary.md in $dir: run the stress target with --report-dir $dir"; exit 1; }
head -n1 "$md" | grep -qE '^\*\*[0-9]+ passed, [0-9]+ failed' || { echo "$md does not open with the verdict line"; exit 1; }
header=$(grep -m1 '^| scenario |' "$md" || true)
[ -n "$header" ] || { echo "$md has no scorecard table"; exit 1; }
for p in "$@"; do
  case "$header" in *"| $p |"* | *"| $p" ) ;; *) echo "scorecard in $md has no column for $p: $header"; exit 1 ;; esac
done
# In the HTML the scorecard comes before the per-test table.
python3 - "$html" <<'PY'
import sys
h = open(sys.argv[1], encoding="utf-8").read()
i, j = h.find('id="scorecard"'), h.find("<th>test</th>")
assert i >= 0, "report.html has no scorecard"
assert j < 0 or i < j, "the scorecard is not at the top of report.html"
PY
# Render and screenshot with the report check (it also requires the plots).
bash "$(dirname "$0")/check-html-report.sh" "$html" "$png"
echo "scorecard: $(head -n1 "$md"); pools $*; screenshot $png"
