#!/usr/bin/env bash
# Runs the whole impush test suite, as CI does: formatting, lints, every test (unit,
# conformance against memory and real brokers, end-to-end, multi-process clusters, CLI,
# doctests) and the runnable examples.
#
#   ./scripts/test.sh
#
# Needs a Rust toolchain (rustup) and root or sudo for apt: it installs and starts the brokers
# itself (scripts/brokers.sh up) and runs the broker tests strictly: a broker that is missing
# fails the run instead of being skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  step "installing rustfmt and clippy"
  rustup component add rustfmt clippy
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "brokers"
scripts/brokers.sh up >/dev/null
eval "$(scripts/brokers.sh env)"
export IMPUSH_REQUIRE_BROKERS=1

step "cargo test"
cargo test --workspace

step "examples"
cargo run -q -p impush-examples --example embedded_chat >/dev/null
echo "examples: embedded_chat ok" >&2
