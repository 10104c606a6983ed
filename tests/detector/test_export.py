"""Export (ONNX, OpenVINO, TorchScript) with parity, and the runtimes that run the exports."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from detector.export import ExportError, ParityImages, export_module, generated_images, read_model_metadata
from detector.runtimes import (MANIFEST, RuntimeUnavailable, TorchRuntime, available_backends, fastest,
                               open_export_runtime, open_runtime, read_export, run_frames)

FORMATS = [f for f, need in (("onnx", "onnxruntime"), ("openvino", "openvino"), ("torchscript", "torch"))
           if need in available_backends()]


class TinyReconstruction(nn.Module):
    """A module with the family export contract: uint8 in, (scores, maps) out, processing inside."""

    def __init__(self, image_size: int = 32):
        super().__init__()
        self.image_size = image_size
        self.enc = nn.Conv2d(3, 8, 3, padding=1)
        self.dec = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.float().div(255.0) if images.dtype == torch.uint8 else images.float()
        recon = self.dec(torch.relu(self.enc(x)))
        amap = ((x - recon) ** 2).mean(1, keepdim=True)
        amap = F.avg_pool2d(F.pad(amap, [1] * 4, mode="reflect"), 3, stride=1)
        return amap.flatten(1).amax(1), amap


class DriftsWhenTraced(TinyReconstruction):
    """Branches in Python on the data: an exporter bakes in the branch of its example batch, so the
    exported model scores other images differently (the classic drift the parity check exists for)."""

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores, amap = super().forward(images)
        if float(images.float().mean()) > 127.5:
            amap = amap * 2.0
        return amap.flatten(1).amax(1), amap


def _meta(module: nn.Module, threshold: float) -> dict:
    return {"family": "tiny", "product": "widget", "threshold": threshold, "version": "0123456789ab",
            "image_size": module.image_size}


def _labelled(size: int) -> ParityImages:
    imgs = generated_images(size, 12)
    return ParityImages(imgs, "generated (12 images)", np.arange(len(imgs)) % 2)


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    torch.manual_seed(0)
    return TinyReconstruction().eval()


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_matches_pytorch_and_carries_metadata(tiny, fmt, tmp_path):
    ref = TorchRuntime(tiny)(generated_images(32, 4))
    threshold = float(np.sort(ref[0])[1:3].mean())  # verdicts on both sides of it, none on it
    info = export_module(tiny, _meta(tiny, threshold), fmt, tmp_path)

    again = read_export(tmp_path)
    assert again.format == fmt and again.models == {"fp32": info.models["fp32"]}
    stored = read_model_metadata(again.model_path())
    assert stored["family"] == "tiny" and stored["product"] == "widget" and stored["threshold"] == threshold
    assert stored["version"] == "0123456789ab" and stored["image_size"] == 32 and stored["format"] == fmt
    parity = json.loads((tmp_path / "parity.json").read_text())
    assert parity["passed"] and parity["n_images"] == 16 and 1 in parity["batches"] and 8 in parity["batches"]
    for backend, res in parity["backends"].items():
        assert res["passed"] and res["verdict_changes"] == 0, backend
        assert res["score_max_rel_diff"] <= 1e-4 and res["map_max_abs_diff"] <= 1e-3

    # every backend that can run the format predicts frames of any size like PyTorch does
    frames = [np.full((40, 56, 3), 90, np.uint8), np.random.default_rng(1).integers(0, 256, (32, 32), np.uint8),
              np.random.default_rng(2).integers(0, 256, (70, 30, 3), np.uint8)]
    want_scores, want_maps = run_frames(TorchRuntime(tiny), frames, 32, batch_size=2)
    for backend in parity["backends"]:
        scores, maps = run_frames(open_export_runtime(again, backend), frames, 32, batch_size=2)
        np.testing.assert_allclose(scores, want_scores, rtol=1e-4, atol=1e-7)
        assert [m.shape for m in maps] == [(40, 56), (32, 32), (70, 30)]
        for got, want in zip(maps, want_maps):
            np.testing.assert_allclose(got, want, atol=1e-3)


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f != "openvino"])
def test_export_fails_loudly_when_scores_drift(fmt, tmp_path):
    torch.manual_seed(0)
    model = DriftsWhenTraced().eval()
    with pytest.raises(ExportError, match="parity failed"):
        export_module(model, _meta(model, 0.5), fmt, tmp_path)
    parity = json.loads((tmp_path / "parity.json").read_text())
    assert parity["passed"] is False
    assert not (tmp_path / MANIFEST).exists()
    with pytest.raises(ValueError, match="not an export folder"):
        read_export(tmp_path)


def test_a_new_failed_export_voids_the_old_manifest(tiny, tmp_path):
    export_module(tiny, _meta(tiny, 0.5), "torchscript", tmp_path)
    assert read_export(tmp_path)
    torch.manual_seed(0)
    with pytest.raises(ExportError):
        export_module(DriftsWhenTraced().eval(), _meta(tiny, 0.5), "torchscript", tmp_path)
    assert not (tmp_path / MANIFEST).exists()


@pytest.mark.skipif("onnxruntime" not in available_backends(), reason="onnxruntime not installed")
def test_int8_is_kept_only_within_the_auroc_limit(tiny, tmp_path):
    data = _labelled(32)
    info = export_module(tiny, _meta(tiny, 0.5), "onnx", tmp_path, data, int8_calibration=data.images[data.labels == 0])
    q = info.parity["int8"]
    assert q["calibration_images"] == 6 and np.isfinite(q["image_auroc_int8"])
    assert q["image_auroc_loss"] == pytest.approx(q["image_auroc_fp32_torch"] - q["image_auroc_int8"])
    assert q["accepted"] == (q["image_auroc_loss"] <= 0.002)
    assert ("int8" in read_export(tmp_path).models) == q["accepted"]
    assert (tmp_path / "model.int8.onnx").exists() == q["accepted"]
    if q["accepted"]:
        rt = open_export_runtime(read_export(tmp_path), "onnxruntime", "int8")
        assert rt(data.images[:3])[0].shape == (3,)


def test_int8_needs_a_labelled_test_set(tiny, tmp_path):
    with pytest.raises(ExportError, match="labelled test set"):
        export_module(tiny, _meta(tiny, 0.5), "onnx", tmp_path, int8_calibration=generated_images(32, 4))


def test_backend_that_cannot_run_the_format_is_refused(tiny, tmp_path):
    info = export_module(tiny, _meta(tiny, 0.5), "torchscript", tmp_path)
    with pytest.raises(RuntimeUnavailable, match="cannot run a torchscript export"):
        open_export_runtime(info, "onnxruntime")


def test_torchscript_on_a_checkpoint_says_to_export_first(trained):
    from detector.runtimes import open_runtime

    with pytest.raises(RuntimeUnavailable, match="export --checkpoint .* --format torchscript first"):
        open_runtime(trained["checkpoint"], "torchscript", device="cpu")


def test_fastest_keeps_the_quicker_runtime_and_skips_broken_ones(tiny, caplog):
    class Slow(TorchRuntime):
        name = "slow"

        def __call__(self, images):
            import time

            time.sleep(0.02)
            return super().__call__(images)

    def broken():
        raise RuntimeUnavailable("not installed here")

    caplog.set_level("INFO", logger="detector.runtimes")
    rt, timings = fastest({"slow": lambda: Slow(tiny), "broken": broken, "torch": lambda: TorchRuntime(tiny)},
                          32, batch=2, repeats=2)
    assert rt.name == "torch"
    assert [t.backend for t in timings] == ["slow", "torch"]
    assert timings[0].ms_per_frame > timings[1].ms_per_frame
    assert "broken skipped" in caplog.text and "auto chose torch" in caplog.text


@pytest.mark.skipif(not {"onnxruntime", "openvino"} <= set(available_backends()), reason="needs both ONNX backends")
def test_auto_on_an_onnx_export_times_both_backends(tiny, tmp_path, caplog):
    export_module(tiny, _meta(tiny, 0.25), "onnx", tmp_path)
    caplog.set_level("INFO", logger="detector.runtimes")
    loaded = open_runtime(tmp_path, "auto", batch_size=2)
    assert {t.backend for t in loaded.timings} == {"onnxruntime", "openvino"}
    assert loaded.runtime.name == min(loaded.timings, key=lambda t: t.ms_per_frame).backend
    assert f"auto chose {loaded.runtime.name}" in caplog.text
    assert loaded.version == "0123456789ab" and loaded.image_size == 32 and loaded.meta["threshold"] == 0.25
    with pytest.raises(RuntimeUnavailable, match="needs the checkpoint"):
        open_runtime(tmp_path, "torch")


def test_export_cache_key_changes_with_each_tool_version_the_format_and_the_graph_code(monkeypatch):
    import detector.runtimes as runtimes
    from detector.runtimes import export_cache_key, export_tool_versions

    sha = "ab" * 32
    tools = export_tool_versions()
    assert {"torch", "onnxruntime", "openvino"} <= set(tools)
    base = export_cache_key(sha, tools, "code-1")
    assert base.startswith(sha[:16] + "-onnx-") and base == export_cache_key(sha, dict(tools), "code-1")
    keys = {export_cache_key(sha, {**tools, dist: "0.0.1-other"}, "code-1") for dist in tools}
    keys |= {export_cache_key(sha, tools, "code-2"), export_cache_key("cd" * 32, tools, "code-1")}
    assert base not in keys and len(keys) == len(tools) + 2
    monkeypatch.setattr(runtimes, "EXPORT_VERSION", runtimes.EXPORT_VERSION + 1)
    assert export_cache_key(sha, tools, "code-1") != base


@pytest.mark.skipif("onnxruntime" not in available_backends(), reason="needs onnxruntime")
def test_an_upgraded_runtime_never_reuses_a_cached_export(tmp_path, monkeypatch):
    """A checkpoint loaded on onnxruntime is exported into the cache once per tool versions: the same
    versions reuse the entry, a changed onnxruntime version string gets a new, parity-checked one."""
    import detector.runtimes as runtimes
    from detector.checkpoint import save_checkpoint

    module = _tiny_family_module("efficientad")  # the quickest family to export
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, module, {"threshold": 0.5, "product": "toy"})
    cache = tmp_path / "cache"
    monkeypatch.setenv("LINEWATCH_EXPORT_CACHE", str(cache))
    installed = runtimes.export_tool_versions()

    def load_with(onnxruntime_version: str):
        monkeypatch.setattr(runtimes, "export_tool_versions", lambda: {**installed, "onnxruntime": onnxruntime_version})
        return open_runtime(ckpt, "onnxruntime", device="cpu")

    load_with("1.20.0")
    (first,) = cache.iterdir()
    written = (first / "model.onnx").stat().st_mtime_ns
    load_with("1.20.0")
    assert list(cache.iterdir()) == [first] and (first / "model.onnx").stat().st_mtime_ns == written

    loaded = load_with("1.99.0")
    second = next(p for p in cache.iterdir() if p != first)
    assert sorted(cache.iterdir()) == sorted([first, second])
    assert first.name.split("-onnx-")[0] == second.name.split("-onnx-")[0]  # same checkpoint, other tools
    parity = read_export(second).parity
    assert parity["passed"] and parity["tool_versions"]["onnxruntime"] == installed["onnxruntime"]
    assert loaded.runtime.name == "onnxruntime"

    # a later start of the upgraded service: the old tools' entry, unused for two days, is pruned
    monkeypatch.setattr(runtimes, "_loaded_entries", set())
    monkeypatch.setenv("LINEWATCH_EXPORT_CACHE_KEEP", "0")
    two_days_ago = time.time() - 2 * 86400
    os.utime(first / MANIFEST, (two_days_ago, two_days_ago))
    load_with("1.99.0")
    assert list(cache.iterdir()) == [second]


def test_pruning_the_export_cache_keeps_what_is_in_use_recent_or_among_the_last_used(tmp_path, monkeypatch):
    import detector.runtimes as runtimes
    from detector.runtimes import prune_export_cache

    now = time.time()
    day = 86400.0

    def entry(name: str, days_ago: float, complete: bool = True):
        p = tmp_path / name
        p.mkdir()
        stamp = p / MANIFEST if complete else p / "model.onnx"
        stamp.write_text("{}")
        t = now - days_ago * day
        os.utime(stamp, (t, t))
        os.utime(p, (t, t))
        return p

    current = entry("aaaa-onnx-new", 30)  # in use: kept however old
    loaded_here = entry("bbbb-onnx-new", 20)  # loaded by this process earlier: kept
    recent = [entry(f"r{i}-onnx-old", 2 + i) for i in range(3)]  # with fresh, the 4 most recently used of the rest
    stale = [entry(f"s{i}-onnx-old", 10 + i) for i in range(2)]
    fresh = entry("cccc-onnx-other", 0.5)  # used within the grace period (another replica): kept
    failed = entry("dddd-onnx-new.failed", 5, complete=False)
    crashed = entry("eeee-onnx-new.tmp-123", 5, complete=False)
    writing = entry("ffff-onnx-new.tmp-456", 0.01, complete=False)  # being written now
    (tmp_path / "stray-file").write_text("")  # not an entry: left alone
    monkeypatch.setattr(runtimes, "_loaded_entries", {loaded_here.name})

    deleted = prune_export_cache(tmp_path, {current.name}, keep_last=4, now=now)
    assert sorted(deleted) == sorted([*stale, failed, crashed])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in [current, loaded_here, *recent, fresh, writing, tmp_path / "stray-file"])
    assert prune_export_cache(tmp_path, {current.name}, keep_last=4, now=now) == []  # nothing more to do
    # keep none of the rest: only what is in use, loaded here or within the grace period stays
    prune_export_cache(tmp_path, {current.name}, keep_last=0, now=now)
    assert {p.name for p in tmp_path.iterdir() if p.is_dir()} == {current.name, loaded_here.name, fresh.name,
                                                                    writing.name}
    assert prune_export_cache(tmp_path / "missing", set()) == []


@pytest.mark.skipif("onnxruntime" not in available_backends(), reason="needs onnxruntime")
def test_an_export_into_a_shared_cache_leaves_another_replicas_unfinished_export_alone(tmp_path, monkeypatch):
    """Detector replicas sharing one export cache may run with the same process id (each
    container's first process is 1): a replica's export must neither write into nor delete the
    folder in which another one is still exporting the same checkpoint."""
    import hashlib

    import detector.runtimes as runtimes
    from detector.checkpoint import save_checkpoint

    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, _tiny_family_module("efficientad"), {"threshold": 0.5, "product": "toy"})
    cache = tmp_path / "cache"
    monkeypatch.setenv("LINEWATCH_EXPORT_CACHE", str(cache))
    monkeypatch.setattr(runtimes.os, "getpid", lambda: 1)
    key = runtimes.export_cache_key(hashlib.sha256(ckpt.read_bytes()).hexdigest())
    other = cache / f"{key}.tmp-1"  # another replica with process id 1, mid-export
    other.mkdir(parents=True)
    (other / "model.onnx").write_bytes(b"half written by another replica")

    loaded = open_runtime(ckpt, "onnxruntime", device="cpu")
    assert loaded.runtime.name == "onnxruntime"
    assert runtimes.is_export(cache / key) and b"another replica" not in (cache / key / "model.onnx").read_bytes()
    assert (other / "model.onnx").read_bytes() == b"half written by another replica"
    assert sorted(p.name for p in cache.iterdir()) == sorted([key, other.name])  # and no folder of ours left


# ------------------------------------------------------------------- every registered family
def _tiny_family_module(name: str) -> nn.Module:
    from detector.models import get_family

    from .test_families import _tiny

    fam = get_family(name)
    cfg, _ = fam.configs(profile="cpu", overrides=_tiny(name))
    torch.manual_seed(0)
    return fam.build(fam.for_loading(cfg)).eval()


def _family_names() -> list[str]:
    from detector.models import families

    return sorted(f.name for f in families())


@pytest.mark.skipif(not {"onnxruntime", "openvino"} <= set(available_backends()), reason="needs both ONNX backends")
@pytest.mark.parametrize("family", _family_names())
def test_every_family_exports_and_its_export_predicts_like_the_checkpoint(family, toy_dataset, tmp_path, monkeypatch):
    """Export + parity for each registered family on a tiny model (random weights: parity does not
    need a good model), through the command line; then Detector.load of the export on each ONNX
    backend (and auto) predicts what the checkpoint predicts."""
    from detector.checkpoint import save_checkpoint
    from detector.cli import main
    from detector.inference import Detector

    from .test_families import _frames

    module = _tiny_family_module(family)
    frames, _ = _frames(toy_dataset)
    x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        scores = np.sort(module(x)[0].numpy())
    threshold = float(scores[len(scores) // 2 - 1:len(scores) // 2 + 1].mean())  # verdicts on both sides of it
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, module, {"threshold": threshold, "product": "toy"})
    out = tmp_path / "export"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--out", str(out),
                 "--data", str(toy_dataset)]) == 0

    want = Detector.load(ckpt, device="cpu")
    stored = read_model_metadata(out / "model.onnx")
    assert (stored["family"], stored["product"], stored["version"], stored["image_size"]) == \
        (family, "toy", want.version, want.image_size)
    assert stored["threshold"] == pytest.approx(threshold)
    assert sorted(p.name for p in out.iterdir()) == ["linewatch-export.json", "model.onnx", "parity.json"]
    parity = read_export(out).parity
    assert parity["n_images"] == len(frames) and set(parity["backends"]) == {"onnxruntime", "openvino"}

    ref = want.predict(frames)
    assert 0 < ref.verdicts.sum() < len(frames)
    for backend in ("onnxruntime", "openvino", "auto"):
        det = Detector.load(out, device="cpu", backend=backend)
        assert (det.version, det.family, det.threshold, det.image_size) == \
            (want.version, family, want.threshold, want.image_size)
        pred = det.predict(frames)
        np.testing.assert_allclose(pred.scores, ref.scores, rtol=1e-4)
        assert np.array_equal(pred.verdicts, ref.verdicts)
        for got, exp in zip(pred.maps, ref.maps):
            assert got.shape == exp.shape
            np.testing.assert_allclose(got, exp, atol=1e-3)

    # what `linewatch-detector serve --backend openvino` loads
    from detector.service.cli import _load_detector
    from detector.service.settings import ServiceSettings

    assert _load_detector(str(out), ServiceSettings(backend="openvino", max_batch=2)).backend == "openvino"


# ------------------------------------------------------------- the service's default backend, auto
def _tiny_checkpoint(tmp_path):
    from detector.checkpoint import save_checkpoint

    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, _tiny_family_module("efficientad"), {"threshold": 0.5, "product": "toy"})
    return ckpt


def _serve_load(ckpt, monkeypatch):
    """What `linewatch-detector serve --model ckpt` loads, with the settings' default backend."""
    from detector.service.cli import _load_detector
    from detector.service.settings import ServiceSettings

    monkeypatch.delenv("LINEWATCH_DETECTOR_BACKEND", raising=False)  # the suite pins torch (tests/conftest.py)
    settings = ServiceSettings(max_batch=2, device="cpu")
    assert settings.backend == "auto"
    return _load_detector(str(ckpt), settings)


def test_serve_default_runs_on_torch_and_exports_nothing_without_the_onnx_extras(tmp_path, monkeypatch):
    import sys

    ckpt = _tiny_checkpoint(tmp_path)
    monkeypatch.setenv("LINEWATCH_EXPORT_CACHE", str(tmp_path / "cache"))
    for name in ("onnxruntime", "openvino"):  # as if not installed: import and find_spec both fail
        monkeypatch.setitem(sys.modules, name, None)
    assert available_backends() == ["torch", "torchscript"]
    det = _serve_load(ckpt, monkeypatch)
    assert det.backend == "torch" and not (tmp_path / "cache").exists()
    assert det.predict([np.zeros((40, 50, 3), np.uint8)]).maps[0].shape == (40, 50)


@pytest.mark.skipif("onnxruntime" not in available_backends(), reason="needs onnxruntime")
def test_serve_default_runs_on_torch_when_the_export_cache_cannot_be_written(tmp_path, monkeypatch, caplog):
    from detector.checkpoint import CheckpointError
    from detector.inference import Detector

    ckpt = _tiny_checkpoint(tmp_path)
    (tmp_path / "not-a-dir").write_text("")
    monkeypatch.setenv("LINEWATCH_EXPORT_CACHE", str(tmp_path / "not-a-dir" / "exports"))
    caplog.set_level("WARNING", logger="detector.runtimes")
    assert _serve_load(ckpt, monkeypatch).backend == "torch"
    assert "backend auto: running on torch" in caplog.text and "not-a-dir" in caplog.text
    with pytest.raises(CheckpointError, match="not-a-dir"):  # asked for by name: a start-up error
        Detector.load(ckpt, device="cpu", backend="onnxruntime")


@pytest.mark.skipif("onnxruntime" not in available_backends(), reason="needs onnxruntime")
def test_serve_default_runs_on_torch_when_the_export_fails_parity(tmp_path, monkeypatch, caplog):
    import detector.export as export

    ckpt = _tiny_checkpoint(tmp_path)
    cache = tmp_path / "cache"
    monkeypatch.setenv("LINEWATCH_EXPORT_CACHE", str(cache))
    monkeypatch.setattr(export, "SCORE_RTOL", -1.0)  # no export can pass: as if the runtime drifted
    caplog.set_level("WARNING", logger="detector.runtimes")
    det = _serve_load(ckpt, monkeypatch)
    assert det.backend == "torch"
    assert "backend auto: running on torch" in caplog.text and "parity failed" in caplog.text
    (failed,) = cache.iterdir()  # no usable entry; the failed attempt's report is kept, as the log says
    assert failed.name.endswith(".failed") and str(failed / "parity.json") in caplog.text
    assert not json.loads((failed / "parity.json").read_text())["passed"]
