"""Seed data for the dashboard tests: users, cameras and inspections stored the real way
(:func:`storage.results.store_results`, blobs in the blob store), with visible frames and
heatmaps for the flagged parts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import cv2
import numpy as np

from detector.messages import InspectionResult
from storage.db import write_session
from storage.feedback import add_feedback
from storage.results import store_results
from storage.users import add_user

PASSWORDS = {"olga": "operator-pass-1", "erik": "engineer-pass-1", "ada": "admin-pass-1"}
ROLES = {"olga": "operator", "erik": "engineer", "ada": "admin"}


def frame_jpeg(seed: int, w: int = 320, h: int = 240) -> bytes:
    """A bottle-ish grey part on a dark background, with a scratch when ``seed`` is odd."""
    img = np.full((h, w, 3), 30, np.uint8)
    cv2.ellipse(img, (w // 2, h // 2), (w // 4, h // 3), 0, 0, 360, (170, 170, 160), -1)
    if seed % 2:
        cv2.line(img, (w // 2 - 20, h // 2 - 30), (w // 2 + 25, h // 2 + 10), (60, 60, 60), 4)
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    return buf.tobytes()


def heatmap_png(seed: int, w: int = 160, h: int = 120) -> bytes:
    """Quantised uint8 heatmap (half the frame size, like a downscaled detector map)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy = w / 2 + (seed % 5), h / 2 - 8
    m = np.exp(-(((xx - cx) / 14) ** 2 + ((yy - cy) / 12) ** 2)) * 255
    ok, buf = cv2.imencode(".png", m.astype(np.uint8))
    assert ok
    return buf.tobytes()


def result(i: int, camera: str, line: str, at: datetime, score: float, flagged: bool,
           with_frame: bool | None = None, threshold: float = 0.5) -> InspectionResult:
    with_frame = flagged if with_frame is None else with_frame
    return InspectionResult(
        frame_id=f"{camera}-{i:06d}", line=line, station="st-1", camera_id=camera, seq=i,
        part_id=f"P{i:05d}", product="bottle", captured_at=at, inferred_at=at + timedelta(milliseconds=30),
        score=score, threshold=threshold, is_anomalous=flagged, model_version="ear-fader-v3",
        frame_width=320, frame_height=240, heatmap_png=heatmap_png(i), heatmap_max=score * 1.2,
        frame_image=frame_jpeg(i) if with_frame else None,
        frame_content_type="image/jpeg" if with_frame else None,
        frame_reason=("flagged" if flagged else "sampled") if with_frame else None,
    )


@dataclass
class Seeded:
    now: datetime
    flagged_ids: list[int]
    newest_flagged_part: str
    cameras: list[str]


def seed(db, now: datetime | None = None, per_camera: int = 40) -> Seeded:
    """2 lines x 2 cameras, ``per_camera`` parts each over the last 30 min (every 10th flagged),
    older parts a day earlier for the "usual" rate, some feedback, and the three users."""
    from sqlalchemy import select

    from storage.models import Inspection

    now = now or datetime.now(timezone.utc)
    cams = [("line-a", "cam-a1"), ("line-a", "cam-a2"), ("line-b", "cam-b1"), ("line-b", "cam-b2")]
    results = []
    for line, cam in cams:
        for i in range(per_camera):
            at = now - timedelta(minutes=30) + timedelta(seconds=i * 1800 / per_camera)
            flagged = i % 10 == 9
            score = 0.75 + 0.01 * (i % 7) if flagged else 0.1 + 0.3 * ((i * 37) % 100) / 100
            results.append(result(i, cam, line, at, score, flagged))
        for i in range(per_camera, 2 * per_camera):  # a day ago: the "usual" period
            at = now - timedelta(days=1) + timedelta(seconds=i * 30)
            flagged = i % 20 == 0
            results.append(result(i, cam, line, at, 0.8 if flagged else 0.2, flagged, with_frame=False))
    store_results(db.engine, db.blobs, results)
    with write_session(db.engine) as s:
        for name, role in ROLES.items():
            add_user(s, name, PASSWORDS[name], role)
        older = s.execute(
            select(Inspection.id, Inspection.camera_id).where(Inspection.is_anomalous.is_(True))
            .where(Inspection.captured_at < now - timedelta(hours=2))
            .order_by(Inspection.camera_id, Inspection.captured_at)
        ).all()
        for iid, cam in older:  # the usual-period flags are reviewed: defects on *1 cameras, false alarms on *2
            add_feedback(s, iid, "defect_confirmed" if cam.endswith("1") else "false_alarm", "olga",
                         at=now - timedelta(hours=20))
    with write_session(db.engine) as s:
        flagged = s.execute(
            select(Inspection.id, Inspection.part_id).where(Inspection.is_anomalous.is_(True),
                                                            Inspection.current_feedback.is_(None))
            .order_by(Inspection.captured_at.desc(), Inspection.id.desc())
        ).all()
    return Seeded(now, [r[0] for r in flagged], flagged[0][1], [c for _, c in cams])
