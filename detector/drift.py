"""Drift monitoring: is what a camera sends still what its model was calibrated for?

Per camera and model version, over a sliding window of recent frames (:class:`DriftMonitor`):

* **score drift** -- the population-stability index (PSI) of the window's anomaly scores against
  the reference scores, on equal-mass bins of the reference (deciles when it has enough scores);
* **image drift** -- per image statistic (brightness = mean grey level, contrast = its standard
  deviation, sharpness = log of the variance of the Laplacian), the shift of the window's mean
  from the reference mean in reference standard deviations.

The reference is a :class:`DriftReference`, made at training time (:func:`training_reference`)
and stored in the checkpoint's meta under ``drift_reference`` (product -> reference): the image
statistics of every full-resolution training image, and the score bins of the held-out normals the
threshold was calibrated on.  Score bins need ``MIN_PER_BIN`` held-out scores each (fewer bins
when there are few, none below two bins' worth: then only the image statistics are watched).
A checkpoint written before training stored a reference falls back to the first
``baseline_frames`` frames the camera sends to that model version (logged once per version;
start such a monitor on a healthy camera); ``linewatch-detector calibrate`` gives it a reference
from its calibration images (source ``calibration``) without retraining.

Each frame id counts once per track (the last ``seen_frames`` are remembered): a batch the service
redoes after a failed send, or a frame a camera sent twice, does not weigh double.

The state is a sliding window that refills, on purpose not persisted: after a restart of the
detector service the window starts empty against the checkpoint's training reference, the gauges
are back with the first frame, a verdict comes after half a window and a fault that is still there
is ``active`` again ``hold_frames`` later (3 minutes in all with the defaults; the Prometheus rules,
2 minutes on the gauges, fire about 2 minutes after the restart).  A camera can also move to
another detector replica at any consumer-group rebalance, where a per-process state file would be
wrong anyway.  A checkpoint without a training reference learns it from the first frames after
every start: restarted while a camera is faulty, it takes the fault for normal -- retrain it.

Default rule (:class:`DriftSettings`, and the Prometheus rules in ``deploy/prometheus/``): a
camera drifts when the score PSI is above 0.5 (twice the usual 0.25 "significant shift") or an image
statistic has moved by more than 4 reference standard deviations, continuously for
``hold_frames`` frames.  With the defaults (a 240-frame window, 240 frames held: 2 + 2 minutes
at 2 frames/s) the simulator's dirty-lens and dim faults raise it within 5 minutes, and its
normal part-to-part variation does not (tests/detector/test_drift.py).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger(__name__)

STATS: tuple[str, ...] = ("brightness", "contrast", "sharpness")
MIN_PER_BIN = 10  # reference scores per score bin: fewer make the bin edges themselves noise
_STAT_SIDE = 128  # statistics on a copy at most this large: the same numbers whatever the camera resolution


class DriftSettings(BaseSettings):
    """``LINEWATCH_DRIFT_*``."""

    model_config = SettingsConfigDict(env_prefix="LINEWATCH_DRIFT_", extra="ignore")

    window_frames: int = Field(240, ge=10, description="recent frames compared with the reference")
    baseline_frames: int = Field(240, ge=10, description="frames that make the reference when the model has none")
    hold_frames: int = Field(240, ge=1, description="frames a breach must last before the camera counts as drifting")
    psi_alert: float = Field(0.5, gt=0, description="score PSI above this is drift")
    shift_alert: float = Field(4.0, gt=0, description="an image statistic this many reference std away is drift")
    score_bins: int = Field(10, ge=2, le=50)
    seen_frames: int = Field(4096, ge=1, description="frame ids remembered per camera: a frame scored again "
                             "(a batch redone after a failed send, a duplicate from the camera) counts once")


class DriftReference(BaseModel):
    """What normal looks like for one model: score bin edges and image statistics."""

    score_edges: list[float]  # inner edges of equal-mass bins of the reference scores
    stat_mean: list[float]
    stat_std: list[float]
    n: int
    source: str = "baseline"

    @classmethod
    def from_samples(cls, scores: np.ndarray, stats: np.ndarray, bins: int = 10,
                     source: str = "baseline") -> "DriftReference":
        scores = np.asarray(scores, np.float64)
        stats = np.asarray(stats, np.float64).reshape(-1, len(STATS))
        edges = np.quantile(scores, np.linspace(0, 1, bins + 1)[1:-1]) if len(scores) else np.zeros(0)
        # a floor under the spread: a perfectly steady statistic must not turn noise into "drift"
        std = np.maximum(stats.std(axis=0), 1e-3 * np.maximum(np.abs(stats.mean(axis=0)), 1.0))
        return cls(score_edges=[float(e) for e in edges], stat_mean=[float(v) for v in stats.mean(axis=0)],
                   stat_std=[float(v) for v in std], n=int(len(scores)), source=source)


def image_stats(image: np.ndarray) -> np.ndarray:
    """[brightness, contrast, sharpness] of one frame (RGB or BGR uint8, or grey)."""
    grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    h, w = grey.shape
    if max(h, w) > _STAT_SIDE:
        f = _STAT_SIDE / max(h, w)
        grey = cv2.resize(grey, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    g = grey.astype(np.float32)
    lap = cv2.Laplacian(g, cv2.CV_32F)
    return np.array([g.mean(), g.std(), math.log1p(float(lap.var()))], np.float64)


def psi(edges: list[float] | np.ndarray, scores: np.ndarray) -> float:
    """Population-stability index of ``scores`` against equal-mass reference bins with inner ``edges``:
    sum over bins of (a - e) * ln(a / e), e = 1 / bins, a = the scores' share in the bin."""
    edges = np.asarray(edges, np.float64)
    idx = np.searchsorted(edges, np.asarray(scores, np.float64), side="right")
    return _psi_counts(np.bincount(idx, minlength=len(edges) + 1))


