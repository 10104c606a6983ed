"""Two-stage training: the EAR U-Net (stage 1), then FADeR (stage 2); evaluation helpers.

Stage 1 -- EAR.  The U-Net reconstructs I from I' (salient mosaic cells obfuscated) with
``L = 1.0 * L2 + 1.0 * MSGMS + 1.0 * (1 - SSIM)`` (the weights are :class:`TrainConfig` fields; equal
weights as in RIAD/EAR).  Adam, linear warm-up then SGDR.

Automatic choice of the mosaic scale m (and of the mask fraction q): for the first ``select_frac`` of
stage-1 epochs every batch uses an (m, q) drawn from the candidates, so one network learns them all.
Then each candidate pair is scored on held-out normal training images (``val_frac`` of train/good,
never trained on) against synthetic-defect copies of the same images (:func:`synthetic.paint_defect`):
the pair with the highest image AUROC wins (ties broken by pixel AUROC).  The remaining epochs train
on the chosen pair only.  A fixed ``--mosaic-scale`` / ``--mask-quantile`` skips the choice.

Stage 2 -- FADeR.  Encoder frozen (weights and BatchNorm statistics); per batch:
reconstruct with the current network (skips attenuated by the current head's mask) -> update the
decoder on the reconstruction loss at ``decoder_lr_factor`` (0.1) x the head's learning rate ->
patch errors of that reconstruction become the labels -> update the head with the ranking loss.
Both optimisers follow the same warm-up + SGDR schedule.  Afterwards the fixed-normalisation
statistics (1st/99th percentile of l^ on the training images) are stored, and the threshold is
calibrated on the held-out normal images for ``target_far``.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .config import DetectorConfig, FaderConfig
from .device import autocast, resolve_device  # noqa: F401 - resolve_device re-exported for callers
from .data import DatasetError, LoadedImages, MVTecFolder, load_images
from .metrics import calibrate_threshold, image_auroc, pixel_auroc, summarise
from .models.anomaly import AnomalyModel
from .models.fader import patch_errors, patch_ranking_loss
from .models.maskers import Masker, build_masker
from .models.mosaic import cell_topq_mask, obfuscate
from .models.msgms import msgms_loss, ssim_loss
from .synthetic import paint_defect

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    epochs_ear: int = 100
    epochs_fader: int = 100
    batch_size: int = 8
    lr: float = 1e-3  # stage 1 (U-Net)
    # stage 2 head; the decoder gets decoder_lr_factor x this.  3e-3 (decoder 3e-4): the decoder has to
    # learn to reconstruct from attenuated skips within a CPU-sized stage 2 (magnetic_tile, sampled pairs:
    # 0.759 vs 0.749 at 1e-3 and 0.747 at 1e-2; see BENCHMARK.md).
    fader_lr: float = 3e-3
    decoder_lr_factor: float = 0.1
    schedule: str = "sgdr"  # "fixed" | "warmup" | "sgdr" (warm-up then cosine with warm restarts)
    warmup_frac: float = 0.05  # fraction of the steps used for linear warm-up
    sgdr_cycles: int = 2  # SGDR: first cycle length so that this many doubling cycles fill the run
    w_l2: float = 1.0
    w_msgms: float = 1.0
    w_ssim: float = 1.0
    # ranking pairs per image: all N*N patch pairs up to this many (a 96 px image at m=8 has 20736), else sampled
    max_pairs_per_image: int = 65536
    m_candidates: tuple[int, ...] = (4, 8, 16)
    q_candidates: tuple[float, ...] = (0.25, 0.5, 0.75)
    select_frac: float = 0.4
    val_frac: float = 0.1
    max_val: int = 32
    target_far: float = 0.01
    seed: int = 0
    device: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def lr_lambda(total_steps: int, tc: TrainConfig) -> Callable[[int], float]:
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


def to_tensor(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 [N,S,S,3] -> uint8 tensor [N,3,S,S] on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device)


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


def recon_loss(x: torch.Tensor, recon: torch.Tensor, tc: TrainConfig) -> torch.Tensor:
    return (tc.w_l2 * F.mse_loss(recon.float(), x) + tc.w_msgms * msgms_loss(x, recon)
            + tc.w_ssim * ssim_loss(x, recon))


@dataclass
class PreparedData:
    dataset: MVTecFolder
    train: torch.Tensor  # uint8 [N,3,S,S]
    val: torch.Tensor  # held-out normal images
    train_sal: torch.Tensor
    val_sal: torch.Tensor
    skipped: list[str]
    fingerprint: str


def prepare(dataset: MVTecFolder, image_size: int, masker: Masker, tc: TrainConfig, device: torch.device,
            progress: bool = True) -> PreparedData:
    loaded = load_images(dataset.train, image_size, progress=progress, desc="train images")
    n = len(loaded.images)
    if n < 2:
        why = f" ({len(loaded.skipped)} corrupt skipped, e.g. {loaded.skipped[0]})" if loaded.skipped else ""
        raise DatasetError(f"dataset {dataset.root} has {n} readable training images; at least 2 are needed{why}")
    rng = np.random.default_rng(tc.seed)
    perm = rng.permutation(n)
    n_val = min(tc.max_val, max(1, int(round(tc.val_frac * n)))) if n >= 4 else 1
    val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    imgs = to_tensor(loaded.images, device)
    sal = compute_saliency(masker, imgs, progress=progress, desc="masker (cached)")
    return PreparedData(dataset, imgs[train_idx], imgs[val_idx], sal[train_idx], sal[val_idx],
                        loaded.skipped, dataset.fingerprint())


def _batches(n: int, bs: int, rng: np.random.Generator) -> list[np.ndarray]:
    perm = rng.permutation(n)
    nb = max(1, n // bs)  # drop the last incomplete batch (BatchNorm), unless it is the only one
    return [perm[i * bs:(i + 1) * bs] for i in range(nb)] if n >= bs else [perm]


@torch.no_grad()
def score_images(model: AnomalyModel, images: torch.Tensor, saliency: torch.Tensor | None = None,
                 m: int | None = None, q: float | None = None, batch: int = 16, progress: bool = False,
                 desc: str = "scoring") -> tuple[np.ndarray, np.ndarray]:
    """-> (maps float32 [N,S,S], scores float32 [N]) at model resolution."""
    model.eval()
    dev = images.device
    maps, scores = [], []
    for i in tqdm(range(0, len(images), batch), desc=desc, disable=not progress, leave=False):
        x = _f(images[i:i + batch])
        s = saliency[i:i + batch] if saliency is not None else None
        with autocast(dev):
            out = model.run(x, s, m, q)
        amap = model.anomaly_map(x, out.recon.float())
        maps.append(amap[:, 0].cpu().numpy())
        scores.append(amap.flatten(1).amax(1).cpu().numpy())
    if not maps:
        return np.zeros((0,) + tuple(images.shape[-2:]), np.float32), np.zeros(0, np.float32)
    return np.concatenate(maps).astype(np.float32), np.concatenate(scores).astype(np.float32)


def select_mosaic(model: AnomalyModel, data: PreparedData, tc: TrainConfig, image_size: int,
                  progress: bool = True) -> tuple[int, float, list[dict[str, Any]]]:
    """Pick (m, q) on held-out normals vs synthetic-defect copies of them (see the module docstring)."""
    rng = np.random.default_rng(tc.seed + 1)
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
    model: AnomalyModel
    minutes: float
    history: list[float] = field(default_factory=list)
    selection: list[dict[str, Any]] | None = None


def train_ear(cfg: DetectorConfig, data: PreparedData, tc: TrainConfig, masker: Masker, device: torch.device,
              auto_m: bool = True, auto_q: bool = True, progress: bool = True,
              init: AnomalyModel | None = None) -> StageResult:
    """Stage 1. ``cfg.mosaic_scale`` / ``cfg.mask_quantile`` are fixed unless chosen automatically.

    ``init`` (warm start, e.g. nightly retraining from the active model): the U-Net starts from its
    weights instead of random ones; ``cfg`` must then be ``init.cfg``'s architecture.
    """
    torch.manual_seed(tc.seed)
    rng = np.random.default_rng(tc.seed)
    t0 = time.perf_counter()
    cfg = copy.deepcopy(cfg)
    cfg.fader = None
    model = AnomalyModel(cfg, masker).to(device)
    if init is not None:
        model.unet.load_state_dict(init.unet.state_dict())
    opt = torch.optim.Adam(model.unet.parameters(), lr=tc.lr)
    n = len(data.train)
    steps_per_epoch = len(_batches(n, tc.batch_size, rng))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(max(1, tc.epochs_ear * steps_per_epoch), tc))
    ms = _valid_ms(tc.m_candidates, cfg.image_size) if auto_m else [cfg.mosaic_scale]
    qs = list(tc.q_candidates) if auto_q else [cfg.mask_quantile]
    selecting = len(ms) * len(qs) > 1
    select_at = max(1, int(round(tc.select_frac * tc.epochs_ear))) if selecting else -1
    selection = None
    history = []
    bar = tqdm(range(tc.epochs_ear), desc="stage 1 (EAR)", disable=not progress)
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
        if epoch + 1 == select_at or (selecting and epoch + 1 == tc.epochs_ear and selection is None):
            m_best, q_best, selection = select_mosaic(model, data, tc, cfg.image_size, progress)
            cfg.mosaic_scale, cfg.mask_quantile = m_best, q_best
            model.cfg = cfg
            selecting = False
    model.cfg = cfg
    model.eval()
    return StageResult(model, (time.perf_counter() - t0) / 60, history, selection)


def train_fader(ear: AnomalyModel, fader_cfg: FaderConfig, data: PreparedData, tc: TrainConfig,
                device: torch.device, progress: bool = True, init: AnomalyModel | None = None) -> StageResult:
    """Stage 2 on a copy of the stage-1 network (the stage-1 model is left untouched).

    ``init`` (warm start): the FADeR head starts from ``init``'s head when ``init`` has one of the
    same configuration.
    """
    torch.manual_seed(tc.seed + 2)
    rng = np.random.default_rng(tc.seed + 2)
    gen = torch.Generator().manual_seed(tc.seed + 2)
    t0 = time.perf_counter()
    cfg = copy.deepcopy(ear.cfg)
    cfg.fader = copy.deepcopy(fader_cfg)
    model = AnomalyModel(cfg, ear.masker).to(device)
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
    steps = max(1, tc.epochs_fader * len(_batches(n, tc.batch_size, rng)))
    lam = lr_lambda(steps, tc)
    sched_h = torch.optim.lr_scheduler.LambdaLR(opt_head, lam)
    sched_d = torch.optim.lr_scheduler.LambdaLR(opt_dec, lam)
    m, q = cfg.mosaic_scale, cfg.mask_quantile
    fader = model.fader
    stats_seen = False
    history = []
    bar = tqdm(range(tc.epochs_fader), desc=f"stage 2 (FADeR {fader_cfg.head}/{fader_cfg.mask}/{fader_cfg.resize}/{fader_cfg.norm})",
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
def set_fixed_norm_stats(model: AnomalyModel, data: PreparedData, batch: int = 32) -> None:
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


@dataclass
class EvalResult:
    metrics: dict[str, float]
    scores: np.ndarray
    labels: np.ndarray
    maps: np.ndarray
    masks: np.ndarray
    skipped: list[str]


def load_test(dataset: MVTecFolder, image_size: int, device: torch.device, progress: bool = True
              ) -> tuple[torch.Tensor, LoadedImages]:
    loaded = load_images(dataset.test, image_size, with_masks=True, progress=progress, desc="test images")
    if len(loaded.images) == 0:
        why = f" ({len(loaded.skipped)} corrupt skipped, e.g. {loaded.skipped[0]})" if loaded.skipped else ""
        raise DatasetError(f"dataset {dataset.root}: no readable test images{why}")
    return to_tensor(loaded.images, device), loaded


def evaluate(model: AnomalyModel, images: torch.Tensor, loaded: LoadedImages, saliency: torch.Tensor | None = None,
             progress: bool = True) -> EvalResult:
    maps, scores = score_images(model, images, saliency, progress=progress, desc="evaluating")
    labels = np.array([s.label for s in loaded.samples])
    metrics = summarise(labels, scores, loaded.masks, maps)
    metrics["n_test"] = int(len(labels))
    metrics["n_defective"] = int(labels.sum())
    return EvalResult(metrics, scores, labels, maps, loaded.masks, loaded.skipped)


def calibrate_on(model: AnomalyModel, images: torch.Tensor, saliency: torch.Tensor | None, target_far: float
                 ) -> tuple[float, np.ndarray]:
    _, scores = score_images(model, images, saliency)
    return calibrate_threshold(scores, target_far), scores


def build_masker_for(cfg: DetectorConfig, device: torch.device) -> Masker:
    return build_masker(cfg.masker).to(device)
