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

from datetime import datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1

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

    frame_id: str = Field(min_length=1, max_length=200)
    line: str = Field(min_length=1, max_length=100)
    station: str = Field(min_length=1, max_length=100)
    camera_id: str = Field(min_length=1, max_length=100)
    seq: int = Field(ge=0)
    captured_at: AwareDatetime
    content_type: Literal["image/jpeg", "image/png"]
    part_id: str | None = Field(default=None, max_length=200)
    product: str | None = Field(default=None, max_length=100)

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
        raw = {k: v for k, v in (headers or [])}
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
