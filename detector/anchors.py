"""anomalib's PaDiM and PatchCore as benchmark anchors, on the same EfficientNet-Lite0 as our families.

Benchmark-only (the ``bench`` extra, ``pip install -e .[bench]``); nothing at run time imports this.
The anchors are anomalib's own torch models (``PadimModel``, ``PatchcoreModel``), driven without its
Lightning engine: their timm feature extractor gets the local ``tf_efficientnet_lite0`` ImageNet
weights, and the fitted model is wrapped in the family contract (uint8 images in, ``(scores, maps)``
out, higher = more anomalous), so the benchmark evaluates and times it like any family's module.

Choices where anomalib has no default for this backbone:

* layers: Lite0's timm feature stages at strides 4 / 8 / 16 (``blocks.1``, ``blocks.2``, ``blocks.4``;
  24 / 40 / 112 channels) for PaDiM and strides 8 / 16 for PatchCore -- the strides of anomalib's
  ResNet defaults (PaDiM ``layer1-3``, PatchCore ``layer2-3``);
* PaDiM keeps 100 randomly chosen feature channels (of 176): anomalib's default for its default
  backbone (ResNet-18, 100 of 448);
* PatchCore: 1 % coreset (k-center greedy), anomalib's default 9 neighbours for the image score;
* input normalisation: the backbone's own pretrained config (Lite0's 0.5 / 0.5), as our families do.

Scores are raw (Mahalanobis distance / nearest-neighbour distance): anomalib's post-processor and
its metrics (which squash scores outside [0, 1] with a sigmoid) are not used.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file
from tqdm.auto import tqdm

from .models.backbones import input_normalisation

log = logging.getLogger(__name__)

ANCHORS = ("padim", "patchcore")
ARCH = "tf_efficientnet_lite0"
PADIM_LAYERS = ("blocks.1", "blocks.2", "blocks.4")
PADIM_N_FEATURES = 100
PATCHCORE_LAYERS = ("blocks.2", "blocks.4")
CORESET_RATIO = 0.01
NUM_NEIGHBORS = 9
_HEAD = ("conv_head.", "bn2.", "classifier.")  # the classifier, unused by a feature extractor


def available() -> list[str]:
    """The anchors whose library (anomalib) imports here; ``[]`` otherwise."""
    try:
        import anomalib.models.image.padim.torch_model  # noqa: F401
        import anomalib.models.image.patchcore.torch_model  # noqa: F401
    except Exception as e:  # noqa: BLE001 -- a broken install is "not available", never a crash
        log.debug("anomalib anchors unavailable: %s", e)
        return []
    return list(ANCHORS)


class AnchorModule(nn.Module):
    """A fitted anomalib torch model behind the family contract (always in eval mode)."""

    def __init__(self, name: str, model: nn.Module, image_size: int):
        super().__init__()
        self.name = name
        self.image_size = image_size
        self.model = model
        mean, std = input_normalisation(model.feature_extractor.feature_extractor)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        super().train(False)

    def train(self, mode: bool = True) -> "AnchorModule":  # fitted once; training mode would fill memory banks
        super().train(False)
        return self

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        return (x - self.mean) / self.std

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 ``[B,3,S,S]`` RGB (or float in [0, 1]) -> (scores ``[B]``, maps ``[B,1,S,S]``), float32."""
        b, _, h, w = images.shape
        out = self.model(self.normalise(images))
        return out.pred_score.float().reshape(b), out.anomaly_map.float().reshape(b, 1, h, w)


def _build(name: str) -> nn.Module:
    if name == "padim":
        from anomalib.models.image.padim.torch_model import PadimModel

        return PadimModel(backbone=ARCH, layers=list(PADIM_LAYERS), pre_trained=False, n_features=PADIM_N_FEATURES)
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    return PatchcoreModel(layers=list(PATCHCORE_LAYERS), backbone=ARCH, pre_trained=False,
                          num_neighbors=NUM_NEIGHBORS)


def _load_backbone(extractor: nn.Module, weights: str) -> None:
    """Copy the local ImageNet weights into anomalib's timm feature extractor.

    Every tensor of the (``features_only``) extractor must come from the file; the file's classifier
    head (``conv_head``, ``bn2``, ``classifier``), which the extractor drops, is all it may have left over.
    """
    if not Path(weights).is_file():
        raise FileNotFoundError(f"pretrained weights file not found: {weights}")
    state = load_file(weights) if weights.endswith(".safetensors") else torch.load(weights, weights_only=True)
    missing, unexpected = extractor.feature_extractor.load_state_dict(state, strict=False)
    stray = [k for k in unexpected if not k.startswith(_HEAD)]
    if missing or stray:
        raise ValueError(f"{weights} does not fit {ARCH}: missing {missing[:5]}, unexpected {stray[:5]}")


