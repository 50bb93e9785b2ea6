#!/usr/bin/env bash
# Runs the whole impush test suite, as CI does: formatting, lints, the memory-only build, every
# Rust test (unit, conformance against memory and real brokers, end-to-end, multi-process
# cluster and fault suites, CLI, doctests), the JavaScript client's tests against a real node,
# the chat demo and the admin console in a real Chromium, the runnable examples, schemathesis against the node's own
# OpenAPI document, the deploy files (scripts/check-deploy.sh), and each cargo-fuzz target for
# 15 s (IMPUSH_FUZZ_SECONDS; `scripts/fuzz.sh 600` is the longer run, README "Tests").
#
#   ./scripts/test.sh
#
# Rust tests run under cargo-nextest (each test its own process, several at once:
# .config/nextest.toml), after one build of every test target, linted by clippy as it compiles;
# the brokers start in the background meanwhile, and while the tests after the rolling restarts
# run so do, at the lowest CPU priority, the memory-only build, schemathesis, the fuzz run and
# the installs the later steps need. The steps after the Rust tests (the doctests, the
# JavaScript client, the browser tests, the deploy files, the example) run side by side, each
# into its own log, printed when it fails.
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

# The brokers take ~20 s to start: start them now, wait for them before the tests.
step "brokers (starting in the background)"
brokers_log=$(mktemp)
scripts/brokers.sh up >"$brokers_log" 2>&1 &
brokers_pid=$!

# Jobs run side by side in the background, each into its own log, printed when it fails.
logs=$(mktemp -d)
pids=()
names=()
starts=()
# A run that stops early (a lint fails) takes its background jobs with it.
stop_jobs() {
  local pid
  for pid in "${pids[@]}"; do
    pkill -P "$pid" 2>/dev/null || true
    kill "$pid" 2>/dev/null || true
  done
}
trap stop_jobs EXIT
# Starts `CMD...` in the background as job NAME, its output into its own log.
side() {
  local name=$1
  shift
  (
    rc=0
    "$@" || rc=$?
    echo "$SECONDS" >"$logs/$name.end"
    exit "$rc"
  ) >"$logs/$name.log" 2>&1 &
  pids+=("$!")
  names+=("$name")
  starts+=("$SECONDS")
}
# Waits for every job started so far, says how each ended and how long it took (the longest
# bounds its step), prints the log of each that failed, and forgets them; fails if one did.
wait_jobs() {
  local failed=() i
  for i in "${!pids[@]}"; do
    if wait "${pids[$i]}"; then
      echo "${names[$i]}: ok ($(($(cat "$logs/${names[$i]}.end") - starts[i]))s)" >&2
    else
      echo "${names[$i]}: FAILED" >&2
      failed+=("${names[$i]}")
    fi
  done
  for i in "${failed[@]}"; do
    printf '\n==> log of %s\n' "$i" >&2
    cat "$logs/$i.log" >&2
  done
  pids=()
  names=()
  starts=()
  [ "${#failed[@]}" -eq 0 ]
}
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

step "no import circles between modules (scripts/check-circles.py)"
python3 scripts/check-circles.py

# Clippy lints the workspace's crates while they compile for the tests: its driver stands in for
# rustc on the workspace's own crates (scripts/clippy-rustc.sh, warnings denied), so one build
# does what `cargo clippy --workspace --all-targets -- -D warnings` and then a test build did
# with every crate compiled twice. It builds the same targets clippy's --all-targets checks:
# every library, binary, example and test. Every cargo command below keeps the wrapper, or it
# would compile the workspace again.
CLIPPY_DRIVER=$(rustup which clippy-driver 2>/dev/null || command -v clippy-driver)
export CLIPPY_DRIVER
export RUSTC_WORKSPACE_WRAPPER="$root/scripts/clippy-rustc.sh"
# A build from scratch gains nothing from incremental compilation's caches, only the cost of
# writing them: 73 s instead of 79 s for the workspace's own crates on the 2-core CI machine.
export CARGO_INCREMENTAL=0

step "build (linted by clippy) every test target and the binaries the other steps drive"
cargo nextest run --workspace --no-run
# The binaries the later steps drive (impush, chat, the embedded_chat example) come from the
# same build: `--workspace --all-targets` resolves features as the test build did, so only
# the chat binary is new. (`-p impush-server --bin impush` resolved them for one package and
# compiled most dependencies a second time: ~110 s of a fresh-clone run.)
cargo build -q --workspace --all-targets

