"""End-to-end workflows behind the CLI, the benchmark and retraining, for every model family:
train a checkpoint, evaluate it, recalibrate it.

Training is family-neutral: the images are loaded at the family's input size, a held-out share of
the normal training images is set aside (never trained on), the family trains on the rest, the
threshold is calibrated on the held-out normals (one per product for a unified model), the test
split -- when there is one -- is evaluated, and one checkpoint is written.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .checkpoint import load_model, read_checkpoint, save_checkpoint
from .data import DatasetError, MVTecFolder, holdout_split, load_images, to_tensor
from .device import resolve_device
from .drift import image_stats as frame_stats, training_reference
from .calibration import calibrate
from .models import DEFAULT_MODEL, resolve_model
from .models.registry import CommonSettings, ModelFamily, TrainingSet, family_of
from .scoring import calibrate_model, evaluate, load_test, score_images

log = logging.getLogger(__name__)


@dataclasses.dataclass
class HoldoutOptions:
    """How the held-out normals for calibration are chosen, and the false-alarm rate to calibrate for."""

    target_far: float = 0.01
    val_frac: float = 0.1
    max_val: int = 32


def pick_profile(profile: str, device: torch.device) -> str:
    """``auto`` -> ``gpu`` on CUDA, else ``cpu``."""
    if profile == "auto":
        return "gpu" if device.type == "cuda" else "cpu"
    return profile


def training_set(images: dict[str, np.ndarray], seed: int, holdout: HoldoutOptions, device: torch.device,
                 fingerprint: str = "", skipped: Sequence[str] = ()) -> TrainingSet:
    """Per product: uint8 ``[N,S,S,3]`` normal images -> one :class:`TrainingSet` (held-out split per product)."""
    train, val, train_p, val_p = [], [], [], []
    for product, arr in images.items():
        if len(arr) < 2:
            raise DatasetError(f"{product}: {len(arr)} readable training images; at least 2 are needed")
        tr, va = holdout_split(len(arr), seed, holdout.val_frac, holdout.max_val)
        t = to_tensor(arr, device)
        train.append(t[tr])
        val.append(t[va])
        train_p += [product] * len(tr)
        val_p += [product] * len(va)
    return TrainingSet(torch.cat(train), torch.cat(val), train_p, val_p, fingerprint, list(skipped))


def _load_folder(ds: MVTecFolder, size: int, progress: bool) -> tuple[np.ndarray, list[str], np.ndarray]:
    loaded = load_images(ds.train, size, progress=progress, desc=f"train images ({ds.name})", with_stats=True)
    if len(loaded.images) < 2:
        why = f" ({len(loaded.skipped)} corrupt skipped, e.g. {loaded.skipped[0]})" if loaded.skipped else ""
        raise DatasetError(f"dataset {ds.root} has {len(loaded.images)} readable training images; "
                           f"at least 2 are needed{why}")
    return loaded.images, loaded.skipped, loaded.stats


def _fingerprint(parts: Sequence[str]) -> str:
    import hashlib

    return parts[0] if len(parts) == 1 else hashlib.sha256("".join(parts).encode()).hexdigest()


def resolve_configs(model: str | None, profile: str, device: torch.device, overrides: dict[str, Any] | None,
                    init: torch.nn.Module | None = None,
                    common: CommonSettings | None = None) -> tuple[ModelFamily, str, Any, Any]:
    """-> (family, variant, config, train config).  A warm start takes the family and config of ``init``
    and applies only the overrides that name settings the family has.  ``common``: family-neutral
    settings, mapped by the family onto its own fields (``overrides`` win over them)."""
    prof = pick_profile(profile, device)
    if init is not None:
        fam = family_of(init.cfg)
        overrides = _with_common(fam, common, overrides)
        fields = {f.name for f in dataclasses.fields(fam.train_config_cls)}
        ignored = sorted(set(overrides or {}) - fields)
        if ignored:
            log.info("warm start of %s: settings it does not have are ignored: %s", fam.name, ignored)
        stored = {k: v for k, v in (overrides or {}).items() if k in fields}
        _, tc = fam.configs(fam.variant_of(init.cfg), prof, stored)
        return fam, fam.variant_of(init.cfg), init.cfg, tc
    fam, variant = resolve_model(model or DEFAULT_MODEL)
    cfg, tc = fam.configs(variant, prof, _with_common(fam, common, overrides))
    return fam, variant, cfg, tc


def _with_common(fam: ModelFamily, common: CommonSettings | None, overrides: dict[str, Any] | None) -> dict[str, Any]:
    return {**(fam.common_overrides(common) if common else {}), **(overrides or {})}


def train_model(images: dict[str, np.ndarray] | None = None, out: str | Path | None = None, *,
                data: Sequence[str | Path] = (), model: str | None = None, profile: str = "auto",
                overrides: dict[str, Any] | None = None, common: CommonSettings | None = None,
                product: str | None = None, holdout: HoldoutOptions | None = None, seed: int = 0,
                device: str = "auto", progress: bool = True, init_checkpoint: str | Path | None = None,
                workspace: dict[str, Any] | None = None, configs: tuple[Any, Any] | None = None,
                image_stats: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Train, calibrate, evaluate (when a test split exists), save (when ``out``) -> summary.

    The normal images come either from MVTec-layout folders (``data``: one per product; several make
    a unified model, for families that support it) or from memory (``images``: product -> uint8
    ``[N,S,S,3]`` at the family's input size, e.g. the retraining job's captures).

    ``model``: a family or variant name (default :data:`detector.models.DEFAULT_MODEL`); ``profile``:
    cpu | gpu | auto; ``overrides``: config / train-config fields; ``common``: family-neutral settings
    (:class:`detector.models.registry.CommonSettings`) the family maps onto its own; ``configs``: explicit
    (config, train config) instead.  ``init_checkpoint`` (warm start, nightly retraining): continue
    from that checkpoint with its family, architecture and choices.

    The checkpoint stores a drift reference per product (:func:`detector.drift.training_reference`):
    the image statistics of the full-resolution training images -- read from the folders, or given
    as ``image_stats`` (product -> ``[N,3]``) with in-memory ``images``, which are already resized
    -- and the held-out normals' scores.  In-memory images without ``image_stats`` get none.
    """
    holdout = holdout or HoldoutOptions()
    dev = resolve_device(device)
    init = None
    if init_checkpoint is not None:
        init, _, _ = load_model(init_checkpoint, dev)
    if configs is not None:
        fam, cfg, tc = family_of(configs[0]), configs[0], configs[1]
        variant = fam.variant_of(cfg)
    else:
        fam, variant, cfg, tc = resolve_configs(model, profile, dev, overrides, init, common)
    size = int(cfg.image_size)
    n_products = len(images) if images is not None else len(data)
    if n_products > 1 and not fam.unified:
        raise DatasetError(f"{fam.name} trains one product per model; {n_products} were given "
                           f"(unified models: {', '.join(_unified_names()) or 'none'})")
    folders = [MVTecFolder.open(d) for d in data]
    skipped: list[str] = []
    prints: list[str] = []
    stats: dict[str, np.ndarray] = dict(image_stats or {})
    if images is None:
        if not folders:
            raise DatasetError("no training data given")
        images = {}
        for i, ds in enumerate(folders):
            name = product if (product and len(folders) == 1) else ds.name
            if name in images:
                raise DatasetError(f"two training folders are named {name!r}: give each product its own name")
            images[name], sk, stats[name] = _load_folder(ds, size, progress)
            skipped += sk
            prints.append(ds.fingerprint())
    else:
        prints.append(_images_fingerprint(images))
    tset = training_set(images, seed, holdout, dev, _fingerprint(prints), skipped)
    fit = fam.fit(cfg, tc, tset, dev, seed=seed, progress=progress, init=init, workspace=workspace)
    net = fit.model
    timings = dict(fit.minutes)
    timings["total"] = sum(fit.minutes.values())

    products = tset.products
    _, val_scores = score_images(net, tset.val)
    val_p = np.array(tset.val_products)
    cals = {p: calibrate(val_scores[val_p == p], holdout.target_far) for p in products}
    thresholds = {p: c.threshold for p, c in cals.items()}
    meta: dict[str, Any] = {
        **fit.meta,
        "variant": variant,
        "product": products[0] if len(products) == 1 else None,
        "threshold": float(max(thresholds.values())),
        "target_far": holdout.target_far,
        "calibration": {"n_normal": int(len(val_scores)), "source": "held-out train/good",
                        "max_normal_score": float(val_scores.max()),
                        "per_product": {p: c.model_dump() for p, c in cals.items()}},
        "training_data": {"root": ", ".join(str(ds.root) for ds in folders) or "memory",
                          "fingerprint_sha256": tset.fingerprint, "n_train": int(len(tset.train)),
                          "n_val": int(len(tset.val)), "skipped": tset.skipped},
        "train_config": tc.to_dict() if hasattr(tc, "to_dict") else dataclasses.asdict(tc),
        "seed": seed,
        "timings_min": timings,
    }
    if all(p in stats for p in products):
        meta["drift_reference"] = {p: training_reference(val_scores[val_p == p], stats[p]).model_dump()
                                   for p in products}
    else:
        log.info("no full-resolution image statistics for %s: the checkpoint gets no drift reference",
                 ", ".join(p for p in products if p not in stats))
    if len(products) > 1:
        meta["products"] = products
        meta["thresholds"] = thresholds
    if init_checkpoint is not None:
        meta["warm_start"] = {"checkpoint": str(init_checkpoint)}
    summary: dict[str, Any] = {"family": fam.name, "variant": variant, "product": meta["product"],
                               "products": products, "threshold": meta["threshold"], "thresholds": thresholds,
                               "calibration": {p: {**c.model_dump(), "warning": c.warning} for p, c in cals.items()},
                               "image_size": size, "timings_min": timings, "skipped_images": list(skipped),
                               "config": net.cfg.to_dict()}
    tested = [ds for ds in folders if ds.test]
    if tested:
        per: dict[str, dict[str, Any]] = {}
        for ds in tested:
            imgs, loaded = load_test(ds, size, dev, progress)
            ev = evaluate(net, imgs, loaded, progress=progress)
            per[ds.name] = ev.metrics
            summary["skipped_images"] += ev.skipped
        meta["metrics"] = per[tested[0].name] if len(tested) == 1 else per
        summary["metrics"] = meta["metrics"]
    if out is not None:
        sha = save_checkpoint(out, net, meta)
        summary["checkpoint"] = str(out)
        summary["version"] = sha[:12]
    summary["model"] = net
    summary["meta"] = meta
    return summary


