#!/usr/bin/env bash
# Single-node Apache Kafka (KRaft, combined broker + controller) for development, tests and
# the local stack.  No tarball, no container: the broker's jars are resolved with Maven from
# Maven Central (org.apache.kafka:kafka_2.13, runtime scope; version pinned in pom.xml beside
# this script) into a cache outside the repository, and the broker runs from there with Java 17.
#
#   bash deploy/kafka/kafka.sh fetch               resolve the jars (idempotent; instant when cached)
#   bash deploy/kafka/kafka.sh start DIR [PORT]    format DIR (first time), start in the background,
#                                                  wait until it serves, print the bootstrap address
#   bash deploy/kafka/kafka.sh stop DIR            clean shutdown (SIGTERM, then SIGKILL after a wait)
#   bash deploy/kafka/kafka.sh status DIR          exit 0 if the broker of DIR is running
#   bash deploy/kafka/kafka.sh version             print the pinned Kafka version
#
# DIR holds everything of one broker: server.properties, data/ (KRaft metadata + topic logs),
# logs/ (log4j output; nothing goes to the console), kafka.pid, bootstrap.  Starting again on an
# existing DIR keeps its data (no re-format).  PORT defaults to 9092; the controller listener takes
# a free port of its own (KAFKA_CONTROLLER_PORT to choose it).
#
# Environment:
#   LINEWATCH_CACHE          cache root (default ~/.cache/linewatch); jars in $LINEWATCH_CACHE/kafka-<version>/libs
#   KAFKA_HEAP_OPTS          JVM heap (default -Xmx768m -Xms256m)
#   KAFKA_START_TIMEOUT      seconds to wait for the broker to serve (default 90)
#   KAFKA_STOP_TIMEOUT       seconds to wait for a clean shutdown before SIGKILL (default 30)
#   KAFKA_WATCH_PID          if set, a watchdog stops the broker when that process exits
#                            (the pytest fixture passes its own pid: no stray broker after a crash)
#   KAFKA_SASL_SSL_PORT      if set, a second listener on 127.0.0.1:PORT with SASL_SSL and SCRAM-SHA-512,
#                            the setting the deployments use between hosts (tests of it); then also:
#   KAFKA_SSL_KEYSTORE       PKCS12 file with the broker's key and certificate
#   KAFKA_SSL_KEYSTORE_PASSWORD  its password
#   KAFKA_SCRAM_USER, KAFKA_SCRAM_PASSWORD  the SCRAM user created when DIR is formatted
#
# The default is one PLAINTEXT listener on loopback only: no network peer can reach it, so the
# local stack and the tests need no credentials.
#
# Broker settings fit for one node: replication factors 1, group.initial.rebalance.delay.ms=0,
# message.max.bytes = replica.fetch.max.bytes = 20 MiB (frames up to 16 MiB plus headers; the
# producer's own limit is LINEWATCH_KAFKA_MAX_MESSAGE_BYTES, see ingest/kafka_config.py),
# auto.create.topics.enable=false (topics are created explicitly: ingest.topics.ensure_topics).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$HERE/pom.xml" | head -n1)"
CACHE="${LINEWATCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/linewatch}"
KAFKA_HOME_DIR="$CACHE/kafka-$KAFKA_VERSION"
LIBS="$KAFKA_HOME_DIR/libs"
MAX_MESSAGE_BYTES=20971520

