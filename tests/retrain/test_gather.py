"""What the retraining job trains on: the gathering rules, de-duplication, the minimum count."""

from __future__ import annotations

import json
from datetime import timedelta

import cv2
import numpy as np
import pytest
from sqlalchemy.orm import Session

from storage.retrain import RetrainSettings, dedup, gather, in_holdout, phash, Capture
from tests.retrain.helpers import T0, capture, label, part_image, store


def test_gathering_rules(storage_db):
    rs = RetrainSettings(holdout_fraction=0.2, low_score_ratio=0.8)
    results = [
        capture(0, kind="sampled", score=0.10),                # low-scored sampled normal: in
        capture(1, kind="sampled", score=0.45),                # sampled but borderline (> 0.8 x 0.5): out
        capture(2, kind="flagged", score=0.90),                # flagged, operator: false alarm -> in
        capture(3, kind="flagged", score=0.95, defect="spot"),  # flagged, confirmed defect: holdout defect only
        capture(4, kind="sampled", score=0.10),                # sampled, operator unsure: out
        capture(5, kind="flagged", score=0.90),                # false alarm, later corrected to defect: out
        capture(6, kind="flagged", score=0.90),                # defect, later corrected to false alarm: in
        capture(7, kind="plain", score=0.10),                  # no frame image: cannot train on it
        capture(8, kind="sampled", score=0.10, product="bottle"),  # other product: out
        capture(9, kind="sampled", score=0.10, at=T0 - timedelta(days=2)),  # before the window: out
        capture(10, kind="flagged", score=0.9, at=T0 - timedelta(days=30), defect="crack"),  # old defect: holdout
        capture(11, kind="flagged", score=0.90),               # flagged without feedback: out
    ]
    ids = store(storage_db, results)
    fid = {i: r.frame_id for i, r in enumerate(results)}
    label(storage_db, ids[fid[2]], "false_alarm")
    label(storage_db, ids[fid[3]], "defect_confirmed")
    label(storage_db, ids[fid[4]], "unsure")
    label(storage_db, ids[fid[5]], "false_alarm", "defect_confirmed")
    label(storage_db, ids[fid[6]], "defect_confirmed", "false_alarm")
    label(storage_db, ids[fid[10]], "defect_confirmed")

    with Session(storage_db.engine) as s:
        g = gather(s, storage_db.blobs, "flange", T0 - timedelta(hours=1), T0 + timedelta(hours=1), rs,
                   progress=False)
    normal = {c.frame_id for c in g.train + g.holdout_normal}
    assert normal == {fid[0], fid[2], fid[6]}
    assert {c.frame_id for c in g.holdout_defect} == {fid[3], fid[5], fid[10]}
    assert {c.frame_id for c in g.holdout_normal} == {f for f in normal if in_holdout(f, 0.2)}
    assert not {c.frame_id for c in g.train} & {c.frame_id for c in g.holdout_normal}
    assert g.counts["false_alarms"] == 2 and g.counts["sampled_normals"] == 1
    assert all(c.rgb is not None and c.rgb.shape == (64, 64, 3) for c in g.train + g.holdout_defect)

    with Session(storage_db.engine) as s:  # no lower bound: everything of the product so far
        g_all = gather(s, storage_db.blobs, "flange", None, T0 + timedelta(hours=1), rs, progress=False)
    assert fid[9] in {c.frame_id for c in g_all.train + g_all.holdout_normal}


def _cap(i: int, rgb: np.ndarray) -> Capture:
    return Capture(i, f"f{i}", T0, "sampled", f"k{i}", "image/png", "0" * 64, 0.1, rgb)


def test_dedup_drops_recaptures_keeps_distinct_parts():
    a = part_image(0, size=256)[..., ::-1].copy()
    noisy = np.clip(a.astype(int) + np.random.default_rng(0).integers(-3, 4, a.shape), 0, 255).astype(np.uint8)
    jpeg = cv2.cvtColor(cv2.imdecode(cv2.imencode(".jpg", a[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 80])[1], 1),
                        cv2.COLOR_BGR2RGB)
    others = [part_image(i, size=256)[..., ::-1].copy() for i in range(1, 21)]
    assert phash(a) == phash(a.copy())
    caps = [_cap(0, a), _cap(1, a.copy()), _cap(2, noisy), _cap(3, jpeg)] + [_cap(10 + i, o) for i, o in enumerate(others)]
    kept, removed = dedup(caps, max_distance=10, max_diff=2.0)
    assert [k.inspection_id for k in kept] == [0] + list(range(10, 30)) and removed == 3
    # the hash alone would merge different good parts: they all look alike
    kept_hash_only, _ = dedup(caps, max_distance=10, max_diff=255.0)
    assert len(kept_hash_only) < 10
    kept, removed = dedup([_cap(0, a), _cap(1, a.copy())], max_distance=0, max_diff=0.0)
    assert removed == 1, "identical images are duplicates even at distance 0"


def test_too_few_images_refuses_with_a_clear_message(sqlite_db, tiny_checkpoint, monkeypatch, capsys):
    from detector.cli import main

    store(sqlite_db, [capture(i, kind="sampled", score=0.05) for i in range(6)])
    for k in ("LINEWATCH_DATABASE_URL", "LINEWATCH_DATA_DIR"):
        monkeypatch.setenv(k, sqlite_db.env[k])
    monkeypatch.setenv("LINEWATCH_RETRAIN_MIN_IMAGES", "20")
    assert main(["register", "--product", "flange", "--checkpoint", str(tiny_checkpoint)]) == 0
    capsys.readouterr()
    assert main(["retrain", "--product", "flange", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("linewatch-detector: error: only ") and "at least 20 are needed" in err, err
    assert main(["models", "--product", "flange", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [m["status"] for m in rows] == ["active"], "nothing registered by the refusal"
