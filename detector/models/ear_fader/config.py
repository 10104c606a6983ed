"""EAR + FADeR configuration: the architecture (stored in every checkpoint) and the training settings."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .maskers import MaskerConfig


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
class EarFaderConfig:
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
    def from_dict(cls, d: dict[str, Any]) -> "EarFaderConfig":
        d = dict(d)
        d["masker"] = d["masker"] if isinstance(d["masker"], MaskerConfig) else MaskerConfig.from_dict(d["masker"])
        f = d.get("fader")
        d["fader"] = (f if isinstance(f, FaderConfig) else FaderConfig(**f)) if f else None
        return cls(**d)


@dataclass
class EarFaderTrainConfig:
    epochs_ear: int = 100
    epochs_fader: int = 100
    # training length in image passes (epochs = passes / training images): set, they replace the epochs,
    # so a CPU profile costs about the same on a category of 100 or 1000 images
    passes_ear: int | None = None
    passes_fader: int | None = None
    batch_size: int = 8
    lr: float = 1e-3  # stage 1 (U-Net)
    # stage 2 head; the decoder gets decoder_lr_factor x this.  3e-3 (decoder 3e-4): the decoder has to
    # learn to reconstruct from attenuated skips within a CPU-sized stage 2 (see BENCHMARK.md).
    fader_lr: float = 3e-3
    decoder_lr_factor: float = 0.1
    schedule: str = "sgdr"  # "fixed" | "warmup" | "sgdr" (warm-up then cosine with warm restarts)
    warmup_frac: float = 0.05  # fraction of the steps used for linear warm-up
    sgdr_cycles: int = 2  # SGDR: first cycle length so that this many doubling cycles fill the run
    w_l2: float = 1.0
    w_msgms: float = 1.0
    w_ssim: float = 1.0
    # ranking pairs per image: all N*N patch pairs up to this many (a 96 px image at m=8 has 20736), else sampled
    max_pairs_per_image: int = 65536
    auto_m: bool = True  # choose the mosaic scale among m_candidates on held-out normals
    auto_q: bool = True  # choose the mask fraction among q_candidates
    m_candidates: tuple[int, ...] = (4, 8, 16)
    q_candidates: tuple[float, ...] = (0.25, 0.5, 0.75)
    select_frac: float = 0.4

    def __post_init__(self) -> None:
        self.m_candidates = tuple(int(m) for m in self.m_candidates)
        self.q_candidates = tuple(float(q) for q in self.q_candidates)

    def epochs_for(self, n_train: int) -> tuple[int, int]:
        """(stage-1, stage-2) epochs for ``n_train`` training images."""
        e1 = max(1, round(self.passes_ear / max(1, n_train))) if self.passes_ear else self.epochs_ear
        e2 = max(1, round(self.passes_fader / max(1, n_train))) if self.passes_fader else self.epochs_fader
        return e1, e2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
