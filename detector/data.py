"""MVTec-layout folder datasets and image I/O.

Layout of one category (``root``)::

    root/train/good/*.png|jpg                       normal training images
    root/test/good/*                                normal test images
    root/test/<defect_type>/*                       defective test images
    root/ground_truth/<defect_type>/<stem>_mask.png pixel masks (binarised at >= 128)

Images may be PNG or JPEG, colour or grayscale (replicated to 3 channels), of any size; they are
resized to the model's square input.  Corrupt or truncated files are skipped and reported, never
fatal; a missing, empty or unreadable dataset raises :class:`DatasetError` with a one-line message.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .drift import image_stats

log = logging.getLogger(__name__)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class DatasetError(Exception):
    """A dataset that cannot be used (missing, empty, unreadable); the message is one line."""


class CorruptImageError(ValueError):
    pass


def decode_image(data: bytes, name: str = "image") -> np.ndarray:
    """Bytes -> uint8 RGB ``HxWx3``; raises :class:`CorruptImageError` on undecodable/truncated data."""
    if len(data) == 0:
        raise CorruptImageError(f"{name}: empty file")
    if data[:8] == b"\x89PNG\r\n\x1a\n" and b"IEND" not in data[-32:]:
        raise CorruptImageError(f"{name}: truncated PNG (no IEND chunk)")
    if data[:2] == b"\xff\xd8" and b"\xff\xd9" not in data[-1024:]:
        raise CorruptImageError(f"{name}: truncated JPEG (no end-of-image marker)")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        raise CorruptImageError(f"{name}: not a decodable image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_image(path: str | Path) -> np.ndarray:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise CorruptImageError(f"{path}: cannot read ({e.strerror or e})") from None
    return decode_image(data, str(path))


def to_rgb(frame: np.ndarray) -> np.ndarray:
    """uint8 ``HxW`` / ``HxWx1`` / ``HxWx3`` / ``HxWx4`` -> contiguous uint8 ``HxWx3`` RGB."""
    a = np.asarray(frame)
    if a.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {a.dtype}")
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    elif a.ndim == 3 and a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    elif a.ndim == 3 and a.shape[2] == 4:
        a = a[:, :, :3]
    elif not (a.ndim == 3 and a.shape[2] == 3):
        raise ValueError(f"frames must be HxW or HxWx3, got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError("empty frame")
    return np.ascontiguousarray(a)


def resize_square(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    interp = cv2.INTER_AREA if (h > size or w > size) else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)


def read_mask(path: Path, size: int | None = None) -> np.ndarray:
    m = cv2.imdecode(np.fromfile(str(path), np.uint8), cv2.IMREAD_GRAYSCALE)
    if m is None:
        raise CorruptImageError(f"{path}: not a decodable mask")
    m = (m >= 128).astype(np.uint8)
    if size is not None:
        m = cv2.resize(m, (size, size), interpolation=cv2.INTER_NEAREST)
    return m.astype(bool)


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


@dataclass
class Sample:
    path: Path
    label: int  # 0 normal, 1 defective
    defect_type: str
    mask_path: Path | None = None


@dataclass
class MVTecFolder:
    root: Path
    train: list[Sample] = field(default_factory=list)
    test: list[Sample] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.root.name

    @classmethod
    def open(cls, root: str | Path, need_test: bool = False) -> "MVTecFolder":
        root = Path(root)
        if not root.exists():
            raise DatasetError(f"dataset not found: {root}")
        if not root.is_dir():
            raise DatasetError(f"dataset is not a directory: {root}")
        if not os.access(root, os.R_OK | os.X_OK):
            raise DatasetError(f"dataset is not readable: {root}")
        ds = cls(root)
        try:
            good = root / "train" / "good"
            if good.is_dir():
                ds.train = [Sample(p, 0, "good") for p in _list_images(good)]
            test = root / "test"
            if test.is_dir():
                for d in sorted(p for p in test.iterdir() if p.is_dir()):
                    for p in _list_images(d):
                        if d.name == "good":
                            ds.test.append(Sample(p, 0, "good"))
                        else:
                            mp = root / "ground_truth" / d.name / f"{p.stem}_mask.png"
                            ds.test.append(Sample(p, 1, d.name, mp if mp.is_file() else None))
        except PermissionError as e:
            raise DatasetError(f"dataset is not readable: {e.filename}") from None
        if not ds.train and not need_test:
            raise DatasetError(f"dataset {root} has no images in train/good (expected the MVTec layout)")
        if need_test and not ds.test:
            raise DatasetError(f"dataset {root} has no images under test/ (expected the MVTec layout)")
        return ds

    def fingerprint(self) -> str:
        """sha256 over the training files' relative paths and contents."""
        h = hashlib.sha256()
        for s in self.train:
            h.update(str(s.path.relative_to(self.root)).encode() + b"\0")
            try:
                h.update(hashlib.sha256(s.path.read_bytes()).digest())
            except OSError:
                h.update(b"unreadable")
        return h.hexdigest()


