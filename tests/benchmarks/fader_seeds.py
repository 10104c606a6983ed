"""Stage-2 seed sweep (outside CI): FADeR trained several times on one saved stage 1, against its EAR.

    python -m tests.benchmarks.fader_seeds --help
    linewatch-detector benchmark --categories magnetic_tile --models ear --out-dir /tmp/lwb
    python -m tests.benchmarks.fader_seeds --stage1 /tmp/lwb/magnetic_tile/ear.pt \\
        --data ../shared/data/magnetic_tile/magnetic_tile --seeds 0,1,2 --stage2-passes 12000

Only stage 2 varies: the held-out split, the cached masks and the stage-1 network are those of the
saved stage 1 (the split comes from ``--split-seed``, which must be the seed stage 1 was trained
with, 0 by default as in the benchmark).  Every FADeR is ``detector.models.ear_fader.trainer.train_fader``,
the benchmark's own code path, with the stage-2 seed.  Prints image AUROC per seed
and the mean, next to the stage 1's EAR on the same test images; ``--json`` writes them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tests.benchmarks.fader_seeds", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage1", required=True, help="a saved stage 1 (the benchmark's OUT_DIR/<category>/ear.pt)")
    p.add_argument("--data", required=True, help="the category's MVTec-layout folder")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated stage-2 seeds (default 0,1,2)")
    p.add_argument("--stage2-passes", type=int, default=12000, help="stage-2 length in image passes (default 12000)")
    p.add_argument("--max-pairs", type=int, default=None,
                   help="ranking pairs per image (default: TrainConfig's, i.e. every pair up to 65536)")
    p.add_argument("--split-seed", type=int, default=0, help="seed stage 1 was trained with (default 0)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1, as the benchmark)")
    p.add_argument("--json", default=None, help="write the figures here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from detector.checkpoint import load_model
    from detector.data import MVTecFolder, load_images
    from detector.metrics import image_auroc
    from detector.models.ear_fader import EarFaderTrainConfig, FaderConfig
    from detector.models.ear_fader.trainer import prepare, train_fader
    from detector.scoring import load_test, score_images
    from detector.workflow import HoldoutOptions, training_set

    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    ear, _, _ = load_model(args.stage1, device)
    ds = MVTecFolder.open(Path(args.data), need_test=True)
    tset = training_set({ds.name: load_images(ds.train, ear.image_size).images}, args.split_seed, HoldoutOptions(),
                        device)
    data = prepare(tset, ear.masker, progress=False)
    base = EarFaderTrainConfig(passes_fader=args.stage2_passes)
    if args.max_pairs is not None:
        base.max_pairs_per_image = args.max_pairs
    imgs, loaded = load_test(ds, ear.image_size, device, progress=False)
    labels = np.array([s.label for s in loaded.samples])
    ear_auc = image_auroc(labels, score_images(ear, imgs)[1])
    print(f"{ds.name}: m={ear.cfg.mosaic_scale} q={ear.cfg.mask_quantile}, stage 2 {base.epochs_for(len(data.train))[1]} epochs, "
          f"EAR image AUROC {ear_auc:.4f}", flush=True)
    rows = []
    for seed in [int(s) for s in args.seeds.split(",") if s.strip()]:
        s2 = train_fader(ear, FaderConfig(), data, base, device, seed, progress=False)
        auc = image_auroc(labels, score_images(s2.model, imgs)[1])
        rows.append({"seed": seed, "image_auroc": auc, "stage2_min": s2.minutes})
        print(f"  stage-2 seed {seed}: FADeR {auc:.4f} ({auc - ear_auc:+.4f} vs EAR), {s2.minutes:.1f} min", flush=True)
    mean = statistics.mean(r["image_auroc"] for r in rows)
    print(f"mean FADeR {mean:.4f} over {len(rows)} seeds (min {min(r['image_auroc'] for r in rows):.4f}), "
          f"EAR {ear_auc:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"category": ds.name, "ear": ear_auc, "fader": rows, "mean": mean,
                                               "settings": vars(args)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