def train_on_images(images: Sequence[np.ndarray], product: str, *, init_checkpoint: str | Path | None = None,
                    model: str | None = None, overrides: dict[str, Any] | None = None,
                    common: CommonSettings | None = None, holdout: HoldoutOptions | None = None, seed: int = 0,
                    device: str = "auto", progress: bool = True) -> dict[str, Any]:
    """Train from decoded RGB frames of any size (e.g. the retraining job's captures) -> summary.

    With ``init_checkpoint`` the family and input size are that checkpoint's; otherwise ``model``'s.
    """
    from .data import resize_square, to_rgb

    dev = resolve_device(device)
    if init_checkpoint is not None:
        cfg, _, _, _ = read_checkpoint(init_checkpoint)
        size = int(cfg.image_size)
    else:
        _, _, cfg, _ = resolve_configs(model, "auto", dev, overrides, common=common)
        size = int(cfg.image_size)
    rgb = [to_rgb(np.asarray(f)) for f in images]
    arr = np.stack([resize_square(f, size) for f in rgb]) if rgb else np.zeros((0, size, size, 3), np.uint8)
    stats = np.array([frame_stats(f) for f in rgb], np.float64).reshape(-1, 3)
    return train_model({product: arr}, None, model=model, overrides=overrides, common=common, product=product,
                       holdout=holdout, seed=seed, device=device, progress=progress, init_checkpoint=init_checkpoint,
                       image_stats={product: stats})


