import numpy as np
import pytest

from detector.metrics import aupro, calibrate_threshold, f1_max, image_auroc, pixel_auroc


def test_calibration_needs_no_defects():
    rng = np.random.default_rng(0)
    normal = rng.normal(1.0, 0.1, 1000)
    thr = calibrate_threshold(normal, 0.01)
    assert (normal > thr).mean() <= 0.01
    assert (normal > thr).mean() >= 0.005
    # fewer images than 1/FAR: conservative, above every normal score
    few = normal[:20]
    assert calibrate_threshold(few, 0.01) > few.max()
    assert calibrate_threshold(np.array([0.5]), 0.01) > 0.5
    with pytest.raises(ValueError):
        calibrate_threshold(np.array([]), 0.01)


def test_metrics_on_perfect_and_random_scores():
    labels = np.array([0, 0, 0, 1, 1])
    assert image_auroc(labels, [0.1, 0.2, 0.3, 0.8, 0.9]) == 1.0
    assert f1_max(labels, [0.1, 0.2, 0.3, 0.8, 0.9]) == 1.0
    masks = np.zeros((2, 16, 16), bool)
    masks[1, 4:8, 4:8] = True
    masks[1, 10:12, 10:14] = True
    perfect = masks.astype(np.float32)
    assert pixel_auroc(masks, perfect) == 1.0
    assert aupro(masks, perfect) == pytest.approx(1.0, abs=1e-3)
    rng = np.random.default_rng(0)
    rnd = rng.random(masks.shape).astype(np.float32)
    assert 0.0 < aupro(masks, rnd) < 0.5  # random: PRO ~ FPR, normalised area ~0.15
