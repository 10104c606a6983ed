"""Thresholds page: per-camera score distributions and the error rates a threshold gives.

Ground truth comes from operator feedback:

* **defect** — the current decision is ``defect_confirmed`` (flagged or not);
* **normal** — the current decision is ``false_alarm``, or the part was not flagged and
  nobody marked it (the best label there is for the bulk of the parts);
* left out — flagged parts not reviewed yet, and ``unsure`` decisions (counted, shown).

For a threshold ``t`` (a part is flagged when ``score >= t``): false-alarm rate = normal
parts with ``score >= t`` / normal parts; miss rate = defects with ``score < t`` / defects.
All of it is aggregate SQL over the covering index ``ix_inspections_camera_scores``
(camera, captured_at, score, verdict, feedback).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Float, Integer, and_, case, cast, func, literal, or_, select
from sqlalchemy.orm import Session

from storage.models import Camera, Inspection

from .common import as_utc, dialect_of

NORMAL = "normal"
DEFECT = "defect"

_is_defect = Inspection.current_feedback == "defect_confirmed"
_is_normal = or_(
    Inspection.current_feedback == "false_alarm",
    and_(Inspection.current_feedback.is_(None), Inspection.is_anomalous.is_(False)),
)
_klass = case((_is_defect, literal(DEFECT)), (_is_normal, literal(NORMAL)), else_=literal(None))


@dataclass(frozen=True)
class ThresholdRates:
    threshold: float
    normal: int
    defects: int
    false_alarms: int  # normal parts at or above the threshold
    misses: int  # defects below the threshold

    @property
    def false_alarm_rate(self) -> float | None:
        return self.false_alarms / self.normal if self.normal else None

    @property
    def miss_rate(self) -> float | None:
        return self.misses / self.defects if self.defects else None


@dataclass(frozen=True)
class Histogram:
    lo: float
    hi: float
    bins: int
    normal: list[int]
    defect: list[int]
    excluded_unreviewed: int
    excluded_unsure: int

    @property
    def width(self) -> float:
        return (self.hi - self.lo) / self.bins if self.bins else 0.0

    def edges(self) -> list[float]:
        return [self.lo + i * self.width for i in range(self.bins + 1)]


@dataclass(frozen=True)
class CameraThreshold:
    camera_id: str
    override: float | None  # set in the dashboard; None = the model's own
    model_threshold: float | None  # threshold on the newest inspection (what the detector used)
    updated_at: datetime | None

    @property
    def effective(self) -> float | None:
        return self.override if self.override is not None else self.model_threshold


def _window(stmt, camera_id: str, since: datetime | None, until: datetime | None):
    stmt = stmt.where(Inspection.camera_id == camera_id)
    if since is not None:
        stmt = stmt.where(Inspection.captured_at >= as_utc(since))
    if until is not None:
        stmt = stmt.where(Inspection.captured_at < as_utc(until))
    return stmt


def camera_threshold(session: Session, camera_id: str) -> CameraThreshold | None:
    cam = session.get(Camera, camera_id)
    if cam is None:
        return None
    model_t = session.scalar(
        select(Inspection.threshold).where(Inspection.camera_id == camera_id)
        .order_by(Inspection.captured_at.desc()).limit(1)
    )
    return CameraThreshold(camera_id, cam.threshold_override, model_t, cam.threshold_updated_at)


def rates(
    session: Session, camera_id: str, thresholds: list[float],
    since: datetime | None = None, until: datetime | None = None,
) -> list[ThresholdRates]:
    """False alarms and misses each threshold in ``thresholds`` would have given (one query)."""
    sub = _window(select(_klass.label("k"), Inspection.score), camera_id, since, until).subquery()
    cols = [func.count()]
    for t in thresholds:
        cols.append(func.sum(case((sub.c.score >= float(t), 1), else_=0)))
    stmt = select(sub.c.k, *cols).where(sub.c.k.is_not(None)).group_by(sub.c.k)
    by_class = {row[0]: row[1:] for row in session.execute(stmt)}
    normal = by_class.get(NORMAL, (0,) + (0,) * len(thresholds))
    defect = by_class.get(DEFECT, (0,) + (0,) * len(thresholds))
    out = []
    for i, t in enumerate(thresholds):
        out.append(ThresholdRates(
            threshold=float(t), normal=int(normal[0]), defects=int(defect[0]),
            false_alarms=int(normal[i + 1] or 0), misses=int(defect[0]) - int(defect[i + 1] or 0),
        ))
    return out


def score_histogram(
    session: Session, camera_id: str, bins: int = 40,
    since: datetime | None = None, until: datetime | None = None,
) -> Histogram | None:
    """Score histogram of normal parts and of confirmed defects on one camera.

    Two passes over the camera's range of the covering index: the score range and the left-out
    counts, then the bin counts.
    """
    sub = _window(
        select(_klass.label("k"), Inspection.score, Inspection.current_feedback), camera_id, since, until,
    ).subquery()
    lo, hi, unreviewed, unsure = session.execute(
        select(
            func.min(case((sub.c.k.is_not(None), sub.c.score))),
            func.max(case((sub.c.k.is_not(None), sub.c.score))),
            func.sum(case((and_(sub.c.k.is_(None), sub.c.current_feedback.is_(None)), 1), else_=0)),
            func.sum(case((sub.c.current_feedback == "unsure", 1), else_=0)),
        )
    ).one()
    if lo is None:
        return None
    return _bins(session, camera_id, bins, float(lo), float(hi), int(unreviewed or 0), int(unsure or 0), since, until)


def _bins(session: Session, camera_id: str, bins: int, lo: float, hi: float, unreviewed: int, unsure: int,
          since: datetime | None, until: datetime | None) -> Histogram:
    if hi <= lo:
        hi = lo + 1e-6
    width = (hi - lo) / bins
    sub = _window(select(_klass.label("k"), Inspection.score), camera_id, since, until).subquery()
    raw = cast((sub.c.score - lo) / width, Float)
    # raw >= 0; SQLite's CAST truncates, PostgreSQL's rounds (so floor() there)
    whole = cast(raw, Integer) if dialect_of(session) == "sqlite" else cast(func.floor(raw), Integer)
    b = case((raw >= bins, bins - 1), else_=whole).label("b")
    stmt = select(sub.c.k, b, func.count()).where(sub.c.k.is_not(None)).group_by(sub.c.k, b)
    normal, defect = [0] * bins, [0] * bins
    for k, idx, n in session.execute(stmt):
        i = min(max(int(idx), 0), bins - 1)
        (defect if k == DEFECT else normal)[i] += int(n)
    return Histogram(lo, hi, bins, normal, defect, unreviewed, unsure)


def distribution(
    session: Session, camera_id: str, thresholds: list[float], bins: int = 40,
    since: datetime | None = None, until: datetime | None = None,
) -> tuple[Histogram | None, list[ThresholdRates]]:
    """:func:`score_histogram` and :func:`rates` together in two passes instead of three."""
    sub = _window(
        select(_klass.label("k"), Inspection.score, Inspection.current_feedback), camera_id, since, until,
    ).subquery()
    cols = [func.count(), func.min(sub.c.score), func.max(sub.c.score)]
    cols += [func.sum(case((sub.c.score >= float(t), 1), else_=0)) for t in thresholds]
    by_class: dict = {}
    unreviewed = unsure = 0
    stmt = select(sub.c.k, sub.c.current_feedback, *cols).group_by(sub.c.k, sub.c.current_feedback)
    for k, fb, *vals in session.execute(stmt):
        if k is None:
            if fb is None:
                unreviewed += int(vals[0])
            elif fb == "unsure":
                unsure += int(vals[0])
            continue
        acc = by_class.setdefault(k, [0, None, None] + [0] * len(thresholds))
        acc[0] += int(vals[0])
        acc[1] = vals[1] if acc[1] is None else min(acc[1], vals[1])
        acc[2] = vals[2] if acc[2] is None else max(acc[2], vals[2])
        for i in range(len(thresholds)):
            acc[3 + i] += int(vals[3 + i] or 0)
    empty = [0, None, None] + [0] * len(thresholds)
    normal, defect = by_class.get(NORMAL, empty), by_class.get(DEFECT, empty)
    out = [ThresholdRates(threshold=float(t), normal=normal[0], defects=defect[0],
                          false_alarms=normal[3 + i], misses=defect[0] - defect[3 + i])
           for i, t in enumerate(thresholds)]
    los = [v for v in (normal[1], defect[1]) if v is not None]
    if not los:
        return None, out
    lo, hi = float(min(los)), float(max(v for v in (normal[2], defect[2]) if v is not None))
    return _bins(session, camera_id, bins, lo, hi, unreviewed, unsure, since, until), out
