"""Step 3: the candidate, warm-started from the active model -- the one place that calls the
detector's training."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import numpy as np

from detector.model_store import ModelStore

from ..blobs import BlobStore
from .gather import Capture, Gathered
from .settings import RetrainSettings


def train_candidate(g: Gathered, blobs: BlobStore, store: ModelStore, product: str, active_path: Path,
                    active_version: str, window: tuple[datetime | None, datetime], settings: RetrainSettings, *,
                    progress: bool = True, transform: Callable[[np.ndarray], np.ndarray] | None = None) -> Path:
    """Train on ``g.train``, calibrate for ``settings.target_far``; -> a temporary checkpoint in the
    store (the caller installs it or deletes it)."""
    from detector.checkpoint import save_checkpoint
    from detector.workflow import train_from_folder

    # settings the active model's family has are applied (the EAR + FADeR ones to EAR + FADeR)
    overrides = {"epochs_ear": settings.epochs_ear, "epochs_fader": settings.epochs_fader,
                 "batch_size": settings.batch_size, "lr": settings.lr, "fader_lr": settings.fader_lr}
    work = Path(tempfile.mkdtemp(prefix=".tmp-retrain-", dir=store.product_dir(product)))
    try:
        data_root = _write_training_folder(work, g.train, blobs, transform)
        summary = train_from_folder(data_root, None, overrides=overrides, product=product,
                                    target_far=settings.target_far, seed=settings.seed, device=settings.device,
                                    progress=progress, init_checkpoint=active_path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    since, until = window
    meta = dict(summary["meta"])
    meta["training_data"] = {**meta.get("training_data", {}), "root": f"registry:{product}",
                             "fingerprint_sha256": g.fingerprint(), "counts": g.counts,
                             "window": [since.isoformat() if since else None, until.isoformat()]}
    meta["parent_version"] = active_version
    tmp_ckpt = store.temp_artifact(product)
    try:
        save_checkpoint(tmp_ckpt, summary["model"], meta)
    except BaseException:
        Path(tmp_ckpt).unlink(missing_ok=True)
        raise
    return Path(tmp_ckpt)


def _write_training_folder(root: Path, captures: list[Capture], blobs: BlobStore,
                           transform: Callable[[np.ndarray], np.ndarray] | None = None) -> Path:
    """MVTec layout (``train/good``) of the original image bytes, for the detector's training API."""
    import cv2

    good = root / "data" / "train" / "good"
    good.mkdir(parents=True)
    for i, c in enumerate(captures):
        if transform is not None:
            assert c.rgb is not None
            cv2.imwrite(str(good / f"{i:05d}.png"), cv2.cvtColor(transform(c.rgb), cv2.COLOR_RGB2BGR))
            continue
        ext = ".png" if c.content_type == "image/png" else ".jpg"
        (good / f"{i:05d}{ext}").write_bytes(blobs.get(c.blob_key))
    return root / "data"
