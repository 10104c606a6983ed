"""History page: filtered, paginated inspection search and CSV export.

Filters: lines, cameras, capture time range, verdict (``flagged`` / ``normal``) and
feedback (``none``, ``any``, or one label).  Rows come newest first, ``LIMIT``/``OFFSET``
on the time-ordered indexes; the CSV export streams rows in chunks (keyset on
``(captured_at, id)``) and is capped, so it never holds the table in memory.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from storage.models import FEEDBACK_LABELS, Inspection

from .common import as_utc, csv_text

VERDICTS = ("all", "flagged", "normal")
FEEDBACK_FILTERS = ("all", "none", "any", *FEEDBACK_LABELS)

CSV_COLUMNS = (
    "id", "frame_id", "captured_at", "line_id", "camera_id", "station", "part_id", "product",
    "score", "threshold", "is_anomalous", "current_feedback", "model_version",
)
_COLUMNS = tuple(getattr(Inspection, c) for c in CSV_COLUMNS)


@dataclass(frozen=True)
class HistoryFilter:
    lines: tuple[str, ...] = ()
    cameras: tuple[str, ...] = ()
    start: datetime | None = None
    end: datetime | None = None  # exclusive
    verdict: str = "all"
    feedback: str = "all"

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}")
        if self.feedback not in FEEDBACK_FILTERS:
            raise ValueError(f"feedback must be one of {FEEDBACK_FILTERS}")


def _apply(stmt, f: HistoryFilter):
    if f.lines:
        stmt = stmt.where(Inspection.line_id.in_(list(f.lines)))
    if f.cameras:
        stmt = stmt.where(Inspection.camera_id.in_(list(f.cameras)))
    if f.start is not None:
        stmt = stmt.where(Inspection.captured_at >= as_utc(f.start))
    if f.end is not None:
        stmt = stmt.where(Inspection.captured_at < as_utc(f.end))
    if f.verdict == "flagged":
        stmt = stmt.where(Inspection.is_anomalous.is_(True))
    elif f.verdict == "normal":
        stmt = stmt.where(Inspection.is_anomalous.is_(False))
    if f.feedback == "none":
        stmt = stmt.where(Inspection.current_feedback.is_(None))
    elif f.feedback == "any":
        stmt = stmt.where(Inspection.current_feedback.is_not(None))
    elif f.feedback != "all":
        stmt = stmt.where(Inspection.current_feedback == f.feedback)
    return stmt


def history_count(session: Session, f: HistoryFilter) -> int:
    return int(session.scalar(_apply(select(func.count()).select_from(Inspection), f)) or 0)


def history_page(session: Session, f: HistoryFilter, limit: int = 50, offset: int = 0) -> list[dict]:
    """One page of matching inspections, newest first, as dicts keyed by :data:`CSV_COLUMNS`."""
    stmt = (
        _apply(select(*_COLUMNS), f)
        .order_by(Inspection.captured_at.desc(), Inspection.id.desc())
        .limit(int(limit)).offset(int(offset))
    )
    return [dict(zip(CSV_COLUMNS, row)) for row in session.execute(stmt)]


def iter_rows(session: Session, f: HistoryFilter, max_rows: int | None = None, chunk: int = 5000) -> Iterator[tuple]:
    """Matching rows newest first, fetched ``chunk`` at a time (keyset), at most ``max_rows``."""
    cursor: tuple[datetime, int] | None = None
    sent = 0
    while max_rows is None or sent < max_rows:
        n = chunk if max_rows is None else min(chunk, max_rows - sent)
        stmt = _apply(select(*_COLUMNS), f)
        if cursor is not None:
            stmt = stmt.where(Inspection.captured_at <= cursor[0],
                              or_(Inspection.captured_at < cursor[0], Inspection.id < cursor[1]))
        rows = session.execute(
            stmt.order_by(Inspection.captured_at.desc(), Inspection.id.desc()).limit(n)
        ).all()
        if not rows:
            return
        for row in rows:
            yield tuple(row)
        sent += len(rows)
        last = rows[-1]
        cursor = (last[2], last[0])
        if len(rows) < n:
            return


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return as_utc(value).isoformat()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return csv_text(value)
    return str(value)


def history_csv(session: Session, f: HistoryFilter, max_rows: int | None = 100_000) -> bytes:
    """CSV (UTF-8, header row) of the matching rows, newest first, at most ``max_rows``."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for row in iter_rows(session, f, max_rows=max_rows):
        w.writerow([_fmt(v) for v in row])
    return buf.getvalue().encode("utf-8")
