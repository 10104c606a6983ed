import json
from pathlib import Path

import numpy as np
import pytest
import torch

from detector.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from detector.inference import Detector, Prediction


def _frames(toy_dataset: Path):
    from detector.data import read_image

    files = sorted((toy_dataset / "test").rglob("*.png"))
    return [read_image(f) for f in files]


def test_toy_train_eval_well_above_chance(trained):
    m = trained["metrics"]
    assert m["n_defective"] == 10 and m["n_test"] == 20
    assert m["image_auroc"] >= 0.8, m
    assert m["pixel_auroc"] >= 0.7, m
    assert trained["config"]["mosaic_scale"] in (4, 8)


def test_checkpoint_round_trip_identical_outputs(trained, toy_dataset, tmp_path):
    frames = _frames(toy_dataset)
    det = Detector.load(trained["checkpoint"], device="cpu")
    p1 = det.predict(frames)
    # in-memory model (before saving) gives the same scores
    model = trained["model"].cpu().eval()
    x = torch.from_numpy(np.stack([f for f in frames])).permute(0, 3, 1, 2)
    with torch.no_grad():
        scores, _ = model(x)
    np.testing.assert_allclose(p1.scores, scores.numpy(), rtol=0, atol=1e-6)
    # save again from the loaded model -> load -> bit-identical predictions
    again = tmp_path / "again.pt"
    save_checkpoint(again, det._model, det.meta)
    det2 = Detector.load(again, device="cpu")
    p2 = det2.predict(frames)
    assert np.array_equal(p1.scores, p2.scores)
    assert all(np.array_equal(a, b) for a, b in zip(p1.maps, p2.maps))
    assert det2.threshold == det.threshold and det2.image_size == det.image_size == 64
    assert det2.product == "toy"


def test_checkpoint_carries_everything(trained):
    cfg, meta, state, sha = read_checkpoint(trained["checkpoint"])
    assert cfg.image_size == 64 and cfg.mosaic_scale == trained["config"]["mosaic_scale"] and cfg.fader is not None
    for key in ("threshold", "target_far", "masker", "training_data", "metrics", "library_versions",
                "normalisation", "product", "train_config"):
        assert key in meta, key
    assert len(meta["training_data"]["fingerprint_sha256"]) == 64
    assert len(meta["masker"]["state_sha256"]) == 64
    assert any(k.startswith("masker.") for k in state) and any(k.startswith("fader.") for k in state)
    assert Detector.load(trained["checkpoint"], device="cpu").version == sha[:12]


def test_predict_api_contract(trained):
    det = Detector.load(trained["checkpoint"], device="auto")
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (50, 70), dtype=np.uint8), rng.integers(0, 255, (120, 90, 3), dtype=np.uint8),
              rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)] * 4  # 12 frames: more than one internal batch
    pred = det.predict(frames)
    assert isinstance(pred, Prediction)
    assert pred.scores.dtype == np.float32 and pred.scores.shape == (12,)
    assert pred.verdicts.dtype == bool and pred.verdicts.shape == (12,)
    assert [m.shape for m in pred.maps] == [f.shape[:2] for f in frames]
    assert all(m.dtype == np.float32 for m in pred.maps)
    assert np.allclose(pred.scores[:3], pred.scores[3:6], atol=1e-5)  # same frame, different batch -> same score
    det.threshold = float(pred.scores.min()) - 1.0
    assert det.predict(frames[:2]).verdicts.all() and det.predict(frames[:2]).threshold == det.threshold
    # deterministic on CPU
    assert np.array_equal(det.predict(frames).scores, det.predict(frames).scores)
    assert det.predict([]).scores.shape == (0,)


def test_truncated_foreign_and_mismatched_checkpoints(trained, tmp_path):
    good = Path(trained["checkpoint"]).read_bytes()
    cases = {}
    cases["truncated"] = good[: len(good) // 2]
    cases["empty"] = b""
    cases["text"] = b"hello, this is not a model\n"
    for name, data in cases.items():
        p = tmp_path / f"{name}.pt"
        p.write_bytes(data)
        with pytest.raises(CheckpointError) as e:
            Detector.load(p, device="cpu")
        assert "\n" not in str(e.value) and str(p) in str(e.value)
    # a foreign PyTorch file (plain state dict)
    p = tmp_path / "foreign.pt"
    torch.save({"weight": torch.zeros(3)}, p)
    with pytest.raises(CheckpointError, match="not a linewatch detector checkpoint"):
        Detector.load(p, device="cpu")
    # a pickle of arbitrary objects is refused, never unpickled
    p = tmp_path / "evil.pt"
    torch.save({"format": "linewatch-detector", "x": Path("/")}, p)
    with pytest.raises(CheckpointError):
        Detector.load(p, device="cpu")
    # mismatched: architecture config says something else than the weights
    payload = torch.load(trained["checkpoint"], weights_only=True)
    cfg = json.loads(payload["config"])
    cfg["unet_channels"] = 16
    payload["config"] = json.dumps(cfg)
    p = tmp_path / "mismatch.pt"
    torch.save(payload, p)
    with pytest.raises(CheckpointError, match="does not match"):
        Detector.load(p, device="cpu")
    # altered weights
    payload = torch.load(trained["checkpoint"], weights_only=True)
    k = next(iter(k for k in payload["state"] if k.startswith("unet.")))
    payload["state"][k] = payload["state"][k] + 1
    p = tmp_path / "altered.pt"
    torch.save(payload, p)
    with pytest.raises(CheckpointError, match="hash mismatch"):
        Detector.load(p, device="cpu")
    # newer format
    payload = torch.load(trained["checkpoint"], weights_only=True)
    payload["format_version"] = 99
    p = tmp_path / "newer.pt"
    torch.save(payload, p)
    with pytest.raises(CheckpointError, match="format version"):
        Detector.load(p, device="cpu")
    with pytest.raises(CheckpointError, match="not found"):
        Detector.load(tmp_path / "nope.pt", device="cpu")
    # a family this build does not have
    payload = torch.load(trained["checkpoint"], weights_only=True)
    payload["family"] = "no-such-family"
    p = tmp_path / "foreign-family.pt"
    torch.save(payload, p)
    with pytest.raises(CheckpointError, match="model family 'no-such-family'"):
        Detector.load(p, device="cpu")


def test_version_1_checkpoint_loads_as_ear_fader_and_predicts_identically(trained, toy_dataset, tmp_path):
    """A file written before model families (format 1: no family field) is read as ear-fader."""
    from detector.hashing import state_sha256

    payload = torch.load(trained["checkpoint"], weights_only=True)
    assert payload["format_version"] == 2 and payload["family"] == "ear-fader"
    meta = json.loads(payload["meta"])
    meta.pop("family")
    v1 = {"format": "linewatch-detector", "format_version": 1, "config": payload["config"],
          "meta": json.dumps(meta), "state": payload["state"], "state_sha256": state_sha256(payload["state"])}
    p = tmp_path / "v1.pt"
    torch.save(v1, p)
    frames = _frames(toy_dataset)
    old, new = Detector.load(p, device="cpu"), Detector.load(trained["checkpoint"], device="cpu")
    assert old.family == "ear-fader" and old.threshold == new.threshold
    a, b = old.predict(frames), new.predict(frames)
    assert np.array_equal(a.scores, b.scores) and np.array_equal(a.verdicts, b.verdicts)
