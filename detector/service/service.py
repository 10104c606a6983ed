"""The detector service: ``<prefix>.frames`` -> inference -> ``<prefix>.results``, at least once.

One loop, one batch at a time:

1. **gather** — poll the consumer group (manual commits) until ``max_batch`` records are in hand
   or ``max_wait_ms`` passed since the first one arrived; with a full batch in hand, records the
   consumer already fetched (a backlog) are taken too, up to ``batches_per_commit`` batches;
2. **decode** — every record is checked (:func:`.imaging.check_frame`) and routed to a
   checkpoint (:class:`.routing.ModelSet`); bad records become dead letters, never exceptions;
3. **infer** — one :meth:`Detector.predict` per checkpoint in the batch (frames of different
   sizes are fine); a failing batch is retried frame by frame so one bad frame cannot sink the
   others (a frame that still fails is dead-lettered as ``inference``);
4. **encode** — one :class:`detector.messages.InspectionResult` per frame (heatmap PNG, the frame
   itself when flagged or sampled), key = camera id, sent at once (steps 3-4 repeat per inference
   batch of ``max_batch``, so the acks of one batch arrive while the next is inferred);
5. **publish** — dead letters are sent, the producer is flushed and *every* future is checked; if
   anything was not acknowledged, nothing is committed: the consumer is rewound to the records'
   first offsets and they are redone after a back-off;
6. **commit** — only now the offsets of all records taken in step 1 are committed (synchronously).

So a crash at any point replays at most the uncommitted batch: results may be published twice
(same frame id, same score — CPU inference is deterministic), and the storage writer stores each
frame id once.  A rebalance while a batch is being gathered rewinds the gathered records (they
were not processed yet), so nothing is skipped either.

Models are taken from the :class:`ModelHolder` once per batch and swapped only between batches;
every result carries the ``model_version`` of the checkpoint that scored it.  Between batches the
service also polls the model store (:mod:`.store_reload`): a version the registry made active, or a
threshold saved on the dashboard, is loaded in the background and switched to the same way.

Dead letters go to ``<prefix>.deadletter`` with the original key, value and headers plus
``lw-dlq-reason`` (one line), ``lw-dlq-code`` (``empty``, ``oversized``, ``schema``,
``undecodable``, ``no-model``, ``inference``), ``lw-dlq-stage`` (``detector``), ``lw-dlq-topic``,
``lw-dlq-partition``, ``lw-dlq-offset``.  (A value above the linewatch record limit is replaced
by an empty one and ``lw-dlq-value-bytes`` says how big it was.)

SIGTERM/SIGINT (:meth:`DetectorService.stop`): the batch in hand is finished and committed, the
consumer leaves the group, exit code 0.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from detector.messages import InspectionResult
from ingest.kafka_config import KafkaSettings

from .imaging import BadFrame, DecodedFrame, attachable_frame, check_frame, encode_heatmap, is_sampled
from .observability import ServiceMetrics
from .routing import ModelHolder, Route, RoutingConfig
from .settings import ServiceSettings

log = logging.getLogger("linewatch.detector.service")

DLQ_STAGE = "detector"
IDLE_POLL_S = 0.5
# bytes for record framing and headers on top of a result's JSON (generous)
RECORD_OVERHEAD = 4096


def _check_fast_crc() -> None:
    """kafka-python checks every record batch with CRC-32C; without the ``crc32c`` C module it does
    so in pure Python (~0.1 s per MB, i.e. milliseconds per frame): say so."""
    try:
        from kafka.record import util
    except ImportError:  # pragma: no cover - kafka-python layout changed
        return
    if getattr(util, "crc32c_c", object()) is None:
        log.warning("the crc32c module is missing: kafka-python computes record checksums in pure Python "
                    "(about 0.1 s per MB of frames and results); pip install crc32c")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class _Item:
    record: Any
    frame: DecodedFrame
    route: Route


class PublishError(RuntimeError):
    pass


class DetectorService:
    def __init__(self, kafka: KafkaSettings, settings: ServiceSettings, holder: ModelHolder,
                 metrics: ServiceMetrics | None = None, *,
                 routing_factory: Callable[[], RoutingConfig] | None = None,
                 reloader: Any | None = None):
        self.kafka = kafka
        self.settings = settings
        self.holder = holder
        self.metrics = metrics or ServiceMetrics()
        self.routing_factory = routing_factory
        self.reloader = reloader  # .store_reload.StoreReloader: model store changes (issue 5 hot reload)
        self.max_frame_bytes = settings.max_frame_bytes or kafka.kafka_max_message_bytes
        self.record_limit = kafka.kafka_max_message_bytes
        self.frames_topic = kafka.topic("frames")
        self.results_topic = kafka.topic("results")
        self.dlq_topic = kafka.topic("deadletter")
        self._stop = threading.Event()
        self._lock = threading.Lock()  # guards _pending / _batch_started against rebalance callbacks
        self._pending: list[Any] = []
        self._batch_started: float | None = None
        self._positions: dict[Any, int] = {}
        self._consumer: Any = None
        self._producer: Any = None
        self.started = False  # consumer polling
        self.last_beat: float | None = None  # monotonic time the loop last made progress
        self.first_records_at: float | None = None  # unix time the first records arrived
        self.scored = 0
        self.dead = 0
        self.batches = 0
        self.last_batch: dict[str, Any] = {}
        self._publish_failures = 0

    # ------------------------------------------------------------------------ lifecycle
    def stop(self, *_: Any) -> None:
        if not self._stop.is_set():
            log.info("stop requested: finishing the current batch")
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def request_reload(self, *_: Any) -> None:
        """Re-read the routing file and checkpoints in the background (``SIGHUP``)."""
        if self.routing_factory is None:
            log.warning("reload requested but the service has no routing source")
            return
        log.info("reload requested: loading models in the background")
        self.holder.reload_async(self.routing_factory)

    def health(self) -> tuple[bool, dict]:
        age = None if self.last_beat is None else time.monotonic() - self.last_beat
        ok = age is None or age < self.settings.stall_after_s  # starting (loading models) counts as alive
        return ok, {"status": "ok" if ok else "stalled", "loop_age_s": age, "scored": self.scored,
                    "dead_letters": self.dead, "batches": self.batches}

    def ready(self) -> tuple[bool, dict]:
        ok = self.holder.loaded and self.started and not self.stopping
        info: dict[str, Any] = {"status": "ready" if ok else "stopping" if self.stopping else "starting",
                                "first_records_at": self.first_records_at, "scored": self.scored}
        if self.holder.loaded:
            info["models"] = self.holder.current.versions()
        if self._consumer is not None and self.started:
            try:
                info["partitions"] = sorted(f"{tp.topic}[{tp.partition}]" for tp in self._consumer.assignment())
            except Exception:  # noqa: BLE001 - informational only
                pass
        return ok, info

    def _beat(self) -> None:
        self.last_beat = time.monotonic()

    def _connect(self) -> None:
        from kafka import KafkaConsumer, KafkaProducer

        from ingest.topics import ensure_topics

        ensure_topics(self.kafka, self.settings.topic_partitions)  # idempotent; never changes existing ones
        common = self.kafka.client_kwargs()
        self._producer = KafkaProducer(
            **common,
            acks="all",
            enable_idempotence=True,
            max_in_flight_requests_per_connection=5,
            linger_ms=2,
            batch_size=1024 * 1024,
            delivery_timeout_ms=120_000,
            request_timeout_ms=30_000,
            max_block_ms=60_000,
            max_request_size=self.record_limit + 2 * 1024 * 1024,
            allow_auto_create_topics=False,
        )
        fetch = self.max_frame_bytes + 4 * 1024 * 1024
        self._consumer = KafkaConsumer(
            **common,
            group_id=self.settings.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.settings.max_batch * self.settings.batches_per_commit,
            max_partition_fetch_bytes=fetch,
            fetch_max_bytes=max(64 * 1024 * 1024, fetch),
            session_timeout_ms=self.settings.session_timeout_ms,
            heartbeat_interval_ms=max(500, self.settings.session_timeout_ms // 3),
            max_poll_interval_ms=self.settings.max_poll_interval_ms,
            allow_auto_create_topics=False,
        )
        self._consumer.subscribe([self.frames_topic], listener=self._listener())

    def _listener(self):
        from kafka.consumer.subscription_state import ConsumerRebalanceListener

        service = self

        class Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):  # noqa: D401 - kafka-python API
                service._rewind_pending("partitions revoked")
                for tp in revoked:
                    service._positions.pop(tp, None)
                    try:
                        service.metrics.lag.remove(tp.topic, str(tp.partition))
                    except KeyError:
                        pass

            def on_partitions_lost(self, lost):
                self.on_partitions_revoked(lost)

            def on_partitions_assigned(self, assigned):
                log.info("partitions assigned", extra={"kv": {
                    "partitions": ",".join(sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))}})

        return Listener()

    def _rewind_pending(self, why: str) -> None:
        """Forget gathered-but-unprocessed records and move the consumer back to them."""
        with self._lock:
            pending, self._pending, self._batch_started = self._pending, [], None
        if pending:
            log.info("rewinding unprocessed records", extra={"kv": {"why": why, "records": len(pending)}})
            self._rewind(pending)

    def _rewind(self, records: list[Any]) -> None:
        from kafka.structs import TopicPartition

        first: dict[Any, int] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            first[tp] = min(first.get(tp, r.offset), r.offset)
        assigned = self._consumer.assignment()
        for tp, off in first.items():
            if tp in assigned:
                self._consumer.seek(tp, off)
                self._positions[tp] = off

    def run(self) -> int:
        """Consume until :meth:`stop`; returns the exit code (0)."""
        self._beat()
        _check_fast_crc()
        self._connect()
        versions = self.holder.current.versions()
        self.metrics.set_models(versions)
        log.info("detector service started", extra={"kv": {
            "frames": self.frames_topic, "results": self.results_topic, "group": self.settings.group,
            "max_batch": self.settings.max_batch, "max_wait_ms": self.settings.max_wait_ms,
            "models": ",".join(f"{v}={p}" for p, v in versions.items())}})
        try:
            while not self._stop.is_set():
                self._beat()
                if self.reloader is not None:
                    self.reloader.poll()  # cheap (stat calls, throttled); loading happens in a thread
                if self.holder.activate() is not None:
                    self.metrics.swaps.inc()
                    self.metrics.set_models(self.holder.current.versions())
                self._gather()
                self.started = True
                with self._lock:
                    batch, started = self._pending, self._batch_started
                    self._pending, self._batch_started = [], None
                if batch:
                    self._process(batch, started)
                self._update_lag()
        finally:
            self._close()
        log.info("detector service stopped", extra={"kv": {"scored": self.scored, "dead_letters": self.dead,
                                                            "batches": self.batches}})
        return 0

    def _close(self) -> None:
        if self._consumer is not None:
            try:
                self._consumer.close(autocommit=False)
            except Exception:  # noqa: BLE001 - on the way out
                log.exception("error closing the consumer")
        if self._producer is not None:
            try:
                self._producer.close(timeout=10)
            except Exception:  # noqa: BLE001
                log.exception("error closing the producer")

    # ------------------------------------------------------------------------ gather
    def _gather(self) -> None:
        """Poll into ``_pending`` until the batch is full or its wait is over (or idle).

        With a full batch in hand, records the consumer has already fetched (a backlog) are taken
        too, up to ``max_batch * batches_per_commit``, without waiting: they are processed as
        several inference batches under one commit (see :meth:`_process`).
        """
        max_batch = self.settings.max_batch
        cap = max_batch * self.settings.batches_per_commit
        max_wait = self.settings.max_wait_ms / 1000.0
        while not self._stop.is_set():
            with self._lock:
                have, started = len(self._pending), self._batch_started
            room = cap - have
            if room <= 0:
                return
            if have >= max_batch:
                timeout = 0.0  # a full batch: only what is already buffered
            elif have:
                timeout = started + max_wait - time.monotonic()
                if timeout <= 0:
                    return
            else:
                timeout = IDLE_POLL_S
            got = self._consumer.poll(timeout_ms=max(0, int(timeout * 1000)), max_records=room)
            self._beat()
            self.started = True
            n = 0
            with self._lock:
                for tp, msgs in got.items():
                    if msgs:
                        self._pending.extend(msgs)
                        self._positions[tp] = msgs[-1].offset + 1
                        n += len(msgs)
                if self._pending and self._batch_started is None:
                    self._batch_started = time.monotonic()
                    if self.first_records_at is None:
                        self.first_records_at = time.time()
                empty = not self._pending
            if empty:
                return  # idle: back to the loop (stop flag, model swaps)
            if have >= max_batch and n == 0:
                return

    # ------------------------------------------------------------------------ process
    def _process(self, records: list[Any], started: float | None) -> bool:
        """Score ``records`` (in inference batches of ``max_batch``), publish, then commit once.

        Each inference batch's results are sent as soon as it is scored, so their acks arrive
        while the next batch is inferred; the offsets of all records are committed after the
        flush confirmed every result and dead letter.
        """
        t_start = started or time.monotonic()
        models = self.holder.current  # one snapshot for everything under this commit
        s = self.settings
        m = self.metrics

        t0 = time.monotonic()
        items: list[_Item] = []
        dead: list[tuple[Any, str, str]] = []
        for rec in records:
            try:
                frame = check_frame(rec.value, rec.headers, max_bytes=self.max_frame_bytes,
                                    max_pixels=s.max_frame_pixels)
            except BadFrame as exc:
                dead.append((rec, exc.code, exc.reason))
                continue
            route = models.route(frame.meta.camera_id, frame.meta.product)
            if route is None:
                dead.append((rec, "no-model", f"no model routed for camera {frame.meta.camera_id!r} "
                                              f"product {frame.meta.product!r} and no default model"))
                continue
            items.append(_Item(rec, frame, route))
        t1 = time.monotonic()
        m.stage_seconds.labels("decode").observe(t1 - t0)

        futures: list[Any] = []
        n_ok = flagged = 0
        infer_s = encode_s = send_s = 0.0
        try:
            for c0 in range(0, len(items), s.max_batch):
                chunk = items[c0:c0 + s.max_batch]
                self._beat()
                ta = time.monotonic()
                scored = self._infer(chunk, dead)
                inferred_at = utcnow()
                tb = time.monotonic()
                out: list[tuple[bytes, bytes]] = []
                for i, it in enumerate(chunk):
                    if i not in scored:
                        continue
                    score, amap = scored[i]
                    if not math.isfinite(score):
                        dead.append((it.record, "inference", f"the model returned a non-finite score ({score})"))
                        continue
                    value, is_flagged = self._result(it, score, amap, inferred_at)
                    flagged += is_flagged
                    out.append((it.frame.meta.camera_id.encode("utf-8"), value))
                tc = time.monotonic()
                futures += self._send_results(out)
                n_ok += len(out)
                infer_s += tb - ta
                encode_s += tc - tb
                send_s += time.monotonic() - tc
                m.stage_seconds.labels("infer").observe(tb - ta)
                m.stage_seconds.labels("encode").observe(tc - tb)
            t3 = time.monotonic()
            self._finish_publish(futures, dead)
        except PublishError as exc:
            m.errors.labels("publish").inc()
            log.error("publishing a batch failed; not committing, the batch will be redone",
                      extra={"kv": {"error": str(exc), "records": len(records)}})
            self._rewind(records)
            self._publish_failures += 1
            time.sleep(min(10.0, 0.5 * 2 ** min(self._publish_failures - 1, 5)))
            return False
        self._publish_failures = 0
        t4 = time.monotonic()
        m.stage_seconds.labels("publish").observe(t4 - t3 + send_s)

        committed = self._commit(records)
        t5 = time.monotonic()
        m.stage_seconds.labels("commit").observe(t5 - t4)

        self.scored += n_ok
        self.dead += len(dead)
        self.batches += 1
        m.count_frames(n_ok)
        m.flagged.inc(flagged)
        m.dead_letters.inc(len(dead))
        for _rec, code, _reason in dead:
            m.errors.labels(code).inc()
        m.batch_size.observe(len(records))
        m.batch_seconds.observe(t5 - t_start)
        self.last_batch = {"records": len(records), "scored": n_ok, "flagged": flagged, "dead_letters": len(dead),
                           "wait_ms": round((t0 - t_start) * 1000, 1), "decode_ms": round((t1 - t0) * 1000, 1),
                           "infer_ms": round(infer_s * 1000, 1), "encode_ms": round(encode_s * 1000, 1),
                           "publish_ms": round((t4 - t3 + send_s) * 1000, 1), "commit_ms": round((t5 - t4) * 1000, 1),
                           "committed": committed}
        log.info("batch", extra={"kv": {**self.last_batch,
                                        "versions": ",".join(sorted({it.route.detector.version for it in items}))}})
        for rec, code, reason in dead:
            log.warning("dead letter", extra={"kv": {"code": code, "reason": reason, "topic": rec.topic,
                                                     "partition": rec.partition, "offset": rec.offset}})
        return True

    def _infer(self, items: list[_Item], dead: list[tuple[Any, str, str]]) -> dict[int, tuple[float, Any]]:
        groups: dict[str, list[int]] = defaultdict(list)
        for i, it in enumerate(items):
            groups[it.route.path].append(i)
        scored: dict[int, tuple[float, Any]] = {}
        for idx in groups.values():
            det = items[idx[0]].route.detector
            try:
                pred = det.predict([items[i].frame.rgb for i in idx])
                for j, i in enumerate(idx):
                    scored[i] = (float(pred.scores[j]), pred.maps[j])
                continue
            except Exception as exc:  # noqa: BLE001 - retry one by one below
                if len(idx) == 1:
                    dead.append((items[idx[0]].record, "inference", f"inference failed: {type(exc).__name__}: {exc}"))
                    continue
                log.warning("batch inference failed; retrying frame by frame",
                            extra={"kv": {"error": f"{type(exc).__name__}: {exc}"}})
            for i in idx:
                try:
                    pred = det.predict([items[i].frame.rgb])
                    scored[i] = (float(pred.scores[0]), pred.maps[0])
                except Exception as exc:  # noqa: BLE001
                    dead.append((items[i].record, "inference", f"inference failed: {type(exc).__name__}: {exc}"))
        return scored

    def _result(self, it: _Item, score: float, amap: Any, inferred_at: datetime) -> tuple[bytes, bool]:
        s = self.settings
        meta = it.frame.meta
        verdict = bool(score > it.route.threshold)
        png, hmax = encode_heatmap(amap, s.heatmap_max_side)
        reason = "flagged" if verdict else ("sampled" if is_sampled(meta.frame_id, s.sample_rate) else None)
        frame_bytes, ctype = attachable_frame(it.frame, s.attach_max_bytes) if reason else (None, None)
        h, w = it.frame.rgb.shape[:2]
        result = InspectionResult(
            frame_id=meta.frame_id, line=meta.line, station=meta.station, camera_id=meta.camera_id, seq=meta.seq,
            part_id=meta.part_id, product=meta.product, captured_at=meta.captured_at, inferred_at=inferred_at,
            score=score, threshold=it.route.threshold, is_anomalous=verdict, model_version=it.route.detector.version,
            frame_width=w, frame_height=h, heatmap_png=png, heatmap_max=hmax,
            frame_image=frame_bytes, frame_content_type=ctype, frame_reason=reason,
        )
        value = result.to_bytes()
        if len(value) + RECORD_OVERHEAD > self.record_limit and frame_bytes is not None:
            self.metrics.errors.labels("result-too-large").inc()
            log.warning("result too large with the frame attached; sending it without the frame",
                        extra={"kv": {"frame_id": meta.frame_id, "bytes": len(value)}})
            value = result.model_copy(update={"frame_image": None, "frame_content_type": None,
                                              "frame_reason": None}).to_bytes()
        return value, verdict

    def _dead_letter(self, rec: Any, code: str, reason: str) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
        value = rec.value or b""
        headers = [(k, v) for k, v in (rec.headers or []) if not k.startswith("lw-dlq-")]
        headers += [
            ("lw-dlq-reason", reason[:2000].encode("utf-8", "replace")),
            ("lw-dlq-code", code.encode()),
            ("lw-dlq-stage", DLQ_STAGE.encode()),
            ("lw-dlq-topic", rec.topic.encode()),
            ("lw-dlq-partition", str(rec.partition).encode()),
            ("lw-dlq-offset", str(rec.offset).encode()),
        ]
        if len(value) + sum(len(k) + len(v) for k, v in headers) + RECORD_OVERHEAD > self.record_limit:
            headers.append(("lw-dlq-value-bytes", str(len(value)).encode()))
            value = b""
        return rec.key, value, headers

    def _send_results(self, results: list[tuple[bytes, bytes]]) -> list[Any]:
        try:
            return [self._producer.send(self.results_topic, key=key, value=value) for key, value in results]
        except Exception as exc:  # noqa: BLE001 - KafkaTimeoutError (buffer full / no metadata), ...
            raise PublishError(f"{type(exc).__name__}: {exc}") from exc

    def _finish_publish(self, futures: list[Any], dead: list[tuple[Any, str, str]]) -> None:
        """Send the dead letters, flush, and check that every record was acknowledged."""
        futures = list(futures)
        try:
            for rec, code, reason in dead:
                key, value, headers = self._dead_letter(rec, code, reason)
                futures.append(self._producer.send(self.dlq_topic, key=key, value=value, headers=headers))
            self._producer.flush(timeout=self.settings.flush_timeout_s)
        except Exception as exc:  # noqa: BLE001 - KafkaTimeoutError, buffer full, ...
            raise PublishError(f"{type(exc).__name__}: {exc}") from exc
        for f in futures:
            if not f.is_done:
                raise PublishError("a record was not acknowledged within the flush timeout")
            if f.failed():
                raise PublishError(f"the broker refused a record: {f.exception!r}")

    def _commit(self, records: list[Any]) -> bool:
        from kafka.errors import CommitFailedError, KafkaError
        from kafka.structs import OffsetAndMetadata, TopicPartition

        offsets: dict[Any, int] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            offsets[tp] = max(offsets.get(tp, 0), r.offset + 1)
        try:
            self._consumer.commit({tp: OffsetAndMetadata(off, "", -1) for tp, off in offsets.items()})
            return True
        except (CommitFailedError, KafkaError) as exc:
            # the group rebalanced under us: the results are out; the new owner redoes the batch and
            # the storage writer ignores the repeated frame ids
            self.metrics.errors.labels("commit").inc()
            log.warning("offset commit failed; the batch will be redone by the partitions' next owner",
                        extra={"kv": {"error": str(exc)}})
            return False

    def _update_lag(self) -> None:
        total = 0
        try:
            for tp in self._consumer.assignment():
                hw = self._consumer.highwater(tp)
                pos = self._positions.get(tp)
                if hw is None or pos is None:
                    continue
                lag = max(0, hw - pos)
                total += lag
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(lag)
            self.metrics.lag_total.set(total)
        except Exception:  # noqa: BLE001 - metrics must never break the loop
            log.debug("lag update failed", exc_info=True)
