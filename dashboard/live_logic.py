"""Pure logic of the Live page (windows, bucket sizes, table rows): unit-testable without Streamlit."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

WINDOWS = {
    "Last 15 minutes": ("minutes", 15),
    "Last hour": ("minutes", 60),
    "Current shift": ("shift", None),
    "Last 24 hours": ("minutes", 24 * 60),
}


def shift_start(now: datetime, shift_hours: list[int]) -> datetime:
    """Start of the shift ``now`` falls in (shift start hours in UTC)."""
    now = now.astimezone(timezone.utc)
    starts = []
    for day in (now.date() - timedelta(days=1), now.date()):
        for h in shift_hours:
            starts.append(datetime(day.year, day.month, day.day, h, tzinfo=timezone.utc))
    return max(s for s in starts if s <= now)


def window_bounds(name: str, now: datetime, shift_hours: list[int]) -> tuple[datetime, datetime]:
    kind, minutes = WINDOWS[name]
    if kind == "shift":
        return shift_start(now, shift_hours), now
    return now - timedelta(minutes=minutes), now


def bucket_seconds(since: datetime, until: datetime, target_points: int = 60) -> int:
    """A round bucket size giving about ``target_points`` points over the window."""
    span = max(1.0, (until - since).total_seconds())
    for b in (10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600):
        if span / b <= target_points:
            return b
    return 3600


@dataclass(frozen=True)
class CameraRow:
    line: str
    camera: str
    inspected: int
    flagged: int
    rate: float | None
    usual_rate: float | None
    per_minute: float
    model_version: str | None


def camera_rows(window_counts, usual_counts, minutes: float, versions: dict) -> list[CameraRow]:
    usual = {(c.line_id, c.camera_id): c for c in usual_counts}
    keys = sorted({(c.line_id, c.camera_id) for c in window_counts} | set(usual))
    current = {(c.line_id, c.camera_id): c for c in window_counts}
    rows = []
    for key in keys:
        c, u = current.get(key), usual.get(key)
        inspected = c.inspected if c else 0
        rows.append(CameraRow(
            line=key[0], camera=key[1], inspected=inspected, flagged=c.flagged if c else 0,
            rate=c.rate if c else None, usual_rate=u.rate if u else None,
            per_minute=inspected / minutes if minutes > 0 else 0.0,
            model_version=versions.get(key[1], (None,))[0],
        ))
    return rows


def overall_rate(counts) -> float | None:
    n = sum(c.inspected for c in counts)
    return sum(c.flagged for c in counts) / n if n else None
