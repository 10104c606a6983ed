"""Fixtures of the retraining tests: a tiny real checkpoint trained on the line simulator's parts."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.detector.conftest import _one_torch_thread  # noqa: F401  (autouse: one torch thread here too)
from tests.storage.fixtures import postgres_url, sqlite_db, storage_backend, storage_db  # noqa: F401


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """The real EAR + FADeR detector, tiny (64 px, 8 channels), trained briefly on simulated good parts."""
    from detector.models.ear_fader import EarFaderTrainConfig
    from detector.workflow import train_model
    from ingest.simulator import write_normal_parts
    from tests.detector.conftest import tiny_config

    root = tmp_path_factory.mktemp("first-model")
    write_normal_parts(root / "data" / "train" / "good", 24, seed=1000, width=64, height=64)
    tc = EarFaderTrainConfig(epochs_ear=3, epochs_fader=1, batch_size=8, auto_m=False, auto_q=False)
    out = root / "first.pt"
    train_model(None, out, data=[root / "data"], configs=(tiny_config(), tc), product="flange", device="cpu",
                progress=False)
    return out


def _smoke_checkpoint(tmp_path_factory, model: str, overrides: dict) -> Path:
    """A detector of ``model`` at its smoke profile (64 px), trained briefly on the simulated good parts."""
    from detector.workflow import train_model
    from ingest.simulator import write_normal_parts

    root = tmp_path_factory.mktemp(f"first-{model}")
    write_normal_parts(root / "data" / "train" / "good", 24, seed=1000, width=64, height=64)
    out = root / "first.pt"
    train_model(None, out, data=[root / "data"], model=model, profile="smoke", overrides=overrides,
                product="flange", device="cpu", progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_crad_checkpoint(tmp_path_factory) -> Path:
    return _smoke_checkpoint(tmp_path_factory, "crad", {"epochs": 4})


@pytest.fixture(scope="session")
def tiny_efficientad_checkpoint(tmp_path_factory) -> Path:
    """Its smoke profile's teacher is random: no distilled teacher file needed."""
    return _smoke_checkpoint(tmp_path_factory, "efficientad", {"steps": 20})


@pytest.fixture(scope="session")
def second_checkpoint(tiny_checkpoint, tmp_path_factory) -> Path:
    """The same weights saved with another threshold: a second, distinct version (other sha256)."""
    from detector.checkpoint import load_model, save_checkpoint

    model, meta, _ = load_model(tiny_checkpoint)
    out = tmp_path_factory.mktemp("second-model") / "second.pt"
    save_checkpoint(out, model, {**meta, "threshold": float(meta["threshold"]) * 1.1})
    return out
