"""The detector service: ``<prefix>.frames`` -> inference -> ``<prefix>.results``, at least once.

It runs the shared Kafka service loop (:mod:`ingest.service_loop`: gather, handle, publish, commit;
dead letters, back-off and SIGTERM are there).  Handling one batch:

1. **gather** — up to ``max_batch * batches_per_commit`` records: a partial batch waits at most
   ``max_wait_ms``; with a full batch in hand, only records the consumer already fetched (a
   backlog) are taken too;
2. **decode** — every record is checked (:func:`.imaging.check_frame`: size, frame schema, capture
   time within a window of the broker's time, image header before decoding) and routed to a
   checkpoint (:class:`.routing.ModelSet`); bad records become dead letters, never exceptions;
3. **infer** — frames are scored in inference batches of at most ``max_batch`` frames and at most
   ``max_batch_pixels`` decoded pixels (so a batch of large frames cannot exhaust memory), one
   :meth:`Detector.predict` per checkpoint; a failing batch is retried frame by frame so one bad
   frame cannot sink the others (a frame that still fails is dead-lettered as ``inference``);
4. **encode and send** — one :class:`detector.messages.InspectionResult` per frame (heatmap PNG, the
   frame itself when flagged or sampled), key = camera id, sent at once (their acks arrive while
   the next inference batch runs).  This runs in one worker thread while the next inference batch
   runs (the runtimes and OpenCV release the GIL), so the CPU it costs is not added to the
   inference time; one batch at a time, in order, and all of it is done before ``handle`` returns;
5. **flush and commit** (the loop) — dead letters are sent and every record's acknowledgement is
   checked; if anything was not acknowledged nothing is committed and the batch is redone after a
   back-off.  Only then the offsets are committed.

So a crash at any point replays at most the uncommitted batch: results may be published twice
(same frame id, same score — CPU inference is deterministic), and the storage writer stores each
frame id once.

Models are taken from the :class:`ModelHolder` once per batch and swapped only between batches;
every result carries the ``model_version`` of the checkpoint that scored it.  Between batches the
service also polls the model store (:mod:`.store_reload`): a version the registry made active, or a
threshold saved on the dashboard, is loaded in the background and switched to the same way.

Dead letters (stage ``detector``; the format is :mod:`ingest.service_loop`'s) carry the codes
``empty``, ``oversized``, ``schema``, ``undecodable``, ``no-model``, ``inference``, ``internal``.

SIGTERM/SIGINT (:meth:`DetectorService.stop`): the batch in hand is finished and committed, the
consumer leaves the group, exit code 0.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from detector.drift import DriftMonitor, DriftSettings, reference_from_meta
from detector.messages import InspectionResult
from ingest.kafka_config import KafkaSettings
from ingest.service_loop import RECORD_OVERHEAD, BatchOutcome, DeadLetter, LoopConfig, ServiceLoop

from .imaging import BadFrame, CaptureWindow, DecodedFrame, attachable_frame, check_frame, encode_heatmap, is_sampled
from .observability import ServiceMetrics
from .routing import ModelHolder, Route, RoutingConfig
from .settings import ServiceSettings

log = logging.getLogger("linewatch.detector.service")

DLQ_STAGE = "detector"


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


def broker_time(record: Any) -> datetime | None:
    """The record's timestamp (the broker's clock on a LogAppendTime topic), if it has one."""
    ts = getattr(record, "timestamp", None)
    if ts is None or ts < 0:
        return None
    return datetime.fromtimestamp(ts / 1000.0, timezone.utc)


@dataclass
class _Item:
    record: Any
    frame: DecodedFrame
    route: Route

    @property
    def pixels(self) -> int:
        return int(self.frame.rgb.shape[0] * self.frame.rgb.shape[1])


class DetectorService:
    def __init__(self, kafka: KafkaSettings, settings: ServiceSettings, holder: ModelHolder,
                 metrics: ServiceMetrics | None = None, *,
                 routing_factory: Callable[[], RoutingConfig] | None = None,
                 reloader: Any | None = None):
        self.settings = settings
        self.holder = holder
        self.metrics = metrics or ServiceMetrics()
        drift = DriftSettings()  # per camera and model version; remembers more frame ids than a redone batch holds
        drift.seen_frames = max(drift.seen_frames, 2 * settings.max_batch * settings.batches_per_commit)
        self.drift = DriftMonitor(drift, self.metrics.registry)
        self.routing_factory = routing_factory
        self.reloader = reloader  # .store_reload.StoreReloader: model store changes (hot reload)
        self.max_frame_bytes = settings.max_frame_bytes or kafka.kafka_max_message_bytes
        self.max_batch_pixels = max(settings.max_batch_pixels, settings.max_frame_pixels)
        self.window = CaptureWindow(timedelta(seconds=settings.max_capture_age_s),
                                    timedelta(seconds=settings.max_capture_ahead_s))
        self.record_limit = kafka.kafka_max_message_bytes
        self.results_topic = kafka.topic("results")
        self.loop = ServiceLoop(kafka, LoopConfig(
            stage=DLQ_STAGE, stream="frames", group=settings.group,
            max_records=settings.max_batch * settings.batches_per_commit, fill=settings.max_batch,
            max_wait_s=settings.max_wait_ms / 1000.0, session_timeout_ms=settings.session_timeout_ms,
            max_poll_interval_ms=settings.max_poll_interval_ms, flush_timeout_s=settings.flush_timeout_s,
            ensure_streams=("frames", "results", "deadletter"), partitions=settings.topic_partitions,
        ))
        self.loop.on_revoke = self._forget_lag
        # the detector's only infrastructure fault is the broker not acknowledging what it sent
        self.loop.on_retry = lambda _exc: self.metrics.errors.labels("publish").inc()
        self.first_records_at: float | None = None  # unix time the first records arrived
        self.scored = 0
        self.dead = 0
        self.batches = 0
        self.last_batch: dict[str, Any] = {}
        self._stats: dict[str, Any] = {}
        # encodes and sends one inference batch's results while the main thread infers the next
        self._results_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="detector-results")

    # ------------------------------------------------------------------------ lifecycle
    def stop(self, *_: Any) -> None:
        self.loop.stop()

    @property
    def stopping(self) -> bool:
        return self.loop.stopping

    @property
    def started(self) -> bool:
        return self.loop.started

    def request_reload(self, *_: Any) -> None:
        """Re-read the routing file and checkpoints in the background (``SIGHUP``)."""
        if self.routing_factory is None:
            log.warning("reload requested but the service has no routing source")
            return
        log.info("reload requested: loading models in the background")
        self.holder.reload_async(self.routing_factory)

    def health(self) -> tuple[bool, dict]:
        age = self.loop.loop_age()
        ok = age is None or age < self.settings.stall_after_s  # starting (loading models) counts as alive
        info = {"status": "ok" if ok else "stalled", "loop_age_s": age, "scored": self.scored,
                "dead_letters": self.dead, "batches": self.batches}
        if self.loop.retrying:
            info["waiting_for"] = self.loop.retrying
        return ok, info

    def ready(self) -> tuple[bool, dict]:
        ok = self.holder.loaded and self.started and not self.stopping
        info: dict[str, Any] = {"status": "ready" if ok else "stopping" if self.stopping else "starting",
                                "first_records_at": self.first_records_at, "scored": self.scored}
        if self.holder.loaded:
            info["models"] = self.holder.current.versions()
        if self.loop.consumer is not None and self.started:
            try:
                info["partitions"] = sorted(f"{tp.topic}[{tp.partition}]" for tp in self.loop.consumer.assignment())
            except Exception:  # noqa: BLE001 - informational only
                pass
        return ok, info

    def run(self) -> int:
        """Consume until :meth:`stop`; returns the exit code (0)."""
        _check_fast_crc()
        versions = self.holder.current.versions()
        self.metrics.set_models(versions)
        log.info("detector service starting", extra={"kv": {
            "frames": self.loop.topic, "results": self.results_topic, "group": self.settings.group,
            "max_batch": self.settings.max_batch, "max_wait_ms": self.settings.max_wait_ms,
            "models": ",".join(f"{v}={p}" for p, v in versions.items())}})
        try:
            code = self.loop.run(self.handle, between_batches=self._between_batches, on_batch=self._on_batch)
        finally:
            self._results_worker.shutdown(wait=True)
        log.info("detector service stopped", extra={"kv": {"scored": self.scored, "dead_letters": self.dead,
                                                            "batches": self.batches}})
        return code

    def _between_batches(self) -> None:
        if self.reloader is not None:
            self.reloader.poll()  # cheap (stat calls, throttled); loading happens in a thread
        if self.holder.activate() is not None:
            self.metrics.swaps.inc()
            self.metrics.set_models(self.holder.current.versions())
        self._update_lag()

    # ------------------------------------------------------------------------ one batch
    def handle(self, records: list[Any]) -> list[DeadLetter]:
        """Score ``records`` and send their results; returns the dead letters (the loop commits)."""
        if self.first_records_at is None:
            self.first_records_at = time.time()
        models = self.holder.current  # one snapshot for everything under this commit
        s = self.settings
        dead: list[DeadLetter] = []
        st = self._stats = {"scored": 0, "flagged": 0, "decode": 0.0, "infer": 0.0, "encode": 0.0,
                            "versions": set()}
        chunk: list[_Item] = []
        pixels = 0
        sending: Future | None = None  # the previous inference batch's results, being encoded and sent
        try:
            for rec in records:
                t0 = time.monotonic()
                item = self._decode(rec, models, dead)
                st["decode"] += time.monotonic() - t0
                if item is None:
                    continue
                # an inference batch holds at most max_batch frames and max_batch_pixels decoded pixels
                if chunk and (len(chunk) >= s.max_batch or pixels + item.pixels > self.max_batch_pixels):
                    sending = self._score_and_send(chunk, dead, sending)
                    chunk, pixels = [], 0
                chunk.append(item)
                pixels += item.pixels
            if chunk:
                sending = self._score_and_send(chunk, dead, sending)
        except BaseException:  # nothing may still be sending when the loop rewinds
            if sending is not None:
                wait([sending])
            raise
        self._collect(sending, dead)  # all results are out before the loop flushes and commits
        self.metrics.stage_seconds.labels("decode").observe(st["decode"])
        return dead

    def _decode(self, rec: Any, models: Any, dead: list[DeadLetter]) -> _Item | None:
        s = self.settings
        try:
            frame = check_frame(rec.value, rec.headers, max_bytes=self.max_frame_bytes,
                                max_pixels=s.max_frame_pixels, received_at=broker_time(rec), window=self.window)
        except BadFrame as exc:
            dead.append(DeadLetter(rec, exc.code, exc.reason))
            return None
        route = models.route(frame.meta.camera_id, frame.meta.product)
        if route is None:
            dead.append(DeadLetter(rec, "no-model", f"no model routed for camera {frame.meta.camera_id!r} "
                                                    f"product {frame.meta.product!r} and no default model"))
            return None
        return _Item(rec, frame, route)

    def _score_and_send(self, chunk: list[_Item], dead: list[DeadLetter], sending: Future | None) -> Future:
        """Infer ``chunk`` here, then hand its results to the worker once the previous batch's are sent."""
        self.loop.beat()
        ta = time.monotonic()
        scored = self._infer(chunk, dead)
        inferred_at = utcnow()
        tb = time.monotonic()
        self._stats["infer"] += tb - ta
        self.metrics.stage_seconds.labels("infer").observe(tb - ta)
        self._collect(sending, dead)  # in order, and at most one batch of results waiting
        return self._results_worker.submit(self._send_results, chunk, scored, inferred_at)

    def _collect(self, sending: Future | None, dead: list[DeadLetter]) -> None:
        """Wait for a batch handed to the worker; its dead letters join ``dead`` (its errors are raised here)."""
        if sending is None:
            return
        st = self._stats
        out = sending.result()
        dead.extend(out["dead"])
        st["scored"] += out["scored"]
        st["flagged"] += out["flagged"]
        st["encode"] += out["encode"]
        st["versions"] |= out["versions"]

    def _send_results(self, chunk: list[_Item], scored: dict[int, tuple[float, Any]],
                      inferred_at: datetime) -> dict[str, Any]:
        """Encode and send one inference batch's results (in the worker thread)."""
        tb = time.monotonic()
        out: dict[str, Any] = {"dead": [], "scored": 0, "flagged": 0, "versions": set()}
        for i, it in enumerate(chunk):
            if i not in scored:
                continue
            score, amap = scored[i]
            if not math.isfinite(score):
                out["dead"].append(DeadLetter(it.record, "inference",
                                              f"the model returned a non-finite score ({score})"))
                continue
            value, is_flagged = self._result(it, score, amap, inferred_at)
            self._observe_drift(it, score)
            self.loop.send(self.results_topic, it.frame.meta.camera_id.encode("utf-8"), value)
            out["flagged"] += is_flagged
            out["scored"] += 1
            out["versions"].add(it.route.detector.version)
        out["encode"] = time.monotonic() - tb
        self.metrics.stage_seconds.labels("encode").observe(out["encode"])
        return out

    def _observe_drift(self, it: _Item, score: float) -> None:
        det = it.route.detector
        try:
            self.drift.observe(it.frame.meta.camera_id, det.version, score, it.frame.rgb,
                               reference=lambda: reference_from_meta(det.meta, it.frame.meta.product),
                               frame_id=it.frame.meta.frame_id)
        except Exception:  # noqa: BLE001 - monitoring must never cost a frame its result
            log.exception("drift monitoring failed for frame %s", it.frame.meta.frame_id)

    def _on_batch(self, out: BatchOutcome) -> None:
        st, m = self._stats, self.metrics
        self.scored += st["scored"]
        self.dead += len(out.dead)
        self.batches += 1
        m.count_frames(st["scored"])
        m.flagged.inc(st["flagged"])
        m.dead_letters.inc(len(out.dead))
        for dl in out.dead:
            m.errors.labels(dl.code).inc()
        if not out.committed:
            m.errors.labels("commit").inc()
        m.stage_seconds.labels("publish").observe(out.publish_s)
        m.stage_seconds.labels("commit").observe(out.commit_s)
        m.batch_size.observe(out.records)
        m.batch_seconds.observe(out.handle_s + out.publish_s + out.commit_s)
        self.last_batch = {"records": out.records, "scored": st["scored"], "flagged": st["flagged"],
                           "dead_letters": len(out.dead), "decode_ms": round(st["decode"] * 1000, 1),
                           "infer_ms": round(st["infer"] * 1000, 1), "encode_ms": round(st["encode"] * 1000, 1),
                           "publish_ms": round(out.publish_s * 1000, 1), "commit_ms": round(out.commit_s * 1000, 1),
                           "committed": out.committed}
        log.info("batch", extra={"kv": {**self.last_batch, "versions": ",".join(sorted(st["versions"]))}})

    def _update_lag(self) -> None:
        if self.loop.consumer is None:
            return
        try:
            lags = self.loop.lag()
            for tp, lag in lags.items():
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(lag)
            self.metrics.lag_total.set(sum(lags.values()))
        except Exception:  # noqa: BLE001 - metrics must never break the loop
            log.debug("lag update failed", exc_info=True)

    def _forget_lag(self, revoked: list[Any]) -> None:
        for tp in revoked:
            try:
                self.metrics.lag.remove(tp.topic, str(tp.partition))
            except KeyError:
                pass

    def _infer(self, items: list[_Item], dead: list[DeadLetter]) -> dict[int, tuple[float, Any]]:
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
                    dead.append(DeadLetter(items[idx[0]].record, "inference",
                                           f"inference failed: {type(exc).__name__}: {exc}"))
                    continue
                log.warning("batch inference failed; retrying frame by frame",
                            extra={"kv": {"error": f"{type(exc).__name__}: {exc}"}})
            for i in idx:
                try:
                    pred = det.predict([items[i].frame.rgb])
                    scored[i] = (float(pred.scores[0]), pred.maps[0])
                except Exception as exc:  # noqa: BLE001
                    dead.append(DeadLetter(items[i].record, "inference", f"inference failed: {type(exc).__name__}: {exc}"))
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