def find_categories(root: str | Path) -> list[Path]:
    """Every directory under ``root`` (any depth <= 3) that has a ``train/good`` folder."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"data root not found: {root}")
    out = []
    for dirpath, dirnames, _ in os.walk(root):
        p = Path(dirpath)
        if (p / "train" / "good").is_dir():
            out.append(p)
            dirnames[:] = []
        elif len(p.relative_to(root).parts) >= 3:
            dirnames[:] = []
    return sorted(out)


@dataclass
class LoadedImages:
    images: np.ndarray  # uint8 [N,S,S,3]
    samples: list[Sample]
    masks: np.ndarray | None = None  # bool [N,S,S] (test sets)
    skipped: list[str] = field(default_factory=list)  # "path: reason"
    stats: np.ndarray | None = None  # float [N,3]: drift statistics of each full-resolution image


def load_images(samples: list[Sample], size: int, with_masks: bool = False, progress: bool = False,
                desc: str = "loading", with_stats: bool = False) -> LoadedImages:
    """Decode + resize; corrupt images are skipped (listed in ``skipped`` and logged).

    ``with_stats``: also each image's :func:`detector.drift.image_stats`, taken before the resize
    (the detector service takes them from the frames as the cameras send them)."""
    from tqdm.auto import tqdm

    imgs, kept, masks, skipped, stats = [], [], [], [], []
    for s in tqdm(samples, desc=desc, disable=not progress, leave=False):
        try:
            img = read_image(s.path)
        except CorruptImageError as e:
            skipped.append(str(e))
            log.info("skipping corrupt image %s", e)
            continue
        if with_masks:
            m = np.zeros((size, size), bool)
            if s.label and s.mask_path is not None:
                try:
                    m = read_mask(s.mask_path, size)
                except CorruptImageError as e:
                    skipped.append(str(e))
                    log.info("skipping image with corrupt mask %s", e)
                    continue
            masks.append(m)
        if with_stats:
            stats.append(image_stats(img))
        imgs.append(resize_square(img, size))
        kept.append(s)
    arr = np.stack(imgs) if imgs else np.zeros((0, size, size, 3), np.uint8)
    marr = (np.stack(masks) if masks else np.zeros((0, size, size), bool)) if with_masks else None
    sarr = np.array(stats, np.float64).reshape(-1, 3) if with_stats else None
    return LoadedImages(arr, kept, marr, skipped, sarr)


def to_tensor(images: np.ndarray, device) -> "torch.Tensor":
    """uint8 [N,S,S,3] -> uint8 tensor [N,3,S,S] on ``device``."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device)


def holdout_split(n: int, seed: int, val_frac: float = 0.1, max_val: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices) of ``n`` normal images; the held-out ones calibrate the threshold."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    n_val = min(max_val, max(1, int(round(val_frac * n)))) if n >= 4 else 1
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])
