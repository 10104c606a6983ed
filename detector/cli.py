"""``linewatch-detector``: train, evaluate, predict, calibrate and benchmark anomaly detectors of every family.

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

__all__ = ["Command", "UserError", "add_command", "main"]

PROG = "linewatch-detector"
PLUGIN_MODULES = ("detector.service.cli", "detector.models.efficientad.cli", "detector.export", "detector.gpu_check")
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
_selected_model: str | None = None  # ``--model`` as given on the command line: its family's options are offered


def _peek_model(argv: list[str]) -> str | None:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--model")
    known, _ = pre.parse_known_args(argv)
    return known.model


def _models_help() -> str:
    from .models import DEFAULT_MODEL, families

    lines = []
    for fam in families():
        lines.append(f"  {fam.name}: {fam.summary}")
        lines.append(f"      variants: {', '.join(fam.variants)}")
        for name, prof in fam.profiles.items():
            lines.append(f"      --profile {name}: {prof.cost}")
    return (f"models (--model, default {DEFAULT_MODEL}; a family name means its first variant):\n" + "\n".join(lines)
            + "\n`--model NAME --help` lists that family's own options.")


def _add_train_args(p: argparse.ArgumentParser) -> None:
    from .models import DEFAULT_MODEL, model_names, resolve_model

    p.add_argument("--data", required=True, action="append",
                   help="category folder in the MVTec layout (train/good, test/*, ground_truth/*); give it several "
                        "times for one unified model of several products (families that support it)")
    p.add_argument("--out", required=True, help="checkpoint file to write")
    p.add_argument("--product", default=None, help="product name stored in the checkpoint (default: folder name)")
    p.add_argument("--model", default=DEFAULT_MODEL, choices=model_names(), metavar="NAME",
                   help=f"model family or variant (default {DEFAULT_MODEL}); see the list below")
    p.add_argument("--profile", default="auto", choices=["auto", "cpu", "gpu", "smoke"],
                   help="size and length defaults for the machine: auto = gpu when CUDA is available, else cpu "
                        "(what each costs is listed below); explicit options override them")
    p.add_argument("--target-far", type=float, default=0.01,
                   help="false-alarm rate the threshold is calibrated for, on held-out normal images (default 0.01)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--json", default=None, metavar="PATH", help="write the figures (metrics, timings, choices) as JSON")
    try:
        fam, _ = resolve_model(_selected_model or DEFAULT_MODEL)
    except ValueError:
        return  # argparse reports the bad --model
    fam.add_arguments(p.add_argument_group(f"{fam.name} options (defaults: the profile's)"))
    p.epilog = _models_help()


def run_train(args: argparse.Namespace) -> int:
    from .models import resolve_model
    from .workflow import HoldoutOptions, train_model

    fam, _ = resolve_model(args.model)
    try:
        overrides = fam.overrides_from_args(args)
        if len(args.data) > 1 and args.product:
            raise UserError("--product names the one product of a single --data folder; "
                            "a unified model takes its products' names from the folders")
        summary = train_model(None, args.out, data=args.data, model=args.model, profile=args.profile,
                              overrides=overrides, product=args.product,
                              holdout=HoldoutOptions(target_far=args.target_far), seed=args.seed, device=args.device)
    except ValueError as e:
        raise UserError(str(e)) from None
    for s in summary.get("skipped_images", []):
        print(f"skipped corrupt image: {s}", file=sys.stderr)
    cfg = summary["config"]
    choice = f" m={cfg['mosaic_scale']} q={cfg['mask_quantile']}" if "mosaic_scale" in cfg else ""
    thr = ", ".join(f"{p} {t:.5f}" for p, t in summary["thresholds"].items())
    print(f"wrote {summary['checkpoint']} (version {summary['version']}, {summary['family']}/{summary['variant']}, "
          f"{summary['image_size']} px):{choice} threshold {thr}; training {summary['timings_min']['total']:.1f} min")
    for product, cal in summary["calibration"].items():
        if cal["warning"]:
            print(f"WARNING ({product}): {cal['warning']}", file=sys.stderr)
    metrics = summary.get("metrics") or {}
    for name, m in (metrics.items() if summary["products"][1:] else [("test", metrics)] if metrics else []):
        print(f"{name}: " + _fmt_metrics(m))
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
    p.add_argument("--product", default=None,
                   help="for a model that serves several products: whose threshold these images calibrate")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--json", default=None, metavar="PATH")


def run_calibrate(args: argparse.Namespace) -> int:
    from .calibration import promise
    from .workflow import calibrate_checkpoint

    res = calibrate_checkpoint(args.checkpoint, args.images, args.target_far, args.out, args.device,
                               product=args.product)
    for s in res["skipped_images"]:
        print(f"skipped corrupt image: {s}", file=sys.stderr)
    cal = promise(res["threshold"], res["n_images"], res["target_far"])
    print(f"{cal.summary()} -> {res['checkpoint']} (version {res['version']})")
    if cal.warning:
        print(f"WARNING: {cal.warning}", file=sys.stderr)
    if res["drift_reference_added"]:
        print("the checkpoint had no drift reference: one was made from these images")
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
    Command("train", "train a detector on normal images and write a checkpoint",
            "Train a model of the chosen family (--model) on <data>/train/good, normal images only.  A held-out\n"
            "share of those images is never trained on: the threshold is calibrated on it for --target-far.\n"
            "If <data>/test exists the model is evaluated on it.  Corrupt images are skipped and reported.\n"
            "--profile picks sizes and training length that fit the machine (listed below with their cost).",
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
    Command("benchmark", "train + evaluate every model family on every shared category, with anchors (slow)",
            "Trains each --models entry per category (and a unified model over all categories for families that\n"
            "have one), evaluates them, measures CPU frames/s at batch 1 and 8 and peak memory; with the bench\n"
            "extra installed, anomalib's PaDiM and PatchCore run on the same images as anchors.  Prints one\n"
            "table and writes JSON + markdown.",
            _add_benchmark_args, run_benchmark),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Visual anomaly detectors (EAR + FADeR, CRAD, ...) trained on normal images only: "
                               "training, evaluation, calibration and inference.")
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

    global _selected_model
    _selected_model = _peek_model(sys.argv[1:] if argv is None else argv)
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
