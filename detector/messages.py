"""The inspection result: what the detector service publishes, one per frame.

Wire format, schema version 1:

* topic: ``<prefix>.results``; key: camera id (UTF-8)
* value: JSON of :class:`InspectionResult` (bytes fields base64-encoded)

The heatmap is the per-pixel anomaly map quantised to uint8 over ``[0, heatmap_max]``
and PNG-encoded; its size is the frame's size, downscaled so the longer side is at most
``heatmap max side`` (the service's setting, 512 by default) to keep messages small.
``value = png_pixel / 255 * heatmap_max`` recovers the score scale.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ingest.messages import CaptureTime, Id, LongId, Seq

SCHEMA_VERSION = 1


class InspectionResult(BaseModel):
    # bytes travel as base64 in JSON, and are plain bytes in Python
    model_config = ConfigDict(
        frozen=True, protected_namespaces=(), ser_json_bytes="base64", val_json_bytes="base64"
    )

    schema_version: Literal[1] = SCHEMA_VERSION
    # the frame's fields follow the frame schema, so whatever the detector accepted, storage can store
    frame_id: LongId
    line: Id
    station: Id
    camera_id: Id
    seq: Seq
    part_id: LongId | None = None
    product: Id | None = None
    captured_at: CaptureTime
    inferred_at: CaptureTime
    score: float = Field(allow_inf_nan=False)
    threshold: float = Field(allow_inf_nan=False)
    is_anomalous: bool
    model_version: str = Field(min_length=1, max_length=100)
    frame_width: int = Field(gt=0, le=1_000_000)
    frame_height: int = Field(gt=0, le=1_000_000)
    heatmap_png: bytes
    heatmap_max: float = Field(ge=0, allow_inf_nan=False)
    # the frame itself travels only when flagged or sampled for retraining
    frame_image: bytes | None = None
    frame_content_type: Literal["image/jpeg", "image/png"] | None = None
    frame_reason: Literal["flagged", "sampled"] | None = None

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> "InspectionResult":
        return cls.model_validate_json(data)
