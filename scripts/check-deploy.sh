#!/usr/bin/env bash
# Checks deploy/ as far as a machine without a Docker engine or a Kubernetes cluster allows
# (deploy/README.md says what that leaves unchecked):
#
#   scripts/check-deploy.sh [path/to/impush]     # default: target/debug/impush, built if missing
#   scripts/check-deploy.sh --install            # only install what the checks need, then exit
#
# - deploy/Dockerfile read stage by stage: a builder running `cargo build --locked --release`, a
#   slim runtime stage copying the binary alone, a numeric non-root USER, ENTRYPOINT, EXPOSE and
#   HEALTHCHECK on the listen port; .dockerignore keeps target/ out of the context; Cargo.lock
#   is current; every shared library the binary loads and every program the runtime stage runs
#   is in that image (Debian's package database: the slim base's packages or the ones the stage
#   installs);
# - deploy/impush.service: `systemd-analyze verify` with no diagnostic at all, `systemd-analyze
#   security` exposure at most 2.0, TimeoutStopSec above the node's shutdown budget
#   (shutdown_grace + drain + margin), LimitNOFILE above limits.max_connections;
# - deploy/compose.yaml: the compose-spec schema (check-jsonschema's vendored copy); 3 nodes and a
#   healthy-gated Redis; each node's advertised URL is its published port; one node list and
#   one secret for all; stop_grace_period above the shutdown budget;
# - deploy/k8s/*.yaml: `kubernetes-validate --strict` (offline schemas); node ids are the pod
#   names; node URLs are the pods' names under the headless Service; probes on /readyz and
#   /healthz at the container port; the ConfigMap key is the --config path; Secret keys exist;
#   terminationGracePeriodSeconds above the shutdown budget; runAsUser is the image's USER;
# - and for each of the three: the real binary started as every node it describes at once, with
#   that node's file, arguments and environment (only the listen address, the Redis URL and a
#   private key prefix changed, to run on loopback against the test Redis): each answers
#   /healthz and /readyz, the first hands out connect URLs that are the file's node URLs for
#   every node, a WebSocket with such a token opens on the node it names and answers a ping,
#   and each node exits 0 on SIGTERM. For compose, the image's HEALTHCHECK command passes
#   against a live node and fails against a stopped one.
#
# Needs systemd-analyze (Debian's systemd), dpkg/apt-cache, python3 >= 3.11, and the test Redis
# (scripts/brokers.sh up redis; IMPUSH_TEST_REDIS_URL). PyYAML, check-jsonschema and
# kubernetes-validate are pinned in scripts/check-deploy-requirements.txt and installed into a
# private venv ($IMPUSH_DEPLOY_VENV, default ~/.cache/impush/deploy-venv), never system-wide.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

req=scripts/check-deploy-requirements.txt
venv=${IMPUSH_DEPLOY_VENV:-$HOME/.cache/impush/deploy-venv}
# Reinstalled whenever the pins change: the venv remembers the requirements it was made from.
if ! cmp -s "$req" "$venv/.requirements" 2>/dev/null; then
  echo "check-deploy: installing $(grep -Ev '^(#|$)' "$req" | tr '\n' ' ')into $venv" >&2
  rm -rf "$venv"
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    # Debian splits venv support out of python3.
    DEBIAN_FRONTEND=noninteractive apt-get install -o DPkg::Lock::Timeout=300 -y -q python3-venv >/dev/null
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$req"
  cp "$req" "$venv/.requirements"
fi

if ! command -v systemd-analyze >/dev/null; then
  echo "check-deploy: installing systemd (for systemd-analyze)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -o DPkg::Lock::Timeout=300 -y -q --no-install-recommends systemd >/dev/null
fi
if [ "${1:-}" = --install ]; then
  exit 0
fi

bin=${1:-${IMPUSH_BIN:-}}
if [ -z "$bin" ]; then
  bin=$root/target/debug/impush
  cargo build -q -p impush-server --bin impush
fi
[ -x "$bin" ] || { echo "check-deploy: no impush binary at $bin" >&2; exit 1; }

if [ -z "${IMPUSH_TEST_REDIS_URL:-}" ]; then
  scripts/brokers.sh up redis >/dev/null
  eval "$(scripts/brokers.sh env redis)"
fi

# No __pycache__ left in the source tree.
PYTHONDONTWRITEBYTECODE=1 PYTHONPATH=$root/scripts${PYTHONPATH:+:$PYTHONPATH} "$venv/bin/python" -m deploycheck \
  --root "$root" --bin "$bin" --redis "$IMPUSH_TEST_REDIS_URL" --tools "$venv/bin"
