"""The EAR + FADeR network: masker -> mosaic obfuscation -> (FADeR gate) -> U-Net -> MSGMS map.

``forward(images)`` is the family's export contract: uint8 RGB ``[B,3,S,S]`` in, image scores ``[B]``
(maximum of the smoothed anomaly map) and the maps ``[B,1,S,S]`` out.  Training uses :meth:`run`,
which exposes the intermediate tensors and accepts cached saliency and other (m, q).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ...device import full_precision, to_unit
from .config import EarFaderConfig
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


class EarFaderModel(nn.Module):
    def __init__(self, cfg: EarFaderConfig, masker: Masker | None = None):
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

    @property
    def image_size(self) -> int:
        return int(self.cfg.image_size)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (or [0, 1] float) RGB ``[B,3,S,S]`` -> (scores float32 ``[B]``, maps float32 ``[B,1,S,S]``)."""
        amap = self.maps(to_unit(images))
        return amap.flatten(1).amax(dim=1), amap

    def maps(self, x: torch.Tensor, saliency: torch.Tensor | None = None,
             m: int | None = None, q: float | None = None) -> torch.Tensor:
        """Smoothed anomaly maps ``[B,1,S,S]`` (float32) of images in [0, 1]; training scores other (m, q) here."""
        out = self.run(x, saliency, m, q)
        with full_precision(x):
            return self.anomaly_map(x, out.recon.float())

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
