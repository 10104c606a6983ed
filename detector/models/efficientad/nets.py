"""The three networks of EfficientAD: patch description networks (PDN, teacher and student) and
the autoencoder.  Plain convolution stacks without padding, as in the paper: an output cell
sees a 33 x 33 input patch, and the output grid is ``net_size / 4 - 8`` cells wide (the map is
padded back by :data:`PDN_BORDER` cells on each side before upsampling).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

PDN_BORDER = 4  # output cells lost on each side by the unpadded convolutions (16 px / stride 4)


def _ch(c: int, width: float) -> int:
    return max(8, int(round(c * width)))


def pdn_small(out_channels: int, width: float = 1.0) -> nn.Sequential:
    """PDN of EfficientAD-S: 4 convolutions, 2 average poolings (channels 128-256-256 at width 1)."""
    c1, c2 = _ch(128, width), _ch(256, width)
    return nn.Sequential(
        nn.Conv2d(3, c1, 4), nn.ReLU(inplace=True),
        nn.AvgPool2d(2, 2),
        nn.Conv2d(c1, c2, 4), nn.ReLU(inplace=True),
        nn.AvgPool2d(2, 2),
        nn.Conv2d(c2, c2, 3), nn.ReLU(inplace=True),
        nn.Conv2d(c2, out_channels, 4),
    )


def pdn_medium(out_channels: int, width: float = 1.0) -> nn.Sequential:
    """PDN of EfficientAD-M: wider, with two extra 1x1 convolutions (channels 256-512-512-512)."""
    c1, c2 = _ch(256, width), _ch(512, width)
    return nn.Sequential(
        nn.Conv2d(3, c1, 4), nn.ReLU(inplace=True),
        nn.AvgPool2d(2, 2),
        nn.Conv2d(c1, c2, 4), nn.ReLU(inplace=True),
        nn.AvgPool2d(2, 2),
        nn.Conv2d(c2, c2, 1), nn.ReLU(inplace=True),
        nn.Conv2d(c2, c2, 3), nn.ReLU(inplace=True),
        nn.Conv2d(c2, out_channels, 4), nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 1),
    )


def pdn(size: str, out_channels: int, width: float = 1.0) -> nn.Sequential:
    return {"s": pdn_small, "m": pdn_medium}[size](out_channels, width)


def pdn_out_size(net_size: int) -> int:
    return net_size // 4 - 2 * PDN_BORDER


class AutoEncoder(nn.Module):
    """Encoder to a 1 x 1 bottleneck, decoder by upsampling + convolution to the PDN's output grid.

    The bottleneck forces the autoencoder to describe the whole image with 64 numbers, so it
    learns the layout of a normal part (the "global" branch that catches logical anomalies).
    """

    def __init__(self, net_size: int, out_channels: int, channels: int = 64, dropout: float = 0.2):
        super().__init__()
        c = channels
        k = net_size // 32  # what is left after five stride-2 convolutions
        self.encoder = nn.Sequential(
            nn.Conv2d(3, c // 2, 4, 2, 1), nn.ReLU(inplace=True),
            nn.Conv2d(c // 2, c // 2, 4, 2, 1), nn.ReLU(inplace=True),
            nn.Conv2d(c // 2, c, 4, 2, 1), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 4, 2, 1), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 4, 2, 1), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, k),
        )
        # the paper's upsampling sizes at 256 px, scaled (each 4x4 convolution with padding 2 adds one)
        self.sizes = [max(2, round(s * net_size / 256)) for s in (3, 8, 15, 32, 63, 127)]
        self.out_size = pdn_out_size(net_size)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, c, 4, 1, 2), nn.ReLU(inplace=True), nn.Dropout(dropout)) for _ in self.sizes)
        self.head = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1), nn.ReLU(inplace=True), nn.Conv2d(c, out_channels, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encoder(x)
        for size, stage in zip(self.sizes, self.stages):
            z = stage(F.interpolate(z, size=(size, size), mode="bilinear", align_corners=False))
        z = F.interpolate(z, size=(self.out_size, self.out_size), mode="bilinear", align_corners=False)
        return self.head(z)
