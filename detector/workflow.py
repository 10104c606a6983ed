"""End-to-end workflows behind the CLI: train a checkpoint, evaluate it, recalibrate it."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import load_model, save_checkpoint
from .config import DetectorConfig, FaderConfig
from .data import MVTecFolder, load_images
from .models.anomaly import AnomalyModel
from .models.maskers import masker_identity
from .training import (PreparedData, TrainConfig, build_masker_for, calibrate_on, evaluate, load_test, prepare,
                       resolve_device, to_tensor, train_ear, train_fader)

log = logging.getLogger(__name__)

# name -> FADeR options (None = EAR alone).  "fader" is the default model.
VARIANTS: dict[str, dict[str, Any] | None] = {
    "ear": None,
    "fader": {},
    "fader-binary": {"mask": "binary"},
    "fader-bilinear": {"resize": "bilinear"},
    "fader-vit": {"head": "vit"},
    "fader-altnorm": {"norm": "__alt__"},  # the normalisation that is not the default one
}


def fader_config(variant: str, base: FaderConfig | None = None) -> FaderConfig | None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} (choose from {', '.join(VARIANTS)})")
    opts = VARIANTS[variant]
    if opts is None:
        return None
    fc = copy.deepcopy(base) if base else FaderConfig()
    for k, v in opts.items():
        if v == "__alt__":
            v = "fixed" if fc.norm == "minmax" else "minmax"
        setattr(fc, k, v)
    return fc


@dataclass
class Trained:
    model: AnomalyModel
    meta: dict[str, Any]


def build_meta(model: AnomalyModel, data: PreparedData, tc: TrainConfig, product: str | None,
               threshold: float, val_scores: np.ndarray, timings: dict[str, float],
               selection: list | None, variant: str) -> dict[str, Any]:
    return {
        "variant": variant,
        "product": product,
        "threshold": float(threshold),
        "target_far": tc.target_far,
        "calibration": {"n_normal": int(len(val_scores)), "source": "held-out train/good",
                        "max_normal_score": float(val_scores.max()) if len(val_scores) else None},
        "masker": masker_identity(model.cfg.masker, model.masker),
        "training_data": {"root": str(data.dataset.root), "fingerprint_sha256": data.fingerprint,
                          "n_train": int(len(data.train)), "n_val": int(len(data.val)),
                          "skipped": data.skipped},
        "train_config": tc.to_dict(),
        "timings_min": timings,
        "mosaic_selection": selection,
    }


def train_from_folder(data_root: str | Path, out: str | Path | None, dcfg: DetectorConfig | None, tc: TrainConfig,
                      variant: str = "fader", auto_m: bool = True, auto_q: bool = True,
                      product: str | None = None, progress: bool = True,
                      init_checkpoint: str | Path | None = None) -> dict[str, Any]:
    """Train (stage 1 and, unless ``variant == 'ear'``, stage 2), calibrate, evaluate, save.

    ``init_checkpoint`` (warm start): continue from that checkpoint's weights with its architecture,
    masker, mosaic scale and mask fraction (``dcfg``, ``variant``, ``auto_m``/``auto_q`` are then
    ignored); used by the nightly retraining.
    """
    device = resolve_device(tc.device)
    ds = MVTecFolder.open(data_root)
    product = product or ds.name
    init = None
    if init_checkpoint is not None:
        init, _, _ = load_model(init_checkpoint, device)
        dcfg, auto_m, auto_q = copy.deepcopy(init.cfg), False, False
        variant = "ear" if init.cfg.fader is None else "fader"
        fcfg = copy.deepcopy(init.cfg.fader)
        masker = init.masker
    else:
        assert dcfg is not None, "a DetectorConfig or an init_checkpoint is needed"
        fcfg = fader_config(variant, dcfg.fader)
        masker = build_masker_for(dcfg, device)
    data = prepare(ds, dcfg.image_size, masker, tc, device, progress)
    s1 = train_ear(dcfg, data, tc, masker, device, auto_m, auto_q, progress, init=init)
    timings = {"stage1": s1.minutes}
    model = s1.model
    if fcfg is not None:
        s2 = train_fader(model, fcfg, data, tc, device, progress, init=init)
        model = s2.model
        timings["stage2"] = s2.minutes
    timings["total"] = sum(timings.values())
    thr, val_scores = calibrate_on(model, data.val, data.val_sal, tc.target_far)
    meta = build_meta(model, data, tc, product, thr, val_scores, timings, s1.selection, variant)
    if init_checkpoint is not None:
        meta["warm_start"] = {"checkpoint": str(init_checkpoint)}
    summary: dict[str, Any] = {"variant": variant, "product": product, "threshold": thr,
                               "mosaic_scale": model.cfg.mosaic_scale, "mask_quantile": model.cfg.mask_quantile,
                               "image_size": model.cfg.image_size, "timings_min": timings,
                               "skipped_images": list(data.skipped)}
    if ds.test:
        imgs, loaded = load_test(ds, dcfg.image_size, device, progress)
        ev = evaluate(model, imgs, loaded, progress=progress)
        meta["metrics"] = ev.metrics
        summary["metrics"] = ev.metrics
        summary["skipped_images"] += ev.skipped
    if out is not None:
        sha = save_checkpoint(out, model, meta)
        summary["checkpoint"] = str(out)
        summary["version"] = sha[:12]
    summary["model"] = model
    summary["meta"] = meta
    return summary


def evaluate_checkpoint(ckpt: str | Path, data_root: str | Path, device: str = "auto",
                        progress: bool = True) -> dict[str, Any]:
    dev = resolve_device(device)
    model, meta, sha = load_model(ckpt, dev)
    ds = MVTecFolder.open(data_root, need_test=True)
    imgs, loaded = load_test(ds, model.cfg.image_size, dev, progress)
    ev = evaluate(model, imgs, loaded, progress=progress)
    thr = float(meta.get("threshold", float("inf")))
    pred = ev.scores > thr
    labels = ev.labels.astype(bool)
    m = dict(ev.metrics)
    m["threshold"] = thr
    m["false_alarm_rate"] = float(pred[~labels].mean()) if (~labels).any() else float("nan")
    m["detection_rate"] = float(pred[labels].mean()) if labels.any() else float("nan")
    return {"checkpoint": str(ckpt), "version": sha[:12], "dataset": str(ds.root), "metrics": m,
            "skipped_images": ev.skipped}


def calibrate_checkpoint(ckpt: str | Path, images_dir: str | Path, target_far: float, out: str | Path | None = None,
                         device: str = "auto", progress: bool = True) -> dict[str, Any]:
    """Re-calibrate the threshold on a folder of normal-only images (no defects needed)."""
    from .data import DatasetError, IMAGE_EXTS, Sample

    dev = resolve_device(device)
    model, meta, _ = load_model(ckpt, dev)
    folder = Path(images_dir)
    if not folder.is_dir():
        raise DatasetError(f"calibration folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise DatasetError(f"calibration folder {folder} has no images")
    loaded = load_images([Sample(p, 0, "good") for p in files], model.cfg.image_size, progress=progress,
                         desc="calibration images")
    if len(loaded.images) == 0:
        raise DatasetError(f"calibration folder {folder}: no readable images")
    imgs = to_tensor(loaded.images, dev)
    thr, scores = calibrate_on(model, imgs, None, target_far)
    meta = dict(meta)
    meta["threshold"] = thr
    meta["target_far"] = target_far
    meta["calibration"] = {"n_normal": int(len(scores)), "source": str(folder),
                           "max_normal_score": float(scores.max())}
    target = Path(out) if out else Path(ckpt)
    sha = save_checkpoint(target, model, meta)
    return {"checkpoint": str(target), "version": sha[:12], "threshold": thr, "target_far": target_far,
            "n_images": int(len(scores)), "skipped_images": loaded.skipped}