def _psi_counts(counts: np.ndarray) -> float:
    # shares floored at 1e-4: an empty bin counts as a large, finite shift
    a = np.maximum(counts / max(1, int(counts.sum())), 1e-4)
    e = 1.0 / len(counts)
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass
class DriftStatus:
    frames: int  # in the window
    phase: str  # "baseline" (building the reference) | "monitoring"
    score_psi: float | None
    shift: dict[str, float]  # statistic -> (window mean - reference mean) / reference std
    breach: bool  # this frame's window is over a limit
    drifting: bool  # the breach has lasted hold_frames
    reasons: list[str] = field(default_factory=list)


class _Track:
    """One camera on one model version (running sums: O(1) per frame)."""

    def __init__(self, settings: DriftSettings, reference: DriftReference | None):
        self.s = settings
        self.reference: DriftReference | None = None
        self.baseline_scores: list[float] = []
        self.baseline_stats: list[np.ndarray] = []
        self.window: deque[tuple[int, np.ndarray]] = deque()  # (score bin, image statistics)
        self.breach_run = 0
        self.frame_ids: deque[str] = deque()  # the last seen_frames frame ids, oldest first
        self._ids: set[str] = set()
        self.last: DriftStatus | None = None
        if reference is not None:
            self._start(reference)

    def _start(self, reference: DriftReference) -> None:
        self.reference = reference
        self.edges = np.asarray(reference.score_edges, np.float64)
        self.bin_counts = np.zeros(len(self.edges) + 1, np.int64)
        self.stat_sum = np.zeros(len(STATS), np.float64)
        self.mean = np.asarray(reference.stat_mean, np.float64)
        self.std = np.asarray(reference.stat_std, np.float64)

    def seen(self, frame_id: str) -> bool:
        """True when ``frame_id`` was observed already; otherwise it is remembered."""
        if frame_id in self._ids:
            return True
        self.frame_ids.append(frame_id)
        self._ids.add(frame_id)
        if len(self.frame_ids) > self.s.seen_frames:
            self._ids.discard(self.frame_ids.popleft())
        return False

    def observe(self, score: float, stats: np.ndarray) -> DriftStatus:
        if self.reference is None:
            self.baseline_scores.append(float(score))
            self.baseline_stats.append(stats)
            if len(self.baseline_scores) >= self.s.baseline_frames:
                self._start(DriftReference.from_samples(np.array(self.baseline_scores),
                                                        np.array(self.baseline_stats), self.s.score_bins))
                self.baseline_scores, self.baseline_stats = [], []
            return DriftStatus(0, "baseline", None, {}, False, False)
        b = int(np.searchsorted(self.edges, score, side="right"))
        self.window.append((b, stats))
        self.bin_counts[b] += 1
        self.stat_sum += stats
        if len(self.window) > self.s.window_frames:
            ob, ostats = self.window.popleft()
            self.bin_counts[ob] -= 1
            self.stat_sum -= ostats
        n = len(self.window)
        value = _psi_counts(self.bin_counts) if len(self.edges) else None
        shift_v = (self.stat_sum / n - self.mean) / self.std
        shift = {name: float(shift_v[i]) for i, name in enumerate(STATS)}
        reasons = []
        if n >= self.s.window_frames // 2:  # half a window before any verdict
            if value is not None and value > self.s.psi_alert:
                reasons.append(f"score PSI {value:.2f} > {self.s.psi_alert}")
            reasons += [f"{k} {v:+.1f} std" for k, v in shift.items() if abs(v) > self.s.shift_alert]
        self.breach_run = self.breach_run + 1 if reasons else 0
        return DriftStatus(n, "monitoring", value, shift, bool(reasons), self.breach_run >= self.s.hold_frames,
                           reasons)


