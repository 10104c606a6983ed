#!/usr/bin/env bash
# README command 1: the whole linewatch system on this machine.
#
#   bash deploy/local/start.sh [options]        (--help lists them)
#
# Prepares what it needs (the Python environment, once per machine: deploy/bootstrap.sh; the
# Kafka broker's jars from Maven Central: deploy/kafka/kafka.sh fetch), then hands over to the
# orchestrator deploy/local/stack.py: Kafka, SQLite, the simulated camera (or --folder PATH),
# the detector (a quick first model is trained at the first start), the writer and the dashboard.
# It prints the dashboard URL and the first login; Ctrl-C stops everything.
#
# LINEWATCH_BOOTSTRAP_EXTRAS: optional extras of the environment to keep installed (e.g. "test"
# when the tests run this script), so that starting the stack does not reinstall the environment.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

case " $* " in
  *" -h "*|*" --help "*) ;;
  *)
    source "$root/deploy/bootstrap.sh" "${LINEWATCH_BOOTSTRAP_EXTRAS:-}"
    bash "$root/deploy/kafka/kafka.sh" fetch
    ;;
esac
# exec: the orchestrator is this process, so Ctrl-C and SIGTERM reach it directly
exec "${LINEWATCH_PY:-python3}" "$here/stack.py" "$@"
