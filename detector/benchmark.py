"""``linewatch-detector benchmark``: every model family on every category under a data root, with anchors.

Per category, each ``--models`` entry (a family or a variant name) is trained on the category's
normal images with the ``--profile`` settings, calibrated on its held-out normals, evaluated on the
test split (image/pixel AUROC, AUPRO, F1-max), saved as a checkpoint, and timed on CPU through
:class:`detector.inference.Detector` in a fresh process (frames at their original resolution,
batch 1 and 8, ``--threads`` torch threads), which also gives the peak memory of serving it.
Variants of one family share what they have in common (EAR's stage 1 under every FADeR variant).
Families that can serve several products are also trained once over all categories (``unified``
rows).  With the ``bench`` extra installed, anomalib's PaDiM and PatchCore run on the same images at
``--anchor-size`` as anchors (:mod:`detector.anchors`).

Results (JSON + markdown) are rewritten after every row, so a partial run still leaves a table;
``--resume`` keeps the rows already written and skips them.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .models import model_names
    from .paths import shared_dir

    p.add_argument("--data-root", default=str(shared_dir() / "data"),
                   help="folder searched for MVTec-layout categories (default ../shared/data)")
    p.add_argument("--out-dir", default="/tmp/linewatch-bench",
                   help="results.json, results.md and one checkpoint per category/model (default /tmp/linewatch-bench)")
    p.add_argument("--categories", default=None, help="comma-separated substrings to select categories")
    p.add_argument("--models", default="ear,fader,crad",
                   help=f"comma-separated families or variants (default ear,fader,crad; any of {', '.join(model_names())})")
    p.add_argument("--unified", default="auto",
                   help="families also trained as one model over all selected categories: 'auto' (every family in "
                        "--models that supports it), 'none', or comma-separated names")
    p.add_argument("--profile", default="cpu", choices=["cpu", "gpu"], help="the families' settings (default cpu)")
    p.add_argument("--anchors", default="auto",
                   help="anomalib anchors: 'auto' (PaDiM and PatchCore when the bench extra is installed), 'none', "
                        "or comma-separated names")
    p.add_argument("--anchor-size", type=int, default=256, help="anchor input size (default 256)")
    p.add_argument("--fps-seconds", type=float, default=4.0, help="timing length per measurement")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads for training and timing (default 2)")
    p.add_argument("--target-far", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="training device (timing is on CPU)")
    p.add_argument("--resume", action="store_true", help="keep the rows already in OUT_DIR/results.json and skip them")


def _frames(samples, n: int) -> list[np.ndarray]:
    from .data import CorruptImageError, read_image

    out = []
    for s in samples:
        try:
            out.append(read_image(s.path))
        except CorruptImageError:
            continue
        if len(out) == n:
            break
    return out


def _fps(predict, frames: list[np.ndarray], batch: int, seconds: float) -> dict[str, float]:
    """Frames/s of ``predict`` at ``batch``: wall clock (fastest call) and per CPU-second of the process."""
    chunk = (frames * batch)[:batch]
    predict(chunk)  # warm-up
    best, cpu, t_end = float("inf"), [], time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(cpu) < 3:
        t0, c0 = time.perf_counter(), time.process_time()
        predict(chunk)
        best = min(best, time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"wall": len(chunk) / best, "cpu": len(chunk) / statistics.median(cpu)}


def peak_rss_mb() -> float:
    """This process's own peak resident memory, MiB.

    ``/proc/self/status`` VmHWM belongs to the current address space.  ``ru_maxrss`` does not: Linux
    carries the forked parent's peak across ``exec``, so a child started by a parent holding cached
    features reported the parent's gigabytes as its own."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: the best there is


