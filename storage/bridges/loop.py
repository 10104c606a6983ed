"""The Kafka side of a bridge: results in, verdicts handed to a sink, offsets committed after.

One loop, one screen:

1. poll up to ``batch size`` results from ``<prefix>.results`` (consumer group, auto-commit off);
2. decode each; a message that is not a valid :class:`InspectionResult` goes to
   ``<prefix>.deadletter`` with the reason (stage ``bridge-<kind>``) and the bridge keeps going;
3. drop frames this process already delivered (replays after a rebalance): idempotent by
   ``frame_id`` over the last ``_SEEN_MAX`` frames;
4. ``sink.deliver(batch)`` returns once the sink acknowledged every verdict (MQTT PUBACK,
   OPC UA value written).  A sink that is down is an infrastructure fault: the loop waits
   and retries, nothing is committed meanwhile;
5. commit the offsets.  A crash before this replays the batch: at-least-once.

SIGTERM / SIGINT finish (or abandon, uncommitted) the current batch and exit 0.

Health (``--http-port``): ``/healthz`` is 200 while the loop turns (it polled or waited on the
sink within 60 s), ``/readyz`` additionally needs the sink connected; ``/metrics`` is Prometheus.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from datetime import datetime
from http.server import ThreadingHTTPServer
from typing import Any, Protocol

from pydantic import ValidationError

from detector.messages import InspectionResult
from ingest.kafka_config import KafkaSettings

from .settings import BridgeSettings
from .verdict import Verdict

log = logging.getLogger("linewatch.bridge")

_SEEN_MAX = 100_000  # frame ids remembered for de-duplication (about an hour of 30 cameras at 1 fps)


class Sink(Protocol):
    kind: str

    def start(self) -> None: ...
    def connected(self) -> bool: ...

    def deliver(self, items: Sequence["Item"], stop: threading.Event) -> bool:
        """Publish and wait for the acknowledgements; False if ``stop`` was set first."""

    def close(self) -> None: ...


class Item:
    """What a sink is handed: the verdict, and whether it is the newest seen for its camera."""

    __slots__ = ("verdict", "newest")

    def __init__(self, verdict: Verdict, newest: bool) -> None:
        self.verdict = verdict
        self.newest = newest


class BridgeMetrics:
    def __init__(self, kind: str) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry()
        p = "linewatch_bridge_"
        self.delivered = Counter(p + "verdicts_delivered", "verdicts acknowledged by the sink",
                                 ["sink", "verdict"], registry=r)
        self.duplicates = Counter(p + "duplicates", "replayed results skipped (frame already delivered)",
                                  registry=r)
        self.dead = Counter(p + "dead_letters", "messages sent to the dead-letter topic", registry=r)
        lat = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
        self.deliver_seconds = Histogram(p + "deliver_seconds", "sink publish until acknowledged, per batch",
                                         buckets=lat, registry=r)
        self.capture_to_ack = Histogram(p + "capture_to_ack_seconds",
                                        "camera capture time until the sink acknowledged the verdict",
                                        buckets=lat, registry=r)
        self.sink_connected = Gauge(p + "sink_connected", "1 while the sink is connected", registry=r)
        self.last_poll = Gauge(p + "last_poll_timestamp", "unix time of the last poll", registry=r)
        self.kind = kind


class ResultsBridge:
    def __init__(self, kafka: KafkaSettings, settings: BridgeSettings, sink: Sink,
                 metrics: BridgeMetrics | None = None) -> None:
        self.kafka = kafka
        self.settings = settings
        self.sink = sink
        self.metrics = metrics or BridgeMetrics(sink.kind)
        self.group_id = settings.group(sink.kind)
        self.stage = f"bridge-{sink.kind}"
        self._stop = threading.Event()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._newest: dict[tuple[str, str], datetime] = {}
        self._consumer: Any = None
        self._producer: Any = None
        self.last_beat = 0.0  # the loop polled, or waited on the sink, at this unix time

    # ------------------------------------------------------------------ lifecycle
    def stop(self, *_: Any) -> None:
        if not self._stop.is_set():
            log.info("stop requested")
        self._stop.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def _connect(self) -> None:
        from kafka import KafkaConsumer, KafkaProducer

        from ingest.topics import ensure_topics

        ensure_topics(self.kafka, partitions=1, streams=("deadletter",))
        common = self.kafka.client_kwargs()
        self._producer = KafkaProducer(**common, acks="all", retries=10, linger_ms=5,
                                       max_request_size=self.kafka.kafka_max_message_bytes + 1024 * 1024)
        self._consumer = KafkaConsumer(
            **common, group_id=self.group_id, enable_auto_commit=False,
            auto_offset_reset=self.settings.bridge_start,
            max_poll_records=self.settings.bridge_batch_size,
            max_partition_fetch_bytes=self.kafka.kafka_max_message_bytes + 4 * 1024 * 1024,
            fetch_max_bytes=max(64 * 1024 * 1024, self.kafka.kafka_max_message_bytes + 4 * 1024 * 1024),
        )
        self._consumer.subscribe([self.kafka.topic("results")])

    def run(self) -> int:
        """Consume until :meth:`stop`; returns the process exit code."""
        self.sink.start()
        self._connect()
        log.info("bridge %s: %s (group %s) -> %s", self.sink.kind, self.kafka.topic("results"), self.group_id,
                 getattr(self.sink, "target", self.sink.kind))
        try:
            while not self._stop.is_set():
                records = self._consumer.poll(timeout_ms=500, max_records=self.settings.bridge_batch_size)
                self._beat()
                self.metrics.last_poll.set(self.last_beat)
                msgs = [m for batch in records.values() for m in batch]
                if not msgs:
                    continue
                items, dead, offsets = self._decode(msgs)
                if items and not self._deliver(items):
                    break  # stopped while the sink was down: nothing committed, the batch replays
                if dead and not self._send_dead_letters(dead):
                    break
                self._commit(offsets)
                for item in items:
                    self._remember(item.verdict.frame_id)
        finally:
            self._close()
        log.info("bridge stopped")
        return 0

    def _beat(self) -> None:
        self.last_beat = time.time()
        self.metrics.sink_connected.set(1 if self.sink.connected() else 0)

    def _close(self) -> None:
        for name, close in (("consumer", lambda: self._consumer.close(autocommit=False)),
                            ("producer", lambda: self._producer.close(timeout=10)), ("sink", self.sink.close)):
            try:
                if name == "sink" or getattr(self, f"_{name}") is not None:
                    close()
            except Exception:  # noqa: BLE001 - closing on the way out
                log.exception("error while closing the %s", name)

    # ------------------------------------------------------------------ one batch
    def _decode(self, msgs: list[Any]) -> tuple[list[Item], list[tuple[Any, str]], dict[Any, int]]:
        from kafka.structs import TopicPartition

        items: list[Item] = []
        dead: list[tuple[Any, str]] = []
        offsets: dict[Any, int] = {}
        batch_ids: set[str] = set()
        for msg in msgs:
            tp = TopicPartition(msg.topic, msg.partition)
            offsets[tp] = max(offsets.get(tp, 0), msg.offset + 1)
            try:
                verdict = Verdict.of(InspectionResult.from_bytes(msg.value or b""))
            except ValidationError as exc:
                reason = "schema: " + "; ".join(
                    f"{'.'.join(map(str, e.get('loc', ()))) or 'message'}: {e.get('msg')}" for e in exc.errors()[:5])
            except Exception as exc:  # noqa: BLE001 - anything unparsable is a dead letter
                reason = f"undecodable: {type(exc).__name__}: {exc}"
            else:
                reason = None
            if reason is not None:
                log.warning("dead letter %s[%d]@%d: %s", msg.topic, msg.partition, msg.offset, reason)
                dead.append((msg, reason))
                continue
            if verdict.frame_id in self._seen or verdict.frame_id in batch_ids:
                self.metrics.duplicates.inc()
                continue
            batch_ids.add(verdict.frame_id)
            newest = self._newest.get(verdict.camera_key)
            is_newest = newest is None or verdict.captured_at >= newest
            if is_newest:
                self._newest[verdict.camera_key] = verdict.captured_at
            items.append(Item(verdict, is_newest))
        return items, dead, offsets

    def _deliver(self, items: list[Item]) -> bool:
        """Hand the batch to the sink until it is acknowledged; retries a failing sink with backoff."""
        t0 = time.monotonic()
        delay = 0.5
        while not self._stop.is_set():
            self._beat()
            try:
                if not self.sink.deliver(items, self._stop):
                    return False
                break
            except ConnectionError as exc:
                log.error("%s sink unavailable (%s); retrying in %.1fs", self.sink.kind, exc, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 10.0)
        else:
            return False
        acked = time.time()
        self.metrics.deliver_seconds.observe(time.monotonic() - t0)
        for item in items:
            v = item.verdict
            self.metrics.delivered.labels(sink=self.sink.kind, verdict=v.verdict).inc()
            self.metrics.capture_to_ack.observe(max(0.0, acked - v.captured_at.timestamp()))
        return True

    def _remember(self, frame_id: str) -> None:
        self._seen[frame_id] = None
        while len(self._seen) > _SEEN_MAX:
            self._seen.popitem(last=False)

    def _send_dead_letters(self, dead: list[tuple[Any, str]]) -> bool:
        delay = 0.5
        while not self._stop.is_set():
            try:
                send_dead_letters(self._producer, self.kafka.topic("deadletter"), self.stage, dead)
                self.metrics.dead.inc(len(dead))
                return True
            except Exception as exc:  # noqa: BLE001 - KafkaError, timeouts: the broker is unwell
                log.error("sending dead letters failed (%s); retrying in %.1fs", exc, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 10.0)
        return False

    def _commit(self, offsets: dict[Any, int]) -> None:
        from kafka.errors import KafkaError
        from kafka.structs import OffsetAndMetadata

        try:
            self._consumer.commit({tp: OffsetAndMetadata(off, "", -1) for tp, off in offsets.items()})
        except KafkaError as exc:  # a rebalance moved the partitions: the new owner replays (harmless)
            log.warning("offset commit failed (%s); the batch will be replayed", exc)

    # ------------------------------------------------------------------ health
    def health(self) -> tuple[bool, dict]:
        age = time.time() - self.last_beat if self.last_beat else None
        ok = age is not None and age < 60
        return ok, {"status": "ok" if ok else "starting" if age is None else "stalled",
                    "last_beat_age_s": age, "sink": self.sink.kind, "sink_connected": self.sink.connected()}

    def ready(self) -> tuple[bool, dict]:
        ok, info = self.health()
        return ok and info["sink_connected"], info


def send_dead_letters(producer: Any, topic: str, stage: str, dead: list[tuple[Any, str]]) -> None:
    """Copy each record to the dead-letter topic with the reason; raises unless the broker acknowledged all."""
    futures = []
    for msg, reason in dead:
        headers = list(msg.headers or []) + [
            ("lw-dlq-reason", reason[:2000].encode("utf-8", "replace")),
            ("lw-dlq-stage", stage.encode()),
            ("lw-dlq-topic", msg.topic.encode()),
            ("lw-dlq-partition", str(msg.partition).encode()),
            ("lw-dlq-offset", str(msg.offset).encode()),
        ]
        futures.append(producer.send(topic, key=msg.key, value=msg.value or b"", headers=headers))
    producer.flush(timeout=60)
    for f in futures:
        f.get(timeout=60)


def serve_http(bridge: ResultsBridge, port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """/healthz, /readyz and /metrics through the detector service's HTTP server (upstream, torch-free)."""
    from detector.service.observability import serve_http as serve_health_http

    return serve_health_http(bridge.metrics, bridge.health, bridge.ready, port, host)
