"""Frozen pretrained timm networks, shared by the families (maskers, feature extractors, teachers).

Weights come from a local file (``weights=PATH``, handed to timm as ``pretrained_cfg_overlay``), from
the timm hub (``pretrained=True`` without a file; needs network access, never used in tests), or --
when a checkpoint is loaded -- from the checkpoint's own state (``pretrained=False``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def create_backbone(arch: str, weights: str | None = None, pretrained: bool = True, **kwargs: Any) -> nn.Module:
    if pretrained and weights:
        if not Path(weights).is_file():
            raise FileNotFoundError(f"pretrained weights file not found: {weights}")
        return timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=str(weights)), **kwargs)
    return timm.create_model(arch, pretrained=pretrained, **kwargs)


def freeze(net: nn.Module) -> nn.Module:
    """Eval mode and no gradients, for good."""
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def input_normalisation(net: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) as ``[1,3,1,1]`` tensors from the network's pretrained config (ImageNet's by default)."""
    pc = getattr(net, "pretrained_cfg", None) or {}
    mean = torch.tensor(pc.get("mean", IMAGENET_MEAN), dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(pc.get("std", IMAGENET_STD), dtype=torch.float32).view(1, 3, 1, 1)
    return mean, std
