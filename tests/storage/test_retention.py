"""Retention: purge by age keeps flagged inspections, feedback and a sample of normal frames."""

from __future__ import annotations

import os
import time
from datetime import timedelta

from sqlalchemy import func, select

from storage.db import write_session
from storage.feedback import add_feedback
from storage.models import Image, Inspection
from storage.results import store_results
from storage.retention import keep_in_sample, purge, sweep_orphans

from .helpers import T0, make_result


def _frames(db) -> set[str]:
    with db.engine.connect() as c:
        return set(c.execute(select(Inspection.frame_id)).scalars())


def test_purge_keeps_flagged_feedback_and_sample(storage_db):
    old = T0 - timedelta(days=40)
    now = T0
    olds = [make_result(i, captured_at=old + timedelta(minutes=i), anomalous=(i % 10 == 0),
                        frame=("sampled" if i % 10 == 5 else None)) for i in range(100)]
    news = [make_result(1000 + i, captured_at=now - timedelta(days=1)) for i in range(10)]
    store_results(storage_db.engine, storage_db.blobs, olds + news)
    # an operator looked at one old normal part: kept
    with storage_db.session() as s:
        noted = s.scalar(select(Inspection.id).where(Inspection.frame_id == olds[1].frame_id))
    with write_session(storage_db.engine) as s:
        add_feedback(s, noted, "unsure", "olga")
    flagged = {r.frame_id for r in olds if r.is_anomalous}
    sampled = [r for r in olds if r.frame_reason == "sampled"]
    keep_fraction = 0.5
    kept_samples = {r.frame_id for r in sampled if keep_in_sample(r.frame_id, keep_fraction)}
    assert 0 < len(kept_samples) < len(sampled)
    doomed = [r for r in olds if r.frame_id not in flagged | kept_samples | {olds[1].frame_id}]
    doomed_keys = []
    with storage_db.session() as s:
        for r in doomed:
            insp = s.scalar(select(Inspection).where(Inspection.frame_id == r.frame_id))
            doomed_keys.append(insp.heatmap_image.blob_key)
            if insp.frame_image:
                doomed_keys.append(insp.frame_image.blob_key)
        flagged_keys = [k for i in s.scalars(select(Inspection).where(Inspection.is_anomalous.is_(True)))
                        for k in (i.heatmap_image.blob_key, i.frame_image.blob_key)]
    settings = storage_db.settings.model_copy(update={"retention_days": 30, "retention_keep_sampled": keep_fraction})

    dry = purge(storage_db.engine, storage_db.blobs, settings, now=now, dry_run=True)
    assert dry.inspections_deleted == len(doomed)
    assert len(_frames(storage_db)) == 110

    report = purge(storage_db.engine, storage_db.blobs, settings, now=now)
    assert report.inspections_deleted == len(doomed)
    assert report.samples_kept == len(kept_samples)
    left = _frames(storage_db)
    assert left == flagged | kept_samples | {olds[1].frame_id} | {r.frame_id for r in news}
    for key in doomed_keys:
        assert not storage_db.blobs.exists(key)
    for key in flagged_keys:
        assert storage_db.blobs.exists(key)
    with storage_db.engine.connect() as c:  # no image row left without its inspection
        assert c.scalar(select(func.count()).select_from(Image)) == \
            c.scalar(select(func.count()).where(Inspection.heatmap_image_id.is_not(None))) + \
            c.scalar(select(func.count()).where(Inspection.frame_image_id.is_not(None)))
    # purging again changes nothing; samples past their own limit go
    assert purge(storage_db.engine, storage_db.blobs, settings, now=now).inspections_deleted == 0
    later = settings.model_copy(update={"retention_sampled_days": 20})
    assert purge(storage_db.engine, storage_db.blobs, later, now=now).inspections_deleted == len(kept_samples)
    assert _frames(storage_db) == flagged | {olds[1].frame_id} | {r.frame_id for r in news}


def test_keep_in_sample_is_deterministic_and_proportional():
    ids = [f"cam-{i}" for i in range(4000)]
    picked = [i for i in ids if keep_in_sample(i, 0.25)]
    assert picked == [i for i in ids if keep_in_sample(i, 0.25)]
    assert 0.2 < len(picked) / len(ids) < 0.3
    assert all(keep_in_sample(i, 1.0) for i in ids[:10]) and not any(keep_in_sample(i, 0.0) for i in ids[:10])


def test_orphan_blobs_are_swept_after_grace(sqlite_db):
    store_results(sqlite_db.engine, sqlite_db.blobs, [make_result(1)])
    sqlite_db.blobs.put("heatmaps/2026/01/01/cam-1/stray-0000.png", b"x", "image/png")
    path = sqlite_db.blobs._path("heatmaps/2026/01/01/cam-1/stray-0000.png")
    # fresh: kept (a writer may be about to commit the row)
    sweep_orphans(sqlite_db.engine, sqlite_db.blobs)
    assert path.exists()
    old = time.time() - 3 * 3600
    os.utime(path, (old, old))
    report = sweep_orphans(sqlite_db.engine, sqlite_db.blobs)
    assert report.orphan_blobs_deleted == 1 and not path.exists()
    assert len(_frames(sqlite_db)) == 1
    with sqlite_db.session() as s:
        key = s.scalar(select(Image.blob_key))
    assert sqlite_db.blobs.exists(key)
