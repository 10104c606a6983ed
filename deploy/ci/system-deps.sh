#!/usr/bin/env bash
# System packages the tests need, installed once per machine:
# Debian's postgresql (storage tests), chromium (dashboard browser tests), mosquitto (MQTT bridge tests),
# Aravis with its simulated GigE Vision camera and PyGObject (GenICam source tests), GStreamer's RTSP
# server with the test-pattern, x264 and RTP plugins (RTSP source tests), a JDK and iproute2 (the
# Kafka read-only root test compiles a codec probe and brings up loopback in a network namespace),
# and the Kafka broker's jars (resolved from Maven Central into a cache outside the repo).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
[ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null 2>&1 || need+=(mosquitto)
[ -d /usr/lib/python3/dist-packages/gi ] || need+=(python3-gi)
ls /usr/lib/*/girepository-1.0/Aravis-0.8.typelib >/dev/null 2>&1 || need+=(gir1.2-aravis-0.8)
command -v arv-fake-gv-camera-0.8 >/dev/null 2>&1 || need+=(aravis-tools)
ls /usr/lib/*/girepository-1.0/GstRtspServer-1.0.typelib >/dev/null 2>&1 || need+=(gir1.2-gst-rtsp-server-1.0)
ls /usr/lib/*/gstreamer-1.0/libgstvideotestsrc.so >/dev/null 2>&1 || need+=(gstreamer1.0-plugins-base)
ls /usr/lib/*/gstreamer-1.0/libgstrtp.so >/dev/null 2>&1 || need+=(gstreamer1.0-plugins-good)
ls /usr/lib/*/gstreamer-1.0/libgstx264.so >/dev/null 2>&1 || need+=(gstreamer1.0-plugins-ugly)
command -v javac >/dev/null 2>&1 || need+=(openjdk-17-jdk-headless)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
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
