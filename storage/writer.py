"""``linewatch-storage writer``: the results topic -> the database, exactly one row per frame.

The writer runs the shared Kafka service loop (:mod:`ingest.service_loop`) on ``<prefix>.results``
(consumer group ``LINEWATCH_WRITER_GROUP``, manual commits):

* results are gathered into batches (``--batch-size`` results, or whatever arrived within
  ``--max-wait-ms``) and stored by :func:`storage.results.store_results`: blobs first, then all rows
  of the batch in one transaction with ``INSERT ... ON CONFLICT DO NOTHING``;
* Kafka offsets are committed only AFTER the database commit and after the batch's dead letters are
  acknowledged.  A crash anywhere before that replays the batch, and the replay inserts nothing
  twice: at-least-once delivery, exactly-once rows;
* a message that cannot be stored goes to ``<prefix>.deadletter`` (stage ``storage-writer``) with a
  reason code and the rest of its batch is stored: ``empty``, ``undecodable`` (not JSON),
  ``schema`` (wrong version, missing fields, ids outside the frame schema, non-finite numbers),
  ``invalid`` (a heatmap that is not a PNG, ...), ``store`` (the database or blob store refused
  that one result);
* a database, disk or broker outage is not a bad message: the batch is redone with back-off and
  nothing is committed meanwhile (``/readyz`` answers 503 with the fault while it waits);
* SIGTERM / SIGINT: the current batch is finished and committed, then the writer exits 0;
* ``--http-port`` serves ``/healthz`` (200 while the loop polls: it polled within the last 60 s),
  ``/readyz`` (also 503 while an outage is waited out, or while one batch has been in hand for
  over 5 s: blocked in the database, e.g. SQLite waiting out a lock) and ``/metrics`` (Prometheus).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError as SAInterfaceError
from sqlalchemy.exc import OperationalError

from detector.messages import InspectionResult
from ingest.kafka_config import KafkaSettings
from ingest.service_loop import BatchOutcome, DeadLetter, LoopConfig, RetryLater, ServiceLoop

from .blobs import BlobStore
from .results import InvalidResult, store_results, validate_result
from .settings import StorageSettings

log = logging.getLogger("linewatch.storage.writer")

DLQ_STAGE = "storage-writer"
# /readyz says "waiting" when one batch has been in hand this long (a batch takes well under a second)
STUCK_BATCH_S = 5.0
# what an outage looks like, as opposed to one result the database refuses
_INFRASTRUCTURE = (OperationalError, SAInterfaceError, OSError)


class WriterMetrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.stored = Counter("linewatch_writer_results_stored", "inspection rows inserted", registry=self.registry)
        self.duplicates = Counter("linewatch_writer_results_duplicate",
                                  "results already stored (replays)", registry=self.registry)
        self.dead = Counter("linewatch_writer_dead_letters", "messages sent to the dead-letter topic",
                            ["code"], registry=self.registry)
        self.db_errors = Counter("linewatch_writer_db_errors", "failed batch transactions (retried)",
                                 registry=self.registry)
        self.batch_seconds = Histogram("linewatch_writer_batch_seconds", "store + commit time per batch",
                                       registry=self.registry)
        self.batch_size = Histogram("linewatch_writer_batch_size", "messages per batch",
                                    buckets=(1, 5, 10, 25, 50, 100, 200, 500, 1000), registry=self.registry)
        self.last_poll = Gauge("linewatch_writer_last_poll_timestamp", "unix time of the last poll",
                               registry=self.registry)


def parse_result(msg: Any) -> InspectionResult | DeadLetter:
    """The result in one results-topic record, or the dead letter saying why it cannot be stored."""
    if not msg.value:
        return DeadLetter(msg, "empty", "empty message")
    try:
        result = InspectionResult.from_bytes(msg.value)
        validate_result(result)
        return result
    except ValidationError as exc:
        if any(e.get("type") in ("json_invalid", "json_type") for e in exc.errors()):
            return DeadLetter(msg, "undecodable", "undecodable: " + _summarize(exc))
        return DeadLetter(msg, "schema", "schema: " + _summarize(exc))
    except InvalidResult as exc:
        return DeadLetter(msg, "invalid", f"invalid: {exc}")


class ResultWriter:
    def __init__(
        self,
        kafka: KafkaSettings,
        storage: StorageSettings,
        engine: Engine,
        blobs: BlobStore,
        *,
        batch_size: int | None = None,
        max_wait_ms: int | None = None,
        group_id: str | None = None,
        metrics: WriterMetrics | None = None,
        on_batch: Callable[[int, int, int], None] | None = None,
    ) -> None:
        self.engine = engine
        self.blobs = blobs
        self.batch_size = batch_size or storage.writer_batch_size
        max_wait = (storage.writer_max_wait_ms if max_wait_ms is None else max_wait_ms) / 1000.0
        self.metrics = metrics or WriterMetrics()
        self.on_batch = on_batch
        self.loop = ServiceLoop(kafka, LoopConfig(
            stage=DLQ_STAGE, stream="results", group=group_id or storage.writer_group,
            max_records=self.batch_size, max_wait_s=max_wait,
            # a killed writer's partitions go to the others after this (Kafka's default is 45 s)
            session_timeout_ms=storage.writer_session_timeout_ms,
        ))
        self._counts = (0, 0)  # (inserted, duplicates) of the batch being handled

    # ------------------------------------------------------------------ lifecycle
    def stop(self, *_: Any) -> None:
        self.loop.stop()

    def install_signal_handlers(self) -> None:
        self.loop.install_signal_handlers()

    @property
    def last_poll(self) -> float:
        age = self.loop.loop_age()
        return 0.0 if age is None else time.time() - age

    def run(self) -> int:
        """Consume until :meth:`stop`; returns the process exit code."""
        log.info("writer: %s -> %s (group %s, batch %d, max wait %.0f ms)", self.loop.topic,
                 self.engine.url.render_as_string(hide_password=True), self.loop.config.group, self.batch_size,
                 self.loop.config.max_wait_s * 1000)
        code = self.loop.run(self.handle, between_batches=self._between_batches, on_batch=self._on_batch)
        log.info("writer stopped")
        return code

    def _between_batches(self) -> None:
        self.metrics.last_poll.set(time.time())

    # ------------------------------------------------------------------ one batch
    def handle(self, records: list[Any]) -> list[DeadLetter]:
        """Store the batch's results; returns the dead letters.  Outages raise :class:`RetryLater`."""
        dead: list[DeadLetter] = []
        good: list[tuple[Any, InspectionResult]] = []
        for msg in records:
            parsed = parse_result(msg)
            if isinstance(parsed, DeadLetter):
                dead.append(parsed)
            else:
                good.append((msg, parsed))
        self._counts = (0, 0)
        if not good:
            return dead
        try:
            out = self._store([r for _, r in good])
            self._counts = (out.inserted, out.duplicates)
            return dead
        except RetryLater:
            raise
        except Exception as exc:  # noqa: BLE001 - something in the batch is refused: find it below
            log.warning("batch refused (%s); storing results one by one", _one_line(exc))
        inserted = dupes = 0
        for msg, r in good:
            try:
                out = self._store([r])
            except RetryLater:
                raise
            except Exception as exc:  # noqa: BLE001 - this one result cannot be stored
                dead.append(DeadLetter(msg, "store", f"not stored: {type(exc).__name__}: {_one_line(exc)}"))
                continue
            inserted += out.inserted
            dupes += out.duplicates
        self._counts = (inserted, dupes)
        return dead

    def _store(self, results: list[InspectionResult]):
        try:
            return store_results(self.engine, self.blobs, results)
        except _INFRASTRUCTURE as exc:
            self.metrics.db_errors.inc()
            raise RetryLater(f"storage unavailable: {type(exc).__name__}: {_one_line(exc)}") from exc

    def _on_batch(self, out: BatchOutcome) -> None:
        inserted, dupes = self._counts
        self.metrics.stored.inc(inserted)
        self.metrics.duplicates.inc(dupes)
        for dl in out.dead:
            self.metrics.dead.labels(dl.code).inc()
        self.metrics.batch_seconds.observe(out.handle_s + out.publish_s + out.commit_s)
        self.metrics.batch_size.observe(out.records)
        log.info("batch: %d stored, %d duplicates, %d dead letters (%.0f ms)", inserted, dupes, len(out.dead),
                 (out.handle_s + out.publish_s + out.commit_s) * 1000)
        if self.on_batch:
            self.on_batch(inserted, dupes, len(out.dead))


