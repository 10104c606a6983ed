"""Review page: the queue of flagged parts (newest first) and the operator's decisions.

Queues (``mode``):

``pending``  flagged (``is_anomalous``) and not reviewed yet — the operator's work list;
``flagged``  every flagged part, reviewed or not (to revisit or change a decision);
``reviewed`` every part with a decision (including parts the detector passed that an
             operator marked).

Walking a queue is keyset pagination on ``(captured_at, id)``: :func:`queue_item` returns the
newest item strictly older than a cursor, so new parts arriving at the top never shift the
operator's position, and each step is one indexed ``LIMIT 1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session, aliased

from storage.feedback import add_feedback, feedback_history
from storage.models import Feedback, Image, Inspection

from .common import as_utc

QUEUE_MODES = ("pending", "flagged", "reviewed")


@dataclass(frozen=True)
class InspectionView:
    id: int
    frame_id: str
    line_id: str
    camera_id: str
    station: str | None
    part_id: str | None
    product: str | None
    captured_at: datetime
    score: float
    threshold: float
    is_anomalous: bool
    model_version: str
    heatmap_max: float | None
    current_feedback: str | None
    heatmap_key: str | None
    frame_key: str | None
    frame_content_type: str | None

    @property
    def cursor(self) -> tuple[datetime, int]:
        return (self.captured_at, self.id)


@dataclass(frozen=True)
class FeedbackView:
    id: int
    label: str
    username: str
    created_at: datetime
    comment: str | None


_heat = aliased(Image, name="heat")
_frame = aliased(Image, name="frame")

_VIEW_COLUMNS = (
    Inspection.id, Inspection.frame_id, Inspection.line_id, Inspection.camera_id, Inspection.station,
    Inspection.part_id, Inspection.product, Inspection.captured_at, Inspection.score, Inspection.threshold,
    Inspection.is_anomalous, Inspection.model_version, Inspection.heatmap_max, Inspection.current_feedback,
    _heat.blob_key, _frame.blob_key, _frame.content_type,
)


def _view_select():
    return (
        select(*_VIEW_COLUMNS)
        .outerjoin(_heat, _heat.id == Inspection.heatmap_image_id)
        .outerjoin(_frame, _frame.id == Inspection.frame_image_id)
    )


def _queue_filter(mode: str):
    if mode == "pending":
        return and_(Inspection.is_anomalous.is_(True), Inspection.current_feedback.is_(None))
    if mode == "flagged":
        return Inspection.is_anomalous.is_(True)
    if mode == "reviewed":
        return Inspection.current_feedback.is_not(None)
    raise ValueError(f"queue mode must be one of {', '.join(QUEUE_MODES)}, got {mode!r}")


def _camera_filter(stmt, cameras: tuple[str, ...] | list[str] | None):
    if cameras:
        stmt = stmt.where(Inspection.camera_id.in_(list(cameras)))
    return stmt


def queue_count(session: Session, mode: str = "pending", cameras: list[str] | None = None) -> int:
    stmt = _camera_filter(select(func.count()).select_from(Inspection).where(_queue_filter(mode)), cameras)
    return int(session.scalar(stmt) or 0)


def queue_item(
    session: Session,
    mode: str = "pending",
    before: tuple[datetime, int] | None = None,
    cameras: list[str] | None = None,
) -> InspectionView | None:
    """The newest item of the queue, or the newest one strictly older than ``before``."""
    stmt = _camera_filter(_view_select().where(_queue_filter(mode)), cameras)
    if before is not None:
        at, ident = as_utc(before[0]), int(before[1])
        stmt = stmt.where(
            Inspection.captured_at <= at,
            or_(Inspection.captured_at < at, Inspection.id < ident),
        )
    stmt = stmt.order_by(Inspection.captured_at.desc(), Inspection.id.desc()).limit(1)
    row = session.execute(stmt).first()
    return InspectionView(*row) if row is not None else None


def get_inspection(session: Session, inspection_id: int) -> InspectionView | None:
    row = session.execute(_view_select().where(Inspection.id == int(inspection_id))).first()
    return InspectionView(*row) if row is not None else None


def history_of(session: Session, inspection_id: int) -> list[FeedbackView]:
    """Every decision on the inspection, oldest first."""
    return [FeedbackView(f.id, f.label, f.username, f.created_at, f.comment)
            for f in feedback_history(session, inspection_id)]


def decide(session: Session, inspection_id: int, label: str, username: str, comment: str | None = None) -> Feedback:
    """Record a decision (appends to the history, updates the current label); caller commits."""
    return add_feedback(session, inspection_id, label, username, comment=(comment or "").strip() or None)
