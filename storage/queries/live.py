"""Live page: anomaly rates per line and camera over a window, rates over time, model versions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from storage.models import Camera, Inspection

from .common import as_utc, dialect_of, time_bucket

_FLAGGED = func.sum(case((Inspection.is_anomalous, 1), else_=0))


class _AnomalyRate:
    inspected: int
    flagged: int

    @property
    def rate(self) -> float | None:
        return self.flagged / self.inspected if self.inspected else None


@dataclass(frozen=True)
class CameraCounts(_AnomalyRate):
    line_id: str
    camera_id: str
    inspected: int
    flagged: int


@dataclass(frozen=True)
class SeriesPoint(_AnomalyRate):
    bucket_start: datetime
    line_id: str
    camera_id: str
    inspected: int
    flagged: int


def _camera_lines(session: Session) -> list[tuple[str, str]]:
    return [(line, cam) for cam, line in session.execute(
        select(Camera.id, Camera.line_id).order_by(Camera.line_id, Camera.id))]


def camera_counts(session: Session, since: datetime, until: datetime | None = None) -> list[CameraCounts]:
    """Inspected and flagged parts per (line, camera) captured in ``[since, until)``.

    One small aggregate per camera, each a range scan of the covering index
    ``ix_inspections_camera_scores`` (camera_id, captured_at, ...): no table rows are read and
    no sort is needed, so a 7-day window over a million rows stays in the tens of milliseconds
    (a single GROUP BY over the time range makes SQLite's planner sort every row of the window).
    """
    out = []
    for line, cam in _camera_lines(session):
        stmt = select(func.count(), _FLAGGED).where(
            Inspection.camera_id == cam, Inspection.captured_at >= as_utc(since))
        if until is not None:
            stmt = stmt.where(Inspection.captured_at < as_utc(until))
        n, f = session.execute(stmt).one()
        if n:
            out.append(CameraCounts(line, cam, int(n), int(f or 0)))
    return out


def rate_series(session: Session, since: datetime, until: datetime, bucket_seconds: int) -> list[SeriesPoint]:
    """Counts per camera per ``bucket_seconds`` bucket in ``[since, until)`` (empty buckets omitted).

    Per camera, one GROUP BY over the (camera_id, captured_at) range of the covering index.
    """
    since, until = as_utc(since), as_utc(until)
    bucket = time_bucket(dialect_of(session), since, bucket_seconds).label("bucket")
    out = []
    for line, cam in _camera_lines(session):
        stmt = (
            select(bucket, func.count(), _FLAGGED)
            .where(Inspection.camera_id == cam, Inspection.captured_at >= since, Inspection.captured_at < until)
            .group_by(bucket)
        )
        out.extend(SeriesPoint(since + timedelta(seconds=int(b) * bucket_seconds), line, cam, int(n), int(f or 0))
                   for b, n, f in session.execute(stmt))
    out.sort(key=lambda p: (p.bucket_start, p.line_id, p.camera_id))
    return out


def latest_model_versions(session: Session) -> dict[str, tuple[str, datetime]]:
    """``{camera_id: (model_version, captured_at)}`` of each camera's newest inspection.

    One ``ORDER BY captured_at DESC LIMIT 1`` per camera on ``(camera_id, captured_at)``.
    """
    out: dict[str, tuple[str, datetime]] = {}
    for cam in session.scalars(select(Camera.id).order_by(Camera.id)):
        row = session.execute(
            select(Inspection.model_version, Inspection.captured_at)
            .where(Inspection.camera_id == cam)
            .order_by(Inspection.captured_at.desc()).limit(1)
        ).first()
        if row is not None:
            out[cam] = (row[0], row[1])
    return out


def cameras(session: Session) -> list[tuple[str, str]]:
    """``[(line_id, camera_id)]`` of every known camera."""
    return _camera_lines(session)


def lines(session: Session) -> list[str]:
    from storage.models import Line

    return list(session.scalars(select(Line.id).order_by(Line.id)))


def newest_capture(session: Session) -> datetime | None:
    return session.scalar(select(func.max(Inspection.captured_at)))
