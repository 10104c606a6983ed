"""Builders for :class:`detector.messages.InspectionResult` test data (used by several test files)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import cv2
import numpy as np

from detector.messages import InspectionResult

T0 = datetime(2026, 11, 23, 12, 0, 0, tzinfo=timezone.utc)


def png(w: int = 16, h: int = 12, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    ok, buf = cv2.imencode(".png", rng.integers(0, 255, (h, w), dtype=np.uint8))
    assert ok
    return buf.tobytes()


def jpeg(w: int = 32, h: int = 24, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    ok, buf = cv2.imencode(".jpg", rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    assert ok
    return buf.tobytes()


def make_result(
    i: int,
    *,
    camera: str = "cam-1",
    line: str = "line-1",
    anomalous: bool = False,
    frame: str | None = None,  # None | "flagged" | "sampled"
    captured_at: datetime | None = None,
    prefix: str = "f",
    model_version: str = "m-1",
    product: str | None = "bottle",
) -> InspectionResult:
    captured = captured_at or (T0 + timedelta(seconds=i))
    if frame is None and anomalous:
        frame = "flagged"
    score = 0.9 if anomalous else 0.1 + (i % 7) / 100
    return InspectionResult(
        frame_id=f"{prefix}-{camera}-{i:06d}",
        line=line,
        station="st-1",
        camera_id=camera,
        seq=i,
        part_id=f"part-{i}",
        product=product,
        captured_at=captured,
        inferred_at=captured + timedelta(milliseconds=40),
        score=score,
        threshold=0.5,
        is_anomalous=anomalous,
        model_version=model_version,
        frame_width=32,
        frame_height=24,
        heatmap_png=png(seed=i),
        heatmap_max=1.5,
        frame_image=jpeg(seed=i) if frame else None,
        frame_content_type="image/jpeg" if frame else None,
        frame_reason=frame,
    )