def train_from_folder(data_root: str | Path, out: str | Path | None, *, model: str | None = None,
                      profile: str = "auto", overrides: dict[str, Any] | None = None, product: str | None = None,
                      target_far: float = 0.01, seed: int = 0, device: str = "auto", progress: bool = True,
                      init_checkpoint: str | Path | None = None) -> dict[str, Any]:
    """One MVTec-layout folder -> checkpoint (see :func:`train_model`)."""
    return train_model(None, out, data=[data_root], model=model, profile=profile, overrides=overrides,
                       product=product, holdout=HoldoutOptions(target_far=target_far), seed=seed, device=device,
                       progress=progress, init_checkpoint=init_checkpoint)


def _images_fingerprint(images: dict[str, np.ndarray]) -> str:
    import hashlib

    h = hashlib.sha256()
    for product in sorted(images):
        h.update(product.encode() + b"\0")
        h.update(hashlib.sha256(np.ascontiguousarray(images[product]).tobytes()).digest())
    return h.hexdigest()


def _unified_names() -> list[str]:
    from .models import families

    return [f.name for f in families() if f.unified]


def evaluate_checkpoint(ckpt: str | Path, data_root: str | Path, device: str = "auto",
                        progress: bool = True) -> dict[str, Any]:
    dev = resolve_device(device)
    model, meta, sha = load_model(ckpt, dev)
    ds = MVTecFolder.open(data_root, need_test=True)
    imgs, loaded = load_test(ds, model.image_size, dev, progress)
    ev = evaluate(model, imgs, loaded, progress=progress)
    thresholds = meta.get("thresholds") or {}
    thr = float(thresholds.get(ds.name, meta.get("threshold", float("inf"))))
    pred = ev.scores > thr
    labels = ev.labels.astype(bool)
    m = dict(ev.metrics)
    m["threshold"] = thr
    m["false_alarm_rate"] = float(pred[~labels].mean()) if (~labels).any() else float("nan")
    m["detection_rate"] = float(pred[labels].mean()) if labels.any() else float("nan")
    return {"checkpoint": str(ckpt), "version": sha[:12], "family": meta.get("family"), "dataset": str(ds.root),
            "metrics": m, "skipped_images": ev.skipped}


