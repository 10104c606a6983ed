from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("LINEWATCH_SHARED_DIR", REPO.parent / "shared"))
LITE0 = SHARED / "models" / "tf_efficientnet_lite0_in1k.safetensors"



@pytest.fixture(scope="package", autouse=True)
def _one_torch_thread():
    """One intra-op thread: much faster than two when other jobs share a small CPU (CI, shared dev box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def masker_config(input_size: int = 64):
    """The real EfficientNet-Lite0 when the shared file is there, else the same net randomly initialised."""
    from detector.models.ear_fader.maskers import MaskerConfig

    if LITE0.is_file():
        return MaskerConfig(kind="cnn", weights=str(LITE0), input_size=input_size)
    return MaskerConfig(kind="cnn", pretrained=False, input_size=input_size)


def tiny_config(fader: bool = True, **kw):
    from detector.models.ear_fader import EarFaderConfig, FaderConfig

    return EarFaderConfig(image_size=64, mosaic_scale=8, mask_quantile=0.5, unet_channels=8,
                          masker=masker_config(), fader=FaderConfig() if fader else None, **kw)


@pytest.fixture(scope="package")
def toy_dataset(tmp_path_factory) -> Path:
    from detector.synthetic import make_toy_dataset

    return make_toy_dataset(tmp_path_factory.mktemp("toy") / "toy", n_train=32, n_good=10, n_bad=10, size=64, seed=0)


@pytest.fixture(scope="package")
def trained(tmp_path_factory, toy_dataset):
    """A tiny EAR + FADeR model trained on the toy data (shared by several tests)."""
    from detector.models.ear_fader import EarFaderTrainConfig
    from detector.workflow import train_model

    tc = EarFaderTrainConfig(epochs_ear=25, epochs_fader=8, batch_size=8, m_candidates=(4, 8), q_candidates=(0.5,),
                             auto_q=False)
    out = tmp_path_factory.mktemp("ckpt") / "toy.pt"
    summary = train_model(None, out, data=[toy_dataset], configs=(tiny_config(), tc), device="cpu", progress=False)
    return summary
