"""The ingest loop: one camera source -> encoded frames -> the frames topic.

:class:`IngestRunner` reads frames, numbers them (per-camera ``seq``, starting at 0 for each
run), encodes them (JPEG/PNG), and publishes them with their metadata.  It never hangs on a
camera and never gives up silently:

* a failed open/read closes the source and reconnects with exponential backoff
  (:class:`ReconnectPolicy`; the wait ends at once on :meth:`IngestRunner.stop`); after
  ``max_attempts`` consecutive failures it gives up (``stats.gave_up``);
* every captured frame that does not reach the broker counts as dropped (failed reads,
  undecodable/unencodable images, oversized frames, delivery failures, and frames a camera
  numbered but never delivered: ``Frame.info["frames_skipped"]``); ``seq`` keeps counting
  through drops, so downstream sees the gaps;
* :meth:`IngestRunner.stop` (the CLI's SIGTERM/SIGINT handler) ends the loop after the current
  frame; the producer is flushed before :meth:`IngestRunner.run` returns.

Frame ids are ``<camera>-<run id>-<seq>``: unique across restarts of the ingest process
(the run id is the start time plus a random suffix).
"""

from __future__ import annotations

import logging
import random
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from ingest.frames import EncodingError, Frame, encode_image
from ingest.messages import FrameMeta
from ingest.producer import FramePublisher, FramePublishError, FrameTooLargeError
from ingest.sources import FrameSource, SourceError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CameraInfo:
    camera_id: str
    line: str
    station: str
    product: str | None = None


@dataclass
class ReconnectPolicy:
    """Exponential backoff between reconnect attempts: ``initial_s * factor**(n-1)``, capped."""

    initial_s: float = 0.5
    factor: float = 2.0
    max_s: float = 30.0
    jitter: float = 0.1  # +- fraction, so many cameras do not reconnect in lockstep
    max_attempts: int | None = None  # consecutive failures before giving up; None: never

    def delay(self, attempt: int) -> float:
        base = min(self.max_s, self.initial_s * self.factor ** max(0, attempt - 1))
        return max(0.0, base * (1.0 + random.uniform(-self.jitter, self.jitter)))


@dataclass
class IngestStats:
    captured: int = 0  # frames read from the source
    published: int = 0  # frames acknowledged by the broker
    dropped: int = 0  # frames lost (see below), including failed reads
    read_errors: int = 0
    encode_errors: int = 0
    oversized: int = 0
    delivery_errors: int = 0
    reconnects: int = 0  # successful re-opens after a failure
    source_skipped: int = 0  # frames the camera numbered but never delivered (counted in dropped too)
    gave_up: bool = False
    end_reason: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + secrets.token_hex(2)


