"""Frame + heatmap rendering for the Review page.

The heatmap is stored as a quantised uint8 PNG over ``[0, heatmap_max]`` (see
``detector/messages.py``), possibly downscaled; it is resized to the frame, coloured with an
OpenCV colormap and alpha-blended over the frame.
"""

from __future__ import annotations

import cv2
import numpy as np

COLORMAPS = {
    "jet": cv2.COLORMAP_JET,
    "inferno": cv2.COLORMAP_INFERNO,
    "turbo": cv2.COLORMAP_TURBO,
    "viridis": cv2.COLORMAP_VIRIDIS,
    "magma": cv2.COLORMAP_MAGMA,
    "hot": cv2.COLORMAP_HOT,
}


def decode_rgb(data: bytes) -> np.ndarray:
    """JPEG/PNG bytes -> HxWx3 uint8 RGB."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError("not a decodable image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def decode_heatmap(data: bytes) -> np.ndarray:
    """Heatmap PNG -> HxW uint8 (0..255 over 0..heatmap_max)."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError("not a decodable heatmap")
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    if img.dtype != np.uint8:
        img = (img.astype(np.float32) / float(np.iinfo(img.dtype).max) * 255).astype(np.uint8)
    return img


def colorize(heat: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """HxW uint8 -> HxWx3 RGB with the named colormap."""
    bgr = cv2.applyColorMap(heat, COLORMAPS[colormap])
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def overlay(frame_rgb: np.ndarray | None, heat: np.ndarray | None, colormap: str = "jet",
            alpha: float = 0.45, show_heatmap: bool = True) -> np.ndarray:
    """The frame with the coloured heatmap blended on top (``alpha`` = heatmap weight).

    Without a frame, the coloured heatmap alone; without a heatmap (or ``show_heatmap``
    off), the frame alone.
    """
    if frame_rgb is None and heat is None:
        raise ValueError("nothing to show")
    if heat is None or not show_heatmap:
        if frame_rgb is None:
            return colorize(heat, colormap)  # type: ignore[arg-type]
        return frame_rgb
    if frame_rgb is None:
        return colorize(heat, colormap)
    h, w = frame_rgb.shape[:2]
    if heat.shape[:2] != (h, w):
        heat = cv2.resize(heat, (w, h), interpolation=cv2.INTER_LINEAR)
    colored = colorize(heat, colormap)
    a = float(min(max(alpha, 0.0), 1.0))
    return cv2.addWeighted(frame_rgb, 1.0 - a, colored, a, 0.0)


def colorbar(colormap: str = "jet", width: int = 256, height: int = 12) -> np.ndarray:
    ramp = np.tile(np.linspace(0, 255, width, dtype=np.uint8), (height, 1))
    return colorize(ramp, colormap)
