"""Every registered model family through the family-neutral layer: tiny training, checkpoint, Detector.

The families are found through the registry, so a new family is tested here without a new test:
its tiny settings come from ``TINY`` (a family missing there fails, on purpose).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from detector.inference import Detector
from detector.models import families, get_family, model_names, resolve_model
from detector.workflow import train_model

from .conftest import masker_config

# the smallest settings at which each family still separates the toy defects (64 px toy images)
TINY: dict[str, dict] = {
    "ear-fader": {"image_size": 64, "unet_channels": 8, "mosaic_scale": 8, "mask_quantile": 0.5, "auto_m": False,
                  "auto_q": False, "epochs_ear": 25, "epochs_fader": 8},
    "crad": {"image_size": 64, "hidden": 32, "blocks": 1, "epochs": 12, "batch_size": 8},
    # a random teacher (no distilled file in CI), PDN at 1/8 width, a fast and less selective hard loss
    "efficientad": {"image_size": 64, "net_size": 64, "width": 0.125, "ae_channels": 16, "pretrained": False,
                    "steps": 150, "batch_size": 4, "lr": 1e-3, "hard_quantile": 0.9, "penalty": False},
}


def _tiny(family: str) -> dict:
    o = dict(TINY[family])
    if family == "ear-fader":
        o["masker"] = masker_config().to_dict()
    return o


def _frames(root: Path) -> tuple[list[np.ndarray], np.ndarray]:
    from detector.data import MVTecFolder, read_image

    ds = MVTecFolder.open(root, need_test=True)
    return [read_image(s.path) for s in ds.test], np.array([s.label for s in ds.test])


def test_registry_names_every_family_and_its_variants():
    names = model_names()
    assert {"ear-fader", "crad", "fader", "ear"} <= set(names)
    assert resolve_model("crad")[0].name == "crad"
    fam, variant = resolve_model("ear")
    assert (fam.name, variant) == ("ear-fader", "ear")
    assert resolve_model("ear-fader")[1] == "fader"  # a family name means its first variant
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        resolve_model("nope")
    for fam in families():
        assert {"cpu", "gpu"} <= set(fam.profiles) and all(p.cost for p in fam.profiles.values())
        assert fam.name in TINY, f"add tiny test settings for the new family {fam.name}"


@pytest.mark.parametrize("family", sorted(TINY))
def test_family_round_trips_train_save_load_predict(family, toy_dataset, tmp_path):
    torch.manual_seed(0)
    fam = get_family(family)
    out = tmp_path / f"{family}.pt"
    s = train_model(None, out, data=[toy_dataset], model=family, profile="cpu", overrides=_tiny(family),
                    device="cpu", progress=False)
    assert s["family"] == family and s["metrics"]["image_auroc"] > 0.9, s["metrics"]
    det = Detector.load(out, device="cpu")
    assert det.family == family and det.image_size == 64 and det.product == "toy"
    frames, labels = _frames(toy_dataset)
    pred = det.predict(frames)
    assert pred.scores.dtype == np.float32 and pred.scores.shape == (len(frames),)
    assert all(m.shape == f.shape[:2] and m.dtype == np.float32 for m, f in zip(pred.maps, frames))
    # the checkpoint gives what the trained module gave
    module = s["model"].cpu().eval()
    x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        scores, maps = module(x)
    assert maps.shape == (len(frames), 1, 64, 64)
    np.testing.assert_allclose(pred.scores, scores.numpy(), rtol=1e-5, atol=1e-6)
    assert np.array_equal(pred.verdicts, pred.scores > det.threshold)
    assert pred.scores[labels == 1].mean() > pred.scores[labels == 0].mean()
    assert isinstance(module, fam.build(fam.for_loading(module.cfg)).__class__)


def test_unified_crad_serves_two_products_each_with_its_own_threshold(toy_dataset, tmp_path):
    from detector.service.routing import ModelSet, RoutingConfig
    from detector.synthetic import make_toy_dataset

    other = make_toy_dataset(tmp_path / "other", n_train=24, n_good=6, n_bad=6, size=64, seed=7,
                             tint=(0.55, 0.85, 1.0))
    out = tmp_path / "unified.pt"
    s = train_model(None, out, data=[toy_dataset, other], model="crad", profile="cpu", overrides=_tiny("crad"),
                    device="cpu", progress=False)
    assert set(s["thresholds"]) == {"toy", "other"} and set(s["metrics"]) == {"toy", "other"}
    assert all(m["image_auroc"] > 0.8 for m in s["metrics"].values()), s["metrics"]
    det = Detector.load(out, device="cpu")
    assert det.products == ["toy", "other"]
    assert det.threshold_for("toy") == s["thresholds"]["toy"] and det.threshold_for("other") == s["thresholds"]["other"]
    assert s["thresholds"]["toy"] != s["thresholds"]["other"]
    frames, _ = _frames(other)
    assert det.predict(frames, product="other").threshold == s["thresholds"]["other"]
    # the service's routing: both products to the one checkpoint, each with its own threshold
    routing = RoutingConfig(products={"toy": str(out), "other": str(out)})
    ms = ModelSet(routing, {str(out): det})
    assert ms.route("cam-1", "toy").threshold == s["thresholds"]["toy"]
    assert ms.route("cam-2", "other").threshold == s["thresholds"]["other"]


def test_one_product_families_refuse_several_products(toy_dataset, tmp_path):
    from detector.data import DatasetError

    with pytest.raises(DatasetError, match="one product per model"):
        train_model(None, None, data=[toy_dataset, tmp_path / "another"], model="fader", profile="cpu",
                    overrides=_tiny("ear-fader"), device="cpu", progress=False)


def test_warm_start_continues_the_active_family(toy_dataset, tmp_path):
    """Retraining starts from whatever family is active, from decoded frames in memory."""
    from detector.workflow import train_on_images

    first = tmp_path / "crad.pt"
    train_model(None, first, data=[toy_dataset], model="crad", profile="cpu", overrides=_tiny("crad"),
                device="cpu", progress=False)
    frames = [f for f, label in zip(*_frames(toy_dataset)) if label == 0]
    s = train_on_images(frames * 3, "toy", init_checkpoint=first, overrides={"epochs": 2, "epochs_ear": 99},
                        device="cpu", progress=False)
    assert s["family"] == "crad" and s["meta"]["warm_start"]["checkpoint"] == str(first)
    assert s["meta"]["train_config"]["epochs"] == 2  # a setting CRAD has is applied, EAR's ignored
    # the drift reference holds the statistics of the frames as given, before they were resized
    from detector.drift import image_stats, reference_from_meta

    ref = reference_from_meta(s["meta"], "toy")
    assert ref.n == 3 * len(frames)
    assert ref.stat_mean == pytest.approx(np.mean([image_stats(f) for f in frames], axis=0).tolist())


def test_cpu_profile_is_the_default_on_a_cpu_and_fits_its_budget():
    from detector.workflow import pick_profile

    assert pick_profile("auto", torch.device("cpu")) == "cpu"
    for fam in families():
        cfg, tc = fam.configs(profile="cpu")
        gcfg, gtc = fam.configs(profile="gpu")
        assert cfg.image_size <= gcfg.image_size
        assert "min" in fam.profiles["cpu"].cost  # says what it costs
