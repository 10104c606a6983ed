"""Evaluation metrics on raw scores (scikit-learn); threshold calibration lives in ``detector.calibration``."""

from __future__ import annotations

import cv2
import numpy as np
from sklearn.metrics import precision_recall_curve, roc_auc_score

from .calibration import calibrate_threshold  # noqa: F401  (its former home; callers still import it here)


def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    labels = np.asarray(labels).astype(int)
    if labels.min() == labels.max():
        return float("nan")
    return float(roc_auc_score(labels, np.asarray(scores, np.float64)))


def pixel_auroc(masks: np.ndarray, maps: np.ndarray) -> float:
    y = np.asarray(masks, bool).ravel()
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, np.asarray(maps, np.float32).ravel()))


def f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    labels = np.asarray(labels).astype(int)
    if not labels.any():
        return float("nan")
    p, r, _ = precision_recall_curve(labels, np.asarray(scores, np.float64))
    f1 = 2 * p * r / np.maximum(p + r, 1e-12)
    return float(f1.max())


def aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Area under the per-region-overlap curve up to ``fpr_limit``, normalised to [0, 1].

    For every threshold t: FPR(t) = fraction of normal pixels (over all images) with score > t;
    PRO(t) = mean over connected ground-truth regions of the fraction of the region's pixels with
    score > t.  The curve is integrated over FPR in [0, fpr_limit] (trapezoid, interpolated at the
    limit) and divided by ``fpr_limit``.  Computed exactly from sorted scores (all distinct thresholds).
    """
    masks = np.asarray(masks, bool)
    maps = np.asarray(maps, np.float32)
    neg = np.sort(maps[~masks])
    if neg.size == 0 or not masks.any():
        return float("nan")
    regions = []
    for m, a in zip(masks, maps):
        if not m.any():
            continue
        n, lab = cv2.connectedComponents(m.astype(np.uint8), connectivity=8)
        for k in range(1, n):
            regions.append(np.sort(a[lab == k]))
    # thresholds: the normal-pixel quantiles that give FPR from 0 to the limit (fine grid), descending
    fprs_grid = np.linspace(0.0, fpr_limit, 1001)
    idx = np.clip(np.ceil((1.0 - fprs_grid) * neg.size).astype(int) - 1, 0, neg.size - 1)
    thr = neg[idx]
    fpr = 1.0 - np.searchsorted(neg, thr, side="right") / neg.size
    pro = np.zeros_like(thr, dtype=np.float64)
    for r in regions:
        pro += 1.0 - np.searchsorted(r, thr, side="right") / r.size
    pro /= len(regions)
    order = np.argsort(fpr, kind="stable")
    fpr, pro = fpr[order], pro[order]
    keep = fpr <= fpr_limit
    fpr, pro = fpr[keep], pro[keep]
    if fpr[-1] < fpr_limit:  # extend to the limit at the last PRO value
        fpr = np.append(fpr, fpr_limit)
        pro = np.append(pro, pro[-1])
    if fpr[0] > 0:
        fpr = np.insert(fpr, 0, 0.0)
        pro = np.insert(pro, 0, 0.0)
    return float(np.trapezoid(pro, fpr) / fpr_limit)


def summarise(labels, scores, masks=None, maps=None) -> dict[str, float]:
    out = {"image_auroc": image_auroc(labels, scores), "image_f1_max": f1_max(labels, scores)}
    if masks is not None and maps is not None:
        out["pixel_auroc"] = pixel_auroc(masks, maps)
        out["aupro_0.3"] = aupro(masks, maps, 0.3)
    return out
