"""The PDN teacher, distilled offline: EfficientNet-Lite0 ImageNet features on generic images.

The paper distils its teacher from a WideResNet-101 on ImageNet; neither is reachable here.  The
target instead is the shared EfficientNet-Lite0 (ImageNet weights, a local file): its stride-8
and stride-16 features at twice the PDN's input resolution, each averaged over 3 x 3
neighbours, the coarser one upsampled, concatenated (40 + 112 = 152 channels) and standardised
per channel.  The images are the natural photographs that ship inside installed Python packages
(scikit-image's ``data``, scikit-learn's sample images, matplotlib's sample data), sampled as
random crops at random scales; the same pool gives the penalty images during training.

A teacher depends only on the PDN's size and width, so it is made once per machine
(``linewatch-detector distill-teacher``) and cached under ``teachers/`` in the linewatch cache (:func:`detector.paths.cache_dir`).
"""

from __future__ import annotations

import importlib.util
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from ...data import CorruptImageError, read_image
from ...hashing import file_sha256
from ...paths import cache_dir
from .model import IMAGENET_MEAN, IMAGENET_STD
from .nets import PDN_BORDER, pdn

log = logging.getLogger(__name__)

TEACHER_FORMAT = "linewatch-efficientad-teacher/1"
TARGET_CHANNELS = 152  # Lite0 stride 8 (40) + stride 16 (112)
# (package, folder inside it) holding natural photographs that ship with the package
PACKAGE_IMAGE_DIRS = (("skimage", "data"), ("sklearn", "datasets/images"), ("matplotlib", "mpl-data/sample_data"))
MIN_SIDE = 256  # smaller files (icons, test patterns) are left out of the pool
PHOTO_EXTS = (".png", ".jpg", ".jpeg")


def teacher_path(size: str, width: float) -> Path:
    return cache_dir() / "teachers" / f"efficientad-pdn-{size}-w{width:g}-c{TARGET_CHANNELS}.pt"


# ------------------------------------------------------------------------------- generic images
def generic_image_files(extra_dirs: tuple[str | Path, ...] = ()) -> list[Path]:
    """Image files shipped inside the installed packages of :data:`PACKAGE_IMAGE_DIRS`, plus ``extra_dirs``."""
    dirs = [Path(d) for d in extra_dirs]
    for pkg, sub in PACKAGE_IMAGE_DIRS:
        spec = importlib.util.find_spec(pkg)
        if spec is not None and spec.submodule_search_locations:
            dirs.append(Path(list(spec.submodule_search_locations)[0]) / sub)
    files: list[Path] = []
    for d in dirs:
        if d.is_dir():
            files += sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in PHOTO_EXTS)
    return files


