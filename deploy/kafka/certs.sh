#!/usr/bin/env bash
# Certificates for Kafka's SASL_SSL listener (deploy/compose, deploy/k8s, tests): a CA of your own
# and the broker's key and certificate signed by it, for the names clients connect to.
#
#   bash deploy/kafka/certs.sh DIR NAME...      e.g. certs.sh deploy/compose/secrets/kafka kafka
#                                               k8s: certs.sh DIR kafka kafka.linewatch.svc kafka-0.kafka-headless
#
# Writes, in DIR (mode 600):
#   ca.crt                 the CA certificate: clients trust it (LINEWATCH_KAFKA_SSL_CAFILE)
#   ca.key                 the CA key: keep it offline; only needed to sign a new broker certificate
#   kafka.keystore.p12     the broker's key and certificate chain (PKCS12)
#   keystore_password      its password (random)
#   kafka_password         the SCRAM-SHA-512 password of the `linewatch` Kafka user (random, hex: no
#                          characters that kafka-configs would parse), unless it exists already
# An existing CA in DIR is reused.  NAME entries that look like IP addresses become IP SANs.
set -euo pipefail

dir="${1:-}"
[ -n "$dir" ] && [ "$#" -ge 2 ] || { echo "usage: certs.sh DIR NAME..." >&2; exit 2; }
shift
mkdir -p "$dir"
cd "$dir"
umask 077
san=""
for name in "$@"; do
  if [[ "$name" =~ ^[0-9.]+$|: ]]; then san="$san,IP:$name"; else san="$san,DNS:$name"; fi
done
san="${san#,}"

if [ ! -s ca.crt ]; then
  openssl req -x509 -newkey rsa:3072 -nodes -keyout ca.key -out ca.crt -days 3650 \
    -subj "/CN=linewatch Kafka CA" 2>/dev/null
fi
openssl req -newkey rsa:3072 -nodes -keyout kafka.key -out kafka.csr -subj "/CN=$1" 2>/dev/null
printf 'subjectAltName=%s\n' "$san" >kafka.ext
openssl x509 -req -in kafka.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out kafka.crt -days 825 \
  -extfile kafka.ext 2>/dev/null
[ -s keystore_password ] || openssl rand -hex 24 >keystore_password
openssl pkcs12 -export -in kafka.crt -inkey kafka.key -certfile ca.crt -name kafka \
  -out kafka.keystore.p12 -passout "file:keystore_password"
[ -s kafka_password ] || openssl rand -hex 24 >kafka_password
rm -f kafka.csr kafka.ext kafka.key ca.srl
echo "[certs] $PWD: ca.crt, kafka.keystore.p12 for $san" >&2
