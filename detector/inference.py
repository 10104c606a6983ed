"""Inference API used by the detector service (keep it stable).

    from detector.inference import Detector, Prediction
    det = Detector.load(path, device="auto")   # "auto" | "cpu" | "cuda"; CheckpointError on bad files
    pred = det.predict(frames, product=None)   # uint8 HxW or HxWx3 RGB frames, sizes may differ
    pred.scores, pred.verdicts, pred.maps, pred.threshold

Works for every model family: the family's module takes the frames resized to its square input and
returns scores and maps (its ``forward`` is the export contract).  Maps come back at each frame's own
resolution (bilinear).  On CUDA the networks run under autocast; on CPU in float32, deterministically
(same frames -> same outputs).  Batches are processed in chunks of ``batch_size``.  A unified model
serves several products, each with its own threshold (``product=``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch

from .checkpoint import CheckpointError, load_model
from .data import resize_square, to_rgb
from .device import autocast, resolve_device

__all__ = ["Detector", "Prediction", "CheckpointError"]


@dataclass
class Prediction:
    scores: np.ndarray  # float32 [B]: image scores
    verdicts: np.ndarray  # bool [B]: score > threshold
    maps: list[np.ndarray]  # float32 HxW per frame, at the frame's resolution
    threshold: float


class Detector:
    def __init__(self, model, meta: dict[str, Any], file_sha256: str, device: torch.device, batch_size: int = 8):
        self._model = model
        self.meta = meta
        self.device = device
        self.batch_size = batch_size
        self.version: str = file_sha256[:12]
        self.threshold: float = float(meta.get("threshold", float("inf")))
        self.thresholds: dict[str, float] = {str(k): float(v) for k, v in (meta.get("thresholds") or {}).items()}
        self.image_size: int = int(model.image_size)
        self.family: str = str(meta.get("family", ""))
        self.product: str | None = meta.get("product")
        self.products: list[str] = list(meta.get("products") or ([self.product] if self.product else []))

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", batch_size: int = 8) -> "Detector":
        try:
            dev = resolve_device(device)
        except (RuntimeError, ValueError) as e:
            raise CheckpointError(str(e)) from None
        model, meta, sha = load_model(path, dev)
        return cls(model, meta, sha, dev, batch_size)

    @property
    def config(self):
        return self._model.cfg

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.meta.get("metrics", {}))

    def threshold_for(self, product: str | None) -> float:
        """The calibrated threshold of ``product`` (a unified model has one per product)."""
        if product is not None and product in self.thresholds:
            return self.thresholds[product]
        return self.threshold

    def _prep(self, frames: Sequence[np.ndarray]) -> torch.Tensor:
        s = self.image_size
        arr = np.stack([resize_square(to_rgb(f), s) for f in frames])
        return torch.from_numpy(arr).to(self.device).permute(0, 3, 1, 2).contiguous()

    @torch.inference_mode()
    def predict(self, frames: Sequence[np.ndarray], product: str | None = None) -> Prediction:
        frames = list(frames)
        scores: list[np.ndarray] = []
        maps: list[np.ndarray] = []
        for i in range(0, len(frames), self.batch_size):
            chunk = frames[i:i + self.batch_size]
            with autocast(self.device):
                sc, amap = self._model(self._prep(chunk))
            scores.append(sc.float().cpu().numpy())
            for f, a in zip(chunk, amap[:, 0].float().cpu().numpy()):
                h, w = np.asarray(f).shape[:2]
                maps.append(a if (h, w) == a.shape else cv2.resize(a, (w, h), interpolation=cv2.INTER_LINEAR))
        sc = np.concatenate(scores).astype(np.float32) if scores else np.zeros(0, np.float32)
        thr = self.threshold_for(product)
        return Prediction(sc, sc > thr, [np.ascontiguousarray(m, dtype=np.float32) for m in maps], thr)

    def score_images(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """Image scores only (``predict(frames).scores``); used by the retraining job."""
        return self.predict(frames).scores