@dataclass
class GenericImages:
    """A pool of natural images to sample random crops from (teacher distillation, the penalty)."""

    images: list[np.ndarray]  # uint8 HxWx3 RGB, longest side <= 512
    names: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, files: list[Path], max_side: int = 512) -> "GenericImages":
        images, names = [], []
        for f in files:
            try:
                img = read_image(f)
            except CorruptImageError:
                continue
            h, w = img.shape[:2]
            if min(h, w) < MIN_SIDE or img.std() < 10:  # icons, test charts, blank pages
                continue
            scale = max_side / max(h, w)
            if scale < 1:
                img = cv2.resize(img, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
            images.append(img)
            names.append(f"{f.parent.name}/{f.name}")
        return cls(images, names)

    def __len__(self) -> int:
        return len(self.images)

    def sample(self, n: int, size: int, rng: np.random.Generator, gray_p: float = 0.1) -> torch.Tensor:
        """``n`` random crops (scale 1/4 .. 1 of the shorter side, flipped, sometimes grey) -> uint8 [n,3,size,size]."""
        out = np.empty((n, size, size, 3), np.uint8)
        for i in range(n):
            img = self.images[int(rng.integers(len(self.images)))]
            h, w = img.shape[:2]
            side = int(min(h, w) * rng.uniform(0.25, 1.0))
            y, x = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
            crop = cv2.resize(img[y:y + side, x:x + side], (size, size), interpolation=cv2.INTER_AREA)
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            if rng.random() < gray_p:
                crop = np.repeat(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
            out[i] = crop
        return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


# ----------------------------------------------------------------------------- distillation target
class Lite0Target(nn.Module):
    """EfficientNet-Lite0 stride-8 and stride-16 features, locally averaged, on the stride-8 grid."""

    def __init__(self, weights: str | None):
        super().__init__()
        kw: dict[str, Any] = dict(features_only=True, out_indices=(2, 3))
        if weights:
            self.net = timm.create_model("tf_efficientnet_lite0", pretrained=True,
                                         pretrained_cfg_overlay=dict(file=str(weights)), **kw)
        else:  # random weights: only for tests of the distillation loop
            self.net = timm.create_model("tf_efficientnet_lite0", pretrained=False, **kw)
        self.net.eval()
        pc = self.net.pretrained_cfg
        self.register_buffer("mean", torch.tensor(pc["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(pc["std"]).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        """[0,1] images [B,3,P,P] -> features [B,152,P/4,P/4] (the net sees them at 2P)."""
        p = x01.shape[-1]
        x = F.interpolate(x01, size=(2 * p, 2 * p), mode="bilinear", align_corners=False)
        f8, f16 = self.net((x - self.mean) / self.std)
        f8 = F.avg_pool2d(f8, 3, 1, 1)
        f16 = F.interpolate(F.avg_pool2d(f16, 3, 1, 1), size=f8.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([f8, f16], dim=1)


# ----------------------------------------------------------------------------------- distillation
@dataclass
class DistillResult:
    state_dict: dict[str, torch.Tensor]
    info: dict[str, Any]


def distill(size: str, width: float, pool: GenericImages, extractor_weights: str | None, *, minutes: float = 10.0,
            max_steps: int | None = None, batch_size: int = 8, crop: int = 128, lr: float = 5e-4, seed: int = 0,
            device: torch.device = torch.device("cpu"), progress: bool = True) -> DistillResult:
    """Regress a PDN onto the standardised Lite0 features of random generic crops, for ``minutes``
    (or ``max_steps``).  The PDN sees ImageNet-normalised images, as inside :class:`EfficientAD`."""
    from tqdm.auto import tqdm

    if len(pool) == 0:
        raise ValueError("no generic images to distil the teacher on")
    if crop % 4 or crop < 64:
        raise ValueError("crop must be a multiple of 4 and >= 64")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    target = Lite0Target(extractor_weights).to(device)
    net = pdn(size, TARGET_CHANNELS, width).to(device)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    out = crop // 4 - 2 * PDN_BORDER

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        x01 = pool.sample(batch_size, crop, rng).to(device).float() / 255.0
        t = target(x01)[..., PDN_BORDER:PDN_BORDER + out, PDN_BORDER:PDN_BORDER + out]
        return (x01 - mean) / std, t

    # per-channel standardisation of the target, so every feature counts alike
    feats = torch.cat([batch()[1] for _ in range(max(1, 64 // batch_size))])
    t_mean = feats.mean(dim=(0, 2, 3), keepdim=True)
    t_std = feats.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)

    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-5)
    t0 = time.monotonic()
    step, losses = 0, []
    bar = tqdm(total=max_steps, desc=f"distilling PDN-{size.upper()} teacher", disable=not progress)
    while (max_steps is None or step < max_steps) and time.monotonic() - t0 < minutes * 60:
        x, t = batch()
        loss = (net(x) - (t - t_mean) / t_std).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    bar.close()
    info = {
        "format": TEACHER_FORMAT,
        "size": size,
        "width": width,
        "out_channels": TARGET_CHANNELS,
        "target": "tf_efficientnet_lite0 ImageNet, stride 8 + 16 features at 2x resolution, 3x3 averaged, standardised",
        "extractor_weights_sha256": file_sha256(extractor_weights) if extractor_weights else "random-init",
        "images": pool.names,
        "steps": step,
        "batch_size": batch_size,
        "crop": crop,
        "minutes": (time.monotonic() - t0) / 60,
        "final_loss": float(np.mean(losses[-50:])) if losses else float("nan"),
        "first_loss": float(np.mean(losses[:10])) if losses else float("nan"),
        "seed": seed,
    }
    return DistillResult({k: v.detach().cpu() for k, v in net.state_dict().items()}, info)


def save_teacher(path: str | Path, result: DistillResult) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"info": result.info, "state_dict": result.state_dict}, tmp)
    tmp.replace(path)  # atomic: a half-written teacher is never picked up
    return path


def load_teacher(path: str | Path, size: str, width: float) -> DistillResult:
    """A distilled teacher file, checked against the PDN it is meant for."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(  # a setup step the user has to take, reported as one line
            f"no distilled EfficientAD teacher at {path}: run 'linewatch-detector distill-teacher --size {size} "
            f"--width {width:g}' once on this machine")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    info = obj.get("info", {}) if isinstance(obj, dict) else {}
    if info.get("format") != TEACHER_FORMAT:
        raise ValueError(f"{path} is not an EfficientAD teacher file")
    if info.get("size") != size or float(info.get("width", -1)) != float(width):
        raise ValueError(f"{path} holds a PDN-{info.get('size')} teacher of width {info.get('width')}, "
                         f"not PDN-{size} of width {width:g}")
    return DistillResult(obj["state_dict"], info)
