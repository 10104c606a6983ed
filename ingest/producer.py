"""Publishing frames to ``<prefix>.frames`` (the wire format is in :mod:`ingest.messages`).

:class:`FramePublisher` wraps kafka-python's producer with the settings linewatch relies on:

* key = camera id, so all frames of a camera land in one partition, in order;
* ``acks=all``, retries until ``delivery_timeout_ms``, idempotence on (no duplicates from
  retries, order kept with up to 5 requests in flight);
* no topic auto-creation (topics come from :func:`ingest.topics.ensure_topics`); a missing
  topic makes ``send`` fail after ``max_block_ms`` instead of hanging;
* a size limit: a record (key + value + headers) above ``settings.kafka_max_message_bytes``
  (default 16 MiB, ``LINEWATCH_KAFKA_MAX_MESSAGE_BYTES``) raises :class:`FrameTooLargeError`
  *before* anything is sent.  The topics accept up to that limit plus 1 MiB and the development
  broker 20 MiB; for bigger frames lower the resolution or use JPEG, or raise the limit on both
  sides.  (No claim-check: frames of a production camera are far below it.)

:func:`publish_folder` is the small helper tests and demos use to put a folder of images on the
line and wait until every frame is acknowledged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from kafka import KafkaProducer

from ingest.kafka_config import KafkaSettings
from ingest.messages import FrameMeta

log = logging.getLogger(__name__)

# bytes the record and batch framing add on top of key, value and headers (generous estimate)
RECORD_OVERHEAD = 512


class FrameTooLargeError(ValueError):
    """The frame does not fit into one Kafka record under the configured limit."""


class FramePublishError(RuntimeError):
    """Frames could not be delivered (broker unreachable past the delivery timeout, ...)."""


def record_size(key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> int:
    """Size of a record on the wire, approximately (upper bound)."""
    return len(key) + len(value) + sum(len(k.encode()) + len(v) + 8 for k, v in headers) + RECORD_OVERHEAD


class FramePublisher:
    """Sends encoded frames with their :class:`~ingest.messages.FrameMeta` headers."""

    def __init__(self, settings: KafkaSettings, *, linger_ms: int = 5, batch_size: int = 256 * 1024,
                 delivery_timeout_ms: int = 120_000, max_block_ms: int = 15_000,
                 compression_type: str | None = None, **producer_overrides):
        self.settings = settings
        self.topic = settings.topic("frames")
        self.max_bytes = settings.kafka_max_message_bytes
        config = {
            **settings.client_kwargs(),
            "acks": "all",
            "enable_idempotence": True,
            "max_in_flight_requests_per_connection": 5,
            "delivery_timeout_ms": delivery_timeout_ms,
            "request_timeout_ms": min(30_000, delivery_timeout_ms),
            "max_block_ms": max_block_ms,
            "linger_ms": linger_ms,
            "batch_size": batch_size,
            "max_request_size": self.max_bytes + RECORD_OVERHEAD + 64 * 1024,
            "allow_auto_create_topics": False,
            "compression_type": compression_type,
            **producer_overrides,
        }
        self._producer = KafkaProducer(**config)

    def check_size(self, meta: FrameMeta, payload: bytes) -> int:
        size = record_size(meta.camera_id.encode(), payload, meta.to_headers())
        if size > self.max_bytes:
            raise FrameTooLargeError(
                f"frame {meta.frame_id} is {size} bytes as a Kafka record, above the limit of "
                f"{self.max_bytes} bytes (LINEWATCH_KAFKA_MAX_MESSAGE_BYTES; topics accept that limit "
                f"+ 1 MiB, the development broker 20 MiB): lower the resolution, use JPEG or a lower "
                f"quality, or raise the limit on the producer and the broker/topics"
            )
        return size

    def send(self, meta: FrameMeta, payload: bytes, *,
             on_success: Callable[[FrameMeta, object], None] | None = None,
             on_error: Callable[[FrameMeta, BaseException], None] | None = None):
        """Queue one frame; returns kafka-python's future.  Raises :class:`FrameTooLargeError`."""
        self.check_size(meta, payload)
        future = self._producer.send(
            self.topic, key=meta.camera_id.encode("utf-8"), value=payload, headers=meta.to_headers()
        )
        if on_success is not None:
            future.add_callback(lambda md: on_success(meta, md))
        if on_error is not None:
            future.add_errback(lambda exc: on_error(meta, exc))
        return future

    def flush(self, timeout: float | None = None) -> None:
        self._producer.flush(timeout=timeout)

    def close(self, timeout: float | None = 10.0) -> None:
        self._producer.close(timeout=timeout)

    def __enter__(self) -> "FramePublisher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def publish_folder(settings: KafkaSettings, folder: str | Path, *, camera_id: str = "cam-1",
                   line: str = "line-1", station: str = "station-1", product: str | None = None,
                   encoding: str = "png", jpeg_quality: int = 90, passthrough: bool = False,
                   part_from_name: bool = True, fps: float | None = None, limit: int | None = None,
                   loop: bool = False, partitions: int | None = 3, run_id: str | None = None,
                   timeout_s: float = 120.0) -> list[FrameMeta]:
    """Publish the images of ``folder`` (sorted by name) as frames of one camera; wait for the acks.

    Returns the :class:`FrameMeta` of every published frame, in sequence order (``seq`` 0..N-1,
    ``frame_id`` = ``<camera>-<run id>-<seq>``, ``part_id`` = file stem when ``part_from_name``).
    ``encoding`` ``png`` (default) is lossless, so a consumer decodes exactly the pixels
    ``cv2.imread`` gives for the file; ``passthrough`` sends JPEG/PNG files byte for byte.
    ``partitions``: create the topics with that many partitions if they are missing (``None``:
    they must exist).  Raises :class:`FrameTooLargeError` or :class:`FramePublishError`.
    """
    from ingest.runner import CameraInfo, IngestRunner
    from ingest.sources import FolderSource
    from ingest.topics import ensure_topics

    if partitions is not None:
        ensure_topics(settings, partitions)
    source = FolderSource(folder, fps=fps, loop=loop, passthrough=passthrough,
                          part_from_name=part_from_name, limit=limit)
    camera = CameraInfo(camera_id=camera_id, line=line, station=station, product=product)
    with FramePublisher(settings) as publisher:
        runner = IngestRunner(source, publisher, camera, encoding=encoding, jpeg_quality=jpeg_quality,
                              max_frames=limit, strict=True, run_id=run_id, flush_timeout_s=timeout_s)
        runner.run()
    return sorted(runner.published, key=lambda m: m.seq)
