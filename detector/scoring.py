"""Scoring images with any family's module: maps and scores, evaluation, threshold calibration.

The one place where a model is run over a set of images (training, benchmark, retraining and the
CLI all come here); :class:`detector.inference.Detector` does the same for frames of any size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .data import DatasetError, LoadedImages, MVTecFolder, load_images, to_tensor
from .device import autocast
from .calibration import Calibration, calibrate
from .metrics import summarise


@torch.no_grad()
def score_images(model: nn.Module, images: torch.Tensor, batch: int = 16, progress: bool = False,
                 desc: str = "scoring") -> tuple[np.ndarray, np.ndarray]:
    """uint8 ``[N,3,S,S]`` on the model's device -> (maps float32 ``[N,S,S]``, scores float32 ``[N]``)."""
    model.eval()
    maps, scores = [], []
    for i in tqdm(range(0, len(images), batch), desc=desc, disable=not progress, leave=False):
        with autocast(images.device):
            s, m = model(images[i:i + batch])
        maps.append(m[:, 0].float().cpu().numpy())
        scores.append(s.float().cpu().numpy())
    if not maps:
        return np.zeros((0,) + tuple(images.shape[-2:]), np.float32), np.zeros(0, np.float32)
    return np.concatenate(maps).astype(np.float32), np.concatenate(scores).astype(np.float32)


@dataclass
class EvalResult:
    metrics: dict[str, float]
    scores: np.ndarray
    labels: np.ndarray
    maps: np.ndarray
    masks: np.ndarray
    skipped: list[str]


def load_test(dataset: MVTecFolder, image_size: int, device: torch.device, progress: bool = True
              ) -> tuple[torch.Tensor, LoadedImages]:
    loaded = load_images(dataset.test, image_size, with_masks=True, progress=progress, desc="test images")
    if len(loaded.images) == 0:
        why = f" ({len(loaded.skipped)} corrupt skipped, e.g. {loaded.skipped[0]})" if loaded.skipped else ""
        raise DatasetError(f"dataset {dataset.root}: no readable test images{why}")
    return to_tensor(loaded.images, device), loaded


def evaluate(model: nn.Module, images: torch.Tensor, loaded: LoadedImages, progress: bool = True) -> EvalResult:
    maps, scores = score_images(model, images, progress=progress, desc="evaluating")
    labels = np.array([s.label for s in loaded.samples])
    metrics = summarise(labels, scores, loaded.masks, maps)
    metrics["n_test"] = int(len(labels))
    metrics["n_defective"] = int(labels.sum())
    return EvalResult(metrics, scores, labels, maps, loaded.masks, loaded.skipped)


def calibrate_model(model: nn.Module, normals: torch.Tensor, target_far: float) -> tuple[Calibration, np.ndarray]:
    """Threshold for ``target_far`` from normal images only -> (calibration and its promise, their scores)."""
    _, scores = score_images(model, normals)
    return calibrate(scores, target_far), scores
