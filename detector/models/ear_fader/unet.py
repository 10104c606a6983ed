"""The EAR reconstruction U-Net (D = 5 levels) with FADeR attenuation gates on its skips.

* Encoder block = (conv3x3 -> BatchNorm -> LeakyReLU) x 3, the third conv with stride 2.
* Decoder block = nearest upsample x2, then (conv3x3 -> BatchNorm -> LeakyReLU) x 3 -- the mirror of
  the encoder block (one x2 resolution change per block, so the 5 levels line up).
* Skip connections at depths 1..D-1 (encoder outputs at H/2 .. H/16), concatenated onto the decoder
  input of the same resolution; none at the deepest level (H/32).
* Every skip passes through a :class:`SkipGate`: identity for EAR, multiplied by FADeR's mask
  (resized to the skip's resolution, nearest by default) when a gate map is given.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _cbr(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.LeakyReLU(0.2, inplace=True),
    ]


class EncoderBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(*_cbr(cin, cout), *_cbr(cout, cout), *_cbr(cout, cout, stride=2))


class DecoderBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(nn.Upsample(scale_factor=2, mode="nearest"), *_cbr(cin, cout), *_cbr(cout, cout), *_cbr(cout, cout))


class SkipGate(nn.Module):
    """Attenuation hook on one skip connection: ``features * resize(gate)`` (identity without a gate)."""

    def __init__(self, depth: int, mode: str = "nearest"):
        super().__init__()
        self.depth = depth
        self.mode = mode

    def forward(self, features: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        if gate is None:
            return features
        size = features.shape[-2:]
        if self.mode == "nearest":
            g = F.interpolate(gate, size=size, mode="nearest")
        else:
            g = F.interpolate(gate, size=size, mode="bilinear", align_corners=False,
                              antialias=gate.shape[-1] > size[-1])
        return features * g.to(features.dtype)


class UNet(nn.Module):
    def __init__(self, base_channels: int = 32, depth: int = 5, in_channels: int = 3, gate_mode: str = "nearest"):
        super().__init__()
        if depth < 2:
            raise ValueError("depth must be >= 2")
        ch = [min(base_channels * 2**i, base_channels * 8) for i in range(depth)]
        self.depth = depth
        self.encoder = nn.ModuleList()
        cin = in_channels
        for c in ch:
            self.encoder.append(EncoderBlock(cin, c))
            cin = c
        # decoder[i] produces the resolution of encoder level i's input (i = depth-1 .. 0)
        self.decoder = nn.ModuleList()
        for i in range(depth):
            cin = ch[i] if i == depth - 1 else ch[i] + ch[i]  # deeper decoder output (ch[i]) + skip i (ch[i])
            cout = ch[i - 1] if i > 0 else ch[0]
            self.decoder.append(DecoderBlock(cin, cout))
        self.skip_gates = nn.ModuleList(SkipGate(d + 1, gate_mode) for d in range(depth - 1))
        self.head = nn.Conv2d(ch[0], in_channels, 1)

    @property
    def stride(self) -> int:
        return 2**self.depth

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for block in self.encoder:
            x = block(x)
            feats.append(x)
        return feats

    def decode(self, feats: list[torch.Tensor], gate: torch.Tensor | None = None) -> torch.Tensor:
        h = self.decoder[-1](feats[-1])
        for i in range(self.depth - 2, -1, -1):
            skip = self.skip_gates[i](feats[i], gate)
            h = self.decoder[i](torch.cat([h, skip], dim=1))
        return torch.sigmoid(self.head(h))

    def forward(self, x: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        return self.decode(self.encode(x), gate)
