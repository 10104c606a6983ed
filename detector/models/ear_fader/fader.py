"""FADeR: predict each m x m patch's reconstruction error and attenuate the U-Net skips there.

* The obfuscated image I' is split into non-overlapping m x m patches (m = mosaic scale), each
  flattened to a token of 3*m*m values.
* A head maps each token to a predicted error l^_i: :class:`MLPHead` (two layers, the default) or
  :class:`ViTHead` (a small transformer over the tokens; ablation).
* Training labels l_i = L2 between the patch of I and of the reconstruction I^; loss: pairwise
  margin ranking, max(0, -sign(l_i - l_j) (l^_i - l^_j) + xi) (:func:`ranking_loss`).
* Soft mask M_S = 1 - normalise(l^) in (0, 1) (:meth:`FADeR.gate`), normalised per image (min-max) or
  with statistics fixed from training (1st/99th percentiles); ``binary`` turns it into 0/1 (ablation).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

GATE_EPS = 0.01  # M_S is squeezed into [eps, 1 - eps], strictly inside (0, 1)


def patchify(x: torch.Tensor, m: int) -> torch.Tensor:
    """``[B,C,H,W]`` -> ``[B, (H/m)*(W/m), C*m*m]`` non-overlapping patch tokens (row-major)."""
    return F.unfold(x, kernel_size=m, stride=m).transpose(1, 2)


def patch_errors(x: torch.Tensor, recon: torch.Tensor, m: int) -> torch.Tensor:
    """Ground truth l_i: mean squared difference of each m x m patch, ``[B, N]``."""
    return F.avg_pool2d((x.float() - recon.float()).pow(2).mean(dim=1, keepdim=True), m, m).flatten(1)


def ranking_loss(pred_i: torch.Tensor, pred_j: torch.Tensor, true_i: torch.Tensor, true_j: torch.Tensor,
                 margin: float) -> torch.Tensor:
    """Mean of max(0, -sign(l_i - l_j) * (l^_i - l^_j) + margin) over pairs (tied labels excluded)."""
    s = torch.sign(true_i - true_j)
    keep = s != 0
    if not bool(keep.any()):
        return pred_i.sum() * 0.0
    loss = F.relu(-s * (pred_i - pred_j) + margin)
    return loss[keep].mean()


def patch_ranking_loss(pred: torch.Tensor, target: torch.Tensor, margin: float, max_pairs: int,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Ranking loss over the patch pairs within each image (``pred``/``target``: [B, N]).

    Every ordered pair (i, j) when N * N <= ``max_pairs``, otherwise ``max_pairs`` random pairs.
    Every pair costs nothing measurable next to the U-Net, and it takes the pair sampling out of the
    seed's hands (measured in BENCHMARK.md).
    """
    b, n = pred.shape
    if n * n <= max_pairs:
        return ranking_loss(pred[:, :, None], pred[:, None, :], target[:, :, None], target[:, None, :], margin)
    i = torch.randint(0, n, (b, max_pairs), generator=generator).to(pred.device)
    j = torch.randint(0, n, (b, max_pairs), generator=generator).to(pred.device)
    return ranking_loss(pred.gather(1, i), pred.gather(1, j), target.gather(1, i), target.gather(1, j), margin)


class MLPHead(nn.Module):
    def __init__(self, m: int, grid: int, hidden: int = 256, channels: int = 3):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(channels * m * m, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.net(tokens).squeeze(-1)


class ViTHead(nn.Module):
    """A small ViT over the patch tokens (ablation for the MLP): 2 layers, width 64, 4 heads."""

    def __init__(self, m: int, grid: int, dim: int = 64, layers: int = 2, heads: int = 4, channels: int = 3):
        super().__init__()
        self.embed = nn.Linear(channels * m * m, dim)
        self.pos = nn.Parameter(torch.zeros(1, grid * grid, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim * 2, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.embed(tokens) + self.pos)
        return self.out(self.norm(h)).squeeze(-1)


HEADS = {"mlp": MLPHead, "vit": ViTHead}


class FADeR(nn.Module):
    def __init__(self, m: int, image_size: int, head: str = "mlp", mask: str = "soft", norm: str = "minmax"):
        super().__init__()
        if image_size % m:
            raise ValueError(f"image size {image_size} not divisible by patch size {m}")
        if head not in HEADS:
            raise ValueError(f"unknown FADeR head {head!r} (choose from {sorted(HEADS)})")
        if mask not in ("soft", "binary"):
            raise ValueError(f"unknown FADeR mask {mask!r} (soft|binary)")
        if norm not in ("minmax", "fixed"):
            raise ValueError(f"unknown FADeR normalisation {norm!r} (minmax|fixed)")
        self.m = m
        self.grid = image_size // m
        self.mask_mode = mask
        self.norm_mode = norm
        self.head = HEADS[head](m, self.grid)
        # fixed normalisation statistics (1st / 99th percentile of l^ over the training images)
        self.register_buffer("norm_lo", torch.tensor(0.0))
        self.register_buffer("norm_hi", torch.tensor(1.0))

    def predict(self, obfuscated: torch.Tensor) -> torch.Tensor:
        """Predicted patch errors l^ ``[B, N]`` from the obfuscated image."""
        return self.head(patchify(obfuscated.float(), self.m)).float()

    def normalise(self, pred: torch.Tensor) -> torch.Tensor:
        if self.norm_mode == "minmax":
            lo = pred.amin(dim=1, keepdim=True)
            hi = pred.amax(dim=1, keepdim=True)
        else:
            lo, hi = self.norm_lo, self.norm_hi
        return ((pred - lo) / (hi - lo).clamp_min(1e-8)).clamp(0.0, 1.0)

    def gate(self, pred: torch.Tensor) -> torch.Tensor:
        """Mask ``[B,1,grid,grid]`` to multiply onto the skips: soft M_S in (0,1) or binary 0/1."""
        n = self.normalise(pred)
        if self.mask_mode == "binary":
            g = (n <= 0.5).float()
        else:
            g = GATE_EPS + (1.0 - 2 * GATE_EPS) * (1.0 - n)
        return g.view(-1, 1, self.grid, self.grid)

    def forward(self, obfuscated: torch.Tensor) -> torch.Tensor:
        return self.gate(self.predict(obfuscated))

    @torch.no_grad()
    def set_fixed_stats(self, preds: torch.Tensor) -> None:
        flat = preds.flatten().float()
        if flat.numel() > 1_000_000:
            flat = flat[torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(0))[:1_000_000]]
        self.norm_lo.fill_(float(torch.quantile(flat, 0.01)))
        self.norm_hi.fill_(float(torch.quantile(flat, 0.99)))
