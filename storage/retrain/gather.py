"""Step 2: the captures a run trains and evaluates on, from the database and the blob store."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import numpy as np
from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from ..blobs import BlobNotFound, BlobStore
from ..models import Image, Inspection
from .dedup import dedup
from .settings import RetrainSettings

KEEP_MAX_SIDE = 512  # images are kept in memory at most this large (hashing, holdout scoring)


@dataclass
class Capture:
    inspection_id: int
    frame_id: str
    captured_at: datetime
    kind: Literal["sampled", "false_alarm", "defect"]
    blob_key: str
    content_type: str
    image_sha256: str
    score: float
    rgb: np.ndarray | None = None


@dataclass
class Gathered:
    window: tuple[datetime | None, datetime]
    train: list[Capture]
    holdout_normal: list[Capture]
    holdout_defect: list[Capture]
    counts: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for c in sorted(self.train, key=lambda c: c.frame_id):
            h.update(c.frame_id.encode() + b"\0" + c.image_sha256.encode() + b"\n")
        return h.hexdigest()


def in_holdout(frame_id: str, fraction: float) -> bool:
    """Deterministic: the same frame always falls on the same side."""
    h = int.from_bytes(hashlib.sha256(b"holdout:" + frame_id.encode()).digest()[:8], "big")
    return h / 2**64 < fraction


def _rows(session: Session, product: str, cond, limit: int | None) -> list[Any]:
    q = (select(Inspection.id, Inspection.frame_id, Inspection.captured_at, Inspection.score,
                Inspection.current_feedback, Image.blob_key, Image.content_type, Image.sha256)
         .join(Image, Image.id == Inspection.frame_image_id)
         .where(Inspection.product == product, cond)
         .order_by(Inspection.captured_at.desc(), Inspection.id.desc()))
    if limit:
        q = q.limit(limit)
    return list(session.execute(q).all())


def select_captures(session: Session, product: str, since: datetime | None, until: datetime,
                    settings: RetrainSettings) -> tuple[list[Capture], list[Capture]]:
    """-> (normal captures for training/holdout, confirmed defects); newest first; no images loaded."""
    window = Inspection.captured_at <= until
    if since is not None:
        window = and_(window, Inspection.captured_at > since)
    sampled_low = and_(Inspection.frame_reason == "sampled", Inspection.is_anomalous.is_(False),
                       Inspection.current_feedback.is_(None),
                       Inspection.score <= settings.low_score_ratio * Inspection.threshold)
    false_alarm = Inspection.current_feedback == "false_alarm"
    normal_rows = _rows(session, product, and_(window, or_(sampled_low, false_alarm)), settings.max_images)
    defect_rows = _rows(session, product, Inspection.current_feedback == "defect_confirmed", None)

    def cap(r, kind) -> Capture:
        return Capture(r.id, r.frame_id, r.captured_at, kind, r.blob_key, r.content_type, r.sha256, float(r.score))

    normals = [cap(r, "false_alarm" if r.current_feedback == "false_alarm" else "sampled") for r in normal_rows]
    return normals, [cap(r, "defect") for r in defect_rows]


def _load(captures: list[Capture], blobs: BlobStore, skipped: list[str], desc: str, progress: bool) -> list[Capture]:
    from tqdm.auto import tqdm

    from detector.data import CorruptImageError, decode_image

    import cv2

    out = []
    for c in tqdm(captures, desc=desc, disable=not progress, leave=False):
        try:
            rgb = decode_image(blobs.get(c.blob_key), c.frame_id)
        except (BlobNotFound, CorruptImageError) as e:
            skipped.append(f"{c.frame_id}: {type(e).__name__}: {e}")
            continue
        h, w = rgb.shape[:2]
        if max(h, w) > KEEP_MAX_SIDE:  # bounded memory for thousands of large frames; models use less
            f = KEEP_MAX_SIDE / max(h, w)
            rgb = cv2.resize(rgb, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
        c.rgb = rgb
        out.append(c)
    return out


def gather(session: Session, blobs: BlobStore, product: str, since: datetime | None, until: datetime,
           settings: RetrainSettings, progress: bool = True) -> Gathered:
    normals, defects = select_captures(session, product, since, until, settings)
    skipped: list[str] = []
    # false alarms first: they are the rarer, more informative images, so they win over a duplicate
    normals.sort(key=lambda c: (c.kind != "false_alarm", -c.captured_at.timestamp()))
    normals = _load(normals, blobs, skipped, "loading captures", progress)
    normals, n_dup = dedup(normals, settings.dedup_max_distance, settings.dedup_max_diff)
    defects = _load(defects, blobs, skipped, "loading confirmed defects", progress)
    # false alarms are held out too: normals the active model flagged belong in a fair comparison
    holdout = [c for c in normals if in_holdout(c.frame_id, settings.holdout_fraction)]
    held = {c.inspection_id for c in holdout}
    train = [c for c in normals if c.inspection_id not in held]
    counts = {"sampled_normals": sum(c.kind == "sampled" for c in normals),
              "false_alarms": sum(c.kind == "false_alarm" for c in normals),
              "duplicates_removed": n_dup, "unreadable": len(skipped), "train": len(train),
              "holdout_normal": len(holdout), "holdout_defect": len(defects)}
    return Gathered((since, until), train, holdout, defects, counts, skipped)
