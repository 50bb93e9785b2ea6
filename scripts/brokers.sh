#!/usr/bin/env bash
# brokers.sh - install and run the real brokers impush's tests and benchmarks use, on loopback,
# without systemd or Docker. Idempotent: safe to call from a fresh machine or again and again.
#
#   scripts/brokers.sh install   install what is missing (Debian packages)
#   scripts/brokers.sh up        start every broker, wait until ready, print the URLs
#   scripts/brokers.sh down      stop them
#   scripts/brokers.sh status    show what runs (exit 1 if something is down)
#   scripts/brokers.sh env       print `export IMPUSH_TEST_*_URL=...` lines for the test suite
#
# Brokers: redis. State (pid files, logs) lives under $IMPUSH_BROKERS_DIR (default
# ${TMPDIR:-/tmp}/impush-brokers); nothing persists between runs. Ports: IMPUSH_REDIS_PORT
# (default 16379).
set -euo pipefail

STATE_DIR=${IMPUSH_BROKERS_DIR:-${TMPDIR:-/tmp}/impush-brokers}
REDIS_PORT=${IMPUSH_REDIS_PORT:-16379}
START_TIMEOUT=${IMPUSH_BROKERS_TIMEOUT:-60}
REDIS_URL="redis://127.0.0.1:${REDIS_PORT}"

say() { echo "[brokers] $*" >&2; }
die() { say "error: $*"; exit 1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
now_ms() { date +%s%3N; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# Running unless gone or a zombie (a container's PID 1 may reap orphans late).
running() { local st; st=$(ps -o stat= -p "$1" 2>/dev/null) || return 1; [[ $st != Z* ]]; }
pidfile_running() { [ -s "$1" ] && running "$(cat "$1")"; }

wait_until() { # DESCRIPTION TIMEOUT_S COMMAND...
  local what=$1 limit=$2 t0; shift 2; t0=$(now_ms)
  until "$@" >/dev/null 2>&1; do
    (( $(now_ms) - t0 < limit * 1000 )) || { say "$what not ready after ${limit}s"; return 1; }
    sleep 0.1
  done
  say "$what ready after $(( $(now_ms) - t0 )) ms"
}

stop_pidfile() { # NAME PIDFILE
  local name=$1 f=$2 pid
  pidfile_running "$f" || { rm -f "$f"; return 0; }
  pid=$(cat "$f")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do running "$pid" || break; sleep 0.1; done
  if running "$pid"; then say "$name (pid $pid) ignored SIGTERM; killing"; kill -9 "$pid" 2>/dev/null || true; fi
  rm -f "$f"
  say "$name stopped"
}

apt_install() { # PACKAGE...
  local missing=() p
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing ${missing[*]} (apt)"
  as_root apt-get update -q >/dev/null
  # policy-rc.d in containers keeps the packaged services from starting; on a systemd host they
  # would start on their default ports, which we do not use.
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
}

# --- redis -----------------------------------------------------------------------------------
redis_ping() { [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; }

redis_up() {
  local d="$STATE_DIR/redis"
  mkdir -p "$d"
  if pidfile_running "$d/redis.pid" && redis_ping; then say "redis already running ($REDIS_URL)"; return; fi
  port_open "$REDIS_PORT" && die "127.0.0.1:$REDIS_PORT is taken by something else (set IMPUSH_REDIS_PORT)"
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
    --daemonize yes --pidfile "$d/redis.pid" --logfile "$d/redis.log" --dir "$d"
  wait_until "redis $REDIS_URL" "$START_TIMEOUT" redis_ping || { tail -n 20 "$d/redis.log" >&2; return 1; }
}

redis_down() { stop_pidfile redis "$STATE_DIR/redis/redis.pid"; }

redis_status() {
  if pidfile_running "$STATE_DIR/redis/redis.pid" && redis_ping; then
    echo "redis  up    $REDIS_URL (pid $(cat "$STATE_DIR/redis/redis.pid"))"
  else
    echo "redis  down"; return 1
  fi
}

# --- commands --------------------------------------------------------------------------------
cmd_install() {
  apt_install redis-server redis-tools
  say "redis: $(redis-server --version | cut -d' ' -f1-3)"
}

cmd_env() {
  echo "export IMPUSH_TEST_REDIS_URL=$REDIS_URL"
}

case "${1:-}" in
  install) cmd_install ;;
  up) cmd_install; redis_up; cmd_env ;;
  down) redis_down ;;
  status) redis_status ;;
  env) cmd_env ;;
  *) echo "usage: $0 install|up|down|status|env" >&2; exit 2 ;;
esac
