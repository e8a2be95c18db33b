#!/usr/bin/env bash
# poolstress's cargo features keep a user's build to what they test (see the
# README's features table). Three throwaway crates depend on poolstress and
# `cargo tree` shows what each pulls in:
#
# - redis-only: default-features = false, features = ["deadpool-redis"]. No
#   other pool (sqlx, bb8, deadpool-postgres), nothing of Postgres
#   (tokio-postgres, pgwire, postgres-protocol), no docker client
#   (testcontainers, bollard), no plotters. This one is also built
#   (`cargo check --tests`) with a tests/stress.rs that registers a Redis pool,
#   so the feature set compiles, not only resolves.
# - docker-less: every pool and `html`, not `docker`: no testcontainers / bollard.
# - html-less: every pool and `docker`, not `html`: no plotters.
#
# The crates use the repository's Cargo.lock and, for the build, its target
# directory (CARGO_TARGET_DIR when set), so the dependencies built for the
# workspace are reused.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/poolstress-features.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
pools='"deadpool-postgres", "bb8-postgres", "sqlx-postgres", "deadpool-redis", "bb8-redis", "redis-manager"'
bad=0

# user NAME FEATURES: a crate depending on poolstress with default-features = false.
user() {
  local dir="$tmp/$1"
  mkdir -p "$dir/src" "$dir/tests"
  cat > "$dir/Cargo.toml" <<TOML
[package]
name = "$1"
version = "0.1.0"
edition = "2021"
publish = false

[dependencies]
poolstress = { path = "$repo/suites", default-features = false, features = [$2] }

[[test]]
name = "stress"
path = "tests/stress.rs"
harness = false

[workspace]
TOML
  echo "" > "$dir/src/lib.rs"
  echo "fn main() {}" > "$dir/tests/stress.rs"
  cp "$repo/Cargo.lock" "$dir/Cargo.lock"
}

# tree NAME: the crate names in NAME's normal dependency tree.
tree() {
  (cd "$tmp/$1" && cargo tree -e normal --prefix none --format '{p}') | awk '{print $1}' | sort -u
}

# absent NAME TREE CRATE...: fails for each CRATE found in TREE.
absent() {
  local name=$1 t=$2
  shift 2
  for crate in "$@"; do
    if grep -qx "$crate" <<<"$t"; then echo "$name: still depends on $crate"; bad=1; fi
  done
}

# present NAME TREE CRATE...: fails for each CRATE missing from TREE.
present() {
  local name=$1 t=$2
  shift 2
  for crate in "$@"; do
    grep -qx "$crate" <<<"$t" || { echo "$name: $crate missing from the tree"; bad=1; }
  done
}

user redis-only '"deadpool-redis"'
cat > "$tmp/redis-only/tests/stress.rs" <<'RS'
//! A user testing one Redis pool: poolstress's suites for deadpool-redis.
fn main() -> std::process::ExitCode {
    let mut r = poolstress::Registry::new();
    poolstress::register_pool(&mut r, poolstress::fixtures::pool::DeadpoolRedis);
    poolstress::run(r)
}
RS
redis_tree=$(tree redis-only)
absent redis-only "$redis_tree" sqlx sqlx-postgres sqlx-core bb8 bb8-postgres bb8-redis deadpool-postgres \
  tokio-postgres pgwire postgres-protocol postgres-types testcontainers testcontainers-modules bollard plotters
present redis-only "$redis_tree" deadpool-redis redis

user docker-less "$pools, \"html\""
docker_tree=$(tree docker-less)
absent docker-less "$docker_tree" testcontainers testcontainers-modules bollard
present docker-less "$docker_tree" sqlx deadpool-postgres bb8-redis tokio-postgres pgwire plotters

user html-less "$pools, \"docker\""
html_tree=$(tree html-less)
absent html-less "$html_tree" plotters
present html-less "$html_tree" sqlx redis testcontainers-modules

[ "$bad" = 0 ] || exit 1

echo "features: building the redis-only crate (cargo check --tests)"
(cd "$tmp/redis-only" && CARGO_TARGET_DIR="$target" cargo check --tests --quiet)

echo "features: a deadpool-redis-only user has $(wc -l <<<"$redis_tree") crates in its tree (none of sqlx, bb8," \
  "deadpool-postgres, tokio-postgres, pgwire, postgres-protocol, testcontainers, bollard, plotters) and builds;" \
  "without docker $(wc -l <<<"$docker_tree") crates (no testcontainers, bollard); without html $(wc -l <<<"$html_tree") (no plotters)"
