"""EAR + FADeR training in two stages: the EAR U-Net (stage 1), then FADeR (stage 2).

Stage 1 -- EAR.  The U-Net reconstructs I from I' (salient mosaic cells obfuscated) with
``L = 1.0 * L2 + 1.0 * MSGMS + 1.0 * (1 - SSIM)`` (the weights are :class:`EarFaderTrainConfig` fields; equal
weights as in RIAD/EAR).  Adam, linear warm-up then SGDR.

Automatic choice of the mosaic scale m (and of the mask fraction q): for the first ``select_frac`` of
stage-1 epochs every batch uses an (m, q) drawn from the candidates, so one network learns them all.
Then each candidate pair is scored on held-out normal training images (``val_frac`` of train/good,
never trained on: ``TrainingSet.val``) against synthetic-defect copies of the same images (:func:`synthetic.paint_defect`):
the pair with the highest image AUROC wins (ties broken by pixel AUROC).  The remaining epochs train
on the chosen pair only.  A fixed ``--mosaic-scale`` / ``--mask-quantile`` skips the choice.

Stage 2 -- FADeR.  Encoder frozen (weights and BatchNorm statistics); per batch:
reconstruct with the current network (skips attenuated by the current head's mask) -> update the
decoder on the reconstruction loss at ``decoder_lr_factor`` (0.1) x the head's learning rate ->
patch errors of that reconstruction become the labels -> update the head with the ranking loss.
Both optimisers follow the same warm-up + SGDR schedule.  Afterwards the fixed-normalisation
statistics (1st/99th percentile of l^ on the training images) are stored,.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ...data import to_tensor
from ...device import autocast
from ...metrics import image_auroc, pixel_auroc
from ...synthetic import paint_defect
from ..registry import TrainingSet
from .config import EarFaderConfig, EarFaderTrainConfig, FaderConfig
from .fader import patch_errors, patch_ranking_loss
from .maskers import Masker
from .model import EarFaderModel
from .mosaic import cell_topq_mask, obfuscate
from .msgms import msgms_loss, ssim_loss

log = logging.getLogger(__name__)


def lr_lambda(total_steps: int, tc: EarFaderTrainConfig) -> Callable[[int], float]:
    warm = max(1, int(tc.warmup_frac * total_steps)) if tc.schedule != "fixed" else 0
    rest = max(1, total_steps - warm)
    t0 = max(1, int(math.ceil(rest / (2**tc.sgdr_cycles - 1))))  # cycles t0, 2 t0, ... fill the run

    def f(step: int) -> float:
        if tc.schedule == "fixed":
            return 1.0
        if step < warm:
            return (step + 1) / warm
        if tc.schedule == "warmup":
            return 1.0
        t, length = step - warm, t0
        while t >= length:
            t -= length
            length *= 2
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t / length))

    return f


def _f(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 255.0


@torch.no_grad()
def compute_saliency(masker: Masker, images: torch.Tensor, batch: int = 16, progress: bool = False,
                     desc: str = "masker") -> torch.Tensor:
    """Saliency for every image (float16 [N,1,S,S]); deterministic, so it is cached for training."""
    dev = images.device
    masker.to(dev)
    out = []
    for i in tqdm(range(0, len(images), batch), desc=desc, disable=not progress, leave=False):
        with autocast(dev):
            out.append(masker(_f(images[i:i + batch])).half())
    return torch.cat(out) if out else torch.zeros(0, 1, *images.shape[-2:], dtype=torch.half, device=dev)


def recon_loss(x: torch.Tensor, recon: torch.Tensor, tc: EarFaderTrainConfig) -> torch.Tensor:
    return (tc.w_l2 * F.mse_loss(recon.float(), x) + tc.w_msgms * msgms_loss(x, recon)
            + tc.w_ssim * ssim_loss(x, recon))


@dataclass
class PreparedData:
    """The training set with its saliency maps cached (the masker is frozen and deterministic)."""

    train: torch.Tensor  # uint8 [N,3,S,S]
    val: torch.Tensor  # held-out normal images
    train_sal: torch.Tensor
    val_sal: torch.Tensor


def prepare(data: TrainingSet, masker: Masker, progress: bool = True) -> PreparedData:
    # one pass over all images in one order, as the saliency of a batch is what training sees
    sal = compute_saliency(masker, torch.cat([data.train, data.val]), progress=progress, desc="masker (cached)")
    n = len(data.train)
    return PreparedData(data.train, data.val, sal[:n], sal[n:])


def _batches(n: int, bs: int, rng: np.random.Generator) -> list[np.ndarray]:
    perm = rng.permutation(n)
    nb = max(1, n // bs)  # drop the last incomplete batch (BatchNorm), unless it is the only one
    return [perm[i * bs:(i + 1) * bs] for i in range(nb)] if n >= bs else [perm]


@torch.no_grad()
def score_images(model: EarFaderModel, images: torch.Tensor, saliency: torch.Tensor | None = None,
                 m: int | None = None, q: float | None = None, batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """-> (maps float32 [N,S,S], scores float32 [N]) for a mosaic choice (m, q) other than the model's own."""
    model.eval()
    maps = []
    for i in range(0, len(images), batch):
        s = saliency[i:i + batch] if saliency is not None else None
        with autocast(images.device):
            maps.append(model.maps(_f(images[i:i + batch]), s, m, q)[:, 0].cpu().numpy())
    out = np.concatenate(maps).astype(np.float32)
    return out, out.reshape(len(out), -1).max(axis=1)


