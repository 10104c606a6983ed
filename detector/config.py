"""Architecture configuration of a detector (stored in every checkpoint)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .models.maskers import MaskerConfig

DEFAULT_MASKER_WEIGHTS = "../shared/models/tf_efficientnet_lite0_in1k.safetensors"


def default_smoothing(image_size: int) -> int:
    """Mean-filter size for the anomaly map: 21 at 256 px (RIAD's choice), scaled, odd, >= 3."""
    k = max(3, int(round(21 * image_size / 256)))
    return k if k % 2 else k + 1


@dataclass
class FaderConfig:
    head: str = "mlp"  # "mlp" | "vit" (ablation)
    mask: str = "soft"  # "soft" | "binary" (ablation)
    norm: str = "minmax"  # "minmax" (per image) | "fixed" (training statistics)
    resize: str = "nearest"  # how the patch mask is resized to each skip: "nearest" | "bilinear" (ablation)
    margin: float = 0.1  # ranking-loss margin xi (on l^ before normalisation)


@dataclass
class DetectorConfig:
    image_size: int = 256
    mosaic_scale: int = 8  # m, also FADeR's patch size
    mask_quantile: float = 0.5  # q: fraction of mosaic cells (top saliency) that are obfuscated
    unet_channels: int = 32
    depth: int = 5
    masker: MaskerConfig = field(default_factory=MaskerConfig)
    fader: FaderConfig | None = None  # None = EAR alone
    smoothing: int = 0  # mean-filter size for the anomaly map; 0 = default_smoothing(image_size)

    def __post_init__(self) -> None:
        if self.image_size % (2**self.depth):
            raise ValueError(f"image size {self.image_size} must be a multiple of {2**self.depth} (U-Net depth {self.depth})")
        if self.image_size % self.mosaic_scale:
            raise ValueError(f"image size {self.image_size} is not divisible by mosaic scale {self.mosaic_scale}")
        if not 0.0 < self.mask_quantile <= 1.0:
            raise ValueError("mask quantile must be in (0, 1]")
        if not self.smoothing:
            self.smoothing = default_smoothing(self.image_size)

    @property
    def variant(self) -> str:
        return "ear" if self.fader is None else "fader"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DetectorConfig":
        d = dict(d)
        d["masker"] = MaskerConfig.from_dict(d["masker"])
        d["fader"] = FaderConfig(**d["fader"]) if d.get("fader") else None
        return cls(**d)
