#!/usr/bin/env bash
# Runs schemathesis with every check against a real node's own OpenAPI document
# (/api/v1/openapi.json): a node from target/debug/impush on a free loopback port with a fixed API
# key and the memory backends. Exits non-zero when a check fails.
#
#   ./scripts/schemathesis.sh [extra schemathesis args...]
#   ./scripts/schemathesis.sh --install   # only install schemathesis (scripts/test.sh does it early)
#
# schemathesis is pinned in scripts/schemathesis-requirements.txt and installed into a private
# venv ($IMPUSH_SCHEMATHESIS_VENV, default ~/.cache/impush/schemathesis-venv), never system-wide.
# The SSE route (/api/v1/events) is excluded: schemathesis would wait on the endless stream.
# So is POST /api/v1/node/drain: it stops the node under test (tests/tests/drain.rs covers it).
# The admin console's routes (/admin/...) want a console session cookie, not the API key: a
# cookie sent with every request makes schemathesis count each "request without the cookie"
# as accepted, so they are left to tests/tests/admin.rs and tests/tests/openapi.rs.
# The use-after-free check is off: DELETE /api/v1/clients/{id}/inbox empties an inbox, which
# still exists (GET answers it empty), so a 200 after it is right.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

req=scripts/schemathesis-requirements.txt
want=$(grep -Eo '^schemathesis==[0-9.]+' "$req" | cut -d= -f3)
venv=${IMPUSH_SCHEMATHESIS_VENV:-$HOME/.cache/impush/schemathesis-venv}
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "version $want\$"; then
  echo "schemathesis: installing $want into $venv" >&2
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    # Debian splits venv support out of python3.
    DEBIAN_FRONTEND=noninteractive apt-get install -o DPkg::Lock::Timeout=300 -y -q python3-venv >/dev/null
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$req"
fi
if [ "${1:-}" = --install ]; then
  exit 0
fi

bin=${IMPUSH_BIN:-$root/target/debug/impush}
if [ -z "${IMPUSH_BIN:-}" ]; then
  cargo build -q -p impush-server --bin impush
fi

work=$(mktemp -d)
key=schemathesis-api-key
admin_secret=schemathesis-admin-secret
IMPUSH_NODE__LISTEN=127.0.0.1:0 IMPUSH_AUTH__API_KEY=$key IMPUSH_AUTH__SECRET=schemathesis-secret \
  IMPUSH_ADMIN__SECRET=$admin_secret RUST_LOG=warn "$bin" >"$work/stdout" 2>"$work/stderr" &
node=$!
cleanup() {
  kill "$node" 2>/dev/null || true
  wait "$node" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

addr=
for _ in $(seq 100); do
  addr=$(sed -n 's/^impush listening on \([^ ]*\).*/\1/p' "$work/stdout")
  [ -n "$addr" ] && break
  kill -0 "$node" 2>/dev/null || { cat "$work/stderr" >&2; exit 1; }
  sleep 0.1
done
[ -n "$addr" ] || { echo "schemathesis: the node did not start" >&2; cat "$work/stderr" >&2; exit 1; }

start=$SECONDS
status=0
NO_COLOR=1 "$venv/bin/schemathesis" run "http://$addr/api/v1/openapi.json" \
  --exclude-path /api/v1/events \
  --exclude-path /api/v1/node/drain \
  --exclude-path-regex '^/admin/' \
  -H "Authorization: Bearer $key" \
  --checks all \
  --exclude-checks use_after_free \
  --seed "${SCHEMATHESIS_SEED:-1}" \
  "$@" || status=$?
if ! kill -0 "$node" 2>/dev/null; then
  echo "schemathesis: the node died during the run" >&2
  cat "$work/stderr" >&2
  status=1
fi
echo "schemathesis: finished in $((SECONDS - start))s (exit $status)" >&2
exit "$status"
