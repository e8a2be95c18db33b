#!/usr/bin/env bash
# Renders a poolstress HTML report in headless Chromium and checks that the
# page shows plots: the report has SVG plots and the screenshot is a real
# picture (not a blank page). Usage: scripts/check-html-report.sh [report.html] [out.png]
set -euo pipefail
report=${1:-target/poolstress/report.html}
out=${2:-${report%.html}.png}
[ -f "$report" ] || { echo "no report at $report: run the stress target first"; exit 1; }
svgs=$(grep -o '<svg' "$report" | wc -l)
[ "$svgs" -ge 1 ] || { echo "$report has no plots (<svg> elements)"; exit 1; }
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [ -z "$browser" ]; then
  apt-get install -y -qq chromium >/dev/null 2>&1 || true
  browser=$(command -v chromium || true)
fi
[ -n "$browser" ] || { echo "no Chromium to render $report (apt-get install chromium)"; exit 1; }
rm -f "$out"
timeout 120 "$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars \
  --window-size=1280,2400 --screenshot="$(realpath -m "$out")" "file://$(realpath "$report")" >/dev/null 2>&1 || true
[ -s "$out" ] || { echo "Chromium wrote no screenshot of $report"; exit 1; }
# A blank white page of this size compresses to a few KB; plots and tables do not.
size=$(stat -c %s "$out")
[ "$size" -gt 20000 ] || { echo "screenshot $out is only $size bytes: the page looks empty"; exit 1; }
echo "report renders: $svgs plots, screenshot $out ($size bytes)"
