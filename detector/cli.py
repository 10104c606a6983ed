"""``linewatch-detector``: train, evaluate, predict, calibrate and benchmark EAR + FADeR detectors.

Subcommands are registered from a list of :class:`Command` objects; other modules add their own
(e.g. ``serve`` from ``detector.service``) by listing the module in :data:`PLUGIN_MODULES` and
defining there either ``COMMANDS = [Command(...), ...]`` or ``register(subparsers)`` (which calls
``subparsers.add_parser(...)`` and ``parser.set_defaults(func=run)``, ``run(args) -> int``).
Packages downstream of detector (which detector must not import by name) add theirs through the
entry-point group ``linewatch.detector_commands`` (``[project.entry-points."linewatch.detector_commands"]``
in pyproject.toml, value = such a module).  A plugin module that does not exist is skipped silently.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import UserError
from .paths import default_masker_weights

__all__ = ["Command", "UserError", "add_command", "main"]

PROG = "linewatch-detector"
PLUGIN_MODULES = ("detector.service.cli",)
ENTRY_POINT_GROUP = "linewatch.detector_commands"


@dataclass
class Command:
    name: str
    help: str  # one line for the command list
    description: str  # the subcommand's --help text
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def add_command(subparsers: Any, cmd: Command) -> argparse.ArgumentParser:
    p = subparsers.add_parser(cmd.name, help=cmd.help, description=cmd.description,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    cmd.add_arguments(p)
    p.set_defaults(func=cmd.run)
    return p


def _write_json(path: str | None, obj: dict[str, Any]) -> None:
    if not path:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(_clean(obj), indent=2, sort_keys=True) + "\n")


def _clean(o: Any) -> Any:
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items() if k != "model"}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, float) and math.isnan(o):
        return None
    if hasattr(o, "item"):
        return o.item()
    return o


def _fmt_metrics(m: dict[str, Any]) -> str:
    keys = ["image_auroc", "pixel_auroc", "aupro_0.3", "image_f1_max", "false_alarm_rate", "detection_rate"]
    return "  ".join(f"{k}={m[k]:.4f}" for k in keys if isinstance(m.get(k), float))


# --------------------------------------------------------------------------------------- train
def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--variant", default="fader",
                   choices=["ear", "fader", "fader-binary", "fader-bilinear", "fader-vit"],
                   help="ear = stage 1 only; fader = EAR + FADeR (default); the others are the paper's ablations "
                        "(binary mask, bilinear mask scaling, small ViT instead of the MLP)")
    g.add_argument("--norm", default="minmax", choices=["minmax", "fixed"],
                   help="normalisation of the predicted patch errors before M_S = 1 - norm(l^): per-image min-max "
                        "(default) or fixed from training statistics (1st/99th percentile)")
    g.add_argument("--image-size", type=int, default=256, help="square model input, multiple of 32 (default 256)")
    g.add_argument("--channels", type=int, default=32, help="U-Net base width (default 32; 16 on small CPUs)")
    g.add_argument("--mosaic-scale", default="auto",
                   help="mosaic scale m (= FADeR patch size) or 'auto' to choose among --m-candidates (default)")
    g.add_argument("--m-candidates", default="4,8,16", help="candidates for --mosaic-scale auto (default 4,8,16)")
    g.add_argument("--mask-quantile", default="auto",
                   help="fraction q of mosaic cells (highest saliency) that are obfuscated, or 'auto' (default)")
    g.add_argument("--q-candidates", default="0.25,0.5,0.75", help="candidates for --mask-quantile auto")
    g.add_argument("--masker", default="cnn", choices=["cnn", "vit"],
                   help="saliency: cnn = feature-norm of a timm CNN (default), vit = last-block CLS attention")
    g.add_argument("--masker-arch", default=None,
                   help="timm architecture (default tf_efficientnet_lite0 for cnn, vit_small_patch8_224.dino for vit)")
    g.add_argument("--masker-weights", default=None,
                   help="local weights file for the masker (default for cnn: ../shared/models/"
                        "tf_efficientnet_lite0_in1k.safetensors); without it the timm hub is used")
    g.add_argument("--masker-input-size", type=int, default=224, help="masker input resolution (default 224)")


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="category folder in the MVTec layout (train/good, test/*, ground_truth/*)")
    p.add_argument("--out", required=True, help="checkpoint file to write")
    p.add_argument("--product", default=None, help="product/category name stored in the checkpoint (default: folder name)")
    _add_model_args(p)
    g = p.add_argument_group("training")
    g.add_argument("--epochs-ear", type=int, default=100, help="stage-1 epochs (default 100)")
    g.add_argument("--epochs-fader", type=int, default=100, help="stage-2 epochs (default 100, the paper's)")
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--lr", type=float, default=1e-3, help="stage-1 U-Net learning rate (Adam)")
    g.add_argument("--fader-lr", type=float, default=3e-3,
                   help="stage-2 head learning rate (default 3e-3); the decoder gets 0.1x")
    g.add_argument("--schedule", default="sgdr", choices=["fixed", "warmup", "sgdr"],
                   help="learning-rate schedule: fixed, linear warm-up then constant, or warm-up then SGDR (default)")
    g.add_argument("--target-far", type=float, default=0.01,
                   help="false-alarm rate the threshold is calibrated for, on held-out normal images (default 0.01)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    g.add_argument("--json", default=None, metavar="PATH", help="write the figures (metrics, timings, choices) as JSON")


def _floats(s: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in s.split(",") if x.strip())
    except ValueError:
        raise UserError(f"not a comma-separated list of numbers: {s!r}") from None


def configs_from_args(args: argparse.Namespace):
    from .config import DetectorConfig, FaderConfig
    from .models.maskers import MaskerConfig
    from .training import TrainConfig

    arch = args.masker_arch or ("tf_efficientnet_lite0" if args.masker == "cnn" else "vit_small_patch8_224.dino")
    weights = args.masker_weights
    if weights is None and args.masker == "cnn" and arch == "tf_efficientnet_lite0":
        weights = default_masker_weights()
    if weights is not None and not Path(weights).is_file():
        raise UserError(f"masker weights file not found: {weights}")
    mc = MaskerConfig(kind=args.masker, arch=arch, weights=str(Path(weights).resolve()) if weights else None,
                      pretrained=True, input_size=args.masker_input_size)
    auto_m = str(args.mosaic_scale).lower() == "auto"
    auto_q = str(args.mask_quantile).lower() == "auto"
    m_c = tuple(int(x) for x in _floats(args.m_candidates))
    q_c = _floats(args.q_candidates)
    m = m_c[min(1, len(m_c) - 1)] if auto_m else int(args.mosaic_scale)
    q = q_c[min(1, len(q_c) - 1)] if auto_q else float(args.mask_quantile)
    try:
        dc = DetectorConfig(image_size=args.image_size, mosaic_scale=m, mask_quantile=q, unet_channels=args.channels,
                            masker=mc, fader=FaderConfig(norm=args.norm))
    except ValueError as e:
        raise UserError(str(e)) from None
    tc = TrainConfig(epochs_ear=args.epochs_ear, epochs_fader=args.epochs_fader, batch_size=args.batch_size,
                     lr=args.lr, fader_lr=args.fader_lr, schedule=args.schedule, target_far=args.target_far,
                     seed=args.seed, device=args.device, m_candidates=m_c, q_candidates=q_c)
    return dc, tc, auto_m, auto_q


def run_train(args: argparse.Namespace) -> int:
    from .workflow import train_from_folder

    dc, tc, auto_m, auto_q = configs_from_args(args)
    summary = train_from_folder(args.data, args.out, dc, tc, args.variant, auto_m, auto_q, args.product)
    for s in summary.get("skipped_images", []):
        print(f"skipped corrupt image: {s}", file=sys.stderr)
    print(f"wrote {summary['checkpoint']} (version {summary['version']}): m={summary['mosaic_scale']} "
          f"q={summary['mask_quantile']} threshold={summary['threshold']:.5f} "
          f"training {summary['timings_min']['total']:.1f} min")
    if "metrics" in summary:
        print("test: " + _fmt_metrics(summary["metrics"]))
    _write_json(args.json, summary)
    return 0


# ---------------------------------------------------------------------------------------- eval
def _add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint written by 'train'")
    p.add_argument("--data", required=True, help="category folder in the MVTec layout (uses test/ and ground_truth/)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--json", default=None, metavar="PATH", help="write the metrics as JSON")


def run_eval(args: argparse.Namespace) -> int:
    from .workflow import evaluate_checkpoint

    res = evaluate_checkpoint(args.checkpoint, args.data, args.device)
    for s in res["skipped_images"]:
        print(f"skipped corrupt image: {s}", file=sys.stderr)
    print(f"{res['dataset']} ({res['metrics']['n_test']} images, model {res['version']}): " + _fmt_metrics(res["metrics"]))
    _write_json(args.json, res)
    return 0


# ------------------------------------------------------------------------------------- predict
def _add_predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint written by 'train'")
    p.add_argument("images", nargs="+", help="image files or folders (png/jpg)")
    p.add_argument("--threshold", type=float, default=None, help="override the calibrated threshold")
    p.add_argument("--heatmaps", default=None, metavar="DIR", help="write a colour heatmap overlay per image here")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--json", default=None, metavar="PATH", help="write per-image scores and verdicts as JSON")


def run_predict(args: argparse.Namespace) -> int:
    import cv2
    import numpy as np
    from tqdm.auto import tqdm

    from .data import IMAGE_EXTS, CorruptImageError, read_image
    from .inference import Detector

    files: list[Path] = []
    for a in args.images:
        p = Path(a)
        if p.is_dir():
            files += sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_EXTS)
        elif p.is_file():
            files.append(p)
        else:
            raise UserError(f"image not found: {p}")
    if not files:
        raise UserError("no images to predict")
    det = Detector.load(args.checkpoint, args.device, batch_size=args.batch_size)
    if args.threshold is not None:
        det.threshold = args.threshold
    out_dir = Path(args.heatmaps) if args.heatmaps else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in tqdm(range(0, len(files), args.batch_size), desc="predict", disable=len(files) <= args.batch_size):
        chunk, frames = [], []
        for f in files[i:i + args.batch_size]:
            try:
                frames.append(read_image(f))
                chunk.append(f)
            except CorruptImageError as e:
                print(f"skipped corrupt image: {e}", file=sys.stderr)
        if not frames:
            continue
        pred = det.predict(frames)
        for f, fr, s, v, m in zip(chunk, frames, pred.scores, pred.verdicts, pred.maps):
            rows.append({"image": str(f), "score": float(s), "anomalous": bool(v)})
            print(f"{'ANOMALY' if v else 'ok     '}  {s:.5f}  {f}")
            if out_dir:
                hm = cv2.applyColorMap(np.clip(m / max(det.threshold * 1.5, 1e-6) * 255, 0, 255).astype(np.uint8),
                                       cv2.COLORMAP_JET)
                over = cv2.addWeighted(cv2.cvtColor(fr, cv2.COLOR_RGB2BGR), 0.6, hm, 0.4, 0)
                cv2.imwrite(str(out_dir / f"{f.stem}_heatmap.png"), over)
    _write_json(args.json, {"checkpoint": args.checkpoint, "version": det.version, "threshold": det.threshold,
                            "predictions": rows})
    return 0


# ----------------------------------------------------------------------------------- calibrate
def _add_calibrate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint to recalibrate")
    p.add_argument("--images", required=True, help="folder of NORMAL images only (no defects needed)")
    p.add_argument("--target-far", type=float, default=0.01, help="target false-alarm rate (default 0.01)")
    p.add_argument("--out", default=None, help="write the recalibrated checkpoint here (default: in place)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--json", default=None, metavar="PATH")


def run_calibrate(args: argparse.Namespace) -> int:
    from .calibration import promise
    from .workflow import calibrate_checkpoint

    res = calibrate_checkpoint(args.checkpoint, args.images, args.target_far, args.out, args.device)
    for s in res["skipped_images"]:
        print(f"skipped corrupt image: {s}", file=sys.stderr)
    cal = promise(res["threshold"], res["n_images"], res["target_far"])
    print(f"{cal.summary()} -> {res['checkpoint']} (version {res['version']})")
    if cal.warning:
        print(f"WARNING: {cal.warning}", file=sys.stderr)
    _write_json(args.json, {**res, "calibration": {**cal.model_dump(), "warning": cal.warning}})
    return 0


# ----------------------------------------------------------------------------------- benchmark
def _add_benchmark_args(p: argparse.ArgumentParser) -> None:
    from .benchmark import add_arguments

    add_arguments(p)


def run_benchmark(args: argparse.Namespace) -> int:
    from .benchmark import run

    return run(args)


COMMANDS: list[Command] = [
    Command("train", "train a detector on normal images (EAR, then FADeR) and write a checkpoint",
            "Train on <data>/train/good (normal images only).  Stage 1 trains the EAR U-Net to reconstruct\n"
            "images whose salient mosaic cells are obfuscated; with --mosaic-scale/--mask-quantile 'auto' the\n"
            "scale m and fraction q are chosen on held-out normal images vs synthetic defects.  Stage 2 (FADeR)\n"
            "trains the patch-error MLP and fine-tunes the decoder with attenuated skips.  The threshold is\n"
            "calibrated on the held-out normal images for --target-far; if <data>/test exists the model is\n"
            "evaluated on it.  Corrupt images are skipped and reported.",
            _add_train_args, run_train),
    Command("eval", "evaluate a checkpoint on a labelled test set",
            "Image AUROC, pixel AUROC, AUPRO (FPR <= 0.3, normalised), image F1-max, and the false-alarm and\n"
            "detection rates at the checkpoint's threshold, on <data>/test with <data>/ground_truth masks.",
            _add_eval_args, run_eval),
    Command("predict", "score images with a checkpoint",
            "Print score and verdict (score > threshold) per image; optionally write heatmap overlays.",
            _add_predict_args, run_predict),
    Command("calibrate", "recalibrate a checkpoint's threshold on normal-only images",
            "Set the threshold so that at most --target-far of the given normal images score above it\n"
            "(needs no defective images; with fewer than 1/FAR images it extrapolates conservatively).",
            _add_calibrate_args, run_calibrate),
    Command("benchmark", "train + evaluate EAR, FADeR and the ablations on every shared category (slow)",
            "Trains stage 1 once per category, then each stage-2 variant on top of it, evaluates all of them\n"
            "and measures CPU frames/s at batch 1 and 8.  Prints one table and writes JSON + markdown.",
            _add_benchmark_args, run_benchmark),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="EAR + FADeR visual anomaly detector: training, evaluation and inference.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for cmd in COMMANDS:
        add_command(sub, cmd)
    for name in (*PLUGIN_MODULES, *_entry_point_modules()):
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and (name == e.name or name.startswith(e.name + ".")):
                continue
            raise
        if hasattr(mod, "register"):
            mod.register(sub)
        for cmd in getattr(mod, "COMMANDS", []):
            add_command(sub, cmd)
    return parser


def _entry_point_modules() -> list[str]:
    """Modules of the ``linewatch.detector_commands`` entry points (downstream packages' commands,
    e.g. storage's ``retrain``/``rollback``/``models``: detector never imports them by name)."""
    from importlib.metadata import entry_points

    return [ep.value.split(":")[0] for ep in entry_points(group=ENTRY_POINT_GROUP)]


def main(argv: list[str] | None = None) -> int:
    from .data import DatasetError

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .checkpoint import CheckpointError

    try:
        return int(args.func(args) or 0)
    except (UserError, DatasetError, CheckpointError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