def calibrate_checkpoint(ckpt: str | Path, images_dir: str | Path, target_far: float, out: str | Path | None = None,
                         device: str = "auto", progress: bool = True, product: str | None = None) -> dict[str, Any]:
    """Re-calibrate the threshold on a folder of normal-only images (no defects needed).

    For a unified model, ``product`` names whose threshold this is (the others are kept).  A
    checkpoint without a drift reference for that product (one written before training stored
    them) gets one from these images and their scores; a training reference is kept.
    """
    from .data import IMAGE_EXTS, Sample

    dev = resolve_device(device)
    model, meta, _ = load_model(ckpt, dev)
    folder = Path(images_dir)
    if not folder.is_dir():
        raise DatasetError(f"calibration folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise DatasetError(f"calibration folder {folder} has no images")
    loaded = load_images([Sample(p, 0, "good") for p in files], model.image_size, progress=progress,
                         desc="calibration images", with_stats=True)
    if len(loaded.images) == 0:
        raise DatasetError(f"calibration folder {folder}: no readable images")
    cal, scores = calibrate_model(model, to_tensor(loaded.images, dev), target_far)
    thr = cal.threshold
    meta = dict(meta)
    if meta.get("thresholds"):
        if product not in meta["thresholds"]:
            raise DatasetError(f"this model serves {', '.join(meta['thresholds'])}: say which product's threshold "
                               "to calibrate (--product)")
        meta["thresholds"] = {**meta["thresholds"], product: thr}
        meta["threshold"] = float(max(meta["thresholds"].values()))
    else:
        meta["threshold"] = thr
    meta["target_far"] = target_far
    meta["calibration"] = {"n_normal": int(len(scores)), "source": str(folder),
                           "max_normal_score": float(scores.max())}
    drift_product = product or meta.get("product") or "default"
    added_reference = drift_product not in (meta.get("drift_reference") or {})
    if added_reference:
        log.info("%s has no drift reference for %s: made from the calibration images", ckpt, drift_product)
        ref = training_reference(scores, loaded.stats).model_copy(update={"source": "calibration"})
        meta["drift_reference"] = {**(meta.get("drift_reference") or {}), drift_product: ref.model_dump()}
    target = Path(out) if out else Path(ckpt)
    sha = save_checkpoint(target, model, meta)
    return {"checkpoint": str(target), "version": sha[:12], "threshold": thr, "target_far": target_far,
            "n_images": int(len(scores)), "skipped_images": loaded.skipped, "drift_reference_added": added_reference}


__all__ = ["HoldoutOptions", "train_model", "train_on_images", "train_from_folder", "evaluate_checkpoint",
           "calibrate_checkpoint", "score_images"]