# The test runs below start the test binaries this build left, with nextest's reuse-build
# metadata instead of asking cargo again: cargo's lock on target/ is then free for the
# memory-only build, which runs in the background beside them.
reuse="$root/target/nextest-reuse"
mkdir -p "$reuse"
cargo nextest list --workspace --list-type binaries-only --message-format json >"$reuse/binaries.json"
cargo metadata --format-version 1 >"$reuse/cargo.json"
run_tests() {
  cargo nextest run --binaries-metadata "$reuse/binaries.json" --cargo-metadata "$reuse/cargo.json" \
    --no-fail-fast "$@"
}

step "brokers"
if ! wait "$brokers_pid"; then
  cat "$brokers_log" >&2
  exit 1
fi
eval "$(scripts/brokers.sh env)"
export IMPUSH_REQUIRE_BROKERS=1

# The rolling restarts first, alone: how long each client is away is what they check, so
# nothing else runs beside them (.config/nextest.toml gives them every slot as well).
step "cargo nextest: the rolling restarts, alone"
rc=0
run_tests -E 'test(rolling_restart)' || rc=$?

# Work that waits on no test result runs in the background while the other Rust tests run, at
# the lowest CPU priority (SCHED_IDLE: CPU no test wants): the cluster cases mostly wait on
# leases, restarts and fault windows, leaving the cores ~40% idle, and the steps after the
# tests find it done. That is the npm installs, the memory-only build (scripts/
# check-memory-only.sh: the server with no broker feature depends on no broker client), the
# short fuzz run (built without optimizations, in fuzz/'s own target dir; each target fuzzes
# for its 15 s on whatever CPU the tests leave, so it runs fewer inputs than on a quiet
# machine: `scripts/fuzz.sh 600` is the longer run) and schemathesis against a node of its own
# (it bound the last step: 21 s alone, ~40 s beside the browser tests). Not beside the rolling
# restarts: an optimized fuzz build at nice 19 once overlapped the Redis one in three
# fresh-clone runs, which then took 66-75 s instead of 34 s and failed its bounds each time.
step "background: npm installs, the fuzz run, the memory-only build, chromium, the deploy-check venv and schemathesis"
bin="$root/target/debug/impush"
for dir in clients/js examples/chat/e2e tests/admin-e2e; do
  side "npm-${dir//\//-}" chrt -i 0 bash -c "cd $dir && npm ci --no-audit --no-fund --loglevel=error"
done
# Every fuzz target at once: each still runs its 15 s.
side fuzz chrt -i 0 env -u RUSTC_WORKSPACE_WRAPPER IMPUSH_FUZZ_JOBS="${IMPUSH_FUZZ_JOBS:-4}" \
  scripts/fuzz.sh --dev "${IMPUSH_FUZZ_SECONDS:-15}"
side memory-only chrt -i 0 scripts/check-memory-only.sh
# What the browser and deploy-check steps install on a machine that lacks it (apt, pip).
side chromium chrt -i 0 scripts/brokers.sh install chromium
# One job for both venvs: each may need apt (python3-venv, systemd), one apt at a time.
side python-venvs chrt -i 0 bash -c "scripts/schemathesis.sh --install && scripts/check-deploy.sh --install \
  && IMPUSH_BIN='$bin' scripts/schemathesis.sh"

step "cargo nextest: every other test (every member, the NATS custom broker example included)"
run_tests -E 'not test(rolling_restart)' || rc=$?
step "background jobs (npm installs, fuzz run, memory-only build, chromium, venvs and schemathesis)"
wait_jobs || rc=1
[ "$rc" -eq 0 ] || exit "$rc"

# The rest side by side: each step into its own log; a failing one prints its log.
side doctests cargo test -q --workspace --doc
side js bash -c "cd clients/js && IMPUSH_BIN='$bin' npm test"
side chat-e2e bash -c "cd examples/chat/e2e && CHAT_BIN='$root/target/debug/chat' npm test"
side admin-e2e bash -c "cd tests/admin-e2e && IMPUSH_BIN='$bin' npm test"
side deploy scripts/check-deploy.sh "$bin"
side example timeout 60 "$root/target/debug/examples/embedded_chat"
step "side by side: ${names[*]}"
wait_jobs || exit 1
step "done"
