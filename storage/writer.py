"""``linewatch-storage writer``: the results topic -> the database, exactly one row per frame.

* Consumer group ``LINEWATCH_WRITER_GROUP`` on ``<prefix>.results``; auto-commit is off.
* Results are gathered into batches (``--batch-size`` results, or whatever arrived within
  ``--max-wait-ms``) and stored by :func:`storage.results.store_results`: blobs first, then
  all rows of the batch in one transaction with ``INSERT ... ON CONFLICT DO NOTHING``.
* Kafka offsets are committed only AFTER the database commit (and after the batch's dead
  letters are acknowledged by the broker).  A crash anywhere before that replays the batch,
  and the replay inserts nothing twice: at-least-once delivery, exactly-once rows.
* A message that cannot be stored — not JSON, wrong schema version, missing fields, strings
  too long for the columns, a heatmap that is not a PNG, a non-finite score — goes to
  ``<prefix>.deadletter`` with the reason; the writer keeps going.  Dead letters carry the
  original key, value and headers plus ``lw-dlq-reason``, ``lw-dlq-stage`` (``storage-writer``),
  ``lw-dlq-topic``, ``lw-dlq-partition``, ``lw-dlq-offset``.
* A database outage is not a bad message: the batch is retried with backoff (nothing is
  committed meanwhile).
* On a partition revocation (rebalance) the pending batch is stored and committed first.
* SIGTERM / SIGINT: the current batch is finished and committed, then the writer exits 0.
* ``--http-port`` serves ``/healthz`` and ``/readyz`` (200 while the poll loop is alive: it
  polled within the last 60 s) and ``/metrics`` (Prometheus).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Engine
from sqlalchemy.exc import DataError, IntegrityError, OperationalError, StatementError
from sqlalchemy.exc import InterfaceError as SAInterfaceError

from detector.messages import InspectionResult
from ingest.kafka_config import KafkaSettings

from .blobs import BlobStore
from .results import InvalidResult, store_results, validate_result
from .settings import StorageSettings

log = logging.getLogger("linewatch.storage.writer")

DLQ_STAGE = "storage-writer"


@dataclass
class _Pending:
    results: list[tuple[Any, InspectionResult]] = field(default_factory=list)  # (record, result)
    dead: list[tuple[Any, str]] = field(default_factory=list)  # (record, reason)
    offsets: dict[Any, int] = field(default_factory=dict)  # TopicPartition -> next offset
    started: float | None = None

    def __len__(self) -> int:
        return len(self.results) + len(self.dead)


class WriterMetrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.stored = Counter("linewatch_writer_results_stored", "inspection rows inserted", registry=self.registry)
        self.duplicates = Counter("linewatch_writer_results_duplicate",
                                  "results already stored (replays)", registry=self.registry)
        self.dead = Counter("linewatch_writer_dead_letters", "messages sent to the dead-letter topic",
                            registry=self.registry)
        self.db_errors = Counter("linewatch_writer_db_errors", "failed batch transactions (retried)",
                                 registry=self.registry)
        self.batch_seconds = Histogram("linewatch_writer_batch_seconds", "store + commit time per batch",
                                       registry=self.registry)
        self.batch_size = Histogram("linewatch_writer_batch_size", "messages per batch",
                                    buckets=(1, 5, 10, 25, 50, 100, 200, 500, 1000), registry=self.registry)
        self.last_poll = Gauge("linewatch_writer_last_poll_timestamp", "unix time of the last poll",
                               registry=self.registry)


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
        self.kafka = kafka
        self.storage = storage
        self.engine = engine
        self.blobs = blobs
        self.batch_size = batch_size or storage.writer_batch_size
        self.max_wait = (storage.writer_max_wait_ms if max_wait_ms is None else max_wait_ms) / 1000.0
        self.group_id = group_id or storage.writer_group
        self.metrics = metrics or WriterMetrics()
        self.on_batch = on_batch
        self._stop = threading.Event()
        self._pending = _Pending()
        self._consumer: Any = None
        self._producer: Any = None
        self.last_poll = 0.0

    # ------------------------------------------------------------------ lifecycle
    def stop(self, *_: Any) -> None:
        if not self._stop.is_set():
            log.info("stop requested: finishing the current batch")
        self._stop.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def _connect(self) -> None:
        from kafka import KafkaConsumer, KafkaProducer
        from kafka.consumer.subscription_state import ConsumerRebalanceListener

        from ingest.topics import ensure_topics

        # dead letters must have somewhere to go (topics are never auto-created)
        ensure_topics(self.kafka, partitions=1, streams=("deadletter",))
        common = self.kafka.client_kwargs()
        self._producer = KafkaProducer(
            **common, acks="all", retries=10, linger_ms=5,
            max_request_size=self.kafka.kafka_max_message_bytes + 1024 * 1024,
        )
        writer = self

        class _Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):  # noqa: D401 - kafka-python API
                if len(writer._pending):
                    log.info("partitions revoked (%s): storing the pending batch first", sorted(map(str, revoked)))
                    writer._flush(final=True)

            def on_partitions_assigned(self, assigned):
                log.info("assigned partitions: %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))

        self._consumer = KafkaConsumer(
            **common,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.batch_size,
            # a killed writer's partitions go to the others after this (Kafka's default is 45 s)
            session_timeout_ms=self.storage.writer_session_timeout_ms,
            heartbeat_interval_ms=max(500, self.storage.writer_session_timeout_ms // 4),
            max_partition_fetch_bytes=self.kafka.kafka_max_message_bytes + 4 * 1024 * 1024,
            fetch_max_bytes=max(64 * 1024 * 1024, self.kafka.kafka_max_message_bytes + 4 * 1024 * 1024),
        )
        self._consumer.subscribe([self.kafka.topic("results")], listener=_Listener())

    def run(self) -> int:
        """Consume until :meth:`stop`; returns the process exit code."""
        self._connect()
        log.info("writer: %s -> %s (group %s, batch %d, max wait %.0f ms)", self.kafka.topic("results"),
                 self.engine.url.render_as_string(hide_password=True), self.group_id, self.batch_size,
                 self.max_wait * 1000)
        try:
            while not self._stop.is_set():
                if self._pending.started is not None:  # a partial batch waits at most max_wait
                    timeout = max(0.0, self._pending.started + self.max_wait - time.monotonic())
                else:
                    timeout = max(self.max_wait, 0.2)
                records = self._consumer.poll(
                    timeout_ms=int(timeout * 1000), max_records=max(1, self.batch_size - len(self._pending))
                )
                self.last_poll = time.time()
                self.metrics.last_poll.set(self.last_poll)
                for _tp, msgs in records.items():
                    for msg in msgs:
                        self._take(msg)
                if len(self._pending) and (
                    len(self._pending) >= self.batch_size
                    or time.monotonic() - (self._pending.started or 0) >= self.max_wait
                ):
                    self._flush()
            if len(self._pending):
                self._flush(final=True)
        finally:
            self._close()
        log.info("writer stopped")
        return 0

    def _close(self) -> None:
        for client in (self._consumer, self._producer):
            if client is None:
                continue
            try:
                if client is self._consumer:
                    client.close(autocommit=False)
                else:
                    client.close(timeout=10)
            except Exception:  # noqa: BLE001 - closing on the way out
                log.exception("error while closing a Kafka client")

    # ------------------------------------------------------------------ batches
    def _take(self, msg: Any) -> None:
        from kafka.structs import TopicPartition

        p = self._pending
        if p.started is None:
            p.started = time.monotonic()
        tp = TopicPartition(msg.topic, msg.partition)
        p.offsets[tp] = max(p.offsets.get(tp, 0), msg.offset + 1)
        reason = None
        if not msg.value:
            reason = "empty message"
        else:
            try:
                result = InspectionResult.from_bytes(msg.value)
                validate_result(result)
            except ValidationError as exc:
                reason = "schema: " + _summarize(exc)
            except InvalidResult as exc:
                reason = f"invalid: {exc}"
            except Exception as exc:  # noqa: BLE001 - anything unparsable is a dead letter
                reason = f"undecodable: {type(exc).__name__}: {exc}"
        if reason is None:
            p.results.append((msg, result))
        else:
            log.warning("dead letter %s[%d]@%d: %s", msg.topic, msg.partition, msg.offset, reason)
            p.dead.append((msg, reason))

    def _flush(self, final: bool = False) -> bool:
        """Store the pending batch, send its dead letters, commit its offsets.

        Retries database outages with backoff until it succeeds or a stop is requested; on
        giving up nothing is committed (the batch will be replayed by whoever owns the
        partitions next).
        """
        p = self._pending
        if not len(p):
            return True
        t0 = time.monotonic()
        delay = 0.5
        while True:
            try:
                inserted, dupes = self._store(p)
                break
            except (OperationalError, SAInterfaceError, OSError) as exc:
                self.metrics.db_errors.inc()
                if self._stop.is_set() and final:
                    log.error("giving up on a batch of %d at shutdown (database: %s); it will be replayed",
                              len(p), _one_line(exc))
                    self._pending = _Pending()
                    return False
                log.error("storing a batch failed (%s); retrying in %.1fs", _one_line(exc), delay)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
                if self._stop.is_set():
                    final = True
        # dead letters must be acknowledged before the offsets move past them
        delay = 0.5
        while p.dead:
            try:
                self._send_dead_letters(p.dead)
                break
            except Exception as exc:  # noqa: BLE001 - KafkaError, timeouts: the broker is unwell
                if self._stop.is_set():
                    log.error("could not send %d dead letters at shutdown (%s); the batch will be replayed",
                              len(p.dead), _one_line(exc))
                    self._pending = _Pending()
                    return False
                log.error("sending dead letters failed (%s); retrying in %.1fs", _one_line(exc), delay)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
        self._commit(p.offsets)
        self.metrics.stored.inc(inserted)
        self.metrics.duplicates.inc(dupes)
        self.metrics.dead.inc(len(p.dead))
        self.metrics.batch_seconds.observe(time.monotonic() - t0)
        self.metrics.batch_size.observe(len(p))
        log.info("batch: %d stored, %d duplicates, %d dead letters (%.0f ms)", inserted, dupes, len(p.dead),
                 (time.monotonic() - t0) * 1000)
        if self.on_batch:
            self.on_batch(inserted, dupes, len(p.dead))
        self._pending = _Pending()
        return True

    def _store(self, p: _Pending) -> tuple[int, int]:
        if not p.results:
            return 0, 0
        results = [r for _, r in p.results]
        try:
            out = store_results(self.engine, self.blobs, results)
            return out.inserted, out.duplicates
        except (IntegrityError, DataError, StatementError) as exc:
            if isinstance(exc, OperationalError | SAInterfaceError):
                raise
            # something in the batch the database refuses: store one by one, dead-letter the culprits
            log.warning("batch refused by the database (%s); storing results one by one", _one_line(exc))
        inserted = dupes = 0
        good: list[tuple[Any, InspectionResult]] = []
        for msg, r in p.results:
            try:
                out = store_results(self.engine, self.blobs, [r])
            except (IntegrityError, DataError, StatementError) as exc:
                if isinstance(exc, OperationalError | SAInterfaceError):
                    raise
                p.dead.append((msg, f"database refused: {_one_line(exc)}"))
                continue
            inserted += out.inserted
            dupes += out.duplicates
            good.append((msg, r))
        p.results = good
        return inserted, dupes

    def _send_dead_letters(self, dead: list[tuple[Any, str]]) -> None:
        topic = self.kafka.topic("deadletter")
        futures = []
        for msg, reason in dead:
            headers = list(msg.headers or []) + [
                ("lw-dlq-reason", reason[:2000].encode("utf-8", "replace")),
                ("lw-dlq-stage", DLQ_STAGE.encode()),
                ("lw-dlq-topic", msg.topic.encode()),
                ("lw-dlq-partition", str(msg.partition).encode()),
                ("lw-dlq-offset", str(msg.offset).encode()),
            ]
            futures.append(self._producer.send(topic, key=msg.key, value=msg.value or b"", headers=headers))
        self._producer.flush(timeout=60)
        for f in futures:
            f.get(timeout=60)  # raises if the broker refused: then nothing is committed

    def _commit(self, offsets: dict[Any, int]) -> None:
        from kafka.errors import CommitFailedError, KafkaError
        from kafka.structs import OffsetAndMetadata

        if not offsets:
            return
        try:
            self._consumer.commit({tp: OffsetAndMetadata(off, "", -1) for tp, off in offsets.items()})
        except CommitFailedError as exc:
            # the group rebalanced under us: the rows are stored; the new owner replays harmlessly
            log.warning("offset commit refused after a rebalance (%s); the batch will be replayed", exc)
        except KafkaError as exc:
            log.warning("offset commit failed (%s); the batch will be replayed", exc)


# ---------------------------------------------------------------------- health / metrics

def serve_http(writer: ResultWriter, port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """/healthz, /readyz (healthy while the consumer polled within a minute) and /metrics.

    The HTTP server is the detector service's (upstream); only the health rule is the writer's.
    """
    from detector.service.observability import serve_http as serve_health_http

    def health() -> tuple[bool, dict]:
        age = time.time() - writer.last_poll if writer.last_poll else None
        ok = age is not None and age < 60
        return ok, {"status": "ok" if ok else "starting" if age is None else "stalled", "last_poll_age_s": age}

    return serve_health_http(writer.metrics, health, health, port, host)


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
