"""Per-camera threshold overrides, with their history.

The dashboard's Thresholds page calls :func:`set_camera_threshold`; detectors call
:func:`camera_thresholds` (or watch :func:`thresholds_revision`, one cheap query) between
batches to pick changes up.  ``None`` means "use the model's own calibrated threshold".
"""

from __future__ import annotations

import math
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .models import Camera, CameraThresholdChange, utcnow


def set_camera_threshold(
    session: Session, camera_id: str, threshold: float | None, changed_by: str, reason: str | None = None,
) -> CameraThresholdChange:
    """Set (or clear, with ``None``) a camera's threshold override and record the change; caller commits."""
    if threshold is not None and not math.isfinite(threshold):
        raise ValueError("threshold must be a finite number")
    if not changed_by:
        raise ValueError("a threshold change needs the user who made it")
    camera = session.get(Camera, camera_id, with_for_update=True)
    if camera is None:
        raise LookupError(f"no camera {camera_id!r}")
    now = utcnow()
    change = CameraThresholdChange(
        camera_id=camera_id, old_threshold=camera.threshold_override, new_threshold=threshold,
        changed_by=changed_by, changed_at=now, reason=reason or None,
    )
    camera.threshold_override = threshold
    camera.threshold_updated_at = now
    session.add(change)
    session.flush()
    return change


def camera_thresholds(session: Session) -> dict[str, float | None]:
    """``{camera_id: override or None}`` for every known camera."""
    return dict(session.execute(select(Camera.id, Camera.threshold_override)).all())


def thresholds_revision(session: Session) -> datetime | None:
    """Time of the latest threshold change anywhere: poll this, reload when it moves."""
    return session.scalar(select(func.max(Camera.threshold_updated_at)))


def threshold_history(session: Session, camera_id: str) -> list[CameraThresholdChange]:
    return list(session.scalars(
        select(CameraThresholdChange).where(CameraThresholdChange.camera_id == camera_id)
        .order_by(CameraThresholdChange.changed_at, CameraThresholdChange.id)
    ))
