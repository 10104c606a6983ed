"""Per-camera threshold overrides, with their history.

The dashboard's Thresholds page calls :func:`set_camera_threshold`; detectors call
:func:`camera_thresholds` (or watch :func:`thresholds_revision`, one cheap query) between
batches to pick changes up.  ``None`` means "use the model's own calibrated threshold".

Detector services cannot read the database (data flows detector -> storage): once a change is
committed, :func:`set_camera_threshold` also rewrites ``thresholds.json`` in the model store
(:mod:`detector.model_store`, ``LINEWATCH_MODEL_STORE_DIR``) from the database, which the
services watch; :func:`publish_thresholds` does the same on demand.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime

from filelock import FileLock
from sqlalchemy import Engine, event, func, select
from sqlalchemy.orm import Session

from detector.model_store import THRESHOLDS, ModelStore

from .models import Camera, CameraThresholdChange, utcnow
from .settings import StorageSettings

log = logging.getLogger(__name__)


def set_camera_threshold(
    session: Session, camera_id: str, threshold: float | None, changed_by: str, reason: str | None = None,
    store: ModelStore | None = None,
) -> CameraThresholdChange:
    """Set (or clear, with ``None``) a camera's threshold override and record the change; caller commits.

    After the commit, ``thresholds.json`` in ``store`` (default: the configured model store) is
    rewritten from the database.
    """
    if threshold is not None and not (math.isfinite(threshold) and threshold >= 0):
        raise ValueError("threshold must be a finite number >= 0")
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
    engine = session.get_bind()
    event.listen(session, "after_commit", lambda _s: _publish_after_commit(engine, store), once=True)
    return change


def _publish_after_commit(engine: Engine, store: ModelStore | None) -> None:
    try:
        publish_thresholds(engine, store)
    except Exception:  # noqa: BLE001 - the change is committed; the next save or publish repairs the file
        log.exception("threshold change committed but thresholds.json could not be written")


def publish_thresholds(engine: Engine, store: ModelStore | None = None) -> dict[str, float]:
    """Write every camera override from the database to the model store's ``thresholds.json``.

    Read and write happen under a file lock, so two dashboards saving at once cannot leave the
    file with the older of the two states.
    """
    if store is None:
        store = ModelStore(StorageSettings().model_store_dir)
    store.root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(store.root / f".{THRESHOLDS}.lock"), timeout=60):
        with Session(engine) as s:
            values = {k: v for k, v in camera_thresholds(s).items() if v is not None}
        store.write_thresholds(values)
    return values


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
