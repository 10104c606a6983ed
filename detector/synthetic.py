"""Synthetic defects (for choosing m and q on held-out normal images) and a toy MVTec-layout dataset."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def paint_defect(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Paint one random defect on a uint8 ``SxSx3`` image -> (image, bool mask).

    Kinds: a filled blob of a shifted colour, a scratch (thick random polyline), or a cut-and-paste
    of another patch of the same image (rotated) -- the usual self-supervised anomaly proxies.
    The defect is placed in the central 80 % of the image, sized 4-12 % of the side.
    """
    s = img.shape[0]
    out = img.copy()
    mask = np.zeros((s, s), np.uint8)
    cx, cy = rng.integers(int(0.1 * s), int(0.9 * s), size=2)
    r = max(2, int(rng.uniform(0.04, 0.12) * s))
    kind = rng.integers(3)
    if kind == 0:
        axes = (r, max(2, int(r * rng.uniform(0.4, 1.0))))
        cv2.ellipse(mask, (int(cx), int(cy)), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        base = img[mask.astype(bool)].mean(axis=0)
        colour = np.clip(base + rng.choice([-1, 1]) * rng.uniform(60, 140) + rng.normal(0, 20, 3), 0, 255)
        noise = rng.normal(0, 12, img.shape)
        painted = np.clip(colour + noise, 0, 255).astype(np.uint8)
        out[mask.astype(bool)] = painted[mask.astype(bool)]
    elif kind == 1:
        pts = [(int(cx), int(cy))]
        for _ in range(3):
            pts.append((int(np.clip(pts[-1][0] + rng.integers(-r, r + 1), 0, s - 1)),
                        int(np.clip(pts[-1][1] + rng.integers(-r, r + 1), 0, s - 1))))
        cv2.polylines(mask, [np.array(pts, np.int32)], False, 1, thickness=max(1, s // 64))
        val = 0 if img.mean() > 127 else 255
        tone = np.full(img.shape, val, np.uint8)
        out[mask.astype(bool)] = tone[mask.astype(bool)]
    else:
        sx, sy = rng.integers(0, s - 2 * r, size=2)
        patch = img[sy:sy + 2 * r, sx:sx + 2 * r]
        patch = np.rot90(patch, k=int(rng.integers(1, 4))).copy()
        x0, y0 = int(np.clip(cx - r, 0, s - 2 * r)), int(np.clip(cy - r, 0, s - 2 * r))
        blob = np.zeros((2 * r, 2 * r), np.uint8)
        cv2.circle(blob, (r, r), r, 1, -1)
        region = out[y0:y0 + 2 * r, x0:x0 + 2 * r]
        region[blob.astype(bool)] = patch[blob.astype(bool)]
        mask[y0:y0 + 2 * r, x0:x0 + 2 * r] = blob
    return out, mask.astype(bool)


def _toy_image(rng: np.random.Generator, size: int, tint: tuple[float, float, float] = (1.0, 0.95, 0.85)
               ) -> np.ndarray:
    """A "part": a smooth disc with a ring on a textured background, slightly jittered; ``tint`` per channel."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    img = 60 + 20 * np.sin(xx / size * 6.28 * 2) * np.cos(yy / size * 6.28 * 2)
    c = size / 2 + rng.normal(0, size * 0.01, 2)
    d = np.hypot(xx - c[0], yy - c[1])
    img = np.where(d < size * 0.35, 170 - 40 * (d / (size * 0.35)) ** 2, img)
    img = np.where(np.abs(d - size * 0.22) < size * 0.02, 220, img)
    img = img + rng.normal(0, 1, img.shape)
    rgb = np.stack([img * tint[0], img * tint[1], img * tint[2]], axis=-1)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _toy_defect(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size = img.shape[0]
    out = img.copy()
    mask = np.zeros((size, size), np.uint8)
    ang = rng.uniform(0, 2 * np.pi)
    rad = rng.uniform(0.05, 0.28) * size
    cx, cy = int(size / 2 + rad * np.cos(ang)), int(size / 2 + rad * np.sin(ang))
    r = max(2, int(size * rng.uniform(0.06, 0.1)))
    cv2.circle(mask, (cx, cy), r, 1, -1)
    colour = np.array([20, 20, 20]) if rng.random() < 0.5 else np.array([250, 60, 40])
    out[mask.astype(bool)] = colour
    return out, mask.astype(bool)


def make_toy_dataset(root: str | Path, n_train: int = 32, n_good: int = 8, n_bad: int = 8, size: int = 64,
                     seed: int = 0, tint: tuple[float, float, float] = (1.0, 0.95, 0.85)) -> Path:
    """Write a small MVTec-layout dataset of generated parts with painted defects (for tests/demos).

    ``tint`` colours the parts: another tint makes another product (e.g. for a unified model)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for sub in ("train/good", "test/good", "test/spot", "ground_truth/spot"):
        (root / sub).mkdir(parents=True, exist_ok=True)

    def save(path: Path, rgb: np.ndarray) -> None:
        cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    for i in range(n_train):
        save(root / "train/good" / f"{i:03d}.png", _toy_image(rng, size, tint))
    for i in range(n_good):
        save(root / "test/good" / f"{i:03d}.png", _toy_image(rng, size, tint))
    for i in range(n_bad):
        img, m = _toy_defect(_toy_image(rng, size, tint), rng)
        save(root / "test/spot" / f"{i:03d}.png", img)
        cv2.imwrite(str(root / "ground_truth/spot" / f"{i:03d}_mask.png"), m.astype(np.uint8) * 255)
    return root
