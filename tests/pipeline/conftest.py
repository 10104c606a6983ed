"""Fixtures of the pipeline tests: a tiny real checkpoint and a folder of frames.

The checkpoint is the real EAR + FADeR detector (the detector tests' tiny configuration, the
real EfficientNet-Lite0 masker when ``../shared/models`` has it) trained for a few epochs on
generated parts: accuracy does not matter here, only that the service runs the real model.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest

from tests.storage.fixtures import sqlite_db  # noqa: F401 - fixture


@pytest.fixture(scope="session")
def pipeline_checkpoint(tmp_path_factory) -> Path:
    from .harness import train_tiny_checkpoint

    return train_tiny_checkpoint(tmp_path_factory.mktemp("pipeline-model"))


@pytest.fixture(scope="session")
def frames_dir(tmp_path_factory) -> Path:
    """24 PNG frames: good and defective parts at 64x64, some rescaled (96x80), one grey."""
    from detector.synthetic import make_toy_dataset

    root = tmp_path_factory.mktemp("pipeline-frames")
    data = make_toy_dataset(root / "src", n_train=0, n_good=14, n_bad=10, size=64, seed=7)
    out = root / "frames"
    out.mkdir()
    files = sorted((data / "test").rglob("*.png"))
    for i, f in enumerate(files):
        img = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if i % 5 == 1:
            img = cv2.resize(img, (96, 80), interpolation=cv2.INTER_LINEAR)
        if i == 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        cv2.imwrite(str(out / f"frame_{i:03d}.png"), img)
    return out


@pytest.fixture(scope="session")
def crad_unified_checkpoint(tmp_path_factory) -> Path:
    """A tiny CRAD trained on two generated products at once ("toy" and a differently tinted "blue")."""
    from detector.synthetic import make_toy_dataset
    from detector.workflow import train_model

    root = tmp_path_factory.mktemp("crad-model")
    toy = make_toy_dataset(root / "toy", n_train=16, n_good=4, n_bad=4, size=64, seed=0)
    blue = make_toy_dataset(root / "blue", n_train=16, n_good=4, n_bad=4, size=64, seed=3, tint=(0.55, 0.85, 1.0))
    out = root / "crad.pt"
    train_model(None, out, data=[toy, blue], model="crad", profile="cpu", device="cpu", progress=False,
                overrides={"image_size": 64, "hidden": 16, "blocks": 1, "epochs": 6, "batch_size": 8})
    return out
