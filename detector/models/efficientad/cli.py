"""``linewatch-detector distill-teacher``: make EfficientAD's PDN teacher once per machine."""

from __future__ import annotations

import argparse
import json
import sys

from ...cli import Command
from ...errors import UserError
from ...paths import default_masker_weights

DESCRIPTION = """\
Distil EfficientAD's patch description network (PDN) teacher from the local EfficientNet-Lite0
ImageNet weights, on the natural photographs that ship inside installed Python packages
(scikit-image, scikit-learn, matplotlib; add folders with --images).  Nothing is downloaded.

The teacher depends only on --size and --width; it is written to the per-machine cache
(~/.cache/linewatch/teachers, or $LINEWATCH_CACHE/teachers), where 'train --model efficientad-*'
finds it.  The CPU profile uses --width 0.5; the GPU profile --width 1.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", default="s", choices=["s", "m"], help="PDN-S (EfficientAD-S) or PDN-M (default s)")
    p.add_argument("--width", type=float, default=0.5, help="PDN channel multiplier (default 0.5, the CPU profile's)")
    p.add_argument("--minutes", type=float, default=10.0, help="time budget (default 10)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (default: only the time)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--crop", type=int, default=128, help="side of the random crops the PDN sees (default 128)")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--images", action="append", default=[], metavar="DIR",
                   help="another folder of generic images (repeatable)")
    p.add_argument("--extractor-weights", default=None,
                   help="EfficientNet-Lite0 ImageNet weights (default ../shared/models/tf_efficientnet_lite0_in1k.safetensors)")
    p.add_argument("--out", default=None, help="teacher file to write (default: the per-machine cache)")
    p.add_argument("--force", action="store_true", help="distil again even when the cache has this teacher")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--json", default=None, metavar="PATH", help="write what was done as JSON")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ...device import resolve_device
    from .teacher import GenericImages, distill, generic_image_files, save_teacher, teacher_path

    out = Path(args.out) if args.out else teacher_path(args.size, args.width)
    if out.is_file() and not args.force:
        print(f"teacher already distilled: {out} (use --force to make it again)")
        return 0
    weights = args.extractor_weights or default_masker_weights()
    if not weights or not Path(weights).is_file():
        raise UserError("EfficientNet-Lite0 weights not found: pass --extractor-weights or put "
                        "tf_efficientnet_lite0_in1k.safetensors in $LINEWATCH_SHARED_DIR/models")
    pool = GenericImages.load(generic_image_files(tuple(args.images)))
    if len(pool) < 3:
        raise UserError(f"only {len(pool)} generic images found: install scikit-image (pip install scikit-image) "
                        "or pass --images DIR")
    print(f"distilling PDN-{args.size.upper()} (width {args.width:g}) on {len(pool)} images: {', '.join(pool.names)}",
          file=sys.stderr)
    res = distill(args.size, args.width, pool, weights, minutes=args.minutes, max_steps=args.max_steps,
                  batch_size=args.batch_size, crop=args.crop, lr=args.lr, seed=args.seed,
                  device=resolve_device(args.device))
    save_teacher(out, res)
    info = res.info
    print(f"wrote {out}: {info['steps']} steps in {info['minutes']:.1f} min, "
          f"loss {info['first_loss']:.3f} -> {info['final_loss']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(info | {"path": str(out)}, indent=2) + "\n")
    return 0


COMMANDS = [Command(name="distill-teacher", help="make EfficientAD's PDN teacher (once per machine)",
                    description=DESCRIPTION, add_arguments=add_arguments, run=run)]
