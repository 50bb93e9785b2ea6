#!/usr/bin/env bash
# Builds the cargo-fuzz targets in fuzz/ and runs each for N seconds (default 60); exits
# non-zero when a target crashes (the input is kept in fuzz/artifacts/<target>/).
#
#   ./scripts/fuzz.sh [--dev] [seconds] [target...]
#   ./scripts/fuzz.sh [--dev] --build   # only build every target
#
# `--dev` builds without optimizations: fewer runs a second, but a build a fraction as long,
# which suits the short run of scripts/test.sh; longer runs want the optimized default.
#
# Targets: client_frame (the client frame parser), token (the connect-token verifier), envelope
# (the broker envelope decoder: NodeCommand, ClusterCommand, Event) and config (impush.toml into
# the server's Config). Each starts from the seed corpus kept in fuzz/corpus/<target>/ (read
# only) and grows a working corpus in fuzz/target/corpus/<target>/ that later runs reuse.
#
# Works on the stable toolchain: cargo-fuzz builds with libFuzzer's coverage instrumentation
# (stable -C flags) and `--sanitizer none`; AddressSanitizer needs nightly's -Zsanitizer, which
# this machine does not have. Fuzz builds have debug assertions and overflow checks on.
set -euo pipefail
cd "$(dirname "$0")/.."

build_only=false
profile=()
while [ "$#" -gt 0 ]; do
  case "$1" in
    --build) build_only=true ;;
    --dev) profile=(--dev) ;;
    *) break ;;
  esac
  shift
done
secs=${1:-60}
shift || true

CARGO_FUZZ_VERSION=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi

start=$SECONDS
# One build for every target (they share the crate's dependencies), quiet unless it fails.
if ! build_log=$(cargo fuzz build "${profile[@]}" --sanitizer none 2>&1); then
  echo "$build_log" >&2
  exit 1
fi
echo "fuzz: built ${#targets[@]} targets in $((SECONDS - start))s" >&2
if $build_only; then
  exit 0
fi

# One target per core at a time (each fuzzes on one thread): the runs overlap instead of
# taking N seconds each in turn.
jobs=${IMPUSH_FUZZ_JOBS:-$(nproc)}
run_one() {
  local t=$1 log="fuzz/target/$1.log" t0=$SECONDS runs
  mkdir -p "fuzz/target/corpus/$t" "fuzz/corpus/$t"
  if cargo fuzz run "${profile[@]}" --sanitizer none "$t" "fuzz/target/corpus/$t" "fuzz/corpus/$t" -- \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      >"$log" 2>&1; then
    runs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' || echo '?')
    echo "fuzz: $t ok ($runs runs in $((SECONDS - t0))s)" >&2
  else
    echo "fuzz: $t FAILED (log: $log; crash inputs: fuzz/artifacts/$t/)" >&2
    grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$log" | head -20 >&2 || tail -30 "$log" >&2
    touch "$verdicts/$t.failed"
  fi
}
# A run that fails leaves a mark here (a job's status is not reliably kept for `wait` once
# `wait -n` has reaped it).
verdicts=$(mktemp -d)
for t in "${targets[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do
    wait -n || true
  done
  run_one "$t" &
done
wait
failed=()
for t in "${targets[@]}"; do
  [ -e "$verdicts/$t.failed" ] && failed+=("$t")
done
rm -rf "$verdicts"

if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: crashes in ${failed[*]}" >&2
  exit 1
fi
echo "fuzz: all ${#targets[@]} targets ran ${secs}s without a crash ($((SECONDS - start))s in all)" >&2
