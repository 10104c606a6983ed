"""EAR + FADeR: attention-guided mosaic obfuscation, a reconstruction U-Net, FADeR's soft skip mask.

* :mod:`.maskers` -- frozen "pre-trained attention" saliency (CNN feature norm, ViT CLS attention)
* :mod:`.mosaic`  -- mosaic obfuscation of the masked region (EAR)
* :mod:`.unet`    -- the 5-level reconstruction U-Net with attenuation gates on its skips
* :mod:`.fader`   -- FADeR patch-error predictors (MLP, small ViT), ranking loss, soft mask
* :mod:`.msgms`   -- multi-scale gradient-magnitude similarity (score + loss) and SSIM loss
* :mod:`.model`   -- :class:`EarFaderModel`, the whole network (the export contract)
* :mod:`.trainer` -- stage 1 (EAR, with the automatic mosaic choice) and stage 2 (FADeR)

Variants: ``fader`` (this family's default), ``ear`` (stage 1 alone) and the paper's ablations.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
from typing import Any

import torch
import torch.nn as nn

from ...paths import default_masker_weights
from ..registry import CommonSettings, FitResult, ModelFamily, Profile, TrainingSet, register_family
from .config import EarFaderConfig, EarFaderTrainConfig, FaderConfig
from .maskers import MaskerConfig, build_masker, masker_identity
from .model import EarFaderModel

__all__ = ["EarFader", "EarFaderConfig", "EarFaderModel", "EarFaderTrainConfig", "FaderConfig", "MaskerConfig"]

# stage-2 settings: a change here does not change stage 1 (the benchmark trains stage 1 once per category)
_STAGE2_FIELDS = {"epochs_fader", "passes_fader", "fader_lr", "decoder_lr_factor", "max_pairs_per_image"}


@register_family
class EarFader(ModelFamily):
    name = "ear-fader"
    summary = "EAR + FADeR: masked mosaic reconstruction with a U-Net; MSGMS anomaly map"
    config_cls = EarFaderConfig
    train_config_cls = EarFaderTrainConfig
    profiles = {
        "cpu": Profile("96 px, U-Net width 16, 12000 + 12000 image passes: about 10 min per category on 2 CPU cores",
                       config={"image_size": 96, "unet_channels": 16},
                       train={"passes_ear": 12000, "passes_fader": 12000}),
        "gpu": Profile("the paper's settings, 256 px, width 32, 100 + 100 epochs: hours on a CPU",
                       config={"image_size": 256, "unet_channels": 32},
                       train={"epochs_ear": 100, "epochs_fader": 100}),
        "smoke": Profile("64 px, width 8, 25 + 8 epochs, fixed mosaic: seconds; checks an installation end to end "
                         "(it detects painted toy defects, not real ones)",
                         config={"image_size": 64, "unet_channels": 8, "mosaic_scale": 8, "mask_quantile": 0.5,
                                 "masker": {"input_size": 64}},
                         train={"epochs_ear": 25, "epochs_fader": 8, "auto_m": False, "auto_q": False}),
    }
    variants = {
        "fader": {"fader": {}},
        "ear": {"fader": None},
        "fader-binary": {"fader": {"mask": "binary"}},
        "fader-bilinear": {"fader": {"resize": "bilinear"}},
        "fader-vit": {"fader": {"head": "vit"}},
        "fader-fixednorm": {"fader": {"norm": "fixed"}},
    }

    # ---- construction
    def build(self, cfg: EarFaderConfig) -> nn.Module:
        return EarFaderModel(cfg)

    def for_loading(self, cfg: EarFaderConfig) -> EarFaderConfig:
        cfg = copy.deepcopy(cfg)
        cfg.masker.pretrained = False  # the masker weights come from the checkpoint itself
        return cfg

    def verify(self, model: nn.Module, meta: dict[str, Any]) -> None:
        from ...hashing import state_sha256

        ident = meta.get("masker", {}).get("state_sha256")
        if ident and ident != state_sha256(model.masker.net.state_dict()):
            raise ValueError("masker weights do not match the recorded masker identity")

    # ---- configuration
    def make_config(self, values: dict[str, Any]) -> EarFaderConfig:
        values = dict(values)
        masker = values.pop("masker", None) or {}
        if not isinstance(masker, MaskerConfig):
            masker = MaskerConfig(**masker)
        if masker.kind == "cnn" and masker.arch == "tf_efficientnet_lite0" and masker.pretrained and not masker.weights:
            masker.weights = default_masker_weights()
        fader = values.pop("fader", {})
        if isinstance(fader, dict):
            fader = FaderConfig(**fader)
        return EarFaderConfig(masker=masker, fader=fader, **values)

    def configs(self, variant: str | None = None, profile: str = "cpu",
                overrides: dict[str, Any] | None = None) -> tuple[EarFaderConfig, EarFaderTrainConfig]:
        overrides = dict(overrides or {})
        norm = overrides.pop("norm", None)  # FADeR's normalisation, for whichever FADeR variant
        cfg, tc = super().configs(variant, profile, overrides)
        if norm is not None and cfg.fader is not None:
            cfg.fader.norm = norm
        if "epochs_ear" in overrides and "passes_ear" not in overrides:
            tc.passes_ear = None
        if "epochs_fader" in overrides and "passes_fader" not in overrides:
            tc.passes_fader = None
        return cfg, tc

    def common_overrides(self, common: CommonSettings) -> dict[str, Any]:
        """``epochs`` for stage 1 and half of them (rounded up) for stage 2, which only refines the skips;
        ``lr`` for both stages."""
        o: dict[str, Any] = {}
        if common.epochs is not None:
            o["epochs_ear"], o["epochs_fader"] = common.epochs, (common.epochs + 1) // 2
        if common.lr is not None:
            o["lr"] = o["fader_lr"] = common.lr
        if common.batch_size is not None:
            o["batch_size"] = common.batch_size
        return o

    def add_arguments(self, g: argparse._ArgumentGroup) -> None:
        g.add_argument("--image-size", type=int, help="square model input, multiple of 32 (cpu 96, gpu 256)")
        g.add_argument("--channels", type=int, help="U-Net base width (cpu 16, gpu 32)")
        g.add_argument("--mosaic-scale", help="mosaic scale m (= FADeR patch size), or 'auto' to choose among "
                                              "--m-candidates on held-out normals (default auto)")
        g.add_argument("--m-candidates", help="candidates for --mosaic-scale auto (default 4,8,16)")
        g.add_argument("--mask-quantile", help="fraction q of mosaic cells (highest saliency) that are obfuscated, "
                                               "or 'auto' (default)")
        g.add_argument("--q-candidates", help="candidates for --mask-quantile auto (default 0.25,0.5,0.75)")
        g.add_argument("--norm", choices=["minmax", "fixed"],
                       help="normalisation of the predicted patch errors before M_S = 1 - norm(l^): per-image "
                            "min-max (default) or fixed from training statistics (1st/99th percentile)")
        g.add_argument("--masker", choices=["cnn", "vit"],
                       help="saliency: cnn = feature-norm of a timm CNN (default), vit = last-block CLS attention")
        g.add_argument("--masker-arch", help="timm architecture (default tf_efficientnet_lite0 for cnn, "
                                             "vit_small_patch8_224.dino for vit)")
        g.add_argument("--masker-weights", help="local weights file for the masker (default for cnn: the "
                                                "EfficientNet-Lite0 ImageNet weights, see README)")
        g.add_argument("--masker-input-size", type=int, help="masker input resolution (default 224)")
        g.add_argument("--epochs-ear", type=int, help="stage-1 epochs (replaces the profile's image passes)")
        g.add_argument("--epochs-fader", type=int, help="stage-2 epochs (replaces the profile's image passes)")
        g.add_argument("--lr", type=float, help="stage-1 U-Net learning rate (Adam, default 1e-3)")
        g.add_argument("--fader-lr", type=float, help="stage-2 head learning rate (default 3e-3); the decoder gets 0.1x")
        g.add_argument("--schedule", choices=["fixed", "warmup", "sgdr"],
                       help="learning-rate schedule: fixed, warm-up then constant, or warm-up then SGDR (default)")
        g.add_argument("--batch-size", type=int, help="training batch size (default 8)")

    def overrides_from_args(self, a: argparse.Namespace) -> dict[str, Any]:
        o: dict[str, Any] = {}
        simple = {"image_size": "image_size", "channels": "unet_channels", "norm": "norm", "epochs_ear": "epochs_ear",
                  "epochs_fader": "epochs_fader", "lr": "lr", "fader_lr": "fader_lr", "schedule": "schedule",
                  "batch_size": "batch_size"}
        for arg, key in simple.items():
            if getattr(a, arg, None) is not None:
                o[key] = getattr(a, arg)
        if a.m_candidates:
            o["m_candidates"] = tuple(int(x) for x in _numbers(a.m_candidates))
        if a.q_candidates:
            o["q_candidates"] = _numbers(a.q_candidates)
        for arg, key, auto, cast in (("mosaic_scale", "mosaic_scale", "auto_m", int),
                                     ("mask_quantile", "mask_quantile", "auto_q", float)):
            v = getattr(a, arg)
            if v is not None and str(v).lower() != "auto":
                try:
                    o[key], o[auto] = cast(v), False
                except ValueError:
                    raise ValueError(f"--{arg.replace('_', '-')}: not a number or 'auto': {v!r}") from None
        if "mosaic_scale" not in o and o.get("m_candidates"):
            o["mosaic_scale"] = o["m_candidates"][min(1, len(o["m_candidates"]) - 1)]
        if "mask_quantile" not in o and o.get("q_candidates"):
            o["mask_quantile"] = o["q_candidates"][min(1, len(o["q_candidates"]) - 1)]
        if a.masker or a.masker_arch or a.masker_weights or a.masker_input_size:
            kind = a.masker or "cnn"
            arch = a.masker_arch or ("tf_efficientnet_lite0" if kind == "cnn" else "vit_small_patch8_224.dino")
            o["masker"] = {"kind": kind, "arch": arch, "weights": a.masker_weights,
                           "input_size": a.masker_input_size or 224}
        return o

    def variant_of(self, cfg: EarFaderConfig) -> str:
        if cfg.fader is None:
            return "ear"
        for name, opts in self.variants.items():
            if opts["fader"] is not None and dataclasses.replace(FaderConfig(**opts["fader"]), norm=cfg.fader.norm) == cfg.fader:
                return name
        return "fader"

    # ---- training
    def fit(self, cfg: EarFaderConfig, tc: EarFaderTrainConfig, data: TrainingSet, device: torch.device, *,
            seed: int = 0, progress: bool = True, init: nn.Module | None = None,
            workspace: dict[str, Any] | None = None) -> FitResult:
        from .trainer import prepare, train_ear, train_fader

        if init is not None:  # warm start: the architecture, masker and mosaic choice of the active model
            cfg = copy.deepcopy(init.cfg)
            tc = dataclasses.replace(tc, auto_m=False, auto_q=False)
        ws = workspace if workspace is not None else {}
        mkey = ("prepared", json.dumps(cfg.masker.to_dict(), sort_keys=True))
        if mkey not in ws:
            masker = init.masker if init is not None else build_masker(cfg.masker).to(device)
            ws[mkey] = (masker, prepare(data, masker, progress))
        masker, prepared = ws[mkey]
        stage1_cfg = dataclasses.replace(cfg, fader=None).to_dict()
        stage1_tc = {k: v for k, v in tc.to_dict().items() if k not in _STAGE2_FIELDS}
        skey = ("stage1", json.dumps([stage1_cfg, stage1_tc, seed], sort_keys=True, default=str))
        if skey not in ws or init is not None:
            ws[skey] = train_ear(cfg, prepared, tc, masker, device, seed, progress, init=init)
        s1 = ws[skey]
        minutes = {"stage1": s1.minutes}
        model = s1.model
        if cfg.fader is not None:
            s2 = train_fader(model, cfg.fader, prepared, tc, device, seed, progress, init=init)
            model = s2.model
            minutes["stage2"] = s2.minutes
        meta: dict[str, Any] = {"masker": masker_identity(model.cfg.masker, model.masker),
                                "mosaic_selection": s1.selection}
        if model.fader is not None:
            meta["normalisation"] = {"mode": model.fader.norm_mode, "lo": float(model.fader.norm_lo),
                                     "hi": float(model.fader.norm_hi)}
        return FitResult(model, minutes, meta)


def _numbers(s: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in str(s).split(",") if x.strip())
    except ValueError:
        raise ValueError(f"not a comma-separated list of numbers: {s!r}") from None
