"""EfficientAD settings: the architecture (stored in checkpoints) and the training hyper-parameters."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

SIZES = ("s", "m")


@dataclass
class EfficientADConfig:
    """Architecture of one EfficientAD model.

    ``image_size`` is the side of the images the module takes and the maps it returns;
    ``net_size`` is the side the three networks see (the image is resized to it first), so a
    small CPU can run the paper's layout at a fraction of the cost.  ``width`` scales the PDN's
    hidden channels (1.0 = the paper's); ``out_channels`` is the teacher's feature width, fixed by
    the distilled teacher (EfficientNet-Lite0 stride-8 + stride-16 features = 152).
    """

    size: str = "s"  # "s" (EfficientAD-S) | "m" (EfficientAD-M)
    image_size: int = 256
    net_size: int = 256
    width: float = 1.0
    out_channels: int = 152
    ae_channels: int = 64
    teacher_weights: str | None = None  # distilled teacher file; None -> the per-machine cache
    pretrained: bool = True  # False: random teacher (tests) or teacher restored from a checkpoint
    # DFSC, a training constraint; kept with the architecture so a trained model names its variant
    dfsc: bool = False
    dfsc_quantile: float = 0.9  # tau': features at or above this quantile of the teacher-AE distance are "novel"
    dfsc_margin: float = 1.0  # novel features are kept at least this far from the teacher (mean square per channel)

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise ValueError(f"EfficientAD size must be one of {SIZES}, got {self.size!r}")
        if self.net_size % 32 or self.net_size < 64:
            raise ValueError(f"net_size must be a multiple of 32 and >= 64, got {self.net_size}")
        if self.image_size < 32:
            raise ValueError(f"image_size must be >= 32, got {self.image_size}")
        if not 0 < self.width <= 4:
            raise ValueError(f"width must be in (0, 4], got {self.width}")
        if not 0 < self.dfsc_quantile < 1:
            raise ValueError("dfsc_quantile must be within (0, 1)")
        if self.dfsc_margin < 0:
            raise ValueError("dfsc_margin must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EfficientADConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class EfficientADTrainConfig:
    """Training of the student and the autoencoder (the teacher is distilled once, beforehand)."""

    steps: int = 70000  # the paper's; the CPU profile trains far fewer
    # training length in passes over the training images instead (replaces steps when set): how the
    # family-neutral ``epochs`` of retraining reaches this family (:meth:`steps_for`)
    epochs: int | None = None
    batch_size: int = 1
    lr: float = 1e-4
    weight_decay: float = 1e-5
    hard_quantile: float = 0.999  # hard feature loss: only differences above this quantile count
    penalty: bool = True  # keep the student's output small on generic (non-product) images
    map_quantiles: tuple[float, float] = (0.9, 0.995)  # held-out quantiles mapped to 0 and 0.1

    def __post_init__(self) -> None:
        if self.epochs is not None and self.epochs < 1:
            raise ValueError("epochs must be >= 1 (or None: the steps setting)")
        if not 0 < self.hard_quantile < 1:
            raise ValueError("hard_quantile must be within (0, 1)")
        self.map_quantiles = tuple(self.map_quantiles)  # type: ignore[assignment]
        qa, qb = self.map_quantiles
        if not 0 < qa < qb < 1:
            raise ValueError("map_quantiles must be two increasing values within (0, 1)")

    def steps_for(self, n_train: int) -> int:
        """Optimiser steps: ``steps``, or with ``epochs`` enough batches to show each of the ``n_train``
        images that many times on average."""
        return max(1, math.ceil(self.epochs * n_train / self.batch_size)) if self.epochs else self.steps

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
