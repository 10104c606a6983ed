"""Pluggable frozen maskers ("pre-trained attention"): a saliency map whose top regions become M_B.

* ``vit``: CLS-token self-attention of the last transformer block, averaged over heads, upsampled
  (the paper's default, timm ``vit_small_patch8_224.dino``; any timm ViT works, e.g. a randomly
  initialised small one in tests).
* ``cnn``: L2 norm over channels of a late feature map of a timm CNN (default
  ``tf_efficientnet_lite0``, stride-16 stage), upsampled.

Both take images in [0, 1] (``[B,3,H,W]``) and return a saliency map ``[B,1,H,W]`` at the input size.
Weights come either from the timm hub (``pretrained=True``, needs network access) or from a local
file (``weights=PATH``, passed to timm as ``pretrained_cfg_overlay=dict(file=PATH)``), or -- when a
checkpoint is loaded -- from the state dict stored in the checkpoint (``pretrained=False``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...hashing import file_sha256, state_sha256
from ..backbones import create_backbone, freeze, input_normalisation


@dataclass
class MaskerConfig:
    kind: str = "cnn"  # "cnn" | "vit"
    arch: str = "tf_efficientnet_lite0"
    weights: str | None = None  # local weights file (safetensors / pth); None -> timm hub when pretrained
    pretrained: bool = True  # False: random init (tests) or weights restored from a checkpoint
    input_size: int = 224  # the masker's own input resolution
    feature_index: int = 3  # cnn only: timm features_only out index (3 = stride 16 for EfficientNet)
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # extra timm.create_model kwargs

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MaskerConfig":
        return cls(**d)


def _create(cfg: MaskerConfig, **extra: Any) -> nn.Module:
    return create_backbone(cfg.arch, cfg.weights, cfg.pretrained, **{**cfg.model_kwargs, **extra})


class Masker(nn.Module):
    """Frozen saliency network; subclasses implement :meth:`_saliency` on normalised inputs."""

    def __init__(self, cfg: MaskerConfig, net: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.net = freeze(net)
        mean, std = input_normalisation(net)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def train(self, mode: bool = True) -> "Masker":  # always frozen, always eval
        super().train(False)
        return self

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.cfg.input_size
        y = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        sal = self._saliency((y - self.mean) / self.std)
        return F.interpolate(sal.float(), size=x.shape[-2:], mode="bilinear", align_corners=False)

    def _saliency(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class CNNFeatureNormMasker(Masker):
    """L2 norm over channels of a late CNN feature map."""

    def __init__(self, cfg: MaskerConfig):
        net = _create(cfg, features_only=True, out_indices=(cfg.feature_index,))
        super().__init__(cfg, net)

    def _saliency(self, x: torch.Tensor) -> torch.Tensor:
        f = self.net(x)[0]
        return f.float().norm(dim=1, keepdim=True)


class ViTAttentionMasker(Masker):
    """CLS-token attention of the last block, averaged over heads (DINO-style)."""

    def __init__(self, cfg: MaskerConfig):
        extra: dict[str, Any] = {"num_classes": 0}
        if "img_size" not in cfg.model_kwargs:
            extra["img_size"] = cfg.input_size
        net = _create(cfg, **extra)
        super().__init__(cfg, net)
        self._captured: torch.Tensor | None = None
        net.blocks[-1].attn.register_forward_pre_hook(self._capture)

    def _capture(self, module: nn.Module, args: tuple) -> None:
        self._captured = args[0]

    def _saliency(self, x: torch.Tensor) -> torch.Tensor:
        self.net.forward_features(x)
        tokens, self._captured = self._captured, None
        attn = self.net.blocks[-1].attn
        b, n, c = tokens.shape
        qkv = attn.qkv(tokens).reshape(b, n, 3, attn.num_heads, c // attn.num_heads).permute(2, 0, 3, 1, 4)
        q, k = qkv[0], qkv[1]
        q, k = attn.q_norm(q), attn.k_norm(k)
        a = ((q.float() * attn.scale) @ k.float().transpose(-2, -1)).softmax(dim=-1)  # [B,h,N,N]
        npt = getattr(self.net, "num_prefix_tokens", 1)
        cls = a[:, :, 0, npt:].mean(dim=1)  # [B, patches]
        gh, gw = self.net.patch_embed.grid_size
        return cls.reshape(b, 1, gh, gw)


MASKERS = {"cnn": CNNFeatureNormMasker, "vit": ViTAttentionMasker}


def build_masker(cfg: MaskerConfig) -> Masker:
    try:
        cls = MASKERS[cfg.kind]
    except KeyError:
        raise ValueError(f"unknown masker kind {cfg.kind!r} (choose from {sorted(MASKERS)})") from None
    return cls(cfg)


def masker_identity(cfg: MaskerConfig, masker: Masker) -> dict[str, Any]:
    """Identity of the masker weights: the source file's sha256 (when local) and the content hash."""
    ident: dict[str, Any] = {"kind": cfg.kind, "arch": cfg.arch}
    if cfg.weights and Path(cfg.weights).is_file():
        ident["weights_file"] = str(cfg.weights)
        ident["weights_file_sha256"] = file_sha256(cfg.weights)
    elif cfg.pretrained:
        ident["weights_source"] = f"timm-hub:{cfg.arch}"
    else:
        ident["weights_source"] = "random-init"
    ident["state_sha256"] = state_sha256(masker.net.state_dict())
    return ident
