#!/usr/bin/env bash
# Suites import the kit (crate::kit), the harness and the fixtures, never
# each other. Fails listing every line of a suite module that reaches
# another suite: `crate::suites::...`, `super::...` from a suite's root file
# (whose parent is the suites module), or `super::super::...`.
set -euo pipefail
cd "$(dirname "$0")/../suites/src/suites"
bad=0
while IFS= read -r f; do
  case "$f" in
    ./mod.rs) continue ;;
    ./*/mod.rs | ./*.rs) root=1 ;;
    *) root=0 ;;
  esac
  case "$f" in ./*/*/*) root=0 ;; esac
  [ "$f" = "${f#./*/}" ] || { case "$f" in ./*/mod.rs) root=1 ;; *) root=0 ;; esac; }
  while IFS= read -r hit; do
    echo "$f:$hit"; bad=1
  done < <(grep -nE 'crate::suites::|super::super::' "$f" | grep -vE '^\s*[0-9]+:\s*//' || true)
  if [ "$root" = 1 ]; then
    while IFS= read -r hit; do
      echo "$f:$hit"; bad=1
    done < <(grep -nE '\bsuper::' "$f" | grep -vE '^[0-9]+:\s*//' | grep -vE 'use super::\*;' || true)
  fi
done < <(find . -name '*.rs' | sort)
if [ "$bad" = 1 ]; then
  echo "suite modules above import another suite: move what they share into suites/src/kit/"
  exit 1
fi
echo "suite imports: every suite module imports only the kit, the harness and the fixtures"
