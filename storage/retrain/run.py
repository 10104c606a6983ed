"""The run: the steps in order, under the product's lock (see the package docstring)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from detector.model_store import ModelStore

from ..blobs import BlobStore
from ..models import utcnow
from ..registry import active_version
from .decide import decide
from .errors import NotEnoughData, RetrainError
from .evaluate import evaluate_on
from .gather import Gathered, gather
from .lock import product_lock
from .register import register_run
from .report import write_report
from .settings import RetrainSettings
from .train import train_candidate

log = logging.getLogger(__name__)


@dataclass
class RetrainOutcome:
    product: str
    version: str
    status: str  # "active" | "rejected"
    reason: str
    artifact: Path
    report: Path
    metrics: dict[str, Any]
    counts: dict[str, int]


def retrain(engine: Engine, blobs: BlobStore, store: ModelStore, product: str,
            settings: RetrainSettings | None = None, *, by: str = "retrain", progress: bool = True,
            now: datetime | None = None, on_stage: Callable[[str], None] | None = None,
            train_transform: Callable[[np.ndarray], np.ndarray] | None = None) -> RetrainOutcome:
    """One retraining run; raises :class:`RetrainError` subclasses.

    ``on_stage`` is told each stage's name as it starts (gather, train, evaluate, record).
    ``train_transform`` is applied to every training image (RGB uint8) before training, never to
    the holdout: an augmentation hook, which the tests use to train deliberately worse candidates
    (lighting that failed, training data contaminated with defects) and to see them rejected.
    """
    from detector.inference import Detector

    settings = settings or RetrainSettings()
    stage = on_stage or (lambda s: None)
    with product_lock(store, product, engine):
        store.sweep_temp(product)
        now = now or utcnow()
        with Session(engine, expire_on_commit=False) as s:
            active = active_version(s, product)
            if active is None:
                raise RetrainError(f"no active model for product {product!r}: register the first one with "
                                   f"'linewatch-detector register --product {product} --checkpoint FILE'")
            active_id, active_ver, active_path = active.id, active.version, Path(active.artifact_path)
            since = active.train_window_end
            stage("gather")
            g = gather(s, blobs, product, since, now, settings, progress)
        log.info("gathered %s", g.counts)
        _enough(g, product, since, settings)
        if not active_path.is_file():
            raise RetrainError(f"the active model's checkpoint is missing: {active_path}")

        t0 = time.perf_counter()
        stage("train")
        tmp_ckpt: Path | None = train_candidate(g, store, product, active_path, active_ver, (since, now), settings,
                                                progress=progress, transform=train_transform)
        try:
            train_min = (time.perf_counter() - t0) / 60
            stage("evaluate")
            t1 = time.perf_counter()
            candidate = Detector.load(tmp_ckpt, settings.device)  # proves the artifact loads before registering
            current = Detector.load(active_path, settings.device)
            cand_m, cs_n, cs_d = evaluate_on(candidate, g.holdout_normal, g.holdout_defect)
            act_m, as_n, as_d = evaluate_on(current, g.holdout_normal, g.holdout_defect)
            promoted, reason = decide(cand_m, act_m, settings)
            eval_min = (time.perf_counter() - t1) / 60
            with Session(engine) as s:
                now_active = active_version(s, product)
            if promoted and (now_active is None or now_active.id != active_id):
                # e.g. an operator rolled back while this run trained: never undo that silently
                promoted = False
                reason = (f"the active version changed during the run ({active_ver} -> "
                          f"{now_active.version if now_active else 'none'}); not promoting over it")

            stage("record")
            artifact, sha, version = store.install_artifact(product, tmp_ckpt, move=True)
            tmp_ckpt = None
            report = artifact.with_suffix(".report.md")
            write_report(report, artifact.with_suffix(".scores.png"), product=product, version=version,
                         active_version=active_ver, family=candidate.family, decision=(promoted, reason),
                         cand=cand_m, act=act_m,
                         scores={f"active {active_ver}": (as_n, as_d), f"candidate {version}": (cs_n, cs_d)},
                         gathered=g, settings=settings, timings={"train_min": train_min, "eval_min": eval_min})
            metrics = {**{k: v for k, v in cand_m.items() if k != "threshold"},
                       "active": {k: v for k, v in act_m.items()}, "counts": g.counts,
                       "train_minutes": round(train_min, 2), "eval_minutes": round(eval_min, 2)}
            register_run(engine, product, version, artifact, sha, active_id=active_id, promoted=promoted,
                         reason=reason, train_window=(since, now), data_fingerprint=g.fingerprint(),
                         train_image_count=len(g.train), metrics=metrics, threshold=cand_m["threshold"],
                         report=report, by=by)
        finally:
            if tmp_ckpt is not None:
                tmp_ckpt.unlink(missing_ok=True)
    return RetrainOutcome(product, version, "active" if promoted else "rejected", reason, artifact, report,
                          metrics, g.counts)


def _enough(g: Gathered, product: str, since: datetime | None, settings: RetrainSettings) -> None:
    if len(g.train) < settings.min_images:
        raise NotEnoughData(
            f"only {len(g.train)} training images for {product!r} since "
            f"{since.isoformat() if since else 'the beginning'} ({g.counts['sampled_normals']} sampled normals, "
            f"{g.counts['false_alarms']} false alarms, {g.counts['duplicates_removed']} near-duplicates removed, "
            f"{g.counts['holdout_normal']} held out); at least {settings.min_images} are needed "
            "(LINEWATCH_RETRAIN_MIN_IMAGES): not training")
    if len(g.holdout_normal) < settings.min_holdout:
        raise NotEnoughData(f"only {len(g.holdout_normal)} held-out normal images for {product!r}; at least "
                            f"{settings.min_holdout} are needed to compare the models: not training")
