"""Device choice and mixed precision, shared by training and serving."""

from __future__ import annotations

import torch


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but CUDA is not available")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    return torch.device(device)


def autocast(device: torch.device):
    """bf16 (else fp16) autocast on CUDA; plain float32 on CPU (deterministic)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    return torch.autocast("cpu", enabled=False)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """Model input as float32 in [0, 1]: uint8 frames are divided by 255, float input is taken as is."""
    if images.dtype == torch.uint8:
        return images.float().div(255.0)
    return images.float()


def full_precision(x: torch.Tensor):
    """A context in which autocast is off (maps and scores are computed in float32 on every device)."""
    return torch.autocast(x.device.type, enabled=False)
