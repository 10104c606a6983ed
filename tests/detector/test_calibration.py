"""Threshold calibration from normal-only scores: the threshold, and the false-alarm rate it promises."""

import numpy as np
import pytest

from detector.calibration import (calibrate, calibrate_threshold, far_upper_bound, measured_far_warning,
                                  normals_needed, promise)
from detector.metrics import calibrate_threshold as calibrate_threshold_from_metrics


def test_enough_normals_meet_the_target_and_say_nothing():
    rng = np.random.default_rng(0)
    normal = rng.normal(1.0, 0.1, 1000)
    cal = calibrate(normal, 0.01)
    assert 0.005 <= (normal > cal.threshold).mean() <= 0.01
    assert (normal >= cal.threshold).mean() == (normal > cal.threshold).mean()  # no held-out score on it
    assert cal.enough and cal.warning is None and cal.expected_far <= 0.01
    assert cal.expected_far < cal.far_bound < 0.02
    assert calibrate_threshold(normal, 0.01) == cal.threshold == calibrate_threshold_from_metrics(normal, 0.01)


def test_too_few_normals_warn_in_plain_words_with_the_numbers():
    scores = np.linspace(0.2, 0.4, 20)
    cal = calibrate(scores, 0.01)
    assert cal.threshold > scores.max() and cal.threshold - scores.max() < 1e-6  # no extrapolation past the data
    assert cal.rank == 20 and not cal.enough
    assert cal.expected_far == pytest.approx(1 / 21)
    assert cal.far_bound == pytest.approx(1 - 0.05 ** (1 / 20))  # Beta(1, 20): 0.139
    assert (cal.normals_needed, cal.normals_needed_confident) == (99, 299)
    assert cal.warning == ("Only 20 held-out normal images: too few for a 1% false-alarm rate. The threshold is "
                           "just above the highest of them, which promises at most 4.76% false alarms on average "
                           "(with 95% confidence at most 13.9%). 99 normal images would be enough for 1% on "
                           "average, 299 to be 95% sure.")
    assert calibrate(np.array([0.5]), 0.01).threshold > 0.5


def test_the_promise_holds_over_many_calibration_sets():
    """Uniform scores: the true false-alarm rate of a threshold t is 1 - t.  Over 4000 calibration sets
    of 150 normals, its mean stays within the target and it exceeds the 95 % bound in at most 5 % of them
    (fewer: the bound is for the order statistic; the threshold sits halfway to the next one)."""
    rng = np.random.default_rng(1)
    target = 0.02
    sets = rng.uniform(size=(4000, 150))
    cals = [calibrate(s, target) for s in sets]
    far = np.array([1 - c.threshold for c in cals])
    assert far.mean() <= target * 1.05
    exceed = (far > np.array([c.far_bound for c in cals])).mean()
    assert 0.01 <= exceed <= 0.06  # not a vacuous bound either


def test_bounds_and_counts():
    assert far_upper_bound(20, 0, 0.95) == pytest.approx(1 - 0.05 ** (1 / 20))  # none of 20 above
    assert far_upper_bound(20, 20) == 1.0
    # a fixed threshold tried on stored parts: 3 false alarms of 400 -> at most ~1.9 % (Clopper-Pearson)
    assert far_upper_bound(400, 3, 0.95) == pytest.approx(0.01927, abs=1e-4)
    # the promise depends on the count only: what `calibrate` on the CLI's side reports from a summary
    cal = calibrate(np.linspace(0, 1, 50), 0.05)
    assert promise(cal.threshold, 50, 0.05) == cal
    assert normals_needed(0.01) == 99 and normals_needed(0.1) == 9
    assert normals_needed(0.01, 0.95) == 299  # 0.99 ** 299 <= 0.05 < 0.99 ** 298
    assert 0.99 ** 299 <= 0.05 < 0.99 ** 298


def test_a_threshold_tried_on_stored_parts():
    assert measured_far_warning(400, 0, 0.01) is None  # 0 of 400: at most 0.75 % at 95 %
    assert measured_far_warning(120, 0, 0.01) == (
        "Only 120 normal parts: too few to show a false-alarm rate under 1%. None of them is above this "
        "threshold, yet with 95% confidence the rate could be up to 2.47%; 299 normal parts would be enough.")
    assert measured_far_warning(400, 3, 0.01) == (
        "3 false alarms among 400 normal parts: with 95% confidence the rate could be up to 1.93%, above "
        "the 1% target.")
    assert "No normal parts" in measured_far_warning(0, 0, 0.01)


def test_bad_input_is_refused_clearly():
    with pytest.raises(ValueError, match="at least one normal image"):
        calibrate_threshold(np.array([]), 0.01)
    with pytest.raises(ValueError, match="not finite"):
        calibrate(np.array([0.1, np.nan]), 0.01)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        calibrate(np.array([0.1]), 1.5)
