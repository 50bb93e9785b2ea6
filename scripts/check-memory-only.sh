#!/usr/bin/env bash
# Checks the memory-only node: the server builds with no broker feature and depends on no broker
# client, and the registry's own tests pass without them (a kind compiled out names its feature).
# scripts/test.sh runs it in the background while the Rust tests run (README "Tests").
#
#   ./scripts/check-memory-only.sh
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build -q -p impush-server --no-default-features --lib
clients=$(cargo tree -p impush-server --no-default-features -e normal,build --prefix none \
  | grep -Eo '^(fred|lapin|rdkafka|rdkafka-sys|async-nats) ' | sort -u || true)
if [ -n "$clients" ]; then
  echo "the memory-only build depends on broker clients: $clients" >&2
  exit 1
fi
cargo test -q -p impush-brokers --no-default-features --lib
echo "memory-only: builds, no broker client, registry tests pass"
