"""EfficientAD variants over several seeds on one category (outside CI): image AUROC per seed,
per defect kind, training minutes and inference frames/s.

    python -m tests.benchmarks.efficientad_seeds --help
    linewatch-ingest sim-write /tmp/bracket -n 200 --logical --width 128 --height 128
    python -m tests.benchmarks.efficientad_seeds --data /tmp/bracket \\
        --models efficientad-s,efficientad-s-dfsc --seeds 0,1,2 --steps 1000

Every model is the family's own ``fit`` (profile ``--profile``, with ``--steps`` and the other
overrides), on the category's ``train/good`` less a held-out 10 % (the map quantiles are measured
on it), scored on ``test/``.  Until ``linewatch-detector benchmark --models`` covers a question,
this answers DFSC vs plain with the seed spread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tests.benchmarks.efficientad_seeds", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="a category folder in the MVTec layout (required unless --speed)")
    p.add_argument("--speed", action="store_true",
                   help="only measure inference: frames per CPU-second and wall frames/s at batch 8 (untrained weights)")
    p.add_argument("--models", default="efficientad-s,efficientad-s-dfsc", help="comma-separated variant names")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (default 0,1,2)")
    p.add_argument("--profile", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the profile's)")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="another config override, e.g. --set dfsc_quantile=0.95 (repeatable)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--json", default=None, help="write the figures here")
    return p


def _value(s: str):
    for cast in (int, float):
        try:
            return cast(s)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(s.lower(), s)


def frames_per_second(model: torch.nn.Module, size: int, batch: int = 8, seconds: float = 5.0,
                      clock=time.perf_counter) -> float:
    """Frames per second of ``clock``: the wall clock, or ``time.process_time`` for frames per
    CPU-second (what a loaded machine hides from the wall clock)."""
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    with torch.inference_mode():
        model(x)
        n, t0 = 0, clock()
        while clock() - t0 < seconds:
            model(x)
            n += 1
    return n * batch / (clock() - t0)


def speed(args: argparse.Namespace) -> int:
    from detector.models.registry import resolve_model

    for name in args.models.split(","):
        fam, variant = resolve_model(name)
        cfg, _ = fam.configs(variant, args.profile, {"pretrained": False, "image_size": args.image_size})
        model = fam.build(cfg).eval()
        print(f"{name} ({args.profile}): {frames_per_second(model, args.image_size, clock=time.process_time):.2f} frames per CPU-second, "
              f"{frames_per_second(model, args.image_size):.2f} frames/s wall, batch 8, {args.image_size} px, "
              f"{args.threads} thread(s)", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    from sklearn.metrics import roc_auc_score

    from detector.data import MVTecFolder, load_images
    from detector.models.registry import TrainingSet, resolve_model

    parser = build_parser()
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.speed:
        return speed(args)
    if not args.data:
        parser.error("--data is required (unless --speed)")
    ds = MVTecFolder.open(args.data, need_test=True)
    size = args.image_size

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()

    train = load_images(ds.train, size)
    test = load_images(ds.test, size)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(train.images))
    n_val = max(4, len(order) // 10)
    data = TrainingSet(tensor(train.images[order[n_val:]]), tensor(train.images[order[:n_val]]),
                       [ds.name] * (len(order) - n_val), [ds.name] * n_val)
    labels = np.array([s.label for s in test.samples])
    kinds = np.array([s.defect_type for s in test.samples])
    overrides = dict(_value_pair(kv) for kv in args.set) | {"image_size": size}
    if args.steps:
        overrides["steps"] = args.steps
    rows = []
    for name in args.models.split(","):
        fam, variant = resolve_model(name)
        for seed in (int(s) for s in args.seeds.split(",")):
            cfg, tc = fam.configs(variant, args.profile, overrides)
            t0 = time.monotonic()
            res = fam.fit(cfg, tc, data, torch.device("cpu"), seed=seed, progress=False)
            minutes = (time.monotonic() - t0) / 60
            model = res.model.eval()
            with torch.inference_mode():
                scores = torch.cat([model(tensor(test.images[i:i + 16]))[0] for i in range(0, len(labels), 16)]).numpy()
            row = {"model": name, "seed": seed, "image_auroc": float(roc_auc_score(labels, scores)),
                   "train_min": minutes, "steps": tc.steps,
                   "per_kind": {k: float(roc_auc_score(labels[(kinds == k) | (labels == 0)],
                                                       scores[(kinds == k) | (labels == 0)]))
                                for k in sorted(set(kinds[labels == 1]))}}
            if seed == int(args.seeds.split(",")[0]):
                row["fps_b8"] = frames_per_second(model, size)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{ds.name}: image AUROC over seeds {args.seeds}")
    for name in args.models.split(","):
        vals = [r["image_auroc"] for r in rows if r["model"] == name]
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        print(f"  {name:22s} mean {statistics.mean(vals):.4f} sd {sd:.4f}  " + " ".join(f"{v:.4f}" for v in vals))
    if args.json:
        Path(args.json).write_text(json.dumps({"data": str(args.data), "rows": rows, "args": vars(args)}, indent=2))
    return 0


def _value_pair(kv: str) -> tuple[str, object]:
    k, _, v = kv.partition("=")
    return k.strip(), _value(v.strip())


if __name__ == "__main__":
    raise SystemExit(main())
