"""``linewatch-detector benchmark``: EAR vs FADeR vs the ablations on every category under a data root.

Per category, stage 1 (the EAR U-Net, with the automatic choice of m and q) is trained once and
shared by every stage-2 variant.  Each variant is calibrated on the held-out normal images,
evaluated on the test split (image/pixel AUROC, AUPRO, F1-max), saved as a checkpoint, and timed on
CPU through :class:`detector.inference.Detector` (frames at their original resolution, batch 1 and
8).  For FADeR the same detector is also timed with the MLP switched off (interleaved runs), which
gives the MLP's share of inference time.

Training length is given in image passes (``--stage1-passes``, ``--stage2-passes``) and turned into
epochs per category, so small and large categories cost about the same.  EAR and FADeR run for all
categories first, the ablations afterwards; results (JSON + markdown) are rewritten after every
variant, so a partial run still leaves a usable table.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ALL_VARIANTS = ["ear", "fader", "fader-binary", "fader-bilinear", "fader-vit", "fader-altnorm"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .paths import shared_dir

    p.add_argument("--data-root", default=str(shared_dir() / "data"),
                   help="folder searched for MVTec-layout categories (default ../shared/data)")
    p.add_argument("--out-dir", default="/tmp/linewatch-bench",
                   help="results.json, results.md and one checkpoint per category/variant (default /tmp/linewatch-bench)")
    p.add_argument("--categories", default=None, help="comma-separated substrings to select categories")
    p.add_argument("--variants", default=",".join(ALL_VARIANTS), help=f"comma-separated (default {','.join(ALL_VARIANTS)})")
    p.add_argument("--image-size", type=int, default=96, help="model input (default 96, sized for a 2-core CPU)")
    p.add_argument("--channels", type=int, default=16, help="U-Net base width (default 16)")
    p.add_argument("--stage1-passes", type=int, default=12000,
                   help="stage-1 training length in image passes (default 12000: about 64 epochs of 188 images, "
                        "8 minutes on one quiet CPU thread at 96 px)")
    p.add_argument("--stage2-passes", type=int, default=12000,
                   help="stage-2 training length per variant, in image passes (default 12000; at 6000 FADeR's lead "
                        "over EAR on magnetic_tile depended on the seed, see BENCHMARK.md)")
    p.add_argument("--norm", default="minmax", choices=["minmax", "fixed"], help="default FADeR normalisation")
    p.add_argument("--fps-seconds", type=float, default=4.0, help="timing length per measurement")
    p.add_argument("--target-far", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="training device (timing is on CPU)")
    p.add_argument("--resume", action="store_true",
                   help="keep the rows already in OUT_DIR/results.json, skip those (category, variant) pairs, and "
                        "reuse a category's saved stage 1 (OUT_DIR/<category>/ear.pt) instead of retraining it")
    p.add_argument("--retime", action="store_true",
                   help="only redo the timings of the checkpoints listed in OUT_DIR/results.json (e.g. on a quiet machine)")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads for torch (default 1: two threads were 4-5x slower, not faster, while other jobs "
                        "shared the 2-core machine; 0 = torch's choice)")


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


def _fps(det, frames: list[np.ndarray], batch: int, seconds: float) -> dict[str, float]:
    """Frames/s of ``predict`` at ``batch``: wall clock (fastest call) and per CPU-second of the process.

    When other jobs share the CPU the wall figure is pessimistic and noisy; the CPU-time figure
    (``time.process_time``, all threads of this process) is what the model itself costs.
    """
    chunk = (frames * batch)[:batch]
    det.predict(chunk)  # warm-up
    best, cpu, t_end = float("inf"), [], time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(cpu) < 3:
        t0, c0 = time.perf_counter(), time.process_time()
        det.predict(chunk)
        best = min(best, time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"wall": len(chunk) / best, "cpu": len(chunk) / statistics.median(cpu)}


def mlp_overhead(det, frames: list[np.ndarray], batch: int = 8, rounds: int = 20) -> dict[str, float]:
    """Cost of the FADeR head: the same detector with the head on and off, interleaved in one run.

    Primary figure: median CPU time per frame (``time.process_time``), robust to other jobs on the
    machine; the wall-clock medians are kept alongside.
    """
    chunk = (frames * batch)[:batch]
    model = det._model
    cpu = {True: [], False: []}
    wall = {True: [], False: []}
    det.predict(chunk)
    try:
        for _ in range(rounds):
            for flag in (True, False):
                model.use_fader = flag
                t0, c0 = time.perf_counter(), time.process_time()
                det.predict(chunk)
                cpu[flag].append((time.process_time() - c0) / len(chunk))
                wall[flag].append((time.perf_counter() - t0) / len(chunk))
    finally:
        model.use_fader = True
    a, b = statistics.median(cpu[True]), statistics.median(cpu[False])
    wa, wb = statistics.median(wall[True]), statistics.median(wall[False])
    return {"ms_per_frame_with_head": a * 1e3, "ms_per_frame_without_head": b * 1e3,
            "overhead_pct": (a - b) / b * 100.0, "wall_overhead_pct": (wa - wb) / wb * 100.0}


def _time_row(row: dict[str, Any], det, frames: list[np.ndarray], seconds: float) -> None:
    f1, f8 = _fps(det, frames, 1, seconds), _fps(det, frames, 8, seconds)
    row["fps_b1"], row["fps_b8"] = f1["wall"], f8["wall"]
    row["cpu_fps_b1"], row["cpu_fps_b8"] = f1["cpu"], f8["cpu"]
    row["timing_threads"] = torch.get_num_threads()
    if det._model.fader is not None:
        row["mlp_overhead"] = mlp_overhead(det, frames)


def _markdown(rows: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    def f(v, fmt="{:.4f}"):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)

    lines = [
        f"Benchmark: image {settings['image_size']} px, U-Net width {settings['channels']}, stage 1 "
        f"{settings['stage1_passes']} / stage 2 {settings['stage2_passes']} image passes, CPU threads "
        f"{settings['threads']}.  Training minutes of FADeR variants include the shared stage 1.",
        "",
        "| category | variant | m | q | image AUROC | pixel AUROC | AUPRO@0.3 | F1-max | train min | CPU fps b1 (wall) "
        "| CPU fps b8 (wall) | fps b1 / b8 per CPU-second |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['category']} | {r['variant']} | {r['m']} | {r['q']} | {f(r['image_auroc'])} | {f(r['pixel_auroc'])} | "
            f"{f(r.get('aupro'))} | {f(r.get('f1_max'))} | {f(r['train_min'], '{:.1f}')} | "
            f"{f(r.get('fps_b1'), '{:.1f}')} | {f(r.get('fps_b8'), '{:.1f}')} | "
            f"{f(r.get('cpu_fps_b1'), '{:.1f}')} / {f(r.get('cpu_fps_b8'), '{:.1f}')} |")
    over = [r for r in rows if r.get("mlp_overhead")]
    if over:
        lines += ["", "FADeR head share of inference time (same detector with the head on/off, interleaved in one run, "
                         "batch 8, median CPU time per frame over 20 rounds; wall-clock in brackets):", ""]
        for r in over:
            o = r["mlp_overhead"]
            lines.append(f"- {r['category']} / {r['variant']}: {o['ms_per_frame_with_head']:.2f} ms vs "
                         f"{o['ms_per_frame_without_head']:.2f} ms per frame without the head -> "
                         f"{o['overhead_pct']:+.2f} %" + (f" (wall {o['wall_overhead_pct']:+.2f} %)"
                                                         if "wall_overhead_pct" in o else ""))
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from .checkpoint import save_checkpoint
    from .errors import UserError
    from .paths import default_masker_weights
    from .config import DetectorConfig, FaderConfig
    from .data import MVTecFolder, find_categories
    from .inference import Detector
    from .models.maskers import MaskerConfig
    from .training import (TrainConfig, calibrate_on, compute_saliency, evaluate, load_test, prepare,
                           resolve_device, train_ear, train_fader)
    from .workflow import build_meta, fader_config

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.retime:
        return retime(args)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        fader_config(v)  # validates
    cats = find_categories(args.data_root)
    if args.categories:
        keys = [c.strip() for c in args.categories.split(",")]
        cats = [c for k in keys for c in cats if k in str(c)]  # in the order given
        cats = list(dict.fromkeys(cats))
    if not cats:
        raise UserError(f"no MVTec-layout categories under {args.data_root}")
    weights = default_masker_weights()
    if weights is None:
        raise UserError("masker weights ../shared/models/tf_efficientnet_lite0_in1k.safetensors not found")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    settings = {"image_size": args.image_size, "channels": args.channels, "stage1_passes": args.stage1_passes,
                "stage2_passes": args.stage2_passes, "threads": torch.get_num_threads(), "device": str(device),
                "norm_default": args.norm, "data_root": str(args.data_root)}
    rows: list[dict[str, Any]] = []
    state: dict[Path, dict[str, Any]] = {}
    if args.resume and (out_dir / "results.json").is_file():
        rows = json.loads((out_dir / "results.json").read_text())["rows"]
    done = {(r["category"], r["variant"]) for r in rows}

    def write() -> None:
        (out_dir / "results.json").write_text(json.dumps({"settings": settings, "rows": rows}, indent=2, default=str))
        (out_dir / "results.md").write_text(_markdown(rows, settings))

    def ensure_stage1(cat: Path) -> dict[str, Any]:
        if cat in state:
            return state[cat]
        ds = MVTecFolder.open(cat, need_test=True)
        dc = DetectorConfig(image_size=args.image_size, unet_channels=args.channels,
                            masker=MaskerConfig(kind="cnn", weights=weights), fader=FaderConfig(norm=args.norm))
        n_train = max(1, len(ds.train) - min(32, round(0.1 * len(ds.train))))
        tc = TrainConfig(epochs_ear=max(1, round(args.stage1_passes / n_train)),
                         epochs_fader=max(1, round(args.stage2_passes / n_train)),
                         target_far=args.target_far, seed=args.seed, device=str(device))
        from .training import build_masker_for

        masker = build_masker_for(dc, device)
        data = prepare(ds, dc.image_size, masker, tc, device)
        tqdm.write(f"[{ds.name}] {len(data.train)} train / {len(data.val)} held-out images, "
                   f"stage 1 {tc.epochs_ear} epochs, stage 2 {tc.epochs_fader} epochs")
        saved = out_dir / ds.name / "ear.pt"
        if args.resume and saved.is_file():
            from .checkpoint import load_model
            from .training import StageResult

            ear, meta, _ = load_model(saved, device)
            if ear.cfg.image_size != dc.image_size or ear.cfg.unet_channels != dc.unet_channels:
                raise UserError(f"{saved} was trained with other settings; drop --resume or use another --out-dir")
            s1 = StageResult(ear, float(meta["timings_min"]["stage1"]), [], meta.get("mosaic_selection"))
            tqdm.write(f"[{ds.name}] reusing stage 1 from {saved} (m={ear.cfg.mosaic_scale}, q={ear.cfg.mask_quantile})")
        else:
            s1 = train_ear(dc, data, tc, masker, device)
        imgs, loaded = load_test(ds, dc.image_size, device)
        sal = compute_saliency(masker, imgs, desc="masker (test)")
        frames = _frames(ds.test, 8)
        st = {"ds": ds, "dc": dc, "tc": tc, "data": data, "s1": s1, "imgs": imgs, "loaded": loaded, "sal": sal,
              "frames": frames}
        state[cat] = st
        return st

    def do_variant(cat: Path, variant: str) -> None:
        if (cat.name, variant) in done:
            return
        st = ensure_stage1(cat)
        ds, tc, data, s1 = st["ds"], st["tc"], st["data"], st["s1"]
        fc = fader_config(variant, st["dc"].fader)
        timings = {"stage1": s1.minutes}
        model = s1.model
        if fc is not None:
            s2 = train_fader(s1.model, fc, data, tc, device)
            model = s2.model
            timings["stage2"] = s2.minutes
        timings["total"] = sum(timings.values())
        thr, val_scores = calibrate_on(model, data.val, data.val_sal, tc.target_far)
        ev = evaluate(model, st["imgs"], st["loaded"], st["sal"])
        meta = build_meta(model, data, tc, ds.name, thr, val_scores, timings, s1.selection, variant)
        meta["metrics"] = ev.metrics
        ckpt = out_dir / ds.name / f"{variant}.pt"
        sha = save_checkpoint(ckpt, model, meta)
        det = Detector.load(ckpt, device="cpu")
        row = {"category": ds.name, "variant": variant, "m": model.cfg.mosaic_scale, "q": model.cfg.mask_quantile,
               "image_auroc": ev.metrics["image_auroc"], "pixel_auroc": ev.metrics["pixel_auroc"],
               "aupro": ev.metrics["aupro_0.3"], "f1_max": ev.metrics["image_f1_max"],
               "train_min": timings["total"], "timings_min": timings, "threshold": thr,
               "val_fpr_at_threshold": float((val_scores > thr).mean()), "checkpoint": str(ckpt), "version": sha[:12],
               "selection": s1.selection if variant == "ear" else None}
        labels = ev.labels.astype(bool)
        row["test_false_alarm_rate"] = float((ev.scores[~labels] > thr).mean())
        row["test_detection_rate"] = float((ev.scores[labels] > thr).mean())
        row["dataset"] = str(ds.root)
        _time_row(row, det, st["frames"], args.fps_seconds)
        rows.append(row)
        write()
        tqdm.write(f"[{ds.name}/{variant}] image AUROC {row['image_auroc']:.4f} pixel AUROC {row['pixel_auroc']:.4f} "
                   f"train {row['train_min']:.1f} min, fps b1 {row['fps_b1']:.1f} b8 {row['fps_b8']:.1f}")

    first = [v for v in variants if v in ("ear", "fader")]
    rest = [v for v in variants if v not in first]
    for cat in cats:
        for v in first:
            do_variant(cat, v)
    for cat in cats:
        for v in rest:
            do_variant(cat, v)
        state.pop(cat, None)
    write()
    print((out_dir / "results.md").read_text())
    print(f"results: {out_dir / 'results.json'}, {out_dir / 'results.md'}")
    return 0


def retime(args: argparse.Namespace) -> int:
    from .errors import UserError
    from .data import MVTecFolder, find_categories
    from .inference import Detector

    out_dir = Path(args.out_dir)
    try:
        res = json.loads((out_dir / "results.json").read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {out_dir / 'results.json'}: {e}") from None
    cats = {p.name: p for p in find_categories(args.data_root)}
    frames_by_cat: dict[str, list[np.ndarray]] = {}
    for row in res["rows"]:
        cat = row["category"]
        if cat not in frames_by_cat:
            root = Path(row.get("dataset") or cats[cat])
            frames_by_cat[cat] = _frames(MVTecFolder.open(root, need_test=True).test, 8)
        det = Detector.load(row["checkpoint"], device="cpu")
        _time_row(row, det, frames_by_cat[cat], args.fps_seconds)
        print(f"[{cat}/{row['variant']}] fps b1 {row['fps_b1']:.1f} b8 {row['fps_b8']:.1f} "
              f"(per CPU-s {row['cpu_fps_b1']:.1f} / {row['cpu_fps_b8']:.1f})"
              + (f", head overhead {row['mlp_overhead']['overhead_pct']:+.2f} %" if row.get("mlp_overhead") else ""))
    res["settings"]["threads"] = torch.get_num_threads()
    res["settings"]["retimed_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    (out_dir / "results.json").write_text(json.dumps(res, indent=2, default=str))
    (out_dir / "results.md").write_text(_markdown(res["rows"], res["settings"]))
    print((out_dir / "results.md").read_text())
    return 0
