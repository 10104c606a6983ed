"""Seed a linewatch database with N inspection rows for the dashboard benchmark (not a test).

    python -m tests.benchmarks.dashboard_seed --rows 1000000 --data-dir /tmp/lwbench
    python -m tests.benchmarks.dashboard_seed --rows 1000000 --database-url postgresql+psycopg://...

Shape: 2 lines x 3 cameras, rows spread evenly over the last ``--days`` days up to now (so the
Live windows have data), ~2 % flagged; flagged parts point at a pool of real frame + heatmap
images in the blob store; 70 % of the flagged parts older than a day are reviewed (mostly false
alarms) plus some missed defects marked among the normals.  Rows go in with multi-row INSERTs in
chunks through SQLAlchemy Core (the same schema and migrations as production, indexes included).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import random
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import insert

from storage.blobs import make_blob_store
from storage.db import init_db, make_engine, write_session
from storage.models import Camera, Feedback, Image, Inspection, Line
from storage.settings import StorageSettings
from storage.users import add_user, get_user

CAMERAS = [("line-1", "cam-1a"), ("line-1", "cam-1b"), ("line-1", "cam-1c"),
           ("line-2", "cam-2a"), ("line-2", "cam-2b"), ("line-2", "cam-2c")]
USERS = {"bench-operator": "operator", "bench-engineer": "engineer", "bench-admin": "admin"}
PASSWORD = "bench-password-1"


def _images(blobs, n: int) -> list[dict]:
    from tests.dashboard.seed import frame_jpeg, heatmap_png

    rows = []
    now = datetime.now(timezone.utc)
    for i in range(n):
        for kind, data, ctype in (("heatmap", heatmap_png(i), "image/png"),
                                  ("flagged_frame", frame_jpeg(i), "image/jpeg")):
            sha = hashlib.sha256(data).hexdigest()
            key = f"bench/{kind}/{i:04d}-{sha[:16]}.{'png' if ctype == 'image/png' else 'jpg'}"
            blobs.put(key, data, ctype)
            rows.append({"kind": kind, "blob_key": key, "content_type": ctype, "size_bytes": len(data),
                         "sha256": sha, "width": 320 if kind == "flagged_frame" else 160,
                         "height": 240 if kind == "flagged_frame" else 120, "created_at": now})
    blobs.flush()
    return rows


def seed(url: str | None, data_dir: Path, rows: int, days: float, chunk: int = 20_000, seed_: int = 7) -> dict:
    settings = StorageSettings(data_dir=data_dir, **({"database_url": url} if url else {}))
    engine = make_engine(settings=settings)
    init_db(engine)
    blobs = make_blob_store(settings, engine)
    rng = random.Random(seed_)
    now = datetime.now(timezone.utc)
    start = now - timedelta(days=days)
    step = (now - start).total_seconds() / rows
    t0 = time.perf_counter()
    with write_session(engine) as s:
        for line in sorted({line for line, _ in CAMERAS}):
            s.merge(Line(id=line, name=line.replace("-", " ").title(), created_at=now))
        for line, cam in CAMERAS:
            s.merge(Camera(id=cam, line_id=line, station="st-1", product="bottle", created_at=now))
        for name, role in USERS.items():
            if get_user(s, name) is None:
                add_user(s, name, PASSWORD, role)
        s.flush()
        image_rows = _images(blobs, 40)
        s.execute(insert(Image), image_rows)
    with engine.connect() as conn:
        from sqlalchemy import select
        ids = conn.execute(select(Image.id, Image.kind).order_by(Image.id)).all()
    heat_ids = [i for i, k in ids if k == "heatmap"]
    frame_ids = [i for i, k in ids if k == "flagged_frame"]

    inserted = 0
    feedback_rows: list[dict] = []
    batch: list[dict] = []
    base_id = None
    day_ago = now - timedelta(days=1)
    with engine.begin() as conn:
        for n in range(rows):
            line, cam = CAMERAS[n % len(CAMERAS)]
            at = start + timedelta(seconds=n * step)
            defect = rng.random() < 0.012
            score = (0.55 + 0.45 * rng.random()) if defect else min(0.95, abs(rng.gauss(0.25, 0.09)))
            if not defect and rng.random() < 0.01:
                score = 0.5 + 0.2 * rng.random()  # the false alarms of the model
            flagged = score >= 0.5
            fb = None
            if at < day_ago:
                if flagged and rng.random() < 0.7:
                    fb = "defect_confirmed" if defect else ("false_alarm" if rng.random() < 0.9 else "unsure")
                elif defect and not flagged and rng.random() < 0.5:
                    fb = "defect_confirmed"  # a miss an operator caught
            k = n % len(heat_ids)
            batch.append({
                "frame_id": f"{cam}-{n:09d}", "line_id": line, "camera_id": cam, "station": "st-1", "seq": n,
                "part_id": f"P{n:09d}", "product": "bottle", "captured_at": at,
                "inferred_at": at + timedelta(milliseconds=35), "stored_at": at + timedelta(milliseconds=300),
                "score": score, "threshold": 0.5, "is_anomalous": flagged,
                "model_version": "ear-fader-v3" if at < now - timedelta(days=3) else "ear-fader-v4",
                "frame_width": 320, "frame_height": 240, "heatmap_max": max(score * 1.2, 0.01),
                "heatmap_image_id": heat_ids[k] if flagged else None,
                "frame_image_id": frame_ids[k] if flagged else None,
                "frame_reason": "flagged" if flagged else None, "current_feedback": fb,
            })
            if fb is not None:
                feedback_rows.append({"n": n, "label": fb, "at": at + timedelta(minutes=rng.randint(5, 600))})
            if len(batch) >= chunk:
                conn.execute(insert(Inspection), batch)
                inserted += len(batch)
                batch.clear()
        if batch:
            conn.execute(insert(Inspection), batch)
            inserted += len(batch)
        from sqlalchemy import func, select
        base_id = conn.execute(select(func.min(Inspection.id))).scalar_one()
        fb_batch = [{"inspection_id": base_id + f["n"], "label": f["label"], "username": "bench-operator",
                     "created_at": f["at"], "comment": None} for f in feedback_rows]
        for i in range(0, len(fb_batch), chunk):
            conn.execute(insert(Feedback), fb_batch[i:i + chunk])
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
            conn.commit()
    else:
        with engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
            conn.commit()
    took = time.perf_counter() - t0
    engine.dispose()
    return {"rows": inserted, "feedback": len(feedback_rows), "seconds": round(took, 1),
            "url": settings.url, "data_dir": str(settings.data_dir)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--days", type=float, default=14.0)
    p.add_argument("--data-dir", type=Path, default=Path("var/bench"))
    p.add_argument("--database-url", default=None, help="default: SQLite under --data-dir")
    a = p.parse_args(argv)
    print(seed(a.database_url, a.data_dir, a.rows, a.days))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
