"""Training of EfficientAD's student and autoencoder on normal images (the teacher stays frozen)."""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..registry import TrainingSet
from .config import EfficientADTrainConfig
from .losses import autoencoder_loss, hard_feature_loss, penalty_loss, quantile_of
from .model import EfficientAD
from .teacher import GenericImages

log = logging.getLogger(__name__)


def _batches(images: torch.Tensor, batch: int):
    for i in range(0, len(images), batch):
        yield images[i:i + batch]


@torch.no_grad()
def set_teacher_stats(model: EfficientAD, images: torch.Tensor, device: torch.device, batch: int = 16) -> None:
    """Per-channel mean and standard deviation of the teacher's output on the training images."""
    feats = [model.teacher(model.prepare(x.to(device))) for x in _batches(images, batch)]
    f = torch.cat(feats)
    mean = f.mean(dim=(0, 2, 3), keepdim=True)
    model.teacher_mean.copy_(mean)
    model.teacher_std.copy_((f - mean).pow(2).mean(dim=(0, 2, 3), keepdim=True).sqrt().clamp_min(1e-6))


@torch.no_grad()
def set_map_quantiles(model: EfficientAD, images: torch.Tensor, quantiles: tuple[float, float],
                      device: torch.device, batch: int = 16) -> None:
    """Measure the local and global maps on held-out normals: their quantiles ``qa``/``qb``
    become 0 and 0.1 after normalisation, which puts the two maps on one scale."""
    model.eval()
    st, ae = zip(*(model.raw_maps(model.prepare(x.to(device))) for x in _batches(images, batch)))
    for buf, maps in ((model.q_st, torch.cat(st)), (model.q_ae, torch.cat(ae))):
        buf.copy_(torch.stack([quantile_of(maps, q) for q in quantiles]))


def augment(x01: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """One of brightness, contrast or saturation, by a factor in [0.8, 1.2] (the autoencoder's input)."""
    f = float(rng.uniform(0.8, 1.2))
    kind = int(rng.integers(3))
    if kind == 0:
        return (x01 * f).clamp(0, 1)
    gray = (0.299 * x01[:, 0:1] + 0.587 * x01[:, 1:2] + 0.114 * x01[:, 2:3])
    if kind == 1:
        return (gray.mean(dim=(2, 3), keepdim=True) + f * (x01 - gray.mean(dim=(2, 3), keepdim=True))).clamp(0, 1)
    return (gray + f * (x01 - gray)).clamp(0, 1)


def train(model: EfficientAD, tc: EfficientADTrainConfig, data: TrainingSet, device: torch.device, *,
          generic: GenericImages | None, seed: int = 0, progress: bool = True, warm: bool = False) -> dict[str, Any]:
    """Train ``model`` in place; returns the facts worth keeping (losses, timings)."""
    cfg = model.cfg
    c = cfg.out_channels
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model.to(device)
    t0 = time.monotonic()
    if not warm:
        set_teacher_stats(model, data.train, device)
    use_penalty = tc.penalty and generic is not None and len(generic) > 0
    if tc.penalty and not use_penalty:
        log.warning("no generic images found: training without the penalty loss")

    n = len(data.train)
    steps = tc.steps_for(n)
    params = list(model.student.parameters()) + list(model.autoencoder.parameters())
    opt = torch.optim.Adam(params, lr=tc.lr, weight_decay=tc.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, int(0.95 * steps)), gamma=0.1)
    model.train()
    history: list[list[float]] = []
    bar = tqdm(range(steps), desc=f"EfficientAD-{cfg.size.upper()}{' + DFSC' if cfg.dfsc else ''}",
               disable=not progress)
    for _ in bar:
        idx = torch.from_numpy(rng.integers(n, size=tc.batch_size))
        x01 = data.train[idx].to(device).float() / 255.0
        x = model.prepare(x01)
        t = model.teacher_features(x)
        loss_st = hard_feature_loss(t, model.student(x)[:, :c], tc.hard_quantile)
        loss_pen = torch.zeros((), device=device)
        if use_penalty:
            g = model.prepare(generic.sample(tc.batch_size, cfg.net_size, rng, gray_p=0.3).to(device))
            loss_pen = penalty_loss(model.student(g)[:, :c])
        xa = model.prepare(augment(x01, rng))
        ta = model.teacher_features(xa)
        a = model.autoencoder(xa)
        loss_ae = autoencoder_loss(ta, a, dfsc=cfg.dfsc, quantile=cfg.dfsc_quantile, margin=cfg.dfsc_margin)
        loss_stae = (a - model.student(xa)[:, c:]).pow(2).mean()
        loss = loss_st + loss_pen + loss_ae + loss_stae
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        history.append([loss_st.item(), loss_pen.item(), loss_ae.item(), loss_stae.item()])
        if len(history) % 50 == 0:
            bar.set_postfix(st=f"{np.mean([h[0] for h in history[-50:]]):.3f}",
                            ae=f"{np.mean([h[2] for h in history[-50:]]):.3f}")
    train_min = (time.monotonic() - t0) / 60
    t1 = time.monotonic()
    set_map_quantiles(model, data.val, tc.map_quantiles, device)
    last = np.mean(history[-100:], axis=0) if history else [float("nan")] * 4
    return {
        "minutes": {"train": train_min, "map_normalisation": (time.monotonic() - t1) / 60},
        "final_losses": dict(zip(("student_hard", "penalty", "autoencoder", "student_vs_ae"), map(float, last))),
        "steps": steps,
        "train_images": n,
        "penalty_images": len(generic) if use_penalty else 0,
        "q_st": model.q_st.tolist(),
        "q_ae": model.q_ae.tolist(),
    }


def warm_copy(init: EfficientAD) -> EfficientAD:
    """A trainable copy of a trained module (nightly retraining continues from it)."""
    return copy.deepcopy(init)
