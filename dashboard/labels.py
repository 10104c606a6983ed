"""Human names of feedback labels and queue modes."""

from __future__ import annotations

LABELS = {"defect_confirmed": "Defect confirmed", "false_alarm": "False alarm", "unsure": "Unsure"}
QUEUES = {"pending": "Unreviewed", "flagged": "All flagged", "reviewed": "Reviewed"}


def label_name(label: str | None) -> str:
    return "not reviewed" if label is None else LABELS.get(label, label)