class DriftMonitor:
    """Drift per (camera, model version); optionally Prometheus gauges in ``registry``.

    Gauges (labels camera, model_version): ``linewatch_detector_drift_score_psi``,
    ``linewatch_detector_drift_image_shift`` (+ label ``stat``), ``linewatch_detector_drift_breach``
    (0/1: over a limit now) and ``linewatch_detector_drift_active`` (0/1: for ``hold_frames``).
    A camera that moves to another model version starts a new track; the old one's gauges go.
    """

    def __init__(self, settings: DriftSettings | None = None, registry: Any | None = None):
        self.settings = settings or DriftSettings()
        self.tracks: dict[tuple[str, str], _Track] = {}
        self._version_of: dict[str, str] = {}
        self._told_fallback: set[str] = set()
        self.gauges = None
        if registry is not None:
            from prometheus_client import Gauge

            p, labels = "linewatch_detector_drift_", ["camera", "model_version"]
            self.gauges = {
                "psi": Gauge(p + "score_psi", "PSI of the recent window's scores vs the reference", labels,
                             registry=registry),
                "shift": Gauge(p + "image_shift", "recent mean of an image statistic minus the reference mean, "
                               "in reference standard deviations", [*labels, "stat"], registry=registry),
                "breach": Gauge(p + "breach", "1 while the recent window is over a drift limit", labels,
                                registry=registry),
                "active": Gauge(p + "active", "1 once a breach has lasted hold_frames frames", labels,
                                registry=registry),
            }

    def observe(self, camera: str, model_version: str, score: float, image: np.ndarray | None,
                reference: DriftReference | Callable[[], DriftReference | None] | None = None,
                stats: np.ndarray | None = None, frame_id: str | None = None) -> DriftStatus:
        """One scored frame (``image``, or its :func:`image_stats` already computed as ``stats``).
        ``reference`` (or a function that returns it) is used when the track starts.  A ``frame_id``
        the track has seen already changes nothing (the status it returns is the last one)."""
        key = (camera, model_version)
        track = self.tracks.get(key)
        if track is None:
            old = self._version_of.get(camera)
            if old is not None and old != model_version:
                self._forget((camera, old))
            ref = reference() if callable(reference) else reference
            if ref is None and model_version not in self._told_fallback:
                self._told_fallback.add(model_version)
                log.warning("model %s has no drift reference from training (an older checkpoint): each camera's "
                            "first %d frames to it become the reference; retrain it, or give it one from normal "
                            "images with linewatch-detector calibrate", model_version, self.settings.baseline_frames)
            track = self.tracks[key] = _Track(self.settings, ref)
            self._version_of[camera] = model_version
        if frame_id is not None and track.seen(frame_id) and track.last is not None:
            return track.last
        status = track.last = track.observe(score, image_stats(image) if stats is None else stats)
        if self.gauges is not None and status.phase == "monitoring":
            g = self.gauges
            if status.score_psi is not None:
                g["psi"].labels(*key).set(status.score_psi)
            for name, v in status.shift.items():
                g["shift"].labels(*key, name).set(v)
            g["breach"].labels(*key).set(int(status.breach))
            g["active"].labels(*key).set(int(status.drifting))
        return status

    def _forget(self, key: tuple[str, str]) -> None:
        self.tracks.pop(key, None)
        if self.gauges is None:
            return
        for name, gauge in self.gauges.items():
            for labels in ([(*key, s) for s in STATS] if name == "shift" else [key]):
                try:
                    gauge.remove(*labels)
                except KeyError:
                    pass


def training_reference(scores: np.ndarray, stats: np.ndarray, bins: int = 10) -> DriftReference:
    """The reference training stores: ``stats`` of the full-resolution training images, score bins
    from the held-out normals' ``scores`` (at most ``len(scores) // MIN_PER_BIN`` bins; none below 2)."""
    n_bins = min(bins, len(scores) // MIN_PER_BIN)
    ref = DriftReference.from_samples(scores, stats, max(n_bins, 2), source="training")
    if n_bins < 2:
        ref.score_edges = []
    return ref.model_copy(update={"n": int(len(stats))})


def reference_from_meta(meta: dict[str, Any], product: str | None = None) -> DriftReference | None:
    """The reference training stored in a checkpoint's meta for ``product`` (or its only product)."""
    refs = meta.get("drift_reference") or {}
    ref = refs.get(product) if product in refs else (next(iter(refs.values())) if len(refs) == 1 else None)
    return DriftReference.model_validate(ref) if ref else None
