"""The frame message: what ``linewatch-ingest`` (or any third-party camera gateway) publishes.

Wire format, schema version 1 — designed so a gateway in any language can produce it:

* topic: ``<prefix>.frames`` (see :mod:`ingest.kafka_config`)
* key: the camera id, UTF-8 (Kafka keeps order per key, so per camera)
* value: the encoded image itself, ``image/jpeg`` or ``image/png`` bytes, nothing else
* headers (all values UTF-8 strings):

  ===================  ==========  ============================================
  header               required    meaning
  ===================  ==========  ============================================
  ``lw-schema``        yes         ``1``
  ``lw-frame-id``      yes         globally unique id (e.g. ``<camera>-<seq>``)
  ``lw-line``          yes         production line id
  ``lw-station``       yes         station on the line
  ``lw-camera``        yes         camera id (same as the key)
  ``lw-seq``           yes         per-camera sequence number, integer >= 0
  ``lw-captured-at``   yes         capture time, ISO 8601 with time zone
  ``content-type``     yes         ``image/jpeg`` or ``image/png``
  ``lw-part``          no          part id, when the line knows it
  ``lw-product``       no          product id, used to route to a model
  ===================  ==========  ============================================

More for gateway authors (frame-id convention, size limit, payload checks): ``ingest/README.md``.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Annotated, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

SCHEMA_VERSION = 1

# Ids end up in blob paths, database columns, metric labels and dashboard pages: a letter or digit, then
# letters, digits, ``.``, ``_``, ``-`` (so never ``.``, ``..`` or a path); the model store names products alike.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
Id = Annotated[str, StringConstraints(pattern=ID_PATTERN, min_length=1, max_length=100)]
LongId = Annotated[str, StringConstraints(pattern=ID_PATTERN, min_length=1, max_length=200)]
# a per-camera counter: whatever a gateway sends must fit a signed 64-bit database column
Seq = Annotated[int, Field(ge=0, le=2**63 - 1)]

# Capture times outside these years are a broken clock, not a capture; the bounds also keep date
# arithmetic (UTC conversion, day folders) far from the ends of the calendar.
EARLIEST_CAPTURE = datetime(2000, 1, 1, tzinfo=timezone.utc)
LATEST_CAPTURE = datetime(2200, 1, 1, tzinfo=timezone.utc)


def _sane_capture_time(value: datetime) -> datetime:
    if not EARLIEST_CAPTURE <= value < LATEST_CAPTURE:
        raise ValueError(f"capture time must be within {EARLIEST_CAPTURE.year}..{LATEST_CAPTURE.year - 1}")
    return value


CaptureTime = Annotated[AwareDatetime, AfterValidator(_sane_capture_time)]

_HEADER_FIELDS = {
    "lw-frame-id": "frame_id",
    "lw-line": "line",
    "lw-station": "station",
    "lw-camera": "camera_id",
    "lw-seq": "seq",
    "lw-captured-at": "captured_at",
    "content-type": "content_type",
    "lw-part": "part_id",
    "lw-product": "product",
}


class FrameSchemaError(ValueError):
    """A message on the frames topic does not follow the frame schema."""


class FrameMeta(BaseModel):
    """Everything about a frame except its pixels."""

    model_config = ConfigDict(frozen=True)

    frame_id: LongId
    line: Id
    station: Id
    camera_id: Id
    seq: Seq
    captured_at: CaptureTime
    content_type: Literal["image/jpeg", "image/png"]
    part_id: LongId | None = None
    product: Id | None = None

    def to_headers(self) -> list[tuple[str, bytes]]:
        headers = [("lw-schema", str(SCHEMA_VERSION).encode())]
        for header, field in _HEADER_FIELDS.items():
            value = getattr(self, field)
            if value is None:
                continue
            text = value.isoformat() if isinstance(value, datetime) else str(value)
            headers.append((header, text.encode("utf-8")))
        return headers

    @classmethod
    def from_headers(cls, headers: list[tuple[str, bytes]] | None) -> "FrameMeta":
        """Parse Kafka headers; raises :class:`FrameSchemaError` with the reason."""
        raw: dict[str, bytes] = {}
        for key, value in headers or []:
            if key in raw and (key in _HEADER_FIELDS or key == "lw-schema"):
                raise FrameSchemaError(f"header {key} appears more than once")
            raw[key] = value or b""
        version = raw.get("lw-schema")
        if version is None:
            raise FrameSchemaError("missing header lw-schema")
        if version != str(SCHEMA_VERSION).encode():
            raise FrameSchemaError(f"unsupported frame schema version {version!r} (expected {SCHEMA_VERSION})")
        try:
            fields = {f: raw[h].decode("utf-8") for h, f in _HEADER_FIELDS.items() if h in raw}
            return cls.model_validate(fields)
        except Exception as exc:  # pydantic.ValidationError, UnicodeDecodeError
            raise FrameSchemaError(f"invalid frame headers: {exc}") from exc


def check_capture_window(meta: FrameMeta, broker_time: datetime, *, max_age: timedelta,
                         max_ahead: timedelta) -> None:
    """Refuse a capture time far from the time the broker took the record (a gateway with a broken clock).

    ``broker_time`` is the record's timestamp (the frames topic is created with
    ``message.timestamp.type=LogAppendTime``, so it is the broker's clock).  Raises
    :class:`FrameSchemaError`.
    """
    if meta.captured_at < broker_time - max_age:
        raise FrameSchemaError(f"capture time {meta.captured_at.isoformat()} is more than {max_age} before "
                               f"the broker received the frame ({broker_time.isoformat()})")
    if meta.captured_at > broker_time + max_ahead:
        raise FrameSchemaError(f"capture time {meta.captured_at.isoformat()} is more than {max_ahead} after "
                               f"the broker received the frame ({broker_time.isoformat()})")
