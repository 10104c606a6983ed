"""Inference API used by the detector service (keep it stable).

    from detector.inference import Detector, Prediction
    det = Detector.load(path, device="auto")   # "auto" | "cpu" | "cuda"; CheckpointError on bad files
    det = Detector.load(export_dir, backend="auto")  # or a checkpoint on torch|torchscript|onnxruntime|openvino
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

import numpy as np
import torch

from .checkpoint import CheckpointError
from .device import resolve_device
from .runtimes import Runtime, TorchRuntime, open_runtime, run_frames

__all__ = ["Detector", "Prediction", "CheckpointError"]


@dataclass
class Prediction:
    scores: np.ndarray  # float32 [B]: image scores
    verdicts: np.ndarray  # bool [B]: score > threshold
    maps: list[np.ndarray]  # float32 HxW per frame, at the frame's resolution
    threshold: float


class Detector:
    def __init__(self, model, meta: dict[str, Any], file_sha256: str, device: torch.device, batch_size: int = 8,
                 runtime: Runtime | None = None, image_size: int | None = None):
        self._model = model  # the family's module; None for an export run by another backend
        self._runtime = runtime or TorchRuntime(model, device)
        self.backend: str = self._runtime.describe()
        self.meta = meta
        self.device = device
        self.batch_size = batch_size
        self.version: str = file_sha256[:12]
        self.threshold: float = float(meta.get("threshold", float("inf")))
        self.thresholds: dict[str, float] = {str(k): float(v) for k, v in (meta.get("thresholds") or {}).items()}
        self.image_size: int = int(image_size or model.image_size)
        self.family: str = str(meta.get("family", ""))
        self.product: str | None = meta.get("product")
        self.products: list[str] = list(meta.get("products") or ([self.product] if self.product else []))

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", batch_size: int = 8, backend: str = "torch",
             precision: str = "fp32", threads: int | None = None) -> "Detector":
        """A checkpoint or an export folder (``linewatch-detector export``) on ``backend``:
        torch | torchscript | onnxruntime | openvino | auto (the fastest, timed at load; see
        :func:`detector.runtimes.open_runtime`); ``threads`` sizes onnxruntime's and OpenVINO's CPU
        pools.  Every problem raises CheckpointError (one line)."""
        from .export import ExportError

        try:
            dev = resolve_device(device)
            loaded = open_runtime(path, backend, device, batch_size, precision, threads)
        except (RuntimeError, ValueError, ExportError, OSError) as e:  # OSError: an unwritable export cache
            raise CheckpointError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
        return cls(loaded.module, loaded.meta, loaded.version, dev, batch_size, loaded.runtime, loaded.image_size)

    @property
    def config(self):
        return getattr(self._model, "cfg", None)  # None for an export run outside PyTorch

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.meta.get("metrics", {}))

    def threshold_for(self, product: str | None) -> float:
        """The calibrated threshold of ``product`` (a unified model has one per product)."""
        if product is not None and product in self.thresholds:
            return self.thresholds[product]
        return self.threshold

    def predict(self, frames: Sequence[np.ndarray], product: str | None = None) -> Prediction:
        sc, maps = run_frames(self._runtime, frames, self.image_size, self.batch_size)
        thr = self.threshold_for(product)
        return Prediction(sc, sc > thr, maps, thr)

    def score_images(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """Image scores only (``predict(frames).scores``); used by the retraining job."""
        return self.predict(frames).scores
