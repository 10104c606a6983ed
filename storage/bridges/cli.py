"""``linewatch-bridge``: inspection verdicts from Kafka to the line (MQTT, OPC UA)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

PROG = "linewatch-bridge"

DESCRIPTION = """\
Publish every inspection verdict from <prefix>.results to the line's reject gates and PLCs.

  mqtt   each verdict as JSON to <root>/<line>/<camera> (QoS 1, newest one retained)
  opcua  an OPC UA server with one object per camera: Verdict, Score, PartId, ModelVersion, ...

Delivery is at-least-once: Kafka offsets are committed only after the MQTT broker acknowledged
(PUBACK) or the OPC UA server holds the values; replays of frames already delivered by this
process are skipped (frame id). Messages that are not inspection results go to
<prefix>.deadletter. SIGTERM/SIGINT stop after the current batch.

Kafka: LINEWATCH_KAFKA_BOOTSTRAP, LINEWATCH_TOPIC_PREFIX and the other LINEWATCH_KAFKA_* variables.
Bridge: LINEWATCH_BRIDGE_GROUP, LINEWATCH_BRIDGE_START, LINEWATCH_BRIDGE_BATCH_SIZE,
        LINEWATCH_MQTT_HOST/PORT/USERNAME/PASSWORD/CAFILE/CLIENT_ID/TOPIC_ROOT,
        LINEWATCH_OPCUA_ENDPOINT/NAMESPACE (the options below override them).
Needs the 'bridges' extra: pip install 'linewatch[bridges]'.
"""


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION, formatter_class=fmt)
    sub = parser.add_subparsers(dest="kind", metavar="KIND", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--bootstrap", metavar="HOSTS", help="Kafka bootstrap servers (LINEWATCH_KAFKA_BOOTSTRAP)")
        p.add_argument("--topic-prefix", metavar="P", help="topic prefix (LINEWATCH_TOPIC_PREFIX)")
        p.add_argument("--group", metavar="ID", help="Kafka consumer group (default linewatch-bridge-<kind>)")
        p.add_argument("--from", dest="start", choices=("latest", "earliest"),
                       help="where a new consumer group starts (default latest: verdicts from now on)")
        p.add_argument("--batch-size", type=int, metavar="N", help="results per poll and commit (default 100)")
        p.add_argument("--http-port", type=int, metavar="PORT",
                       help="serve /healthz, /readyz and /metrics (Prometheus) on this port (default: off)")
        p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))

    p = sub.add_parser("mqtt", formatter_class=fmt, help="publish verdicts to an MQTT broker",
                       description="Each verdict as JSON to <root>/<line>/<camera>, QoS 1; the newest verdict\n"
                                   "of each camera is retained. Offsets are committed after the PUBACKs.")
    common(p)
    p.add_argument("--host", help="MQTT broker host (LINEWATCH_MQTT_HOST, default localhost)")
    p.add_argument("--port", type=int, help="MQTT broker port (LINEWATCH_MQTT_PORT, default 1883)")
    p.add_argument("--topic-root", help="first topic level (LINEWATCH_MQTT_TOPIC_ROOT, default linewatch)")
    p.add_argument("--client-id", help="MQTT client id (LINEWATCH_MQTT_CLIENT_ID, default linewatch-bridge-<host>)")

    p = sub.add_parser("opcua", formatter_class=fmt, help="serve verdicts as OPC UA variables, one object per camera",
                       description="An OPC UA server (asyncua) with Objects/Linewatch/<line>/<camera>/{Verdict,\n"
                                   "IsAnomalous, Score, Threshold, PartId, Product, ModelVersion, FrameId, Seq,\n"
                                   "CapturedAt, InferredAt, Count}; string node ids ns=<i>;s=<line>/<camera>/<name>.\n"
                                   "Count is written last: subscribe to it to read a consistent verdict.")
    common(p)
    p.add_argument("--endpoint", help="listen address (LINEWATCH_OPCUA_ENDPOINT, default "
                                      "opc.tcp://0.0.0.0:4840/linewatch/)")
    p.add_argument("--namespace", help="namespace URI of the nodes (LINEWATCH_OPCUA_NAMESPACE, default urn:linewatch)")
    return parser


_OVERRIDES = {"group": "bridge_group", "start": "bridge_start", "batch_size": "bridge_batch_size",
              "host": "mqtt_host", "port": "mqtt_port", "topic_root": "mqtt_topic_root",
              "client_id": "mqtt_client_id", "endpoint": "opcua_endpoint", "namespace": "opcua_namespace"}


def main(argv: Sequence[str] | None = None) -> int:
    from pydantic import ValidationError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    for noisy in ("kafka", "asyncua"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return run(args)
    except (ValidationError, ValueError, RuntimeError, OSError) as exc:  # settings, start-up (one line)
        print(f"{PROG}: error: {str(exc).strip() or type(exc).__name__}", file=sys.stderr)
        return 1


def run(args: argparse.Namespace) -> int:
    from ingest.kafka_config import KafkaSettings

    from .loop import ResultsBridge, serve_http
    from .settings import BridgeSettings

    kafka_overrides = {k: v for k, v in (("kafka_bootstrap", args.bootstrap), ("topic_prefix", args.topic_prefix))
                       if v}
    kafka = KafkaSettings(**kafka_overrides)
    kafka.client_kwargs()  # what is only checked when connecting (a SASL password), before the sink starts
    settings = BridgeSettings(**{field: getattr(args, name) for name, field in _OVERRIDES.items()
                                 if getattr(args, name, None) is not None})
    if args.kind == "mqtt":
        from .mqtt import MqttSink

        sink = MqttSink(settings)
    else:
        from .opcua import OpcUaSink

        sink = OpcUaSink(settings)
    bridge = ResultsBridge(kafka, settings, sink)
    bridge.install_signal_handlers()
    server = None
    if args.http_port is not None:
        server = serve_http(bridge, args.http_port)
        logging.getLogger("linewatch.bridge").info("health and metrics on :%d", server.server_address[1])
    try:
        return bridge.run()
    finally:
        if server is not None:
            server.shutdown()


if __name__ == "__main__":
    sys.exit(main())
