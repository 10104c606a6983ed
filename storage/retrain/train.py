"""Step 3: the candidate, warm-started from the active model, trained on the gathered captures in
memory -- the one place that calls the detector's training."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import numpy as np

from detector.model_store import ModelStore

from .gather import Capture, Gathered
from .settings import RetrainSettings


def train_candidate(g: Gathered, store: ModelStore, product: str, active_path: Path, active_version: str,
                    window: tuple[datetime | None, datetime], settings: RetrainSettings, *, progress: bool = True,
                    transform: Callable[[np.ndarray], np.ndarray] | None = None) -> Path:
    """Train on ``g.train`` (the decoded captures, in memory), calibrate for ``settings.target_far``;
    -> a temporary checkpoint in the store (the caller installs it or deletes it)."""
    from detector.checkpoint import save_checkpoint
    from detector.models import CommonSettings
    from detector.workflow import HoldoutOptions, train_on_images

    # the active model's family maps these onto its own settings
    common = CommonSettings(epochs=settings.epochs, batch_size=settings.batch_size, lr=settings.lr)
    images = [_rgb(c, transform) for c in g.train]
    summary = train_on_images(images, product, init_checkpoint=active_path, common=common,
                              holdout=HoldoutOptions(target_far=settings.target_far), seed=settings.seed,
                              device=settings.device, progress=progress)
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


def _rgb(c: Capture, transform: Callable[[np.ndarray], np.ndarray] | None) -> np.ndarray:
    assert c.rgb is not None, "captures are decoded when gathered"
    return c.rgb if transform is None else transform(c.rgb)