log() { echo "[kafka] $*" >&2; }
die() { echo "[kafka] error: $*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

ensure_tools() {
  local pkgs=()
  command -v java >/dev/null 2>&1 || pkgs+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null 2>&1 || pkgs+=(maven)
  if [ "${#pkgs[@]}" -gt 0 ]; then
    log "installing ${pkgs[*]} from Debian"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
  fi
}

have_libs() {
  [ -f "$KAFKA_HOME_DIR/.complete" ] && [ -f "$LIBS/kafka_2.13-$KAFKA_VERSION.jar" ]
}

cmd_fetch() {
  if have_libs; then
    log "Kafka $KAFKA_VERSION already in $LIBS"
    return 0
  fi
  ensure_tools
  mkdir -p "$CACHE"
  # one fetch at a time per cache (parallel sessions / CI on the same machine)
  exec 9>"$CACHE/kafka-$KAFKA_VERSION.lock"
  if command -v flock >/dev/null 2>&1; then flock 9; fi
  if have_libs; then
    log "Kafka $KAFKA_VERSION already in $LIBS"
    return 0
  fi
  log "resolving org.apache.kafka:kafka_2.13:$KAFKA_VERSION (runtime) from Maven Central into $LIBS"
  local tmp
  tmp="$(mktemp -d "$CACHE/.kafka-$KAFKA_VERSION.XXXXXX")"
  cp "$HERE/pom.xml" "$tmp/pom.xml"
  if ! (cd "$tmp" && mvn -B -q -Dstyle.color=never -f pom.xml dependency:copy-dependencies \
          -DincludeScope=runtime -DoutputDirectory="$tmp/libs" -Dmdep.useRepositoryLayout=false \
          >"$tmp/mvn.log" 2>&1); then
    tail -n 40 "$tmp/mvn.log" >&2
    rm -rf "$tmp"
    die "Maven could not resolve Kafka $KAFKA_VERSION"
  fi
  [ -f "$tmp/libs/kafka_2.13-$KAFKA_VERSION.jar" ] || { rm -rf "$tmp"; die "kafka_2.13-$KAFKA_VERSION.jar missing after resolve"; }
  rm -rf "$tmp/pom.xml" "$tmp/mvn.log" "$tmp/target" "$KAFKA_HOME_DIR"
  mv "$tmp" "$KAFKA_HOME_DIR"
  touch "$KAFKA_HOME_DIR/.complete"
  log "Kafka $KAFKA_VERSION: $(ls "$LIBS" | wc -l) jars in $LIBS"
}

free_port() {
  python3 - <<'PY'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
PY
}

port_open() {  # port_open PORT -> 0 if something accepts on 127.0.0.1:PORT
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

pid_of() {  # pid_of DIR -> the broker's pid if it is running (and really is our broker)
  local dir="$1" pid
  [ -f "$dir/kafka.pid" ] || return 1
  pid="$(cat "$dir/kafka.pid")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  tr "\0" " " 2>/dev/null <"/proc/$pid/cmdline" | grep -q "kafka.Kafka $dir/server.properties" || return 1
  echo "$pid"
}

java_cmd() {
  # what kafka-server-start.sh / kafka-run-class.sh would run, without the scripts
  JAVA_ARGS=(java ${KAFKA_HEAP_OPTS:--Xmx768m -Xms256m}
    -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35
    -XX:+ExplicitGCInvokesConcurrent -XX:MaxInlineLevel=15 -Djava.awt.headless=true
    "-Dlog4j.configuration=file:$HERE/log4j.properties" "-Dkafka.logs.dir=$1/logs"
    -cp "$LIBS/*")
}

write_config() {  # write_config DIR PORT CONTROLLER_PORT
  local dir="$1" port="$2" cport="$3" listeners advertised
  listeners="PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport"
  advertised="PLAINTEXT://127.0.0.1:$port"
  if [ -n "${KAFKA_SASL_SSL_PORT:-}" ]; then
    listeners="$listeners,SASL_SSL://127.0.0.1:$KAFKA_SASL_SSL_PORT"
    advertised="$advertised,SASL_SSL://127.0.0.1:$KAFKA_SASL_SSL_PORT"
  fi
  cat >"$dir/server.properties" <<EOF
# written by deploy/kafka/kafka.sh: single-node KRaft, broker + controller in one process
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=$listeners
advertised.listeners=$advertised
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
log.dirs=$dir/data

# one node: every replication factor and ISR is 1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4

# groups form at once (tests, restarts)
group.initial.rebalance.delay.ms=0

# topics are created explicitly, with their partition counts (ingest.topics.ensure_topics)
auto.create.topics.enable=false
num.partitions=1
delete.topic.enable=true

# frames up to ~16 MiB (+ headers and batch overhead)
message.max.bytes=$MAX_MESSAGE_BYTES
replica.fetch.max.bytes=$MAX_MESSAGE_BYTES
socket.request.max.bytes=104857600

# modest footprint for a development machine
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
log.retention.hours=24
log.segment.bytes=268435456
log.retention.check.interval.ms=60000
EOF
  if [ -n "${KAFKA_SASL_SSL_PORT:-}" ]; then
    [ -n "${KAFKA_SSL_KEYSTORE:-}" ] && [ -n "${KAFKA_SSL_KEYSTORE_PASSWORD:-}" ] \
      || die "KAFKA_SASL_SSL_PORT needs KAFKA_SSL_KEYSTORE and KAFKA_SSL_KEYSTORE_PASSWORD"
    cat >>"$dir/server.properties" <<EOF

# SASL_SSL listener: TLS, then SCRAM-SHA-512 (users in the KRaft metadata, see --add-scram)
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.type=PKCS12
ssl.keystore.location=$KAFKA_SSL_KEYSTORE
ssl.keystore.password=$KAFKA_SSL_KEYSTORE_PASSWORD
EOF
  fi
}

cmd_start() {
  local dir="${1:-}" port="${2:-9092}"
  [ -n "$dir" ] || die "usage: kafka.sh start DIR [PORT]"
  have_libs || cmd_fetch
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  mkdir -p "$dir/data" "$dir/logs"
  if pid="$(pid_of "$dir")"; then
    die "a broker is already running from $dir (pid $pid)"
  fi
  if port_open "$port"; then
    die "port $port is already in use"
  fi
  local cport="${KAFKA_CONTROLLER_PORT:-}"
  if [ -z "$cport" ]; then
    cport="$(free_port)"
    while [ "$cport" = "$port" ]; do cport="$(free_port)"; done
  fi
  write_config "$dir" "$port" "$cport"
  java_cmd "$dir"

  if [ ! -f "$dir/data/meta.properties" ]; then
    local cluster_id
    cluster_id="$("${JAVA_ARGS[@]}" kafka.tools.StorageTool random-uuid 2>>"$dir/logs/format.log")"
    local scram=()
    if [ -n "${KAFKA_SCRAM_USER:-}" ]; then
      scram=(--add-scram "SCRAM-SHA-512=[name=$KAFKA_SCRAM_USER,password=$KAFKA_SCRAM_PASSWORD]")
    fi
    "${JAVA_ARGS[@]}" kafka.tools.StorageTool format -t "$cluster_id" -c "$dir/server.properties" "${scram[@]}" \
      >>"$dir/logs/format.log" 2>&1 || { cat "$dir/logs/format.log" >&2; die "formatting $dir failed"; }
    log "formatted $dir (cluster id $cluster_id)"
  fi

  # all output to files and stdin from /dev/null: a caller that captures our stdout must not
  # wait on the background broker
  nohup "${JAVA_ARGS[@]}" kafka.Kafka "$dir/server.properties" \
    >"$dir/logs/console.log" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$dir/kafka.pid"
  echo "127.0.0.1:$port" >"$dir/bootstrap"

  local deadline=$((SECONDS + ${KAFKA_START_TIMEOUT:-90}))
  until port_open "$port" && grep -qs "Kafka Server started" "$dir/logs/server.log"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 40 "$dir/logs/server.log" "$dir/logs/console.log" >&2 2>/dev/null || true
      rm -f "$dir/kafka.pid"
      die "the broker exited during start-up (logs in $dir/logs)"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      tail -n 40 "$dir/logs/server.log" >&2 2>/dev/null || true
      cmd_stop "$dir" || true
      die "the broker did not come up within ${KAFKA_START_TIMEOUT:-90}s (logs in $dir/logs)"
    fi
    sleep 0.3
  done

  if [ -n "${KAFKA_WATCH_PID:-}" ]; then
    # stop the broker when the watched process (e.g. the pytest session) goes away
    nohup bash -c '
      while kill -0 "$1" 2>/dev/null && kill -0 "$2" 2>/dev/null; do sleep 1; done
      if kill -0 "$2" 2>/dev/null; then
        kill -TERM "$2" 2>/dev/null
        for _ in $(seq 1 60); do kill -0 "$2" 2>/dev/null || exit 0; sleep 0.5; done
        kill -KILL "$2" 2>/dev/null
      fi' kafka-watchdog "$KAFKA_WATCH_PID" "$pid" >/dev/null 2>&1 </dev/null &
    echo $! >"$dir/watchdog.pid"
  fi
  log "Kafka $KAFKA_VERSION serving on 127.0.0.1:$port (pid $pid, dir $dir)"
  echo "127.0.0.1:$port"
}

cmd_stop() {
  local dir="${1:-}"
  [ -n "$dir" ] || die "usage: kafka.sh stop DIR"
  [ -d "$dir" ] || { log "no such directory $dir: nothing to stop"; return 0; }
  dir="$(cd "$dir" && pwd)"
  local pid
  if pid="$(pid_of "$dir")"; then
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + ${KAFKA_STOP_TIMEOUT:-30}))
    while kill -0 "$pid" 2>/dev/null; do
      if [ "$SECONDS" -ge "$deadline" ]; then
        log "broker $pid did not stop within ${KAFKA_STOP_TIMEOUT:-30}s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        break
      fi
      sleep 0.2
    done
    # reap/wait until it is really gone
    while kill -0 "$pid" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != "Z" ]; do sleep 0.1; done
    log "stopped broker $pid ($dir)"
  else
    log "no broker running from $dir"
  fi
  if [ -f "$dir/watchdog.pid" ]; then
    local wpid
    wpid="$(cat "$dir/watchdog.pid")"
    if [ -n "$wpid" ] && tr "\0" " " 2>/dev/null <"/proc/$wpid/cmdline" | grep -q kafka-watchdog; then
      kill -TERM "$wpid" 2>/dev/null || true
    fi
  fi
  rm -f "$dir/kafka.pid" "$dir/watchdog.pid"
}

cmd_status() {
  local dir="${1:-}"
  [ -n "$dir" ] || die "usage: kafka.sh status DIR"
  dir="$(cd "$dir" 2>/dev/null && pwd)" || exit 1
  local pid
  if pid="$(pid_of "$dir")"; then
    echo "running pid=$pid bootstrap=$(cat "$dir/bootstrap" 2>/dev/null)"
  else
    echo "stopped"
    return 1
  fi
}

case "${1:-}" in
  fetch) cmd_fetch ;;
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  status) shift; cmd_status "$@" ;;
  version) echo "$KAFKA_VERSION" ;;
  *) sed -n '2,30p' "$0" >&2; exit 2 ;;
esac
