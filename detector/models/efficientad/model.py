"""The EfficientAD module: teacher, student and autoencoder, with pre- and post-processing inside
``forward`` (the export contract of :mod:`detector.models.registry`)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import EfficientADConfig
from .nets import PDN_BORDER, AutoEncoder, pdn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_map(m: torch.Tensor, q_a: torch.Tensor, q_b: torch.Tensor) -> torch.Tensor:
    """Map the held-out quantile ``q_a`` to 0 and ``q_b`` to 0.1 (the paper's map normalisation)."""
    return 0.1 * (m - q_a) / (q_b - q_a).clamp_min(1e-12)


class EfficientAD(nn.Module):
    """``images`` uint8 [B,3,S,S] (or float in [0,1]) -> (scores [B], maps [B,1,S,S]).

    Local map: squared difference between the (normalised) teacher and the student's first
    ``C`` channels; global map: between the autoencoder and the student's second ``C`` channels.
    Each is normalised by its quantiles on held-out normal images, the two are averaged,
    padded back to the input grid, upsampled to ``S``; the image score is the map's maximum.
    """

    def __init__(self, cfg: EfficientADConfig):
        super().__init__()
        self.cfg = cfg
        self.image_size = cfg.image_size
        c = cfg.out_channels
        self.teacher = pdn(cfg.size, c, cfg.width)
        self.student = pdn(cfg.size, 2 * c, cfg.width)
        self.autoencoder = AutoEncoder(cfg.net_size, c, cfg.ae_channels)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        # teacher feature statistics on the training images, and the map quantiles on held-out normals
        self.register_buffer("teacher_mean", torch.zeros(1, c, 1, 1))
        self.register_buffer("teacher_std", torch.ones(1, c, 1, 1))
        self.register_buffer("q_st", torch.tensor([0.0, 1.0]))
        self.register_buffer("q_ae", torch.tensor([0.0, 1.0]))

    def train(self, mode: bool = True) -> "EfficientAD":
        super().train(mode)
        self.teacher.eval()  # frozen, always
        return self

    # ---- pieces (used by the trainer too)
    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or [0,1] float images at any size -> ImageNet-normalised float at ``net_size``."""
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        n = self.cfg.net_size
        if x.shape[-1] != n or x.shape[-2] != n:
            x = F.interpolate(x, size=(n, n), mode="bilinear", align_corners=False, antialias=True)
        return (x - self.mean) / self.std

    def teacher_features(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return (self.teacher(x) - self.teacher_mean) / self.teacher_std

    def raw_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(local, global) maps before normalisation, [B,1,h,w] on the PDN's output grid."""
        c = self.cfg.out_channels
        t = self.teacher_features(x)
        s = self.student(x)
        a = self.autoencoder(x)
        m_st = (t - s[:, :c]).pow(2).mean(1, keepdim=True)
        m_ae = (a - s[:, c:]).pow(2).mean(1, keepdim=True)
        return m_st, m_ae

    def combine(self, m_st: torch.Tensor, m_ae: torch.Tensor) -> torch.Tensor:
        m = 0.5 * normalize_map(m_st, self.q_st[0], self.q_st[1]) + 0.5 * normalize_map(m_ae, self.q_ae[0], self.q_ae[1])
        m = F.pad(m, (PDN_BORDER,) * 4, mode="replicate")  # the border cells, whose patches reach past the image
        return F.interpolate(m, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = self.combine(*self.raw_maps(self.prepare(images))).float()
        return maps.amax(dim=(1, 2, 3)), maps
