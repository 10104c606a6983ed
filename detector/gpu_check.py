"""``linewatch-detector gpu-check``: what a CUDA machine does with a model family, in minutes.

On a GPU it trains one category at the family's ``gpu`` profile (the paper's settings), then checks
that mixed precision and batching do not change the results and measures frames/s:

1. train + calibrate + evaluate (image / pixel AUROC) -- the family's own training, under autocast;
2. autocast: the test set scored in float32 and under autocast; their image AUROCs must agree
   within ``--auroc-tolerance`` and the scores' rank correlation must stay above 0.99;
3. batching: frames scored one at a time and as one batch must give the same scores (relative
   tolerance ``--batch-tolerance``);
4. frames/s through :class:`detector.inference.Detector` at batch 1, 8 and 32, and at batch 8 on
   each installed export runtime (ONNX Runtime with its CUDA / TensorRT providers, OpenVINO), with
   its scores' largest relative difference from PyTorch's.

``--dry-run`` runs the same steps on the CPU with the family's ``smoke`` profile on generated toy
images (seconds), so the script is exercised where no GPU is; the AUROC it prints is the toy
data's, not a real product's.  Exit status 1 when a check fails, 2 for unusable input.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .cli import Command
from .errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .models import DEFAULT_MODEL, model_names

    p.add_argument("--model", default=DEFAULT_MODEL, choices=model_names(), metavar="NAME",
                   help=f"model family or variant to check (default {DEFAULT_MODEL})")
    p.add_argument("--data", type=Path, help="an MVTec-layout category (default: the first one under "
                                             "$LINEWATCH_SHARED_DIR/data or ../shared/data)")
    p.add_argument("--dry-run", action="store_true",
                   help="on the CPU, smoke profile, generated toy images: checks the script itself in seconds")
    p.add_argument("--auroc-tolerance", type=float, default=0.01,
                   help="largest image-AUROC change autocast may cause (default 0.01)")
    p.add_argument("--batch-tolerance", type=float, default=1e-3,
                   help="largest relative score change between batch 1 and a batch (default 1e-3)")
    p.add_argument("--fps-seconds", type=float, default=5.0, help="seconds of timing per batch size (default 5)")
    p.add_argument("--json", type=Path, help="also write the results here")


def _category(args: argparse.Namespace, work: Path) -> Path:
    if args.dry_run:
        from .synthetic import make_toy_dataset

        return make_toy_dataset(work / "toy", n_train=32, n_good=10, n_bad=10, size=64, seed=0)
    if args.data is not None:
        return args.data
    from .data import find_categories
    from .paths import shared_dir

    root = shared_dir() / "data"
    cats = find_categories(root) if root.is_dir() else []
    if not cats:
        raise UserError("no category given (--data) and none found under the shared data folder")
    return cats[0]


@torch.no_grad()
def _scores(model: torch.nn.Module, images: torch.Tensor, mixed: bool, batch: int = 16) -> np.ndarray:
    from .device import autocast

    out = []
    for i in range(0, len(images), batch):
        ctx = autocast(images.device) if mixed else torch.autocast(images.device.type, enabled=False)
        with ctx:
            s, _ = model(images[i:i + batch])
        out.append(s.float().cpu().numpy())
    return np.concatenate(out)


def _fps(det, frames: list[np.ndarray], batch: int, seconds: float) -> float:
    chunk = (frames * batch)[:batch]
    det.predict(chunk)  # warm-up (cuDNN autotuning, allocations)
    best, t_end, n = float("inf"), time.perf_counter() + seconds, 0
    while time.perf_counter() < t_end or n < 3:
        t0 = time.perf_counter()
        det.predict(chunk)  # returns numpy: the device has finished
        best, n = min(best, time.perf_counter() - t0), n + 1
    return len(chunk) / best


def run(args: argparse.Namespace) -> int:
    from scipy.stats import spearmanr

    from .checkpoint import load_model
    from .data import MVTecFolder, read_image
    from .inference import Detector
    from .metrics import image_auroc
    from .runtimes import available_backends
    from .scoring import load_test
    from .workflow import train_model

    if not args.dry_run and not torch.cuda.is_available():
        raise UserError("no CUDA device here: run on a GPU machine, or use --dry-run to check the script on the CPU")
    device = torch.device("cpu" if args.dry_run else "cuda")
    profile = "smoke" if args.dry_run else "gpu"
    res: dict[str, Any] = {"model": args.model, "profile": profile, "device": str(device),
                           "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None}
    with tempfile.TemporaryDirectory(prefix="linewatch-gpu-check-") as tmp:
        work = Path(tmp)
        cat = _category(args, work)
        res["data"] = str(cat)
        print(f"[gpu-check] {args.model}, profile {profile}, on {res['gpu'] or device}: training on {cat}", flush=True)
        t0 = time.perf_counter()
        s = train_model(None, work / "model.pt", data=[cat], model=args.model, profile=profile, device=str(device))
        res["train_min"] = round((time.perf_counter() - t0) / 60, 2)
        res["image_auroc"] = s["metrics"].get("image_auroc")
        res["pixel_auroc"] = s["metrics"].get("pixel_auroc")
        print(f"[gpu-check] trained in {res['train_min']} min: image AUROC {res['image_auroc']:.4f}, "
              f"pixel AUROC {res['pixel_auroc'] if res['pixel_auroc'] is None else round(res['pixel_auroc'], 4)}",
              flush=True)

        det = Detector.load(work / "model.pt", device=str(device))
        ds = MVTecFolder.open(cat, need_test=True)
        images, loaded = load_test(ds, det.image_size, device, progress=False)
        labels = np.array([x.label for x in loaded.samples])
        module, _, _ = load_model(work / "model.pt", device)
        full, mixed = _scores(module, images, mixed=False), _scores(module, images, mixed=True)
        auroc_full, auroc_mixed = image_auroc(labels, full), image_auroc(labels, mixed)
        rho = float(spearmanr(full, mixed).statistic)
        res["autocast"] = {"auroc_float32": round(auroc_full, 4), "auroc_autocast": round(auroc_mixed, 4),
                           "rank_correlation": round(rho, 5),
                           "ok": abs(auroc_full - auroc_mixed) <= args.auroc_tolerance and rho >= 0.99}
        print(f"[gpu-check] autocast: image AUROC float32 {auroc_full:.4f} / autocast {auroc_mixed:.4f}, "
              f"score rank correlation {rho:.5f}: {'ok' if res['autocast']['ok'] else 'FAILED'}", flush=True)

        frames = [read_image(x.path) for x in ds.test[:8]]
        one = np.concatenate([det.predict([f]).scores for f in frames])
        batched = det.predict(frames).scores
        rel = float(np.max(np.abs(one - batched) / np.maximum(np.abs(one), 1e-6)))
        res["batching"] = {"max_relative_difference": rel, "ok": rel <= args.batch_tolerance}
        print(f"[gpu-check] batching: scores one at a time vs a batch of {len(frames)}: max relative difference "
              f"{rel:.2e}: {'ok' if res['batching']['ok'] else 'FAILED'}", flush=True)

        res["fps"] = {str(b): round(_fps(det, frames, b, args.fps_seconds), 1) for b in (1, 8, 32)}
        print(f"[gpu-check] frames/s through Detector.predict (decode excluded, resize included): "
              + ", ".join(f"batch {b}: {v}" for b, v in res["fps"].items()), flush=True)

        # the installed export runtimes on the same device (ONNX Runtime takes the CUDA / TensorRT providers)
        res["backends"] = {}
        for name in (b for b in ("onnxruntime", "openvino") if b in available_backends()):
            try:
                other = Detector.load(work / "model.pt", device=str(device), backend=name)
                diff = float(np.max(np.abs(other.predict(frames).scores - batched) / np.maximum(np.abs(batched), 1e-6)))
                row = {"runtime": other.backend, "max_relative_difference": diff,
                       "fps_b8": round(_fps(other, frames, 8, args.fps_seconds), 1)}
            except Exception as e:  # an optional runtime that cannot run here is reported, not fatal
                row = {"error": f"{type(e).__name__}: {e}"}
            res["backends"][name] = row
            print(f"[gpu-check] backend {name}: {row}", flush=True)
    res["ok"] = bool(res["autocast"]["ok"] and res["batching"]["ok"])
    print(json.dumps(res), flush=True)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0 if res["ok"] else 1


COMMANDS = [
    Command("gpu-check", "on a CUDA machine: train one category at the gpu profile, check autocast and batching",
            __doc__.split("\n\n", 1)[1].strip() if __doc__ else "", add_arguments, run),
]
