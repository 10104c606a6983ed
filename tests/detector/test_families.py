"""Every registered model family through the family-neutral layer: tiny training, checkpoint, Detector.

The families are found through the registry, so a new family is tested here without a new test:
its tiny settings are its ``smoke`` profile (a family without one fails, on purpose).
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

def _tiny(family: str) -> dict:
    """The family's ``smoke`` profile as overrides (the smallest settings at which it still separates the
    toy defects), with the test masker for EAR + FADeR."""
    prof = get_family(family).profiles["smoke"]
    o = {**prof.config, **prof.train}
    if family == "ear-fader":
        o["masker"] = masker_config().to_dict()
    return o


FAMILIES = sorted(f.name for f in families())


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
        assert "smoke" in fam.profiles, f"{fam.name} needs a smoke profile (seconds on a CPU, toy defects)"


@pytest.mark.parametrize("family", FAMILIES)
def test_family_round_trips_train_save_load_predict(family, toy_dataset, tmp_path):
    torch.manual_seed(0)
    fam = get_family(family)
    out = tmp_path / f"{family}.pt"
    s = train_model(None, out, data=[toy_dataset], model=family, profile="smoke", overrides=_tiny(family),
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


def test_each_family_reads_the_family_neutral_settings_its_own_way():
    from detector.models import CommonSettings

    common = CommonSettings(epochs=3, batch_size=4, lr=2e-4)
    fam = get_family("ear-fader")
    _, tc = fam.configs(profile="cpu", overrides=fam.common_overrides(common))
    assert (tc.epochs_ear, tc.epochs_fader, tc.passes_ear, tc.passes_fader) == (3, 2, None, None)
    assert (tc.lr, tc.fader_lr, tc.batch_size) == (2e-4, 2e-4, 4)
    fam = get_family("crad")
    _, tc = fam.configs(profile="cpu", overrides=fam.common_overrides(common))
    assert (tc.epochs, tc.passes, tc.batch_size, tc.lr) == (3, None, 4, 2e-4)
    assert tc.grid_lr == pytest.approx(2e-2)  # the grids keep their 100x ratio to the network
    assert get_family("crad").common_overrides(CommonSettings()) == {}  # None leaves the profile's


@pytest.mark.parametrize("family", [f.name for f in families()])
@pytest.mark.parametrize("setting,value", [("epochs", 3), ("batch_size", 5), ("lr", 2e-4)])
def test_every_family_reads_every_family_neutral_setting(family, setting, value):
    """Retraining hands these to whatever family is active: none may be dropped without a word."""
    import dataclasses

    from detector.models import CommonSettings

    fam = get_family(family)
    _, default = fam.configs(profile="cpu")
    _, tc = fam.configs(profile="cpu", overrides=fam.common_overrides(CommonSettings(**{setting: value})))
    assert dataclasses.asdict(tc) != dataclasses.asdict(default), f"{family} ignores {setting}"


def test_efficientad_reads_epochs_as_passes_over_the_training_images():
    from detector.models import CommonSettings

    fam = get_family("efficientad")
    _, tc = fam.configs(profile="cpu", overrides=fam.common_overrides(CommonSettings(epochs=3, batch_size=4,
                                                                                      lr=2e-4)))
    assert (tc.epochs, tc.batch_size, tc.lr) == (3, 4, 2e-4)
    assert tc.steps_for(10) == 8  # ceil(3 x 10 / 4): 3 passes over 10 images in batches of 4
    assert tc.steps_for(1) == 1
    _, profile_tc = fam.configs(profile="cpu")
    assert profile_tc.epochs is None and profile_tc.steps_for(10) == profile_tc.steps  # the profile's steps
    with pytest.raises(ValueError, match="epochs"):
        fam.configs(profile="cpu", overrides={"epochs": 0})


def test_cpu_profile_is_the_default_on_a_cpu_and_fits_its_budget():
    from detector.workflow import pick_profile

    assert pick_profile("auto", torch.device("cpu")) == "cpu"
    for fam in families():
        cfg, tc = fam.configs(profile="cpu")
        gcfg, gtc = fam.configs(profile="gpu")
        assert cfg.image_size <= gcfg.image_size
        assert "min" in fam.profiles["cpu"].cost  # says what it costs


def test_crad_config_written_before_standardisation_keeps_its_features():
    from detector.models.crad import CradConfig

    old = CradConfig(pretrained=False).to_dict()
    for key in ("aggregate", "standardise"):
        old.pop(key)
    cfg = CradConfig.from_dict(old)
    assert (cfg.aggregate, cfg.standardise) == (1, False)  # what the checkpoint's memory was trained on
    assert (CradConfig().aggregate, CradConfig().standardise) == (3, True)
    with pytest.raises(ValueError, match="odd neighbourhood"):
        CradConfig(aggregate=2)


def test_crad_image_passes_count_per_product():
    """A unified model over two products of 500 images trains as many epochs as one product alone:
    each product gets the training length of its own model (twice the steps in all)."""
    _, tc = get_family("crad").configs(profile="cpu")
    assert tc.passes and tc.epochs_for(1000, products=2) == tc.epochs_for(500) == round(tc.passes / 500)
    assert tc.epochs_for(1000, products=1) == round(tc.passes / 1000)
