"""CRAD configuration: the architecture (stored in every checkpoint) and the training settings."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class CradConfig:
    image_size: int = 256
    backbone: str = "tf_efficientnet_lite0"
    # local ImageNet weights of the backbone (None with pretrained=True: the timm hub; never in tests)
    backbone_weights: str | None = None
    pretrained: bool = True  # False: random init (tests) or weights restored from a checkpoint
    # timm ``features_only`` indices of the two fused stages: stride 8 and stride 16 for EfficientNets
    feature_indices: tuple[int, int] = (2, 3)
    # each feature averaged over its aggregate x aggregate neighbourhood (PatchCore's local context; 1 = off)
    aggregate: int = 3
    # features standardised per channel with the training set's mean and std (stored in the model), so
    # that no channel dominates ||F - R'|| by its scale alone
    standardise: bool = True
    local_grid: int = 8  # local memory: grid_size x grid_size entries addressed by pixel position
    global_grid: int = 4  # global memory: entries addressed by coordinates predicted from the whole image
    hidden: int = 128  # width of the CNN blocks that fuse local and global memory reads
    blocks: int = 2  # residual blocks in that fusion
    # refinement map S = w_mse * [per-pixel MSE below 1/mse_coef] + w_cos * cosine(input, reconstruction)
    w_mse: float = 0.3
    w_cos: float = 0.7
    mse_coef: float = 0.05
    score_pool: int = 0  # image score = max of the map average-pooled over this many pixels; 0 = image_size // 8

    def __post_init__(self) -> None:
        self.feature_indices = tuple(int(i) for i in self.feature_indices)
        if len(self.feature_indices) != 2 or self.feature_indices[1] != self.feature_indices[0] + 1:
            raise ValueError("CRAD fuses two consecutive backbone stages (stride 8 and 16): feature_indices (i, i+1)")
        if self.image_size % 32:
            raise ValueError(f"image size {self.image_size} must be a multiple of 32")
        if self.aggregate < 1 or self.aggregate % 2 == 0:
            raise ValueError(f"aggregate must be an odd neighbourhood size >= 1, got {self.aggregate}")
        if not self.score_pool:
            self.score_pool = max(1, self.image_size // 8)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CradConfig":
        d = {"aggregate": 1, "standardise": False, **d}  # checkpoints from before these options had neither
        return cls(**d)


@dataclass
class CradTrainConfig:
    epochs: int = 50
    # training length in image passes per product (replaces epochs when set): a unified model over k
    # products trains k times as many steps, so each product gets as long as it would alone
    passes: int | None = None
    batch_size: int = 16
    lr: float = 1e-3  # AdamW, the network
    grid_lr: float = 0.1  # AdamW, the two grids (the continuous memory)
    weight_decay: float = 1e-4
    jitter_std: float = 0.05  # Gaussian noise on the local coordinates while training ...
    jitter_p: float = 0.5  # ... in this share of the batches
    clip_grad_norm: float = 0.1

    def epochs_for(self, n_train: int, products: int = 1) -> int:
        return max(1, round(self.passes * products / max(1, n_train))) if self.passes else self.epochs

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
