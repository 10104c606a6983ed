"""The Kafka side of a bridge, on the shared service loop (:mod:`ingest.service_loop`).

Per batch of ``<prefix>.results`` records, :meth:`ResultsBridge.handle`:

1. parses each record (:func:`storage.writer.parse_result`); a record that is not a valid
   :class:`InspectionResult` becomes a dead letter (stage ``bridge-<kind>``) and the rest go on;
2. drops frames this process already delivered (replays after a retry or a rebalance):
   idempotent by ``frame_id`` over the last ``_SEEN_MAX`` frames;
3. hands the verdicts to the sink, which returns the frame ids it got acknowledged within
   ``LINEWATCH_BRIDGE_ACK_TIMEOUT_S`` (MQTT PUBACK, OPC UA value written);
4. raises :class:`~ingest.service_loop.RetryLater` unless every verdict was acknowledged: the
   service loop then commits nothing, reads the batch again after a backoff and keeps polling
   (the consumer stays in its group however long the sink is away).

The loop commits the offsets only after ``handle`` returned: at-least-once.  SIGTERM / SIGINT let the
batch in hand finish (or give it up uncommitted after the acknowledgement timeout) and exit 0.

Health (``--http-port``): ``/healthz`` is 200 while the loop turns (it polled or finished a batch
within 60 s, including while it waits out a sink outage), ``/readyz`` also needs the sink connected
and no outage being waited out; ``/metrics`` is Prometheus.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from datetime import datetime
from http.server import ThreadingHTTPServer
from typing import Any, Protocol

from ingest.kafka_config import KafkaSettings
from ingest.service_loop import BatchOutcome, DeadLetter, LoopConfig, RetryLater, ServiceLoop

from ..writer import parse_result
from .settings import BridgeSettings
from .verdict import Verdict

log = logging.getLogger("linewatch.bridge")

_SEEN_MAX = 100_000  # frame ids remembered for de-duplication (about an hour of 30 cameras at 1 fps)


class Item:
    """What a sink is handed: the verdict, and whether it is the newest seen for its camera."""

    __slots__ = ("verdict", "newest")

    def __init__(self, verdict: Verdict, newest: bool) -> None:
        self.verdict = verdict
        self.newest = newest


class Sink(Protocol):
    kind: str
    target: str

    def start(self) -> None: ...
    def connected(self) -> bool: ...

    def deliver(self, items: Sequence[Item], timeout_s: float) -> set[str]:
        """Publish; return the frame ids acknowledged within ``timeout_s``."""

    def close(self) -> None: ...


class BridgeMetrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry()
        p = "linewatch_bridge_"
        self.delivered = Counter(p + "verdicts_delivered", "verdicts acknowledged by the sink",
                                 ["sink", "verdict"], registry=r)
        self.duplicates = Counter(p + "duplicates", "replayed results skipped (frame already delivered)",
                                  registry=r)
        self.dead = Counter(p + "dead_letters", "messages sent to the dead-letter topic", ["code"], registry=r)
        self.retries = Counter(p + "retries", "batches redone because the sink did not acknowledge them",
                               registry=r)
        lat = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
        self.deliver_seconds = Histogram(p + "deliver_seconds", "sink publish until acknowledged, per batch",
                                         buckets=lat, registry=r)
        self.capture_to_ack = Histogram(p + "capture_to_ack_seconds",
                                        "camera capture time until the sink acknowledged the verdict",
                                        buckets=lat, registry=r)
        self.sink_connected = Gauge(p + "sink_connected", "1 while the sink is connected", registry=r)
        self.last_poll = Gauge(p + "last_poll_timestamp", "unix time the loop last turned", registry=r)


class ResultsBridge:
    def __init__(self, kafka: KafkaSettings, settings: BridgeSettings, sink: Sink,
                 metrics: BridgeMetrics | None = None) -> None:
        self.settings = settings
        self.sink = sink
        self.metrics = metrics or BridgeMetrics()
        self.loop = ServiceLoop(kafka, LoopConfig(
            stage=f"bridge-{sink.kind}", stream="results", group=settings.group(sink.kind),
            max_records=settings.bridge_batch_size,
            max_wait_s=0.0,  # a verdict goes out at once; batches are whatever arrived together
            auto_offset_reset=settings.bridge_start,
        ))
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._newest: dict[tuple[str, str], datetime] = {}

    # ------------------------------------------------------------------ lifecycle
    def stop(self, *_: Any) -> None:
        self.loop.stop()

    def install_signal_handlers(self) -> None:
        self.loop.install_signal_handlers()

    def run(self) -> int:
        """Consume until :meth:`stop`; returns the process exit code."""
        self.sink.start()
        log.info("bridge %s: %s (group %s) -> %s", self.sink.kind, self.loop.topic, self.loop.config.group,
                 self.sink.target)
        self.loop.on_retry = lambda _exc: self.metrics.retries.inc()
        try:
            return self.loop.run(self.handle, between_batches=self._between_batches, on_batch=self._on_batch)
        finally:
            try:
                self.sink.close()
            except Exception:  # noqa: BLE001 - closing on the way out
                log.exception("error while closing the %s sink", self.sink.kind)
            log.info("bridge stopped")

    def _between_batches(self) -> None:
        self.metrics.last_poll.set(time.time())
        self.metrics.sink_connected.set(1 if self.sink.connected() else 0)

    # ------------------------------------------------------------------ one batch
    def handle(self, records: list[Any]) -> list[DeadLetter]:
        items, dead = self._parse(records)
        if not items:
            return dead
        t0 = time.monotonic()
        acked = self.sink.deliver(items, self.settings.bridge_ack_timeout_s)
        now = time.time()
        for item in items:
            v = item.verdict
            if v.frame_id in acked:
                self._remember(v.frame_id)
                self.metrics.delivered.labels(sink=self.sink.kind, verdict=v.verdict).inc()
                self.metrics.capture_to_ack.observe(max(0.0, now - v.captured_at.timestamp()))
        missing = len(items) - sum(1 for i in items if i.verdict.frame_id in acked)
        if missing:
            raise RetryLater(f"{self.sink.kind} sink ({self.sink.target}) acknowledged {len(items) - missing} of "
                             f"{len(items)} verdicts within {self.settings.bridge_ack_timeout_s:g}s")
        self.metrics.deliver_seconds.observe(time.monotonic() - t0)
        return dead

    def _parse(self, records: list[Any]) -> tuple[list[Item], list[DeadLetter]]:
        items: list[Item] = []
        dead: list[DeadLetter] = []
        batch_ids: set[str] = set()
        for msg in records:
            parsed = parse_result(msg)
            if isinstance(parsed, DeadLetter):
                dead.append(parsed)
                continue
            verdict = Verdict.of(parsed)
            if verdict.frame_id in self._seen or verdict.frame_id in batch_ids:
                self.metrics.duplicates.inc()
                continue
            batch_ids.add(verdict.frame_id)
            newest = self._newest.get(verdict.camera_key)
            is_newest = newest is None or verdict.captured_at >= newest
            if is_newest:
                self._newest[verdict.camera_key] = verdict.captured_at
            items.append(Item(verdict, is_newest))
        return items, dead

    def _remember(self, frame_id: str) -> None:
        self._seen[frame_id] = None
        while len(self._seen) > _SEEN_MAX:
            self._seen.popitem(last=False)

    def _on_batch(self, out: BatchOutcome) -> None:
        for dl in out.dead:
            self.metrics.dead.labels(dl.code).inc()

    # ------------------------------------------------------------------ health
    def health(self) -> tuple[bool, dict]:
        age = self.loop.loop_age() if self.loop.started else None
        ok = age is not None and age < 60
        info = {"status": "ok" if ok else "starting" if age is None else "stalled", "last_poll_age_s": age,
                "sink": self.sink.kind, "sink_connected": self.sink.connected()}
        if self.loop.retrying:
            info["waiting_for"] = self.loop.retrying
        return ok, info

    def ready(self) -> tuple[bool, dict]:
        ok, info = self.health()
        if ok and (self.loop.retrying or not info["sink_connected"]):
            ok, info["status"] = False, "waiting"  # alive, but verdicts do not get out until the sink is back
        return ok, info


def serve_http(bridge: ResultsBridge, port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """/healthz, /readyz and /metrics through the detector service's HTTP server (upstream, torch-free)."""
    from detector.service.observability import serve_http as serve_health_http

    return serve_health_http(bridge.metrics, bridge.health, bridge.ready, port, host)