class IngestRunner:
    """Runs one source into the frames topic until the source ends, ``max_frames``, or :meth:`stop`.

    ``strict`` (used by :func:`ingest.producer.publish_folder`) raises instead of counting:
    oversized frames raise :class:`FrameTooLargeError`, source failures :class:`SourceError`
    and delivery failures :class:`FramePublishError`.
    """

    def __init__(self, source: FrameSource, publisher: FramePublisher, camera: CameraInfo, *,
                 encoding: str = "jpeg", jpeg_quality: int = 90, max_frames: int | None = None,
                 reconnect: ReconnectPolicy | None = None, stop_event: threading.Event | None = None,
                 strict: bool = False, run_id: str | None = None, flush_timeout_s: float = 30.0,
                 stats_interval_s: float = 30.0):
        self.source = source
        self.publisher = publisher
        self.camera = camera
        self.encoding = encoding
        self.jpeg_quality = jpeg_quality
        self.max_frames = max_frames
        self.reconnect = reconnect or ReconnectPolicy()
        self.stop_event = stop_event or threading.Event()
        self.strict = strict
        self.run_id = run_id or new_run_id()
        self.flush_timeout_s = flush_timeout_s
        self.stats_interval_s = stats_interval_s
        self.stats = IngestStats()
        self.published: list[FrameMeta] = []
        self._seq = 0
        self._lock = threading.Lock()
        self._delivery_errors: list[tuple[FrameMeta, BaseException]] = []

    def stop(self) -> None:
        self.stop_event.set()

    # -- loop ---------------------------------------------------------------------------------

    def run(self) -> IngestStats:
        self.source.set_stop_event(self.stop_event)
        failures = 0  # consecutive
        had_failure = False
        last_report = time.monotonic()
        log.info("ingest %s: camera %s on %s/%s -> %s (run %s)", self.source.name, self.camera.camera_id,
                 self.camera.line, self.camera.station, self.publisher.topic, self.run_id)
        try:
            while not self.stop_event.is_set():
                if not self.source.is_open:
                    try:
                        self.source.open()
                        if had_failure:
                            self.stats.reconnects += 1
                            log.info("reconnected to %s", self.source.name)
                    except SourceError as exc:
                        if self.strict:
                            raise
                        failures += 1
                        had_failure = True
                        if not self._backoff(failures, f"cannot open {self.source.name}: {exc}"):
                            break
                        continue
                try:
                    frame = self.source.next_frame()
                except SourceError as exc:
                    if self.strict:
                        raise
                    self.stats.read_errors += 1
                    self.stats.dropped += 1
                    self.source.close()
                    failures += 1
                    had_failure = True
                    if not self._backoff(failures, f"read from {self.source.name} failed: {exc}"):
                        break
                    continue
                if frame is None:
                    self.stats.end_reason = "end of source"
                    break
                failures = 0
                self._publish(frame)
                if self.max_frames is not None and self.stats.captured >= self.max_frames:
                    self.stats.end_reason = "max frames"
                    break
                if time.monotonic() - last_report >= self.stats_interval_s:
                    last_report = time.monotonic()
                    log.info("ingest stats %s", self.stats.as_dict())
            else:
                self.stats.end_reason = self.stats.end_reason or "stopped"
        finally:
            self.source.close()
            self._flush()
        log.info("ingest finished (%s): %s", self.stats.end_reason, self.stats.as_dict())
        if self.strict and self._delivery_errors:
            meta, exc = self._delivery_errors[0]
            raise FramePublishError(f"{len(self._delivery_errors)} frame(s) not delivered, "
                                    f"first {meta.frame_id}: {exc!r}")
        return self.stats

    def _backoff(self, failures: int, reason: str) -> bool:
        """Wait before the next attempt; False when giving up or stopping."""
        limit = self.reconnect.max_attempts
        if limit is not None and failures > limit:
            log.error("%s; giving up after %d consecutive failures", reason, failures)
            self.stats.gave_up = True
            self.stats.end_reason = "gave up"
            return False
        delay = self.reconnect.delay(failures)
        log.warning("%s; retry %d in %.1fs", reason, failures, delay)
        if self.stop_event.wait(delay):
            self.stats.end_reason = "stopped"
            return False
        return True

    def _publish(self, frame: Frame) -> None:
        skipped = int(frame.info.get("frames_skipped", 0))
        if skipped > 0:  # the camera's own counter jumped: leave the same gap in seq
            self._seq += skipped
            self.stats.source_skipped += skipped
            self.stats.dropped += skipped
        seq = self._seq
        self._seq += 1
        self.stats.captured += 1
        try:
            if frame.encoded is not None and frame.content_type:
                payload, ctype = frame.encoded, frame.content_type
            else:
                payload, ctype = encode_image(frame.image, self.encoding, jpeg_quality=self.jpeg_quality)  # type: ignore[arg-type]
        except EncodingError as exc:
            if self.strict:
                raise
            self.stats.encode_errors += 1
            self.stats.dropped += 1
            log.warning("frame %d of %s not encodable: %s", seq, self.camera.camera_id, exc)
            return
        meta = FrameMeta(
            frame_id=f"{self.camera.camera_id}-{self.run_id}-{seq}",
            line=self.camera.line,
            station=self.camera.station,
            camera_id=self.camera.camera_id,
            seq=seq,
            captured_at=frame.captured_at,
            content_type=ctype,  # type: ignore[arg-type]
            part_id=frame.part_id,
            product=frame.product or self.camera.product,
        )
        try:
            self.publisher.send(meta, payload, on_success=self._acked, on_error=self._failed)
        except FrameTooLargeError as exc:
            if self.strict:
                raise
            self.stats.oversized += 1
            self.stats.dropped += 1
            log.error("%s", exc)
        except Exception as exc:  # noqa: BLE001 - e.g. KafkaTimeoutError: metadata/buffer
            if self.strict:
                raise FramePublishError(f"cannot send frame {meta.frame_id}: {exc!r}") from exc
            self._failed(meta, exc)

    def _acked(self, meta: FrameMeta, _md) -> None:
        with self._lock:
            self.stats.published += 1
            self.published.append(meta)

    def _failed(self, meta: FrameMeta, exc: BaseException) -> None:
        with self._lock:
            self.stats.delivery_errors += 1
            self.stats.dropped += 1
            self._delivery_errors.append((meta, exc))
        log.error("frame %s not delivered: %r", meta.frame_id, exc)

    def _flush(self) -> None:
        try:
            self.publisher.flush(timeout=self.flush_timeout_s)
        except Exception as exc:  # noqa: BLE001 - KafkaTimeoutError
            log.error("flush did not complete within %.0fs: %r", self.flush_timeout_s, exc)
            with self._lock:
                unacked = self.stats.captured - self.stats.dropped - self.stats.published
                if unacked > 0:
                    self.stats.delivery_errors += unacked
                    self.stats.dropped += unacked
                    self._delivery_errors.append((FrameMeta.model_construct(frame_id="(unflushed)"), exc))