def _fit_gaussian(model: nn.Module, chunk: int = 512) -> None:
    """PaDiM's per-position Gaussian, as ``MultiVariateGaussian`` computes it (unbiased covariance
    + 0.01 I + 1e-5 I), but inverted through Cholesky: batched ``torch.linalg.inv`` in this CPU
    torch build returns wrong inverses or fails (LU pivot errors) for stacks of 176 x 176 matrices.
    Positions are done in chunks to bound memory (the embeddings alone are ~1 GB for 580 images)."""
    emb = torch.cat(model.memory_bank)
    model.memory_bank = []
    n, c, h, w = emb.shape
    if n < 2:
        raise ValueError("PaDiM needs at least 2 training images")
    emb = emb.reshape(n, c, h * w)
    eye = torch.eye(c, dtype=emb.dtype)
    means, invs = [], []
    for p0 in range(0, h * w, chunk):
        x = emb[:, :, p0:p0 + chunk].permute(2, 0, 1)  # [P, N, C]
        mean = x.mean(dim=1, keepdim=True)
        xc = x - mean
        cov = xc.transpose(1, 2) @ xc / (n - 1) + (0.01 + 1e-5) * eye
        invs.append(torch.cholesky_inverse(torch.linalg.cholesky(cov)))
        means.append(mean[:, 0])
    model.gaussian.mean = torch.cat(means).T.contiguous()  # [C, H*W]
    model.gaussian.inv_covariance = torch.cat(invs)  # [H*W, C, C]


def _subsample_coreset(model: nn.Module, ratio: float, seed: int, progress: bool) -> None:
    """PatchCore's memory bank by anomalib's k-center greedy (``KCenterGreedy``: the same sparse random
    projection, the same random first pick, then always the point farthest from those picked), with
    the distances to each new centre as ``|f|^2 - 2 f.c + |c|^2``: one matrix-vector product instead
    of anomalib's ``features - centre`` temporary, about 4x faster on CPU (anomalib's took ~2 s a pick
    for bottle's 214k patches here, 2139 picks).  The projection is seeded too (anomalib's draws from
    numpy's global generator)."""
    from anomalib.models.components.dimensionality_reduction import SparseRandomProjection

    bank = torch.cat(model.embedding_store)
    model.embedding_store.clear()
    size = int(len(bank) * ratio)
    if size <= 0:
        raise ValueError(f"{len(bank)} patches are too few for a {ratio:.0%} coreset")
    feats = SparseRandomProjection(eps=0.9, random_state=seed).fit(bank).transform(bank)
    sq = feats.pow(2).sum(dim=1)
    idx = int(torch.randint(high=len(bank), size=(1,)))
    picks = [idx]
    min_dist = torch.full_like(sq, float("inf"))
    for _ in tqdm(range(size - 1), desc="patchcore coreset", disable=not progress, leave=False):
        dist = sq - 2 * (feats @ feats[idx]) + sq[idx]  # squared distances: the same farthest point
        torch.minimum(min_dist, dist, out=min_dist)
        idx = int(torch.argmax(min_dist))
        min_dist[idx] = 0.0
        picks.append(idx)
    model.memory_bank = bank[picks]


def fit_anchor(name: str, train: torch.Tensor, weights: str | None, *, image_size: int = 256, seed: int = 0,
               progress: bool = True, batch: int = 16) -> nn.Module:
    """Fit anchor ``name`` on normal images, uint8 ``[N,3,S,S]`` RGB with S = ``image_size``.

    ``weights``: the local ``tf_efficientnet_lite0`` ImageNet safetensors file; ``None`` leaves the
    backbone randomly initialised (tests only).  Returns the fitted module in eval mode.
    """
    if name not in ANCHORS:
        raise ValueError(f"unknown anchor {name!r}; known: {', '.join(ANCHORS)}")
    if name not in available():
        raise RuntimeError(f"anchor {name!r} needs anomalib: pip install -e .[bench]")
    if train.dtype != torch.uint8 or train.ndim != 4 or train.shape[1] != 3:
        raise ValueError(f"train must be uint8 [N,3,S,S], got {train.dtype} {list(train.shape)}")
    if tuple(train.shape[-2:]) != (image_size, image_size):
        raise ValueError(f"train images are {list(train.shape[-2:])}, expected {image_size} x {image_size}")
    if len(train) == 0:
        raise ValueError("no training images")
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(seed)  # PaDiM's channel subset, PatchCore's projection and first coreset pick
        model = _build(name)
        if weights is not None:
            _load_backbone(model.feature_extractor, weights)
        module = AnchorModule(name, model, image_size)
        model.train()  # anomalib's models collect training embeddings in train mode
        for i in tqdm(range(0, len(train), batch), desc=f"{name} features", disable=not progress, leave=False):
            model(module.normalise(train[i:i + batch]))
        if name == "padim":
            _fit_gaussian(model)
        else:
            _subsample_coreset(model, CORESET_RATIO, seed, progress)
    return module.train(False)