def select_mosaic(model: EarFaderModel, data: PreparedData, tc: EarFaderTrainConfig, image_size: int,
                  seed: int, progress: bool = True) -> tuple[int, float, list[dict[str, Any]]]:
    """Pick (m, q) on held-out normals vs synthetic-defect copies of them (see the module docstring)."""
    rng = np.random.default_rng(seed + 1)
    val_np = data.val.permute(0, 2, 3, 1).cpu().numpy()
    painted, pmasks = zip(*(paint_defect(im, rng) for im in val_np))
    bad = to_tensor(np.stack(painted), data.val.device)
    bad_sal = compute_saliency(model.masker, bad)
    imgs = torch.cat([data.val, bad])
    sal = torch.cat([data.val_sal, bad_sal])
    labels = np.r_[np.zeros(len(data.val)), np.ones(len(bad))]
    gt = np.concatenate([np.zeros((len(data.val), image_size, image_size), bool), np.stack(pmasks)])
    table = []
    for m in _valid_ms(tc.m_candidates, image_size):
        for q in tc.q_candidates:
            maps, scores = score_images(model, imgs, sal, m, q)
            table.append({"m": m, "q": q, "image_auroc": image_auroc(labels, scores),
                          "pixel_auroc": pixel_auroc(gt, maps)})
    best = max(table, key=lambda r: (round(r["image_auroc"], 3), r["pixel_auroc"]))
    if progress:
        rows = ", ".join(f"m={r['m']} q={r['q']}: {r['image_auroc']:.3f}/{r['pixel_auroc']:.3f}" for r in table)
        tqdm.write(f"[select] held-out image/pixel AUROC: {rows} -> m={best['m']} q={best['q']}")
    return int(best["m"]), float(best["q"]), table


