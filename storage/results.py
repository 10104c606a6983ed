"""Storing detector results: validation, blob keys, and the idempotent batch insert.

:func:`store_results` is what the writer service calls for each batch:

1. drop results whose ``frame_id`` is already stored (and duplicates inside the batch);
2. put the images (heatmap, frame when present) into the blob store and make them durable;
3. in ONE database transaction: create missing lines/cameras, insert the ``images`` rows
   and the ``inspections`` rows with ``INSERT ... ON CONFLICT DO NOTHING`` (so a replayed
   result, or a second writer racing on the same frame after a rebalance, never makes a
   second row).

Blobs are written before the rows, so a row never points at a missing blob.  Blob keys
contain a prefix of the content's sha256, so the same result replayed writes the same key.
"""

from __future__ import annotations

import hashlib
import math
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Engine, select

from detector.messages import InspectionResult

from .blobs import BlobStore
from .db import insert_ignore, write_session
from .models import Camera, Image, Inspection, Line, utcnow

_SAFE = re.compile(r"[^A-Za-z0-9._-]")

# column limits the result's strings must fit (PostgreSQL enforces them; SQLite would not)
_LIMITS = {"frame_id": 200, "line": 100, "station": 100, "camera_id": 100, "part_id": 200, "product": 100,
           "model_version": 100}

_REQUIRED = {"frame_id", "line", "station", "camera_id", "model_version"}

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"


class InvalidResult(ValueError):
    """A result that parses but cannot be stored (goes to the dead-letter topic)."""


@dataclass(frozen=True)
class StoreOutcome:
    inserted: int
    duplicates: int
    blobs_written: int


def validate_result(r: InspectionResult) -> None:
    """Raise :class:`InvalidResult` with the reason if ``r`` cannot be stored."""
    for field, limit in _LIMITS.items():
        value = getattr(r, field)
        if value is None:
            continue
        if len(value) > limit or (not value and field in _REQUIRED):
            raise InvalidResult(f"{field} must be 1..{limit} characters, got {len(value)}")
    for field in ("score", "threshold", "heatmap_max"):
        if not math.isfinite(getattr(r, field)):
            raise InvalidResult(f"{field} is not a finite number")
    if r.seq < 0 or r.seq >= 2**63:
        raise InvalidResult("seq out of range")
    if not r.heatmap_png.startswith(PNG_MAGIC):
        raise InvalidResult("heatmap_png is not a PNG image")
    if r.frame_image is not None:
        if r.frame_content_type is None:
            raise InvalidResult("frame_image without frame_content_type")
        magic = PNG_MAGIC if r.frame_content_type == "image/png" else JPEG_MAGIC
        if not r.frame_image.startswith(magic):
            raise InvalidResult(f"frame_image is not {r.frame_content_type}")


def _png_size(data: bytes) -> tuple[int | None, int | None]:
    if len(data) >= 24 and data.startswith(PNG_MAGIC) and data[12:16] == b"IHDR":
        w, h = struct.unpack(">II", data[16:24])
        return w, h
    return None, None


def _frame_kind(r: InspectionResult) -> str:
    reason = r.frame_reason or ("flagged" if r.is_anomalous else "sampled")
    return "flagged_frame" if reason == "flagged" else "sampled_normal"


def blob_key(kind: str, captured_at: datetime, camera_id: str, frame_id: str, sha256: str, content_type: str) -> str:
    """``<kind>s/YYYY/MM/DD/<camera>/<frame>-<sha16>.<ext>`` (UTC date of capture)."""
    ext = {"image/png": ".png", "image/jpeg": ".jpg"}.get(content_type, ".bin")
    if captured_at.tzinfo is None:
        captured_at = captured_at.replace(tzinfo=timezone.utc)
    day = captured_at.astimezone(timezone.utc).strftime("%Y/%m/%d")
    return f"{kind}s/{day}/{_SAFE.sub('_', camera_id)}/{_SAFE.sub('_', frame_id)}-{sha256[:16]}{ext}"


