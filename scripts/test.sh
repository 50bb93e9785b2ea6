#!/usr/bin/env bash
# Runs the whole impush test suite, as CI does: formatting, lints, the memory-only build, every
# Rust test (unit, conformance against memory and real brokers, end-to-end, multi-process
# cluster and fault suites, CLI, doctests), the JavaScript client's tests against a real node,
# the chat demo in a real Chromium, the runnable examples, schemathesis against the node's own
# OpenAPI document, the deploy files (scripts/check-deploy.sh), and each cargo-fuzz target for
# 60 s (IMPUSH_FUZZ_SECONDS).
#
#   ./scripts/test.sh
#
# Needs a Rust toolchain (rustup), Node >= 20 with npm, and root or sudo for apt: it installs
# and starts the brokers itself (scripts/brokers.sh up: Redis, RabbitMQ, NATS and a
# Kafka-protocol broker on loopback) and Chromium, and runs the broker tests strictly: a broker
# that is missing fails the run instead of being skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

step() { printf '\n==> %s (%ss)\n' "$*" "$SECONDS" >&2; }

if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  step "installing rustfmt and clippy"
  rustup component add rustfmt clippy
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "citations stay inside the repository"
# Comments and docs cite docs/design.md section N or a README anchor: a citation of another
# design file, or of a path outside the repository, is one a reader of the repository cannot follow.
rc=0
cites=$(git grep -nE 'DESIGN[.]md|DESIGN[ ]section|[.][.]/shared/|/work[/]shared' -- ':!docs/') || rc=$?
if [ "$rc" -eq 0 ]; then
  printf 'cite docs/design.md section N instead of:\n%s\n' "$cites" >&2
  exit 1
elif [ "$rc" -ne 1 ]; then
  echo "git grep failed (exit $rc); the citation check needs a git checkout" >&2
  exit 1
fi

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "memory-only build compiles no broker client"
cargo check -q -p impush-server --no-default-features
clients=$(cargo tree -p impush-server --no-default-features -e normal,build --prefix none \
  | grep -Eo '^(fred|lapin|rdkafka|rdkafka-sys|async-nats) ' | sort -u || true)
if [ -n "$clients" ]; then
  echo "the memory-only build depends on broker clients: $clients" >&2
  exit 1
fi
# The registry's own tests without any broker feature: a kind compiled out names its feature.
cargo test -q -p impush-brokers --no-default-features --lib

step "brokers"
scripts/brokers.sh up >/dev/null
eval "$(scripts/brokers.sh env)"
export IMPUSH_REQUIRE_BROKERS=1

step "cargo test (every member, the NATS custom broker example included)"
cargo test --workspace --no-fail-fast

step "build the binaries the JavaScript tests drive"
cargo build -q -p impush-server --bin impush
cargo build -q -p impush-examples --bin chat

step "schemathesis: every check against the node's own OpenAPI document"
IMPUSH_BIN="$root/target/debug/impush" scripts/schemathesis.sh

step "clients/js: types (tsc), the packed package, unit and integration tests against a real node"
(cd clients/js && npm ci --no-audit --no-fund --loglevel=error \
  && IMPUSH_BIN="$root/target/debug/impush" npm test)

step "examples/chat: the demo in Chromium"
scripts/brokers.sh install chromium >/dev/null
(cd examples/chat/e2e && npm ci --no-audit --no-fund --loglevel=error \
  && CHAT_BIN="$root/target/debug/chat" npm test)

step "examples"
timeout 60 cargo run -q -p impush-examples --example embedded_chat >/dev/null
echo "examples: embedded_chat ok" >&2

step "deploy: Dockerfile, compose file, systemd unit, Kubernetes manifests (no Docker engine here: deploy/README.md)"
scripts/check-deploy.sh "$root/target/debug/impush"

step "fuzz: each cargo-fuzz target ${IMPUSH_FUZZ_SECONDS:-60}s"
scripts/fuzz.sh "${IMPUSH_FUZZ_SECONDS:-60}"
step "done"
