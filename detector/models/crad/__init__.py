"""CRAD: continuous learnable grids (local and global) as a memory of normal features of a frozen CNN.

* :mod:`.config`  -- :class:`CradConfig` (architecture), :class:`CradTrainConfig`
* :mod:`.model`   -- :class:`CradModel` (the export contract): features, grid memory, refinement, map
* :mod:`.trainer` -- cached features, end-to-end training of grids and network

One model may serve several products (unified mode): the global grid is addressed by coordinates
predicted from the whole image, so each product settles on its own part of the memory.
"""

from __future__ import annotations

import argparse
import copy
from typing import Any

import torch
import torch.nn as nn

from ...paths import default_masker_weights
from ..registry import CommonSettings, FitResult, ModelFamily, Profile, TrainingSet, register_family
from .config import CradConfig, CradTrainConfig
from .model import CradModel

__all__ = ["Crad", "CradConfig", "CradModel", "CradTrainConfig"]


@register_family
class Crad(ModelFamily):
    name = "crad"
    summary = "CRAD: continuous grids as a memory of normal CNN features; one model may serve several products"
    config_cls = CradConfig
    train_config_cls = CradTrainConfig
    unified = True
    profiles = {
        "cpu": Profile("256 px, EfficientNet-Lite0 features, 2 fusion blocks of width 64, 24000 image passes: "
                       "about 10 min per category on 2 CPU cores (magnetic_tile 44 epochs, bottle 128)",
                       config={"image_size": 256, "hidden": 64, "blocks": 2}, train={"passes": 24000}),
        "gpu": Profile("256 px, 7 fusion blocks of width 256, 50 epochs (the paper's length)",
                       config={"image_size": 256, "hidden": 256, "blocks": 7}, train={"epochs": 50}),
        "smoke": Profile("64 px, 1 fusion block of width 32, 12 epochs: seconds; checks an installation end to end "
                         "(it detects painted toy defects, not real ones)",
                         config={"image_size": 64, "hidden": 32, "blocks": 1}, train={"epochs": 12, "batch_size": 8}),
    }
    variants = {"crad": {}}

    def build(self, cfg: CradConfig) -> nn.Module:
        return CradModel(cfg)

    def make_config(self, values: dict[str, Any]) -> CradConfig:
        values = dict(values)
        if values.get("pretrained", True) and not values.get("backbone_weights") and \
                values.get("backbone", "tf_efficientnet_lite0") == "tf_efficientnet_lite0":
            values["backbone_weights"] = default_masker_weights()
        return CradConfig(**values)

    def for_loading(self, cfg: CradConfig) -> CradConfig:
        cfg = copy.deepcopy(cfg)
        cfg.pretrained = False  # the backbone's weights come from the checkpoint
        return cfg

    def common_overrides(self, common: CommonSettings) -> dict[str, Any]:
        """``lr`` is the network's; the grids' keeps its ratio to it (a gentle warm start moves both gently)."""
        o = super().common_overrides(common)
        if common.lr is not None:
            defaults = CradTrainConfig()
            o["grid_lr"] = common.lr * defaults.grid_lr / defaults.lr
        return o

    def add_arguments(self, g: argparse._ArgumentGroup) -> None:
        g.add_argument("--image-size", type=int, help="square model input, multiple of 32 (default 256)")
        g.add_argument("--backbone", help="timm CNN (default tf_efficientnet_lite0); its two stages at stride 8 "
                                          "and 16 are fused")
        g.add_argument("--backbone-weights", help="local ImageNet weights file of the backbone (default for "
                                                  "tf_efficientnet_lite0: the Lite0 weights, see README)")
        g.add_argument("--hidden", type=int, help="width of the fusion blocks (cpu 64, gpu 256)")
        g.add_argument("--blocks", type=int, help="residual fusion blocks (cpu 2, gpu 7)")
        g.add_argument("--epochs", type=int, help="training epochs (replaces the profile's image passes)")
        g.add_argument("--batch-size", type=int, help="training batch size (default 16)")
        g.add_argument("--lr", type=float, help="AdamW learning rate of the network (default 1e-3)")
        g.add_argument("--grid-lr", type=float, help="AdamW learning rate of the grids (default 0.1)")

    def overrides_from_args(self, a: argparse.Namespace) -> dict[str, Any]:
        keys = ["image_size", "backbone", "backbone_weights", "hidden", "blocks", "epochs", "batch_size", "lr",
                "grid_lr"]
        o = {k: getattr(a, k) for k in keys if getattr(a, k, None) is not None}
        if "epochs" in o:
            o["passes"] = None
        return o

    def configs(self, variant: str | None = None, profile: str = "cpu",
                overrides: dict[str, Any] | None = None) -> tuple[CradConfig, CradTrainConfig]:
        cfg, tc = super().configs(variant, profile, overrides)
        if overrides and "epochs" in overrides and "passes" not in overrides:
            tc.passes = None
        return cfg, tc

    def fit(self, cfg: CradConfig, tc: CradTrainConfig, data: TrainingSet, device: torch.device, *,
            seed: int = 0, progress: bool = True, init: nn.Module | None = None,
            workspace: dict[str, Any] | None = None) -> FitResult:
        from .trainer import fit

        return fit(init.cfg if init is not None else cfg, tc, data, device, seed, progress, init)