def _image_row(kind: str, r: InspectionResult, data: bytes, content_type: str, now: datetime) -> dict[str, Any]:
    sha = hashlib.sha256(data).hexdigest()
    if content_type == "image/png":
        width, height = _png_size(data)
    else:
        width, height = r.frame_width, r.frame_height
    return {
        "kind": kind,
        "blob_key": blob_key(kind, r.captured_at, r.camera_id, r.frame_id, sha, content_type),
        "content_type": content_type,
        "size_bytes": len(data),
        "sha256": sha,
        "width": width,
        "height": height,
        "created_at": now,
    }


def existing_frame_ids(engine: Engine, frame_ids: Sequence[str]) -> set[str]:
    found: set[str] = set()
    ids = list(frame_ids)
    with engine.connect() as conn:
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            found.update(conn.execute(select(Inspection.frame_id).where(Inspection.frame_id.in_(chunk))).scalars())
    return found


def store_results(engine: Engine, blobs: BlobStore, results: Sequence[InspectionResult]) -> StoreOutcome:
    """Store a batch idempotently (see the module docstring).  Results must be validated."""
    unique: dict[str, InspectionResult] = {}
    for r in results:
        unique.setdefault(r.frame_id, r)
    already = existing_frame_ids(engine, list(unique))
    todo = [r for fid, r in unique.items() if fid not in already]
    if not todo:
        return StoreOutcome(0, len(results), 0)

    now = utcnow()
    # 1. blobs first, made durable before any row can point at them
    planned: list[tuple[InspectionResult, dict[str, Any], dict[str, Any] | None]] = []
    for r in todo:
        heat = _image_row("heatmap", r, r.heatmap_png, "image/png", now)
        frame = None
        if r.frame_image is not None and r.frame_content_type is not None:
            frame = _image_row(_frame_kind(r), r, r.frame_image, r.frame_content_type, now)
        planned.append((r, heat, frame))
    written = 0
    for r, heat, frame in planned:
        blobs.put(heat["blob_key"], r.heatmap_png, "image/png")
        written += 1
        if frame is not None:
            assert r.frame_image is not None
            blobs.put(frame["blob_key"], r.frame_image, frame["content_type"])
            written += 1
    blobs.flush()

    # 2. rows, in one transaction
    with write_session(engine) as s:
        lines = {r.line: {"id": r.line, "name": None, "created_at": now} for r in todo}
        insert_ignore(s, Line.__table__, list(lines.values()), ["id"])
        cams = {
            r.camera_id: {"id": r.camera_id, "line_id": r.line, "station": r.station, "product": r.product,
                          "name": None, "threshold_override": None, "threshold_updated_at": None, "created_at": now}
            for r in todo
        }
        insert_ignore(s, Camera.__table__, list(cams.values()), ["id"])
        image_rows = [heat for _, heat, _ in planned] + [frame for _, _, frame in planned if frame is not None]
        insert_ignore(s, Image.__table__, image_rows, ["blob_key"])
        keys = [row["blob_key"] for row in image_rows]
        ids: dict[str, int] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            ids.update(s.execute(select(Image.blob_key, Image.id).where(Image.blob_key.in_(chunk))).all())
        rows = []
        for r, heat, frame in planned:
            rows.append({
                "frame_id": r.frame_id,
                "line_id": r.line,
                "camera_id": r.camera_id,
                "station": r.station,
                "seq": r.seq,
                "part_id": r.part_id,
                "product": r.product,
                "captured_at": r.captured_at,
                "inferred_at": r.inferred_at,
                "stored_at": now,
                "score": r.score,
                "threshold": r.threshold,
                "is_anomalous": r.is_anomalous,
                "model_version": r.model_version,
                "frame_width": r.frame_width,
                "frame_height": r.frame_height,
                "heatmap_max": r.heatmap_max,
                "heatmap_image_id": ids[heat["blob_key"]],
                "frame_image_id": ids[frame["blob_key"]] if frame is not None else None,
                "frame_reason": (r.frame_reason or ("flagged" if r.is_anomalous else "sampled"))
                if frame is not None else None,
                "current_feedback": None,
            })
        inserted = insert_ignore(s, Inspection.__table__, rows, ["frame_id"])
    return StoreOutcome(inserted, len(results) - inserted, written)