def _time_in_child(target: str, frames: list[np.ndarray], seconds: float, threads: int, queue) -> None:
    """In a fresh process: load the checkpoint (or a pickled anchor module), time it, report peak RSS."""
    torch.set_num_threads(threads)
    if target.endswith(".pt"):
        from .inference import Detector

        det = Detector.load(target, device="cpu")
        predict = det.predict
    else:
        from .data import resize_square, to_rgb

        module = torch.load(target, weights_only=False)  # a module this run pickled itself
        size = int(module.image_size)

        @torch.inference_mode()
        def predict(fr):
            x = torch.from_numpy(np.stack([resize_square(to_rgb(f), size) for f in fr])).permute(0, 3, 1, 2)
            return module(x.contiguous())
    f1, f8 = _fps(predict, frames, 1, seconds), _fps(predict, frames, 8, seconds)
    queue.put({"fps_b1": f1["wall"], "fps_b8": f8["wall"], "cpu_fps_b1": f1["cpu"], "cpu_fps_b8": f8["cpu"],
               "peak_rss_mb": peak_rss_mb(), "timing_threads": threads})


def time_model(target: str | Path, frames: list[np.ndarray], seconds: float, threads: int) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_time_in_child, args=(str(target), frames, seconds, threads, q))
    proc.start()
    try:
        return q.get(timeout=600)
    finally:
        proc.join(timeout=60)


def _markdown(rows: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    def f(v, fmt="{:.4f}"):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)

    lines = [
        f"Benchmark: profile {settings['profile']}, {settings['threads']} torch threads (training and timing), "
        f"anchors at {settings['anchor_size']} px.  Frames/s are wall clock (fastest call) through "
        "`Detector.predict` in a fresh process, frames at their original resolution; peak RSS of that process.",
        "",
        "| category | model | family | size px | image AUROC | pixel AUROC | AUPRO@0.3 | F1-max | train min "
        "| fps b1 | fps b8 | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['category']} | {r['model']} | {r['family']} | {r.get('image_size', '-')} | {f(r['image_auroc'])} | "
            f"{f(r.get('pixel_auroc'))} | {f(r.get('aupro'))} | {f(r.get('f1_max'))} | "
            f"{f(r.get('train_min'), '{:.1f}')} | {f(r.get('fps_b1'), '{:.1f}')} | {f(r.get('fps_b8'), '{:.1f}')} | "
            f"{f(r.get('peak_rss_mb'), '{:.0f}')} |")
    return "\n".join(lines) + "\n"


