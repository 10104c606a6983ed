#!/usr/bin/env bash
# System packages the tests need, installed once per machine:
# Debian's postgresql (storage tests), chromium (dashboard browser tests), mosquitto (MQTT bridge tests),
# and the Kafka broker's jars (resolved from Maven Central into a cache outside the repo).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
[ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null 2>&1 || need+=(mosquitto)
if [ "${#need[@]}" -gt 0 ]; then
  echo "[system-deps] installing ${need[*]} from Debian"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [ -x deploy/kafka/kafka.sh ]; then
  bash deploy/kafka/kafka.sh fetch
fi
