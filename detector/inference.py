"""Inference API used by the detector service (keep it stable).

    from detector.inference import Detector, Prediction
    det = Detector.load(path, device="auto")   # "auto" | "cpu" | "cuda"; CheckpointError on bad files
    pred = det.predict(frames)                 # uint8 HxW or HxWx3 RGB frames, sizes may differ
    pred.scores, pred.verdicts, pred.maps, pred.threshold

Frames are resized to the model's square input; maps come back at each frame's own resolution
(bilinear).  On CUDA the networks run under autocast; on CPU in float32, deterministically (same
frames -> same outputs).  Batches are processed in chunks of ``batch_size``.
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
    scores: np.ndarray  # float32 [B]: image scores (max of the smoothed anomaly map)
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
        self.image_size: int = int(model.cfg.image_size)
        self.product: str | None = meta.get("product")

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

    def _prep(self, frames: Sequence[np.ndarray]) -> torch.Tensor:
        s = self.image_size
        arr = np.stack([resize_square(to_rgb(f), s) for f in frames])
        t = torch.from_numpy(arr).to(self.device).permute(0, 3, 1, 2)
        return t.float().div_(255.0)

    @torch.inference_mode()
    def predict(self, frames: Sequence[np.ndarray]) -> Prediction:
        frames = list(frames)
        scores: list[np.ndarray] = []
        maps: list[np.ndarray] = []
        for i in range(0, len(frames), self.batch_size):
            chunk = frames[i:i + self.batch_size]
            x = self._prep(chunk)
            with autocast(self.device):
                out = self._model.run(x)
            amap = self._model.anomaly_map(x, out.recon.float())  # float32 [b,1,S,S]
            scores.append(amap.flatten(1).amax(1).cpu().numpy())
            small = amap[:, 0].cpu().numpy()
            for f, a in zip(chunk, small):
                h, w = np.asarray(f).shape[:2]
                maps.append(a if (h, w) == a.shape else cv2.resize(a, (w, h), interpolation=cv2.INTER_LINEAR))
        sc = np.concatenate(scores).astype(np.float32) if scores else np.zeros(0, np.float32)
        thr = float(self.threshold)
        return Prediction(sc, sc > thr, [np.ascontiguousarray(m, dtype=np.float32) for m in maps], thr)

    def score_images(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """Image scores only (``predict(frames).scores``); used by the retraining job."""
        return self.predict(frames).scores
