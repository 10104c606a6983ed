"""EfficientAD (student-teacher + autoencoder with patch description networks), with DFSC.

* :mod:`.config`   -- architecture and training settings
* :mod:`.nets`     -- PDN-S / PDN-M and the autoencoder
* :mod:`.model`    -- the exported module (pre-processing, three networks, map normalisation)
* :mod:`.losses`   -- hard feature loss, generic-image penalty, DFSC margin
* :mod:`.teacher`  -- the offline teacher: distilled from EfficientNet-Lite0 on generic images
* :mod:`.trainer`  -- student and autoencoder training, map quantiles on held-out normals
* :mod:`.cli`      -- ``linewatch-detector distill-teacher``
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import torch
import torch.nn as nn

from ..registry import FitResult, ModelFamily, Profile, TrainingSet, register_family
from .config import EfficientADConfig, EfficientADTrainConfig
from .model import EfficientAD as EfficientADModule
from .teacher import TARGET_CHANNELS, GenericImages, generic_image_files, load_teacher, teacher_path
from .trainer import train, warm_copy

__all__ = ["EfficientAD", "EfficientADConfig", "EfficientADTrainConfig", "EfficientADModule"]


@register_family
class EfficientAD(ModelFamily):
    name = "efficientad"
    summary = "EfficientAD student-teacher + autoencoder (PDN), optionally with DFSC for logical anomalies"
    config_cls = EfficientADConfig
    train_config_cls = EfficientADTrainConfig
    profiles = {
        "cpu": Profile(cost="256 px in, nets at 128 px and half width, 2000 steps: ~10 min per category on 2 CPU cores",
                       config=dict(net_size=128, width=0.5, ae_channels=32), train=dict(steps=2000)),
        "gpu": Profile(cost="the paper's layout (nets at 256 px, full width), 70000 steps: ~1 h per category on one GPU",
                       config=dict(net_size=256, width=1.0, ae_channels=64), train=dict(steps=70000)),
        # a random teacher (no distilled file needed), PDN at 1/8 width, a fast and less selective hard loss
        "smoke": Profile(cost="64 px, random teacher at 1/8 width, 150 steps: seconds; checks an installation end to "
                              "end (it detects painted toy defects, not real ones)",
                         config=dict(image_size=64, net_size=64, width=0.125, ae_channels=16, pretrained=False),
                         train=dict(steps=150, batch_size=4, lr=1e-3, hard_quantile=0.9, penalty=False)),
    }
    variants = {
        "efficientad-s": dict(size="s"),
        "efficientad-m": dict(size="m"),
        "efficientad-s-dfsc": dict(size="s", dfsc=True),
        "efficientad-m-dfsc": dict(size="m", dfsc=True),
    }

    def build(self, cfg: EfficientADConfig) -> nn.Module:
        model = EfficientADModule(cfg)
        if cfg.pretrained:
            if cfg.out_channels != TARGET_CHANNELS:
                raise ValueError(f"the distilled teacher has {TARGET_CHANNELS} output channels, not {cfg.out_channels}")
            teacher = load_teacher(cfg.teacher_weights or teacher_path(cfg.size, cfg.width), cfg.size, cfg.width)
            model.teacher.load_state_dict(teacher.state_dict)
            model.teacher_info = teacher.info
        return model

    def for_loading(self, cfg: EfficientADConfig) -> EfficientADConfig:
        return dataclasses.replace(cfg, pretrained=False)  # the teacher comes from the checkpoint

    def add_arguments(self, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--image-size", type=int, default=None, help="EfficientAD: side of the input and the map (256)")
        group.add_argument("--steps", type=int, default=None, help="EfficientAD: training steps (cpu 2000, gpu 70000)")
        group.add_argument("--epochs", type=int, default=None,
                           help="EfficientAD: training length as passes over the training images instead of --steps")
        group.add_argument("--net-size", type=int, default=None,
                           help="EfficientAD: side the networks see, multiple of 32 (cpu 128, gpu 256)")
        group.add_argument("--pdn-width", type=float, default=None,
                           help="EfficientAD: PDN channel multiplier (cpu 0.5, gpu 1.0; needs its distilled teacher)")
        group.add_argument("--teacher-weights", default=None,
                           help="EfficientAD: distilled teacher file (default: the cache of 'distill-teacher')")
        group.add_argument("--dfsc", action=argparse.BooleanOptionalAction, default=None,
                           help="EfficientAD: distinctive feature separation constraint (the -dfsc variants)")
        group.add_argument("--dfsc-quantile", type=float, default=None,
                           help="EfficientAD: tau', the quantile of teacher-AE distances above which features are novel (0.9)")
        group.add_argument("--dfsc-margin", type=float, default=None,
                           help="EfficientAD: margin kept between teacher and autoencoder on novel features (1.0)")

    def overrides_from_args(self, args: argparse.Namespace) -> dict[str, Any]:
        names = {"image_size": "image_size", "steps": "steps", "epochs": "epochs", "net_size": "net_size",
                 "pdn_width": "width", "teacher_weights": "teacher_weights",
                 "dfsc": "dfsc", "dfsc_quantile": "dfsc_quantile", "dfsc_margin": "dfsc_margin"}
        return {field: getattr(args, arg) for arg, field in names.items() if getattr(args, arg, None) is not None}

    def variant_of(self, cfg: EfficientADConfig) -> str:
        return f"efficientad-{cfg.size}{'-dfsc' if cfg.dfsc else ''}"

    def fit(self, cfg: EfficientADConfig, tc: EfficientADTrainConfig, data: TrainingSet, device: torch.device, *,
            seed: int = 0, progress: bool = True, init: nn.Module | None = None,
            workspace: dict[str, Any] | None = None) -> FitResult:
        model = warm_copy(init) if init is not None else self.build(cfg)
        workspace = workspace if workspace is not None else {}
        if tc.penalty and "efficientad_generic" not in workspace:
            workspace["efficientad_generic"] = GenericImages.load(generic_image_files())
        facts = train(model, tc, data, device, generic=workspace.get("efficientad_generic"), seed=seed, progress=progress,
                      warm=init is not None)
        teacher = getattr(model, "teacher_info", None) or (getattr(init, "teacher_info", None) if init else None)
        meta = {"efficientad": facts, "train_config": tc.to_dict()}
        if teacher:
            meta["teacher"] = {k: v for k, v in teacher.items() if k != "images"} | {"n_images": len(teacher["images"])}
        return FitResult(model=model, minutes=facts["minutes"], meta=meta)
