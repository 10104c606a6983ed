#!/usr/bin/env bash
# Run a command once a day at a fixed time: the scheduler of the Compose `retrain` service.
#
#   bash deploy/nightly.sh HH:MM COMMAND [ARG...]
#   e.g. bash deploy/nightly.sh 02:30 linewatch-detector retrain --product flange
#
# Kept deliberately tiny instead of a cron daemon in the container: it sleeps until the next
# HH:MM (container time zone, TZ; UTC unless set), runs the command in the foreground, logs its
# exit status, and waits for the next day.  A failed run is logged and retried the next night
# (the retrain job itself is safe to run twice).  SIGTERM/SIGINT during the wait exit at once;
# during a run they are passed on to the command, and the scheduler exits when it has finished.
# Kubernetes uses a CronJob and systemd a timer instead (deploy/k8s, deploy/systemd).
set -uo pipefail

at="${1:-}"
if ! [[ "$at" =~ ^([01][0-9]|2[0-3]):[0-5][0-9]$ ]] || [ "$#" -lt 2 ]; then
  echo "usage: nightly.sh HH:MM COMMAND [ARG...]" >&2
  exit 2
fi
shift

log() { echo "[nightly] $(date -u +%Y-%m-%dT%H:%M:%SZ) $*" >&2; }

child=""
stop() {
  if [ -n "$child" ]; then kill -TERM "$child" 2>/dev/null; wait "$child"; fi
  log "stopped"
  exit 0
}
trap stop TERM INT

while true; do
  now="$(date +%s)"
  next="$(date -d "today $at" +%s)"
  [ "$next" -le "$now" ] && next="$(date -d "tomorrow $at" +%s)"
  log "next run at $(date -d "@$next" '+%Y-%m-%d %H:%M %Z'): $*"
  # sleep in the background so that a signal interrupts the wait
  sleep "$((next - now))" &
  child=$!
  wait "$child"
  child=""
  log "running: $*"
  "$@" &
  child=$!
  wait "$child"
  rc=$?
  child=""
  log "finished with exit status $rc"
done
