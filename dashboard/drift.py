"""Camera drift from the detector service's Prometheus endpoint (``detector/drift.py`` gauges).

Per camera (its newest model version's series): the score PSI, the image-statistic shifts in
reference standard deviations, whether a limit is breached now and whether the alert is active.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

PREFIX = "linewatch_detector_drift_"


@dataclass
class CameraDrift:
    camera: str
    model_version: str
    psi: float | None = None
    shift: dict[str, float] = field(default_factory=dict)
    breach: bool = False
    active: bool = False

    @property
    def worst_shift(self) -> tuple[str, float] | None:
        return max(self.shift.items(), key=lambda kv: abs(kv[1])) if self.shift else None

    def describe(self) -> str:
        parts = [] if self.psi is None else [f"score PSI {self.psi:.2f}"]
        if (w := self.worst_shift) is not None:
            parts.append(f"{w[0]} {w[1]:+.1f} std")
        state = "DRIFTING" if self.active else ("over a limit" if self.breach else "ok")
        return f"{state} ({', '.join(parts)})" if parts else state


def parse_drift(text: str) -> dict[str, CameraDrift]:
    out: dict[tuple[str, str], CameraDrift] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith(PREFIX):
            continue
        what = family.name[len(PREFIX):]
        for sample in family.samples:
            cam, ver = sample.labels.get("camera"), sample.labels.get("model_version")
            if cam is None or ver is None:
                continue
            d = out.setdefault((cam, ver), CameraDrift(cam, ver))
            if what == "score_psi":
                d.psi = float(sample.value)
            elif what == "image_shift":
                d.shift[sample.labels.get("stat", "?")] = float(sample.value)
            elif what == "breach":
                d.breach = sample.value >= 0.5
            elif what == "active":
                d.active = sample.value >= 0.5
    by_camera: dict[str, CameraDrift] = {}
    for (cam, _), d in sorted(out.items()):  # one series per camera in practice (old versions are dropped)
        by_camera[cam] = d
    return by_camera
