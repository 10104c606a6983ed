"""Threshold calibration from normal-only scores, with the false-alarm rate it can promise.

The threshold is an order statistic of the held-out normal scores (split-conformal): with ``n``
normal scores, the k-th smallest ``s_(k)`` is exceeded by a new normal part (exchangeable with
the held-out ones) with probability at most ``(n - k + 1) / (n + 1)`` on average, and the true
false-alarm rate at ``s_(k)`` follows ``Beta(n - k + 1, k)`` whatever the score distribution, so
at confidence ``c`` it is at most that distribution's ``c`` quantile (scipy.stats.beta).  The rule
takes the smallest k whose average rate is within the target, i.e. ``k = ceil((1 - a)(n + 1))``.

When ``n + 1 < 1 / a`` no order statistic can promise the target: the threshold is then just
above the highest normal score, and the result says in plain words what rate that does promise
and how many normal images would be enough.  Nothing is extrapolated past the data (the former
"max + one standard deviation" rule promised nothing and, on magnetic_tile, caught no defect).
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel
from scipy.stats import beta

DEFAULT_CONFIDENCE = 0.95


class Calibration(BaseModel):
    """A calibrated threshold and what it promises (plain floats: goes into JSON and checkpoints)."""

    threshold: float
    target_far: float
    n_normal: int
    rank: int  # the threshold sits just above the rank-th smallest normal score (1-based)
    expected_far: float  # on average over calibration sets: P(a new normal part scores above the threshold)
    confidence: float
    far_bound: float  # at `confidence`, the false-alarm rate is at most this
    normals_needed: int  # for the target on average (what this rule needs)
    normals_needed_confident: int  # for the target at `confidence` (threshold at the highest score)

    @property
    def enough(self) -> bool:
        return self.expected_far <= self.target_far

    @property
    def warning(self) -> str | None:
        """One paragraph for an operator when the normals are too few for the requested rate."""
        if self.enough:
            return None
        return (f"Only {self.n_normal} held-out normal image{'s' if self.n_normal != 1 else ''}: too few for a "
                f"{_pct(self.target_far)} false-alarm rate. The threshold is just above the highest of them, "
                f"which promises at most {_pct(self.expected_far)} false alarms on average "
                f"(with {_pct(self.confidence)} confidence at most {_pct(self.far_bound)}). "
                f"{self.normals_needed} normal images would be enough for {_pct(self.target_far)} on average, "
                f"{self.normals_needed_confident} to be {_pct(self.confidence)} sure.")

    def summary(self) -> str:
        """One line: the threshold and its promise."""
        return (f"threshold {self.threshold:.5g} from {self.n_normal} normal images: false-alarm rate "
                f"{_pct(self.expected_far)} on average, at most {_pct(self.far_bound)} with "
                f"{_pct(self.confidence)} confidence (target {_pct(self.target_far)})")


def far_upper_bound(n_normal: int, n_above: int, confidence: float = DEFAULT_CONFIDENCE) -> float:
    """At ``confidence``, the false-alarm rate of a threshold that ``n_above`` of ``n_normal`` normal
    scores exceed: for a threshold taken from those scores (the order statistic at rank
    ``n_normal - n_above``) and for a fixed threshold tried on them (Clopper-Pearson) alike."""
    if n_above >= n_normal:
        return 1.0
    return float(beta.ppf(confidence, n_above + 1, n_normal - n_above))


def normals_needed(target_far: float, confidence: float | None = None) -> int:
    """Fewest normal images for which a threshold at the highest of them meets ``target_far``:
    on average (``confidence`` None: ``1 / (n + 1) <= target``), or at ``confidence``
    (``1 - (1 - confidence) ** (1 / n) <= target``)."""
    if confidence is None:
        return max(1, math.ceil(1.0 / target_far - 1.0 - 1e-9))
    return max(1, math.ceil(math.log(1.0 - confidence) / math.log(1.0 - target_far) - 1e-9))


def rank_for(n_normal: int, target_far: float) -> int:
    """The order statistic (1-based) the threshold sits above: ``ceil((1 - a)(n + 1))``, at most n."""
    return min(n_normal, math.ceil((1.0 - target_far) * (n_normal + 1) - 1e-9))


def promise(threshold: float, n_normal: int, target_far: float, confidence: float = DEFAULT_CONFIDENCE
            ) -> Calibration:
    """What a threshold calibrated by this rule on ``n_normal`` normal images promises (it depends on
    the count, not on the scores)."""
    k = rank_for(n_normal, target_far)
    return Calibration(threshold=threshold, target_far=target_far, n_normal=n_normal, rank=k,
                       expected_far=(n_normal - k + 1) / (n_normal + 1), confidence=confidence,
                       far_bound=far_upper_bound(n_normal, n_normal - k, confidence),
                       normals_needed=normals_needed(target_far),
                       normals_needed_confident=normals_needed(target_far, confidence))


def calibrate(normal_scores: np.ndarray, target_far: float, confidence: float = DEFAULT_CONFIDENCE) -> Calibration:
    """Threshold for ``target_far`` from normal-only scores, and the false-alarm rate it guarantees."""
    s = np.sort(np.asarray(normal_scores, np.float64).ravel())
    if s.size == 0:
        raise ValueError("threshold calibration needs at least one normal image")
    if not np.isfinite(s).all():
        raise ValueError("threshold calibration got scores that are not finite numbers")
    if not 0.0 < target_far < 1.0:
        raise ValueError("target false-alarm rate must be in (0, 1)")
    if not 0.0 < confidence < 1.0:
        raise ValueError("confidence must be in (0, 1)")
    n = int(s.size)
    k = rank_for(n, target_far)
    # between the k-th and the next score (or just above the highest): no held-out normal sits on the
    # threshold, whether a verdict is `score > t` (detector) or `score >= t` (dashboard)
    thr = 0.5 * (s[k - 1] + s[k]) if k < n and s[k] > s[k - 1] else _just_above(s[k - 1])
    return promise(float(thr), n, target_far, confidence)


def measured_far_warning(n_normal: int, n_above: int, target_far: float,
                         confidence: float = DEFAULT_CONFIDENCE) -> str | None:
    """Plain words when ``n_above`` false alarms among ``n_normal`` stored normal parts do not show a
    threshold's false-alarm rate to be within ``target_far`` at ``confidence``; None when they do."""
    if n_normal <= 0:
        return f"No normal parts: nothing shows a false-alarm rate under {_pct(target_far)}."
    bound = far_upper_bound(n_normal, n_above, confidence)
    if bound <= target_far:
        return None
    needed = normals_needed(target_far, confidence)
    if n_above == 0 and n_normal < needed:
        return (f"Only {n_normal} normal part{'s' if n_normal != 1 else ''}: too few to show a false-alarm rate "
                f"under {_pct(target_far)}. None of them is above this threshold, yet with {_pct(confidence)} "
                f"confidence the rate could be up to {_pct(bound)}; {needed} normal parts would be enough.")
    return (f"{n_above} false alarm{'s' if n_above != 1 else ''} among {n_normal} normal parts: with "
            f"{_pct(confidence)} confidence the rate could be up to {_pct(bound)}, above the "
            f"{_pct(target_far)} target.")


def calibrate_threshold(normal_scores: np.ndarray, target_far: float) -> float:
    """Just the threshold of :func:`calibrate`."""
    return calibrate(normal_scores, target_far).threshold


def _just_above(x: float) -> float:
    # the next float32 up, so the threshold survives a round trip through float32 scores and storage
    return float(np.nextafter(np.float32(x), np.float32(np.inf)))


def _pct(x: float) -> str:
    return f"{100 * x:.3g}%"
