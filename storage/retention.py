"""Retention: what ``linewatch-storage purge`` deletes, and what it always keeps.

Policy (settings in :mod:`storage.settings`):

* **flagged inspections** (``is_anomalous``) and their images are kept, always;
* inspections with operator **feedback** are kept, always (they are training and holdout data);
* **normal** inspections older than ``retention_days`` are deleted with their heatmaps —
  except a sample of the *sampled* normal frames (those the detector sent with the frame
  image, for retraining): a fraction ``retention_keep_sampled`` of them, chosen by a hash of
  the frame id (so repeated purges keep the same ones), is kept until
  ``retention_sampled_days`` (0 = forever).

Rows are deleted before their blobs (a row never points at a missing blob); a crash in
between leaves orphan blobs, which :func:`sweep_orphans` (run by every purge) removes once
they are older than a grace period, together with ``images`` rows no inspection points at
(e.g. from a writer that lost a race).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Engine, delete, exists, or_, select

from .blobs import BlobStore, DatabaseBlobStore, LocalBlobStore
from .db import write_session
from .models import Blob, Image, Inspection, utcnow
from .settings import StorageSettings

CHUNK = 1000
ORPHAN_GRACE = timedelta(hours=1)


@dataclass
class PurgeReport:
    cutoff: datetime
    inspections_deleted: int = 0
    samples_kept: int = 0
    images_deleted: int = 0
    blobs_deleted: int = 0
    orphan_images_deleted: int = 0
    orphan_blobs_deleted: int = 0
    dry_run: bool = False
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["cutoff"] = self.cutoff.isoformat()
        return d


def keep_in_sample(frame_id: str, fraction: float) -> bool:
    """Deterministic: the same frame is always in or out of a given fraction."""
    if fraction >= 1.0:
        return True
    if fraction <= 0.0:
        return False
    h = int.from_bytes(hashlib.sha256(frame_id.encode("utf-8")).digest()[:8], "big")
    return h / 2**64 < fraction


def purge(
    engine: Engine,
    blobs: BlobStore,
    settings: StorageSettings,
    *,
    now: datetime | None = None,
    dry_run: bool = False,
    sweep: bool = True,
) -> PurgeReport:
    now = now or utcnow()
    cutoff = now - timedelta(days=settings.retention_days)
    sample_cutoff = now - timedelta(days=settings.retention_sampled_days) if settings.retention_sampled_days else None
    report = PurgeReport(cutoff=cutoff, dry_run=dry_run)

    last_id = 0
    while True:
        with engine.connect() as conn:
            batch = conn.execute(
                select(Inspection.id, Inspection.frame_id, Inspection.frame_reason, Inspection.captured_at,
                       Inspection.heatmap_image_id, Inspection.frame_image_id)
                .where(Inspection.id > last_id, Inspection.is_anomalous.is_(False),
                       Inspection.current_feedback.is_(None), Inspection.captured_at < cutoff)
                .order_by(Inspection.id).limit(CHUNK)
            ).all()
        if not batch:
            break
        last_id = batch[-1].id
        doomed: list[int] = []
        image_ids: set[int] = set()
        for row in batch:
            if row.frame_reason == "sampled" and row.frame_image_id is not None and \
                    keep_in_sample(row.frame_id, settings.retention_keep_sampled) and \
                    (sample_cutoff is None or row.captured_at >= sample_cutoff):
                report.samples_kept += 1
                continue
            doomed.append(row.id)
            image_ids.update(i for i in (row.heatmap_image_id, row.frame_image_id) if i is not None)
        if not doomed:
            continue
        if dry_run:
            report.inspections_deleted += len(doomed)
            report.images_deleted += len(image_ids)
            continue
        with write_session(engine) as s:
            s.execute(delete(Inspection).where(Inspection.id.in_(doomed)))
            # images no remaining inspection points at
            free = s.execute(
                select(Image.id, Image.blob_key).where(
                    Image.id.in_(image_ids),
                    ~exists().where(or_(Inspection.heatmap_image_id == Image.id, Inspection.frame_image_id == Image.id)),
                )
            ).all()
            if free:
                s.execute(delete(Image).where(Image.id.in_([f.id for f in free])))
        report.inspections_deleted += len(doomed)
        report.images_deleted += len(free)
        for f in free:
            blobs.delete(f.blob_key)
            report.blobs_deleted += 1

    if sweep:
        sweep_orphans(engine, blobs, now=now, dry_run=dry_run, report=report)
    return report


def sweep_orphans(
    engine: Engine, blobs: BlobStore, *, now: datetime | None = None, dry_run: bool = False,
    report: PurgeReport | None = None, grace: timedelta = ORPHAN_GRACE,
) -> PurgeReport:
    """Delete ``images`` rows nothing points at, and blobs with no ``images`` row, older than ``grace``."""
    now = now or utcnow()
    report = report or PurgeReport(cutoff=now)
    old = now - grace
    with engine.connect() as conn:
        orphans = conn.execute(
            select(Image.id, Image.blob_key).where(
                Image.created_at < old,
                ~exists().where(or_(Inspection.heatmap_image_id == Image.id, Inspection.frame_image_id == Image.id)),
            )
        ).all()
    if orphans and not dry_run:
        ids = [o.id for o in orphans]
        with write_session(engine) as s:
            for start in range(0, len(ids), CHUNK):
                chunk = ids[start:start + CHUNK]
                # re-check inside the transaction: a writer may have just pointed a row at it
                s.execute(delete(Image).where(
                    Image.id.in_(chunk),
                    ~exists().where(or_(Inspection.heatmap_image_id == Image.id, Inspection.frame_image_id == Image.id)),
                ))
        for o in orphans:
            blobs.delete(o.blob_key)
    report.orphan_images_deleted += len(orphans)

    # blobs without any images row (crash between blob put and the row commit, or after a purge)
    stray: list[str] = []

    def _unknown(keys: list[str]) -> set[str]:
        with engine.connect() as conn:
            return set(keys) - set(conn.execute(select(Image.blob_key).where(Image.blob_key.in_(keys))).scalars())

    def _scan(candidates):  # (key, created) pairs
        chunk: list[str] = []
        for key, created in candidates:
            if created is not None and created < old:
                chunk.append(key)
            if len(chunk) >= 500:
                stray.extend(sorted(_unknown(chunk)))
                chunk = []
        if chunk:
            stray.extend(sorted(_unknown(chunk)))

    if isinstance(blobs, LocalBlobStore):
        def _local():
            for key in blobs.iter_keys():
                try:
                    yield key, datetime.fromtimestamp(blobs._path(key).stat().st_mtime, timezone.utc)
                except FileNotFoundError:
                    continue
        _scan(_local())
    elif isinstance(blobs, DatabaseBlobStore):
        with engine.connect() as conn:
            rows = conn.execute(select(Blob.key, Blob.created_at).where(Blob.created_at < old)).all()
        _scan(rows)
    if not dry_run:
        for key in stray:
            blobs.delete(key)
    report.orphan_blobs_deleted += len(stray)
    return report


__all__ = ["PurgeReport", "keep_in_sample", "purge", "sweep_orphans"]
