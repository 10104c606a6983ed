"""CRAD training: the backbone's features are computed once and cached (it is frozen), their
per-channel mean and std are stored in the model (standardisation), then the grids and the network
learn to reconstruct the standardised features, end to end, on normal images only.

Loss: MSE between the input features and their *refined* reconstruction R' (as the reference
code does).  The cosine similarity enters through the refinement map S, so no separate cosine
loss is added.  AdamW, ``lr`` for the network and ``grid_lr`` for the two grids, cosine decay,
gradients clipped to ``clip_grad_norm``; the local coordinates are jittered in ``jitter_p`` of the
batches.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ...device import autocast
from ..registry import FitResult, TrainingSet
from .config import CradConfig, CradTrainConfig
from .model import CradModel


@torch.no_grad()
def cache_features(model: CradModel, images: torch.Tensor, batch: int = 16, progress: bool = True) -> torch.Tensor:
    out = []
    for i in tqdm(range(0, len(images), batch), desc="CRAD features (cached)", disable=not progress, leave=False):
        with autocast(images.device):
            out.append(model.features.raw(images[i:i + batch].float() / 255.0).float())
    return torch.cat(out)


def fit(cfg: CradConfig, tc: CradTrainConfig, data: TrainingSet, device: torch.device, seed: int = 0,
        progress: bool = True, init: CradModel | None = None) -> FitResult:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    model = (init if init is not None else CradModel(cfg)).to(device)
    feats = cache_features(model, data.train, progress=progress)
    if init is None:  # a warm start keeps the statistics its memory was trained on
        model.features.fit_standardisation(feats)
    feats = model.features.standardised(feats)
    grids = [model.memory.local_grid, model.memory.global_grid]
    net = [p for n, p in model.memory.named_parameters() if n not in ("local_grid", "global_grid")]
    opt = torch.optim.AdamW([{"params": net, "lr": tc.lr, "weight_decay": tc.weight_decay},
                             {"params": grids, "lr": tc.grid_lr, "weight_decay": 0.0}])
    n = len(feats)
    bs = min(tc.batch_size, n)
    per_epoch = max(1, n // bs)
    epochs = tc.epochs_for(n, products=len(set(data.train_products)))
    total = epochs * per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * s / total)))
    history = []
    bar = tqdm(range(epochs), desc="CRAD", disable=not progress)
    for _ in bar:
        model.memory.train()
        perm = rng.permutation(n)
        run = 0.0
        for k in range(per_epoch):
            idx = torch.from_numpy(perm[k * bs:(k + 1) * bs]).to(device)
            f = feats[idx]
            jitter = tc.jitter_std if rng.random() < tc.jitter_p else 0.0
            with autocast(device):
                refined = model.refine(f, model.memory(f, jitter))
            loss = F.mse_loss(refined.float(), f)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if tc.clip_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.memory.parameters(), tc.clip_grad_norm)
            opt.step()
            sched.step()
            run += loss.item()
        history.append(run / per_epoch)
        bar.set_postfix(loss=f"{history[-1]:.4f}")
    model.eval()
    minutes = (time.perf_counter() - t0) / 60
    return FitResult(model, {"train": minutes}, {"loss_history": [round(h, 6) for h in history[-5:]],
                                                 "epochs": epochs})
