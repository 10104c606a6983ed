"""CRAD: continuous learnable grids as a memory of normal features of a frozen CNN.

    frames --(frozen CNN, stride 8 + 16 fused, 3x3 neighbourhood mean, per-channel standardised)--> F [B,C,H,W]
    local read:  coordinates predicted per pixel from F   -> bilinear read of an 8x8 grid of C-vectors
    global read: coordinates predicted from pooled F      -> bilinear read of a 4x4 grid of whole C x H x W maps
    both reads --(CNN blocks)--> reconstruction R of F (made only of normal memory)
    refinement:  S = w_mse * [MSE(F, R) small] + w_cos * cos(F, R);  R' = S F + (1 - S) R
    map: ||F - R'|| per pixel, upsampled to the frame; image score: max of the map average-pooled

Reading the grids by bilinear interpolation between entries (``grid_sample``) is what makes the
memory continuous: nearby coordinates give nearby normal features, and a feature that no normal
pattern explains is reconstructed as the closest normal one, so it stands out in ``||F - R'||``.
The global read lets one model hold several products (each lands on its own grid coordinates).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...device import to_unit
from ..backbones import create_backbone, freeze, input_normalisation
from .config import CradConfig


class FeatureExtractor(nn.Module):
    """Frozen timm CNN: two consecutive stages, the deeper one upsampled to the shallower one's grid.

    The network is pruned after the deeper stage (timm's ``prune_intermediate_layers``) and stops
    there (``forward_intermediates``): the stages beyond it and the classifier are never computed.
    """

    def __init__(self, cfg: CradConfig):
        super().__init__()
        net = create_backbone(cfg.backbone, cfg.backbone_weights, cfg.pretrained)
        self.indices = [int(i) for i in cfg.feature_indices]
        info = [net.feature_info[i] for i in self.indices]
        net.prune_intermediate_layers(self.indices, prune_head=True)
        self.net = freeze(net)
        mean, std = input_normalisation(net)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        self.channels = int(sum(i["num_chs"] for i in info))
        self.stride = int(info[0]["reduction"])
        self.aggregate = int(cfg.aggregate)
        if cfg.standardise:  # set from the training features by fit_standardisation; stored in the checkpoint
            self.register_buffer("feat_mean", torch.zeros(1, self.channels, 1, 1))
            self.register_buffer("feat_std", torch.ones(1, self.channels, 1, 1))
        else:
            self.feat_mean = self.feat_std = None

    @torch.no_grad()
    def fit_standardisation(self, feats: torch.Tensor) -> None:
        """Per-channel mean and std of raw training features ``[N,C,H,W]`` (no-op without standardisation)."""
        if self.feat_mean is not None:
            self.feat_mean.copy_(feats.mean(dim=(0, 2, 3), keepdim=True))
            self.feat_std.copy_(feats.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6))

    def standardised(self, feats: torch.Tensor) -> torch.Tensor:
        return feats if self.feat_mean is None else (feats - self.feat_mean) / self.feat_std

    def train(self, mode: bool = True) -> "FeatureExtractor":  # always frozen, always eval
        return super().train(False)

    @torch.no_grad()
    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] ``[B,3,S,S]`` -> fused, neighbourhood-averaged features ``[B,C,S/8,S/8]``."""
        fine, coarse = self.net.forward_intermediates((x - self.mean) / self.std, indices=self.indices,
                                                      intermediates_only=True, stop_early=True)
        coarse = F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear", align_corners=False)
        feats = torch.cat([fine, coarse], dim=1).float()
        if self.aggregate > 1:
            feats = F.avg_pool2d(feats, self.aggregate, stride=1, padding=self.aggregate // 2,
                                 count_include_pad=False)
        return feats

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] ``[B,3,S,S]`` -> the features the memory reconstructs ``[B,C,S/8,S/8]``."""
        return self.standardised(self.raw(x))


class BasicBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(y)))


class GridMemory(nn.Module):
    """The two continuous grids, the coordinate predictors and the fusion of what is read."""

    def __init__(self, channels: int, size: int, cfg: CradConfig):
        super().__init__()
        c, h = channels, size
        self.size = size
        self.local_grid = nn.Parameter(nn.init.xavier_normal_(torch.empty(1, c, cfg.local_grid, cfg.local_grid)))
        self.global_grid = nn.Parameter(nn.init.xavier_normal_(torch.empty(1, c * h * h, cfg.global_grid,
                                                                           cfg.global_grid)))
        self.local_coords = nn.Sequential(nn.Conv2d(c, c, 1), nn.Tanh(), nn.Conv2d(c, 2, 1), nn.Tanh())
        self.global_coords = nn.Sequential(nn.Linear(c, c), nn.Tanh(), nn.Linear(c, 2), nn.Tanh())
        self.fuse_in = nn.Sequential(nn.Conv2d(2 * c, cfg.hidden, 1, bias=False), nn.BatchNorm2d(cfg.hidden),
                                     nn.ReLU())
        self.blocks = nn.Sequential(*[BasicBlock(cfg.hidden) for _ in range(cfg.blocks)])
        self.fuse_out = nn.Conv2d(cfg.hidden, c, 1)

    def forward(self, feat: torch.Tensor, jitter: float = 0.0) -> torch.Tensor:
        """Features ``[B,C,H,W]`` -> their reconstruction from the normal memory.  ``jitter``: the std of
        Gaussian noise added to the local coordinates (training only)."""
        b, c, h, w = feat.shape
        local_xy = self.local_coords(feat).permute(0, 2, 3, 1)  # [B,H,W,2] in [-1, 1]
        if jitter > 0:
            local_xy = local_xy + torch.randn_like(local_xy) * jitter
        local = F.grid_sample(self.local_grid.expand(b, -1, -1, -1), local_xy, mode="bilinear",
                              align_corners=False)
        global_xy = self.global_coords(feat.mean(dim=(2, 3)))  # [B,2]
        glob = F.grid_sample(self.global_grid, global_xy.view(1, b, 1, 2), mode="bilinear", align_corners=False)
        glob = glob.view(c, h, w, b).permute(3, 0, 1, 2)  # [1, C*H*W, B, 1] -> [B,C,H,W]
        return self.fuse_out(self.blocks(self.fuse_in(torch.cat([glob, local], dim=1))))


class CradModel(nn.Module):
    def __init__(self, cfg: CradConfig):
        super().__init__()
        self.cfg = cfg
        self.features = FeatureExtractor(cfg)
        side = cfg.image_size // self.features.stride
        self.memory = GridMemory(self.features.channels, side, cfg)

    @property
    def image_size(self) -> int:
        return int(self.cfg.image_size)

    def refine(self, feat: torch.Tensor, rec: torch.Tensor) -> torch.Tensor:
        """R' = S F + (1 - S) R: the input where it agrees with the memory, the memory's normal feature where not."""
        mse = (rec - feat).pow(2).mean(dim=1, keepdim=True)
        agree = 1.0 - torch.round((mse * self.cfg.mse_coef).clamp(0, 1))
        cos = F.cosine_similarity(rec, feat, dim=1).unsqueeze(1)
        s = self.cfg.w_mse * agree + self.cfg.w_cos * cos
        return s * feat + (1 - s) * rec

    def anomaly_map(self, feat: torch.Tensor) -> torch.Tensor:
        """Features -> per-pixel distance to the refined reconstruction ``[B,1,H,W]``."""
        refined = self.refine(feat, self.memory(feat))
        return (refined - feat).pow(2).sum(dim=1, keepdim=True).sqrt()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (or [0, 1] float) RGB ``[B,3,S,S]`` -> (scores float32 ``[B]``, maps float32 ``[B,1,S,S]``)."""
        x = to_unit(images)
        amap = F.interpolate(self.anomaly_map(self.features(x)), size=x.shape[-2:], mode="bilinear",
                             align_corners=False)
        k = self.cfg.score_pool
        # the k x k box average as two 1-D passes: the same values, 2k instead of k^2 additions per pixel
        pooled = F.avg_pool2d(F.avg_pool2d(amap, (k, 1), stride=1), (1, k), stride=1) if k > 1 else amap
        return pooled.flatten(1).amax(dim=1), amap