def _valid_ms(ms, image_size: int) -> list[int]:
    out = [m for m in ms if image_size % m == 0 and image_size // m >= 4]
    if not out:
        raise ValueError(f"no mosaic scale in {ms} divides image size {image_size}")
    return out


@dataclass
class StageResult:
    model: EarFaderModel
    minutes: float
    history: list[float] = field(default_factory=list)
    selection: list[dict[str, Any]] | None = None


def train_ear(cfg: EarFaderConfig, data: PreparedData, tc: EarFaderTrainConfig, masker: Masker,
              device: torch.device, seed: int = 0, progress: bool = True,
              init: EarFaderModel | None = None) -> StageResult:
    """Stage 1. ``cfg.mosaic_scale`` / ``cfg.mask_quantile`` are fixed unless ``tc.auto_m`` / ``tc.auto_q``.

    ``init`` (warm start, e.g. nightly retraining from the active model): the U-Net starts from its
    weights instead of random ones; ``cfg`` must then be ``init.cfg``'s architecture.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    cfg = copy.deepcopy(cfg)
    cfg.fader = None
    model = EarFaderModel(cfg, masker).to(device)
    if init is not None:
        model.unet.load_state_dict(init.unet.state_dict())
    opt = torch.optim.Adam(model.unet.parameters(), lr=tc.lr)
    n = len(data.train)
    epochs = tc.epochs_for(n)[0]
    steps_per_epoch = len(_batches(n, tc.batch_size, rng))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(max(1, epochs * steps_per_epoch), tc))
    ms = _valid_ms(tc.m_candidates, cfg.image_size) if tc.auto_m else [cfg.mosaic_scale]
    qs = list(tc.q_candidates) if tc.auto_q else [cfg.mask_quantile]
    selecting = len(ms) * len(qs) > 1
    select_at = max(1, int(round(tc.select_frac * epochs))) if selecting else -1
    selection = None
    history = []
    bar = tqdm(range(epochs), desc="stage 1 (EAR)", disable=not progress)
    for epoch in bar:
        model.unet.train()
        total = 0.0
        batches = _batches(n, tc.batch_size, rng)
        for idx in batches:
            idx_t = torch.from_numpy(idx).to(device)
            x = _f(data.train[idx_t])
            if selecting:
                m, q = int(rng.choice(ms)), float(rng.choice(qs))
            else:
                m, q = cfg.mosaic_scale, cfg.mask_quantile
            with autocast(device):
                out = model.run(x, data.train_sal[idx_t], m, q)
            loss = recon_loss(x, out.recon, tc)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        history.append(total / len(batches))
        bar.set_postfix(loss=f"{history[-1]:.4f}")
        if epoch + 1 == select_at or (selecting and epoch + 1 == epochs and selection is None):
            m_best, q_best, selection = select_mosaic(model, data, tc, cfg.image_size, seed, progress)
            cfg.mosaic_scale, cfg.mask_quantile = m_best, q_best
            model.cfg = cfg
            selecting = False
    model.cfg = cfg
    model.eval()
    return StageResult(model, (time.perf_counter() - t0) / 60, history, selection)


def train_fader(ear: EarFaderModel, fader_cfg: FaderConfig, data: PreparedData, tc: EarFaderTrainConfig,
                device: torch.device, seed: int = 0, progress: bool = True,
                init: EarFaderModel | None = None) -> StageResult:
    """Stage 2 on a copy of the stage-1 network (the stage-1 model is left untouched).

    ``init`` (warm start): the FADeR head starts from ``init``'s head when ``init`` has one of the
    same configuration.
    """
    torch.manual_seed(seed + 2)
    rng = np.random.default_rng(seed + 2)
    gen = torch.Generator().manual_seed(seed + 2)
    t0 = time.perf_counter()
    cfg = copy.deepcopy(ear.cfg)
    cfg.fader = copy.deepcopy(fader_cfg)
    model = EarFaderModel(cfg, ear.masker).to(device)
    model.unet.load_state_dict(ear.unet.state_dict())
    if init is not None and init.fader is not None and init.cfg.fader == cfg.fader:
        model.fader.load_state_dict(init.fader.state_dict())
    for p in model.unet.encoder.parameters():
        p.requires_grad_(False)
    head_params = list(model.fader.head.parameters())
    dec_params = list(model.unet.decoder.parameters()) + list(model.unet.head.parameters())
    opt_head = torch.optim.Adam(head_params, lr=tc.fader_lr)
    opt_dec = torch.optim.Adam(dec_params, lr=tc.fader_lr * tc.decoder_lr_factor)
    n = len(data.train)
    epochs = tc.epochs_for(n)[1]
    steps = max(1, epochs * len(_batches(n, tc.batch_size, rng)))
    lam = lr_lambda(steps, tc)
    sched_h = torch.optim.lr_scheduler.LambdaLR(opt_head, lam)
    sched_d = torch.optim.lr_scheduler.LambdaLR(opt_dec, lam)
    m, q = cfg.mosaic_scale, cfg.mask_quantile
    fader = model.fader
    stats_seen = False
    history = []
    bar = tqdm(range(epochs), desc=f"stage 2 (FADeR {fader_cfg.head}/{fader_cfg.mask}/{fader_cfg.resize}/{fader_cfg.norm})",
               disable=not progress)
    for _ in bar:
        model.unet.encoder.eval()
        model.unet.decoder.train()
        total_r = total_k = 0.0
        batches = _batches(n, tc.batch_size, rng)
        for idx in batches:
            idx_t = torch.from_numpy(idx).to(device)
            x = _f(data.train[idx_t])
            with torch.no_grad():
                mask = cell_topq_mask(data.train_sal[idx_t], m, q)
                xo = obfuscate(x, mask, m)
                with autocast(device):
                    feats = model.unet.encode(xo)
                    pred_now = fader.predict(xo)
                if fader_cfg.norm == "fixed":  # running estimate; exact statistics are set after training
                    lo, hi = torch.quantile(pred_now.float().flatten(), torch.tensor([0.01, 0.99], device=device))
                    decay = 0.9 if stats_seen else 0.0
                    fader.norm_lo.mul_(decay).add_((1 - decay) * lo)
                    fader.norm_hi.mul_(decay).add_((1 - decay) * hi)
                    stats_seen = True
                gate = fader.gate(pred_now)
            # 1) reconstruct with the current network, update the decoder
            with autocast(device):
                recon = model.unet.decode(feats, gate)
            loss_r = recon_loss(x, recon, tc)
            opt_dec.zero_grad(set_to_none=True)
            loss_r.backward()
            opt_dec.step()
            sched_d.step()
            # 2) patch errors of that reconstruction are the labels; 3) update the head
            labels = patch_errors(x, recon.detach(), m)
            with autocast(device):
                pred = fader.predict(xo)
            loss_k = patch_ranking_loss(pred.float(), labels, fader_cfg.margin, tc.max_pairs_per_image, gen)
            opt_head.zero_grad(set_to_none=True)
            loss_k.backward()
            opt_head.step()
            sched_h.step()
            total_r += loss_r.item()
            total_k += loss_k.item()
        history.append(total_r / len(batches))
        bar.set_postfix(rec=f"{history[-1]:.4f}", rank=f"{total_k / len(batches):.4f}")
    set_fixed_norm_stats(model, data)
    for p in model.unet.encoder.parameters():
        p.requires_grad_(True)
    model.eval()
    return StageResult(model, (time.perf_counter() - t0) / 60, history)


@torch.no_grad()
def set_fixed_norm_stats(model: EarFaderModel, data: PreparedData, batch: int = 32) -> None:
    """Fixed normalisation: 1st/99th percentile of l^ over the training images."""
    if model.fader is None:
        return
    model.eval()
    m, q = model.cfg.mosaic_scale, model.cfg.mask_quantile
    preds = []
    for i in range(0, len(data.train), batch):
        x = _f(data.train[i:i + batch])
        xo = obfuscate(x, cell_topq_mask(data.train_sal[i:i + batch], m, q), m)
        preds.append(model.fader.predict(xo).float().cpu())
    model.fader.set_fixed_stats(torch.cat(preds))
