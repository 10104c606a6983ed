"""Step 2b: near-duplicate removal (the same part captured again), see the package docstring."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .gather import Capture


def phash(rgb: np.ndarray) -> int:
    """64-bit DCT perceptual hash (imagehash.phash) as an int."""
    import imagehash
    from PIL import Image as PILImage

    h = imagehash.phash(PILImage.fromarray(rgb))
    return int(str(h), 16)


def thumbnail(rgb: np.ndarray) -> np.ndarray:
    """32x32 grey, area-averaged (sensor noise averages out), float32."""
    import cv2

    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)


def dedup(captures: list[Capture], max_distance: int, max_diff: float) -> tuple[list[Capture], int]:
    """Keep the first of every group of near-duplicates (see the module docstring)."""
    kept: list[Capture] = []
    hashes = np.zeros(len(captures), np.uint64)
    thumbs = np.zeros((len(captures), 32, 32), np.float32)
    n = 0
    for c in captures:
        assert c.rgb is not None
        h, t = np.uint64(phash(c.rgb)), thumbnail(c.rgb)
        if n:
            near = np.flatnonzero(np.bitwise_count(np.bitwise_xor(hashes[:n], h)) <= max_distance)
            if near.size and float(np.abs(thumbs[near] - t).mean(axis=(1, 2)).min()) <= max_diff:
                continue
        hashes[n], thumbs[n] = h, t
        n += 1
        kept.append(c)
    return kept, len(captures) - len(kept)
