"""Step 5: promote or reject, by three criteria each with its margin."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .settings import RetrainSettings


@dataclass(frozen=True)
class Criterion:
    """One promotion criterion: the candidate's value against the active one's, with its margin."""

    name: str
    candidate: float | None
    active: float | None
    margin: float
    higher_is_better: bool
    n: int  # images it was measured on

    @property
    def compared(self) -> bool:
        return not any(v is None or math.isnan(v) for v in (self.candidate, self.active))

    @property
    def passed(self) -> bool:
        if not self.compared:
            return True  # nothing to compare on (e.g. no confirmed defects yet): not a reason to reject
        if self.higher_is_better:
            return self.candidate >= self.active - self.margin
        return self.candidate <= self.active + self.margin

    def describe(self) -> str:
        if not self.compared:
            return f"{self.name} not compared (measured on {self.n} images)"
        if self.passed:
            return f"{self.name} {self.candidate:.4f} vs active {self.active:.4f}"
        sign, cmp = ("-", "<") if self.higher_is_better else ("+", ">")
        return f"{self.name} {self.candidate:.4f} {cmp} active {self.active:.4f} {sign} margin {self.margin}"


def criteria(candidate: dict[str, Any], active: dict[str, Any], settings: RetrainSettings) -> list[Criterion]:
    """The three things a candidate must not lose: ranking (AUROC), false alarms and detection, the
    last two each at its own calibrated threshold.  AUROC alone misses a candidate whose threshold
    lands above the defects; the false-alarm rate alone rewards exactly that."""
    n_normal, n_defect = int(candidate.get("n_normal") or 0), int(candidate.get("n_defect") or 0)
    return [
        Criterion("image AUROC", candidate.get("image_auroc"), active.get("image_auroc"), settings.margin_auroc,
                  True, n_normal + n_defect),
        Criterion("false-alarm rate", candidate.get("false_alarm_rate"), active.get("false_alarm_rate"),
                  settings.margin_far, False, n_normal),
        Criterion("detection rate", candidate.get("detection_rate"), active.get("detection_rate"),
                  settings.margin_detection, True, n_defect),
    ]


def decide(candidate: dict[str, Any], active: dict[str, Any], settings: RetrainSettings) -> tuple[bool, str]:
    """-> (promote?, reason): promote only when no criterion is lost beyond its margin."""
    checks = criteria(candidate, active, settings)
    failed = [c.describe() for c in checks if not c.passed]
    if failed:
        return False, "; ".join(failed)
    return True, "not worse than the active model: " + ", ".join(c.describe() for c in checks)
