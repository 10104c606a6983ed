#!/usr/bin/env bash
# Throwaway PostgreSQL for the storage tests.
#
# Sourced by deploy/test.sh (after deploy/ci/system-deps.sh installed Debian's postgresql):
#
#   source deploy/ci/postgres.sh        # starts (or reuses) a server, exports LINEWATCH_TEST_POSTGRES_URL
#   ...run tests...
#   lw_postgres_stop                    # stops it and removes its data directory
#
# or run directly:  bash deploy/ci/postgres.sh start|stop|status|pause|resume
# (pause stops the server and keeps its data; resume starts it again on the same port)
#
# The cluster lives in a temporary directory (LINEWATCH_PG_DIR, default /tmp/linewatch-pg-<uid>),
# listens only on 127.0.0.1 and a Unix socket in that directory, on a free port, and trusts
# local connections (it is a test server).  Starting is idempotent: a server already running
# in that directory is reused.  When the script runs as root, the server runs as the
# `postgres` user (PostgreSQL refuses root).
#
# Being sourced, it does not change the caller's shell options.  When it started the server
# itself, it registers `lw_postgres_stop` as the caller's EXIT trap, unless the caller already
# has an EXIT trap (or sets LINEWATCH_PG_NO_TRAP=1): the caller then calls lw_postgres_stop
# itself.  A server that was already running (started by another shell) is reused and left
# running for its owner.  If PostgreSQL is not installed, it warns and exports nothing: the
# PostgreSQL test parameters then skip with a reason.

_lw_pg_dir="${LINEWATCH_PG_DIR:-/tmp/linewatch-pg-$(id -u)}"
_lw_pg_db="linewatch_test"

_lw_pg_bin() {
  local d
  d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)"
  [ -n "$d" ] && [ -x "$d/initdb" ] && echo "$d"
}

# run a PostgreSQL tool as the cluster's owner (from /, which that user can always enter:
# the caller's directory may be one it cannot, e.g. under /root)
_lw_pg_as() {
  if [ "$(id -u)" -eq 0 ]; then
    if command -v runuser >/dev/null 2>&1; then
      (cd / && runuser -u postgres -- "$@")
    else
      (cd / && su postgres -s /bin/sh -c "$(printf '%q ' "$@")")
    fi
  else
    "$@"
  fi
}

_lw_pg_free_port() {
  python3 - <<'EOF'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
EOF
}

_lw_pg_serve() {  # _lw_pg_serve BIN PORT: start the server of the cluster in $_lw_pg_dir
  _lw_pg_as "$1/pg_ctl" -D "$_lw_pg_dir/data" -l "$_lw_pg_dir/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $2 -k $_lw_pg_dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
    start >/dev/null \
    || { echo "[postgres] server did not start, see $_lw_pg_dir/server.log" >&2; return 1; }
}

# pause: stop the server but keep its data; resume: start it again on the same port (the soak
# benchmark's database outage)
lw_postgres_pause() {
  local bin
  bin="$(_lw_pg_bin)" || return 1
  _lw_pg_as "$bin/pg_ctl" -D "$_lw_pg_dir/data" -m fast -w -t 60 stop >/dev/null
}

lw_postgres_resume() {
  local bin
  bin="$(_lw_pg_bin)" || return 1
  lw_postgres_status || _lw_pg_serve "$bin" "$(cat "$_lw_pg_dir/port")"
}

lw_postgres_status() {
  local bin
  bin="$(_lw_pg_bin)" || return 1
  [ -f "$_lw_pg_dir/data/postmaster.pid" ] && _lw_pg_as "$bin/pg_ctl" -D "$_lw_pg_dir/data" status >/dev/null 2>&1
}

lw_postgres_start() {
  local bin port
  bin="$(_lw_pg_bin)" || {
    echo "[postgres] PostgreSQL is not installed (apt-get install postgresql); PostgreSQL tests will be skipped" >&2
    return 0
  }
  if lw_postgres_status; then
    # someone (this shell earlier, or another run) already started it: reuse, and leave it to them
    port="$(cat "$_lw_pg_dir/port")"
  else
    rm -rf "$_lw_pg_dir"
    mkdir -p "$_lw_pg_dir"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$_lw_pg_dir"
    port="$(_lw_pg_free_port)"
    echo "$port" > "$_lw_pg_dir/port"
    _lw_pg_as "$bin/initdb" -D "$_lw_pg_dir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$_lw_pg_dir/initdb.log" 2>&1 \
      || { echo "[postgres] initdb failed, see $_lw_pg_dir/initdb.log" >&2; return 1; }
    _lw_pg_serve "$bin" "$port" || return 1
    _lw_pg_as "$bin/createdb" -h "$_lw_pg_dir" -p "$port" -U postgres "$_lw_pg_db" \
      || { echo "[postgres] createdb failed" >&2; return 1; }
    echo "[postgres] started a throwaway server on 127.0.0.1:$port (data in $_lw_pg_dir)"
    _LW_PG_STARTED_HERE=1
  fi
  export LINEWATCH_TEST_POSTGRES_URL="postgresql+psycopg://postgres@127.0.0.1:$port/$_lw_pg_db"
}

lw_postgres_stop() {
  local bin
  bin="$(_lw_pg_bin)" || return 0
  if [ -f "$_lw_pg_dir/data/postmaster.pid" ]; then
    _lw_pg_as "$bin/pg_ctl" -D "$_lw_pg_dir/data" -m fast -w -t 60 stop >/dev/null 2>&1 \
      || _lw_pg_as "$bin/pg_ctl" -D "$_lw_pg_dir/data" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$_lw_pg_dir"
  unset LINEWATCH_TEST_POSTGRES_URL
}

if [ "${BASH_SOURCE[0]}" != "$0" ]; then
  # sourced: start (or reuse), and stop at the caller's exit what this shell started,
  # unless the caller manages that itself
  _LW_PG_STARTED_HERE="${_LW_PG_STARTED_HERE:-0}"
  lw_postgres_start || echo "[postgres] continuing without PostgreSQL" >&2
  if [ "$_LW_PG_STARTED_HERE" = 1 ] && [ "${LINEWATCH_PG_NO_TRAP:-0}" != 1 ] && [ -z "$(trap -p EXIT)" ]; then
    trap 'lw_postgres_stop' EXIT
  fi
else
  set -euo pipefail
  case "${1:-}" in
    start) lw_postgres_start; echo "LINEWATCH_TEST_POSTGRES_URL=$LINEWATCH_TEST_POSTGRES_URL" ;;
    stop) lw_postgres_stop ;;
    pause) lw_postgres_pause ;;
    resume) lw_postgres_resume ;;
    status) if lw_postgres_status; then echo "running: postgresql+psycopg://postgres@127.0.0.1:$(cat "$_lw_pg_dir/port")/$_lw_pg_db"; else echo "not running"; exit 1; fi ;;
    *) echo "usage: $0 start|stop|status|pause|resume   (or: source $0, then lw_postgres_stop)" >&2; exit 2 ;;
  esac
fi
