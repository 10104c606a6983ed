"""The verdict a bridge publishes: what a reject gate or PLC needs about one frame, no images.

MQTT wire format, schema version 1:

* topic ``<root>/<line>/<camera_id>`` (``LINEWATCH_MQTT_TOPIC_ROOT``, default ``linewatch``;
  ``/``, ``+``, ``#`` in names become ``_``), QoS 1;
* retained: the newest verdict of each camera stays on its topic for subscribers that
  connect later (an older verdict replayed after a restart is published unretained, so the
  retained one never goes back in time);
* payload: JSON of :class:`Verdict`.  Deliveries are at-least-once: a subscriber that must
  act once per part deduplicates by ``frame_id``.

OPC UA: the same fields as variables of one object per camera (see :mod:`.opcua`).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict

from detector.messages import InspectionResult

SCHEMA_VERSION = 1


class Verdict(BaseModel):
    model_config = ConfigDict(frozen=True, protected_namespaces=())

    schema_version: Literal[1] = SCHEMA_VERSION
    frame_id: str
    line: str
    station: str
    camera_id: str
    seq: int
    part_id: str | None
    product: str | None
    verdict: Literal["reject", "pass"]
    score: float
    threshold: float
    model_version: str
    captured_at: AwareDatetime
    inferred_at: AwareDatetime
    published_at: AwareDatetime

    @classmethod
    def of(cls, result: InspectionResult) -> "Verdict":
        return cls(
            frame_id=result.frame_id, line=result.line, station=result.station, camera_id=result.camera_id,
            seq=result.seq, part_id=result.part_id, product=result.product,
            verdict="reject" if result.is_anomalous else "pass", score=result.score,
            threshold=result.threshold, model_version=result.model_version, captured_at=result.captured_at,
            inferred_at=result.inferred_at, published_at=datetime.now(timezone.utc),
        )

    @property
    def camera_key(self) -> tuple[str, str]:
        return self.line, self.camera_id

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> "Verdict":
        return cls.model_validate_json(data)


def topic_segment(name: str) -> str:
    """A line or camera name as one MQTT topic level (no separators or wildcards)."""
    cleaned = "".join("_" if c in "/+#\x00" else c for c in name)
    return cleaned or "_"


def mqtt_topic(root: str, line: str, camera_id: str) -> str:
    return f"{root.rstrip('/')}/{topic_segment(line)}/{topic_segment(camera_id)}"