# ---------------------------------------------------------------------- health / metrics

def serve_http(writer: ResultWriter, port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """/healthz, /readyz (healthy while the consumer polled within a minute) and /metrics.

    The HTTP server is the detector service's (upstream); only the health rule is the writer's.
    """
    from detector.service.observability import serve_http as serve_health_http

    def health() -> tuple[bool, dict]:
        age = writer.loop.loop_age() if writer.loop.started else None
        ok = age is not None and age < 60
        info = {"status": "ok" if ok else "starting" if age is None else "stalled", "last_poll_age_s": age}
        if writer.loop.retrying:
            info["waiting_for"] = writer.loop.retrying
        return ok, info

    def ready() -> tuple[bool, dict]:
        ok, info = health()
        stuck = writer.loop.batch_age()
        if ok and writer.loop.retrying:
            ok, info["status"] = False, "waiting"  # alive, but nothing gets stored until the fault clears
        elif ok and stuck is not None and stuck > STUCK_BATCH_S:
            # blocked inside the database call (e.g. SQLite waiting out another process's lock in
            # its busy timeout): no error yet, but nothing gets stored either
            ok, info["status"] = False, "waiting"
            info["waiting_for"] = f"storage: one batch in hand for {stuck:.0f} s (database locked or not answering)"
        return ok, info

    return serve_health_http(writer.metrics, health, ready, port, host)


def _summarize(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ())) or "message"
        parts.append(f"{loc}: {err.get('msg')}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