def _row(category: str, model: str, family: str, metrics: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"category": category, "model": model, "family": family, "image_auroc": metrics["image_auroc"],
            "pixel_auroc": metrics.get("pixel_auroc"), "aupro": metrics.get("aupro_0.3"),
            "f1_max": metrics.get("image_f1_max"), **extra}


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from .data import MVTecFolder, find_categories, load_images, to_tensor
    from .device import resolve_device
    from .errors import UserError
    from .models import resolve_model
    from .paths import default_masker_weights
    from .scoring import evaluate, load_test
    from .workflow import HoldoutOptions, train_model

    torch.set_num_threads(args.threads)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    try:
        resolved = {n: resolve_model(n) for n in names}
    except ValueError as e:
        raise UserError(str(e)) from None
    cats = find_categories(args.data_root)
    if args.categories:
        keys = [c.strip() for c in args.categories.split(",")]
        cats = list(dict.fromkeys(c for k in keys for c in cats if k in str(c)))  # in the order given
    if not cats:
        raise UserError(f"no MVTec-layout categories under {args.data_root}")
    weights = default_masker_weights()
    if weights is None:
        raise UserError("the EfficientNet-Lite0 ImageNet weights (tf_efficientnet_lite0_in1k.safetensors) were not "
                        "found; see README")
    if args.unified == "auto":
        unified = [n for n, (fam, _) in resolved.items() if fam.unified] if len(cats) > 1 else []
    else:
        unified = [] if args.unified == "none" else [u.strip() for u in args.unified.split(",") if u.strip()]
    try:
        from .anchors import available as anchors_available
        from .anchors import fit_anchor
    except ImportError:  # the anchors module arrives with the bench extra's support
        def anchors_available() -> list[str]:
            return []
    if args.anchors == "auto":
        anchors = anchors_available()
    else:
        anchors = [] if args.anchors == "none" else [a.strip() for a in args.anchors.split(",") if a.strip()]
        missing = set(anchors) - set(anchors_available())
        if missing:
            raise UserError(f"anchors {sorted(missing)} are not available: pip install -e .[bench]")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    settings = {"profile": args.profile, "threads": args.threads, "anchor_size": args.anchor_size,
                "device": str(device), "data_root": str(args.data_root), "seed": args.seed,
                "models": names, "unified": unified, "anchors": anchors}
    rows: list[dict[str, Any]] = []
    if args.resume and (out_dir / "results.json").is_file():
        rows = json.loads((out_dir / "results.json").read_text())["rows"]
    done = {(r["category"], r["model"]) for r in rows}
    holdout = HoldoutOptions(target_far=args.target_far)
    frames = {c.name: _frames(MVTecFolder.open(c, need_test=True).test, 8) for c in cats}

    def write() -> None:
        (out_dir / "results.json").write_text(json.dumps({"settings": settings, "rows": rows}, indent=2, default=str))
        (out_dir / "results.md").write_text(_markdown(rows, settings))

    def add(row: dict[str, Any]) -> None:
        rows.append(row)
        write()
        tqdm.write(f"[{row['category']}/{row['model']}] image AUROC {row['image_auroc']:.4f} pixel AUROC "
                   f"{row.get('pixel_auroc') or float('nan'):.4f} train {row.get('train_min') or 0:.1f} min, "
                   f"fps b1 {row.get('fps_b1', 0):.1f} b8 {row.get('fps_b8', 0):.1f}")

    for cat in cats:
        workspaces: dict[str, dict[str, Any]] = {}
        for name, (fam, variant) in resolved.items():
            if (cat.name, name) in done:
                continue
            cfg, tc = fam.configs(variant, args.profile)
            ckpt = out_dir / cat.name / f"{name}.pt"
            s = train_model(None, ckpt, data=[cat], configs=(cfg, tc), holdout=holdout, seed=args.seed,
                            device=args.device, workspace=workspaces.setdefault(fam.name, {}))
            add(_row(cat.name, name, fam.name, s["metrics"], image_size=s["image_size"],
                     train_min=s["timings_min"]["total"], timings_min=s["timings_min"], threshold=s["threshold"],
                     checkpoint=str(ckpt), version=s["version"], config=s["config"],
                     **time_model(ckpt, frames[cat.name], args.fps_seconds, args.threads)))
        for name in anchors:
            if (cat.name, name) in done:
                continue
            ds = MVTecFolder.open(cat, need_test=True)
            train = to_tensor(load_images(ds.train, args.anchor_size).images, torch.device("cpu"))
            t0 = time.perf_counter()
            module = fit_anchor(name, train, weights, image_size=args.anchor_size, seed=args.seed)
            minutes = (time.perf_counter() - t0) / 60
            imgs, loaded = load_test(ds, args.anchor_size, torch.device("cpu"))
            ev = evaluate(module, imgs, loaded)
            pickled = out_dir / cat.name / f"{name}.anchor"
            pickled.parent.mkdir(parents=True, exist_ok=True)
            torch.save(module, pickled)
            add(_row(cat.name, name, "anomalib", ev.metrics, image_size=args.anchor_size, train_min=minutes,
                     **time_model(pickled, frames[cat.name], args.fps_seconds, args.threads)))
    for name in unified:
        model_name = f"{name}-unified"
        if all((c.name, model_name) in done for c in cats):
            continue
        fam, variant = resolve_model(name)
        cfg, tc = fam.configs(variant, args.profile)
        ckpt = out_dir / f"{model_name}.pt"
        s = train_model(None, ckpt, data=cats, configs=(cfg, tc), holdout=holdout, seed=args.seed,
                        device=args.device)
        timing = time_model(ckpt, frames[cats[0].name], args.fps_seconds, args.threads)
        for cat in cats:
            add(_row(cat.name, model_name, fam.name, s["metrics"][cat.name], image_size=s["image_size"],
                     train_min=s["timings_min"]["total"], timings_min=s["timings_min"],
                     threshold=s["thresholds"][cat.name], checkpoint=str(ckpt), version=s["version"],
                     config=s["config"], **timing))
    write()
    print((out_dir / "results.md").read_text())
    print(f"results: {out_dir / 'results.json'}, {out_dir / 'results.md'}")
    return 0
