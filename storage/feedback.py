"""Operator feedback on inspections: append-only history, newest row is the current decision.

:func:`add_feedback` inserts a row and updates ``inspections.current_feedback`` in the same
transaction, so "current label" filters are one indexed column; the history stays in
``feedback`` (nothing is ever overwritten).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from .models import FEEDBACK_LABELS, Feedback, Inspection, utcnow


def add_feedback(
    session: Session,
    inspection_id: int,
    label: str,
    username: str,
    comment: str | None = None,
    at: datetime | None = None,
) -> Feedback:
    """Record a decision (``defect_confirmed``, ``false_alarm`` or ``unsure``); caller commits."""
    if label not in FEEDBACK_LABELS:
        raise ValueError(f"label must be one of {', '.join(FEEDBACK_LABELS)}, got {label!r}")
    if not username:
        raise ValueError("feedback needs the user who gave it")
    if session.get(Inspection, inspection_id) is None:
        raise LookupError(f"no inspection with id {inspection_id}")
    row = Feedback(
        inspection_id=inspection_id, label=label, username=username,
        comment=(comment or None), created_at=at or utcnow(),
    )
    session.add(row)
    session.flush()
    latest = current_feedback(session, inspection_id)
    session.execute(
        update(Inspection).where(Inspection.id == inspection_id)
        .values(current_feedback=latest.label if latest else None)
    )
    return row


def current_feedback(session: Session, inspection_id: int) -> Feedback | None:
    """The newest feedback row (by time, then id), or None."""
    return session.scalars(
        select(Feedback).where(Feedback.inspection_id == inspection_id)
        .order_by(Feedback.created_at.desc(), Feedback.id.desc()).limit(1)
    ).first()


def feedback_history(session: Session, inspection_id: int) -> list[Feedback]:
    """All decisions on an inspection, oldest first."""
    return list(session.scalars(
        select(Feedback).where(Feedback.inspection_id == inspection_id)
        .order_by(Feedback.created_at, Feedback.id)
    ))
