import numpy as np
import pytest

from detector.metrics import aupro, f1_max, image_auroc, pixel_auroc


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
