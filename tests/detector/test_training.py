import numpy as np
import pytest
import torch

from detector.models.ear_fader import EarFader, EarFaderTrainConfig, FaderConfig
from detector.models.ear_fader.trainer import lr_lambda, prepare, train_ear, train_fader

from .conftest import tiny_config


@pytest.fixture(scope="module")
def stage1(toy_dataset):
    from detector.data import MVTecFolder, load_images
    from detector.models.ear_fader.maskers import build_masker
    from detector.workflow import HoldoutOptions, training_set

    cfg = tiny_config(fader=False)
    tc = EarFaderTrainConfig(epochs_ear=2, epochs_fader=1, m_candidates=(4, 8), q_candidates=(0.25, 0.5))
    masker = build_masker(cfg.masker)
    images = load_images(MVTecFolder.open(toy_dataset).train, 64).images
    tset = training_set({"toy": images}, 0, HoldoutOptions(), torch.device("cpu"))
    data = prepare(tset, masker, progress=False)
    s1 = train_ear(cfg, data, tc, masker, torch.device("cpu"), progress=False)
    return s1, data, tc


def test_stage1_chooses_m_and_q_on_held_out_images(stage1):
    s1, data, _ = stage1
    assert len(data.val) >= 1 and len(data.train) + len(data.val) == 32
    assert {(r["m"], r["q"]) for r in s1.selection} == {(4, 0.25), (4, 0.5), (8, 0.25), (8, 0.5)}
    assert (s1.model.cfg.mosaic_scale, s1.model.cfg.mask_quantile) in {(r["m"], r["q"]) for r in s1.selection}


@pytest.mark.parametrize("variant", [v for v in EarFader.variants if v != "ear"])
def test_stage2_variants_train_with_frozen_encoder(stage1, variant):
    s1, data, tc = stage1
    enc_before = {k: v.clone() for k, v in s1.model.unet.encoder.state_dict().items()}
    dec_before = {k: v.clone() for k, v in s1.model.unet.decoder.state_dict().items()}
    s2 = train_fader(s1.model, FaderConfig(**EarFader.variants[variant]["fader"]), data, tc, torch.device("cpu"), progress=False)
    enc_after = s2.model.unet.encoder.state_dict()
    assert all(torch.equal(enc_before[k], enc_after[k]) for k in enc_before)  # encoder frozen (incl. BN stats)
    assert any(not torch.equal(dec_before[k], v) for k, v in s2.model.unet.decoder.state_dict().items())
    # the stage-1 model is untouched (shared by the variants)
    assert all(torch.equal(dec_before[k], v) for k, v in s1.model.unet.decoder.state_dict().items())
    assert float(s2.model.fader.norm_hi) > float(s2.model.fader.norm_lo)
    assert np.isfinite(s2.history).all()


def test_schedules_warmup_and_sgdr():
    tc = EarFaderTrainConfig(schedule="sgdr", warmup_frac=0.1, sgdr_cycles=2)
    f = lr_lambda(100, tc)
    vals = [f(i) for i in range(100)]
    assert vals[0] < vals[9] <= 1.0  # warm-up
    assert max(vals[10:]) <= 1.0 and min(vals[10:]) >= 0.02
    assert any(vals[i + 1] > vals[i] + 0.5 for i in range(10, 99))  # a warm restart
    assert lr_lambda(100, EarFaderTrainConfig(schedule="fixed"))(50) == 1.0
