"""Where linewatch finds files that live outside the checkout (pretrained weights, benchmark data)."""

from __future__ import annotations

import os
from pathlib import Path

LITE0_WEIGHTS = "tf_efficientnet_lite0_in1k.safetensors"


def shared_dir() -> Path:
    """``LINEWATCH_SHARED_DIR``, or ``shared/`` beside the checkout."""
    env = os.environ.get("LINEWATCH_SHARED_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared"


def default_masker_weights() -> str | None:
    """The EfficientNet-Lite0 ImageNet weights as a local file, or None when there is none."""
    p = shared_dir() / "models" / LITE0_WEIGHTS
    return str(p) if p.is_file() else None
