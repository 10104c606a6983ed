"""The whole detector network: masker -> mosaic obfuscation -> (FADeR gate) -> U-Net -> MSGMS map."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..config import DetectorConfig
from .fader import FADeR
from .maskers import Masker, build_masker
from .mosaic import cell_topq_mask, obfuscate
from .msgms import msgms_map
from .unet import UNet


@dataclass
class Forward:
    obfuscated: torch.Tensor  # I'
    recon: torch.Tensor  # I^
    pred: torch.Tensor | None  # FADeR l^ [B,N] (None for EAR)
    gate: torch.Tensor | None  # mask applied to the skips [B,1,g,g]


class AnomalyModel(nn.Module):
    def __init__(self, cfg: DetectorConfig, masker: Masker | None = None):
        super().__init__()
        self.cfg = cfg
        self.masker = masker if masker is not None else build_masker(cfg.masker)
        gate_mode = cfg.fader.resize if cfg.fader else "nearest"
        self.unet = UNet(cfg.unet_channels, cfg.depth, gate_mode=gate_mode)
        self.fader = (
            FADeR(cfg.mosaic_scale, cfg.image_size, cfg.fader.head, cfg.fader.mask, cfg.fader.norm)
            if cfg.fader is not None else None
        )
        self.use_fader = True  # runtime switch (e.g. to measure the head's inference overhead)

    def binary_mask(self, x: torch.Tensor, saliency: torch.Tensor | None = None,
                    m: int | None = None, q: float | None = None) -> torch.Tensor:
        if saliency is None:
            saliency = self.masker(x)
        return cell_topq_mask(saliency, m or self.cfg.mosaic_scale, q if q is not None else self.cfg.mask_quantile)

    def run(self, x: torch.Tensor, saliency: torch.Tensor | None = None,
            m: int | None = None, q: float | None = None) -> Forward:
        """``x``: images in [0, 1], ``[B,3,S,S]``; ``saliency`` may be given (cached masks)."""
        m = m or self.cfg.mosaic_scale
        mask = self.binary_mask(x, saliency, m, q)
        xo = obfuscate(x, mask, m)
        pred = gate = None
        if self.fader is not None and self.use_fader:
            pred = self.fader.predict(xo)
            gate = self.fader.gate(pred)
        recon = self.unet(xo, gate)
        return Forward(xo, recon, pred, gate)

    def anomaly_map(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        return msgms_map(x, recon, smooth=self.cfg.smoothing)

    @torch.no_grad()
    def score(self, x: torch.Tensor, saliency: torch.Tensor | None = None,
              m: int | None = None, q: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (smoothed anomaly maps [B,1,S,S] float32, image scores [B] = max of the map)."""
        out = self.run(x, saliency, m, q)
        amap = self.anomaly_map(x, out.recon)
        return amap, amap.flatten(1).amax(dim=1)
