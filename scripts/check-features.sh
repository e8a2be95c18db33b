#!/usr/bin/env bash
# A user testing one Redis pool depends on poolstress with
# default-features = false, features = ["deadpool-redis"]: the other pools'
# crates (sqlx, bb8, deadpool-postgres, ...) are not in its dependency tree.
# (tokio-postgres, pgwire and the docker client still are: the Postgres and
# docker parts of the fixtures are not behind features yet.)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
dir=$(mktemp -d "${TMPDIR:-/tmp}/poolstress-features.XXXXXX")
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/src"
cat > "$dir/Cargo.toml" <<TOML
[package]
name = "redis-only"
version = "0.1.0"
edition = "2021"
publish = false

[dependencies]
poolstress = { path = "$repo/suites", default-features = false, features = ["deadpool-redis"] }

[workspace]
TOML
echo "" > "$dir/src/lib.rs"
cp "$repo/Cargo.lock" "$dir/Cargo.lock"
tree=$(cd "$dir" && cargo tree -e normal --prefix none --format '{p}' | awk '{print $1}' | sort -u)
bad=0
for crate in sqlx sqlx-postgres bb8 bb8-postgres bb8-redis deadpool-postgres; do
  if grep -qx "$crate" <<<"$tree"; then echo "redis-only user still depends on $crate"; bad=1; fi
done
grep -qx deadpool-redis <<<"$tree" || { echo "deadpool-redis missing from the tree"; bad=1; }
[ "$bad" = 0 ] || exit 1
echo "features: a deadpool-redis-only user has $(wc -l <<<"$tree") crates in its tree, none of sqlx, bb8, deadpool-postgres"
