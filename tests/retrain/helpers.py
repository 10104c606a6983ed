"""Stored captures for the retraining tests, written through storage's real write path."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Literal

import cv2
import numpy as np

from detector.messages import InspectionResult

T0 = datetime(2026, 11, 23, 8, 0, 0, tzinfo=timezone.utc)
_BLANK_PNG = cv2.imencode(".png", np.zeros((8, 8), np.uint8))[1].tobytes()


def part_image(i: int, *, seed: int = 1, defect: str | None = None, size: int = 64) -> np.ndarray:
    """Simulated part ``i`` (BGR, as OpenCV writes it)."""
    from ingest.simulator import LineSimulator

    return LineSimulator(seed=seed, width=size, height=size).render(i, defect=defect)


def capture(i: int, *, kind: Literal["sampled", "flagged", "plain"] = "sampled", score: float = 0.1,
            threshold: float = 0.5, product: str = "flange", at: datetime | None = None,
            image: np.ndarray | None = None, seed: int = 1, defect: str | None = None,
            camera: str = "cam-1") -> InspectionResult:
    """One detector result; ``sampled``/``flagged`` ones carry the frame (a simulated part, PNG)."""
    at = at or T0 + timedelta(seconds=i)
    frame = None
    if kind != "plain":
        img = part_image(i, seed=seed, defect=defect) if image is None else image
        frame = cv2.imencode(".png", img)[1].tobytes()
    return InspectionResult(
        frame_id=f"{product}-{camera}-{seed}-{i:06d}", line="line-1", station="st-1", camera_id=camera, seq=i,
        part_id=f"P{seed}-{i:06d}", product=product, captured_at=at, inferred_at=at + timedelta(milliseconds=30),
        score=score, threshold=threshold, is_anomalous=kind == "flagged", model_version="v0",
        frame_width=64, frame_height=64, heatmap_png=_BLANK_PNG, heatmap_max=1.0,
        frame_image=frame, frame_content_type="image/png" if frame else None,
        frame_reason=None if kind == "plain" else kind,
    )


def store(db, results: list[InspectionResult]) -> dict[str, int]:
    """Store results like the writer does -> {frame_id: inspection id}."""
    from sqlalchemy import select

    from storage.models import Inspection
    from storage.results import store_results

    store_results(db.engine, db.blobs, results)
    with db.engine.connect() as c:
        return dict(c.execute(select(Inspection.frame_id, Inspection.id)).all())


def label(db, inspection_id: int, *labels: str, user: str = "op") -> None:
    """Operator decisions in order (the newest counts)."""
    from storage.db import write_session
    from storage.feedback import add_feedback

    for k, lab in enumerate(labels):
        with write_session(db.engine) as s:
            add_feedback(s, inspection_id, lab, user, at=datetime.now(timezone.utc) + timedelta(milliseconds=k))


def detector_cli() -> list[str]:
    """``linewatch-detector`` as installed (its entry points bring the registry commands)."""
    from tests.pipeline.harness import cli

    return cli("linewatch-detector", "detector.cli")


def underexposed(rgb: np.ndarray) -> np.ndarray:
    """A camera whose lighting failed: nearly black frames.  A candidate trained on them learns that
    almost no detail is normal, so its calibrated threshold is far below real parts' scores."""
    return (rgb.astype(np.float32) * 0.08).astype(np.uint8)


def _dark_blob(rgb: np.ndarray, key: int) -> np.ndarray:
    out = rgb.copy()
    rng = np.random.default_rng(key)
    h, w = out.shape[:2]
    cx, cy = int(rng.uniform(0.38, 0.62) * w), int(rng.uniform(0.38, 0.62) * h)
    cv2.circle(out, (cx, cy), max(2, w // 7), (10, 10, 10), -1)
    return out


def blotched_part(i: int, *, seed: int = 2) -> np.ndarray:
    """A part with a large dark blotch on its face: a defect even the tiny test model scores high."""
    return _dark_blob(part_image(i, seed=seed), i)


def contaminated(rgb: np.ndarray) -> np.ndarray:
    """Training data that let blotched parts through as normal: a candidate trained on them learns the
    blotch as normal, calibrates its threshold above it, and misses the defects it used to catch."""
    return _dark_blob(rgb, int(rgb.sum()) % 10007)
