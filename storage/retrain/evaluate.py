"""Step 4: candidate and active model scored on the same holdout."""

from __future__ import annotations

from typing import Any

import numpy as np

from .gather import Capture


def evaluate_on(detector: Any, normal: list[Capture], defect: list[Capture], threshold: float | None = None
                ) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Scores of ``detector`` (a detector.inference.Detector) on the holdout and the metrics."""
    from detector.metrics import image_auroc

    thr = float(detector.threshold if threshold is None else threshold)
    sn = detector.score_images([c.rgb for c in normal]) if normal else np.zeros(0, np.float32)
    sd = detector.score_images([c.rgb for c in defect]) if defect else np.zeros(0, np.float32)
    m: dict[str, Any] = {
        "threshold": thr,
        "n_normal": int(len(sn)), "n_defect": int(len(sd)),
        "false_alarm_rate": float((sn > thr).mean()) if len(sn) else None,
        "detection_rate": float((sd > thr).mean()) if len(sd) else None,
        "image_auroc": None,
        "normal_score_p50": float(np.median(sn)) if len(sn) else None,
        "normal_score_max": float(sn.max()) if len(sn) else None,
    }
    if len(sn) and len(sd):
        m["image_auroc"] = image_auroc(np.r_[np.zeros(len(sn)), np.ones(len(sd))], np.r_[sn, sd])
    return m, sn, sd
