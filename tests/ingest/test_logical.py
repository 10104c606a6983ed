"""Logical defects on the simulated line, and the MVTec-layout set ``sim-write --logical`` writes."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from ingest.cli import main
from ingest.logical import LOGICAL_KINDS, LogicalLineSimulator


def test_each_logical_defect_changes_the_image_inside_its_mask_only():
    sim = LogicalLineSimulator(seed=1, width=128, height=128)
    good, empty = sim.render_with_mask(7)
    assert not empty.any()
    for kind in LOGICAL_KINDS:
        bad, mask = sim.render_with_mask(7, defect=kind)
        assert mask.any(), kind
        diff = np.abs(bad.astype(int) - good.astype(int)).max(axis=2) > 40
        assert diff[mask].mean() > 0.2, kind  # the defect is visible where the mask says
        grown = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        assert not diff[~grown].any(), kind  # and nowhere else


def test_normal_parts_vary_and_are_reproducible():
    sim = LogicalLineSimulator(seed=0, width=96, height=96)
    a, b = sim.render(0), sim.render(1)
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 1.0
    assert np.array_equal(sim.render(0), LogicalLineSimulator(seed=0, width=96, height=96).render(0))
    with pytest.raises(ValueError):
        LogicalLineSimulator(defect_kinds=("scratch",))


def test_sim_write_logical_writes_the_mvtec_layout_with_masks(tmp_path, capsys):
    root = tmp_path / "bracket"
    assert main(["sim-write", str(root), "-n", "3", "--logical", "--test-good", "2", "--per-kind", "1",
                 "--width", "64", "--height", "64"]) == 0
    assert len(list((root / "train/good").glob("*.png"))) == 3
    assert len(list((root / "test/good").glob("*.png"))) == 2
    for kind in LOGICAL_KINDS:
        (img,) = (root / "test" / kind).glob("*.png")
        mask = cv2.imread(str(root / "ground_truth" / kind / f"{img.stem}_mask.png"), cv2.IMREAD_GRAYSCALE)
        assert mask.shape == (64, 64) and mask.max() == 255
    assert "test/wrong_colour 1" in capsys.readouterr().out
