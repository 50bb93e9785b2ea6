#!/usr/bin/env bash
# Runs the whole impush test suite, as CI does: formatting, lints, every test (unit,
# conformance, end-to-end, CLI, doctests) and the runnable examples.
#
#   ./scripts/test.sh
#
# Needs only a Rust toolchain (rustup with rustfmt and clippy). Broker-backed tests are added by
# later backends; this script will start their brokers itself.
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

step "cargo test"
cargo test --workspace

step "examples"
cargo run -q -p impush-examples --example embedded_chat >/dev/null
echo "examples: embedded_chat ok" >&2
