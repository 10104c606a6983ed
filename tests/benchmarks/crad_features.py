"""CRAD feature ablation (outside CI): how the frozen features are prepared, side by side on one
category, with the backbone run once.

    python -m tests.benchmarks.crad_features --data ../shared/data/magnetic_tile/magnetic_tile \\
        --variants raw,std,std+agg=3,std+agg=3+hidden=128 --epochs 4,8

A variant is ``raw`` or ``std`` (per-channel standardisation with the training features' statistics)
followed by ``+key=value`` options: ``agg`` (odd neighbourhood size of the feature mean), ``hidden``,
``blocks`` (fusion width and depth), ``local``, ``global`` (grid sizes), ``coef`` (the MSE gate's
coefficient).  ``gauss`` is a reference point that trains nothing: a diagonal Gaussian per feature
position.  Each variant trains CRAD's memory (the family's own modules and loss, cpu profile
otherwise) on the cached features and reports, at each epoch in ``--epochs``, image AUROC for several
score poolings and pixel AUROC (scikit-learn, raw scores).  The backbone's features are cached in
``--cache`` (reused across runs).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def _parse_variant(v: str) -> tuple[str, dict[str, str]]:
    base, *opts = v.split("+")
    return base, dict(o.split("=", 1) for o in opts)


def _evaluate(model, feats: torch.Tensor, labels: np.ndarray, masks: np.ndarray | None, size: int) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        maps = torch.cat([model.anomaly_map(feats[i:i + 32]) for i in range(0, len(feats), 32)])
    return _scores(maps, labels, masks, size)


def _scores(maps: torch.Tensor, labels: np.ndarray, masks: np.ndarray | None, size: int) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    up = F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=False)
    out: dict[str, float] = {}
    for k in (1, 8, 16, 32):
        pooled = F.avg_pool2d(up, k, stride=1) if k > 1 else up
        out[f"image_auroc_pool{k}"] = round(float(roc_auc_score(labels, pooled.flatten(1).amax(1).numpy())), 4)
    if masks is not None:  # every 7th pixel: the same estimate at a seventh of the memory
        m = masks.reshape(len(masks), -1)[:, ::7].ravel() > 0.5
        out["pixel_auroc"] = round(float(roc_auc_score(m, up[:, 0].numpy().reshape(len(up), -1)[:, ::7].ravel())), 4)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.benchmarks.crad_features", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="an MVTec-layout category")
    p.add_argument("--variants", default="raw,std,std+agg=3", help="comma-separated variants (see above)")
    p.add_argument("--epochs", default="4", help="comma-separated epochs at which to evaluate (default 4)")
    p.add_argument("--cache", default="/tmp/linewatch-crad-features", help="folder for the cached features")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the results here too")
    args = p.parse_args(argv)

    from detector.data import MVTecFolder, load_images, to_tensor
    from detector.models.crad import Crad
    from detector.models.crad.model import CradModel
    from detector.models.crad.trainer import cache_features
    from detector.scoring import load_test

    torch.set_num_threads(args.threads)
    fam = Crad()
    ds = MVTecFolder.open(args.data, need_test=True)
    cfg0, tc = fam.configs(None, "cpu", {"aggregate": 1, "standardise": False})
    cache = Path(args.cache) / f"{ds.name}-{cfg0.image_size}.pt"
    _, loaded = load_test(ds, cfg0.image_size, torch.device("cpu"), progress=False)
    labels = np.array([s.label for s in loaded.samples])
    if cache.is_file():
        train_f, test_f = torch.load(cache)
    else:
        extractor = CradModel(cfg0)
        train = to_tensor(load_images(ds.train, cfg0.image_size).images, torch.device("cpu"))
        test = to_tensor(loaded.images, torch.device("cpu"))
        train_f, test_f = cache_features(extractor, train), cache_features(extractor, test)
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save((train_f, test_f), cache)
    evals = sorted({int(e) for e in args.epochs.split(",")})
    results: dict[str, Any] = {}
    for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
        base, opts = _parse_variant(variant)
        ftr, fte = train_f, test_f
        if "agg" in opts:
            k = int(opts["agg"])
            ftr, fte = (F.avg_pool2d(f, k, stride=1, padding=k // 2, count_include_pad=False) for f in (ftr, fte))
        if base == "gauss":
            mu, sd = ftr.mean(0, keepdim=True), ftr.std(0, keepdim=True) + 1e-3
            results[variant] = [_scores(((fte - mu) / sd).pow(2).mean(1, keepdim=True).sqrt(), labels,
                                        loaded.masks, cfg0.image_size)]
            print(variant, json.dumps(results[variant][0]), flush=True)
            continue
        if base == "std":
            mu = ftr.mean(dim=(0, 2, 3), keepdim=True)
            sd = ftr.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
            ftr, fte = (ftr - mu) / sd, (fte - mu) / sd
        elif base != "raw":
            raise SystemExit(f"unknown variant {variant!r}")
        overrides = {"aggregate": 1, "standardise": False}  # done above, on the cached features
        for key, name in (("hidden", "hidden"), ("blocks", "blocks"), ("local", "local_grid"),
                          ("global", "global_grid")):
            if key in opts:
                overrides[name] = int(opts[key])
        if "coef" in opts:
            overrides["mse_coef"] = float(opts["coef"])
        cfg, tc = fam.configs(None, "cpu", overrides)
        torch.manual_seed(args.seed)
        rng = np.random.default_rng(args.seed)
        model = CradModel(cfg)
        grids = [model.memory.local_grid, model.memory.global_grid]
        net = [q for n, q in model.memory.named_parameters() if n not in ("local_grid", "global_grid")]
        opt = torch.optim.AdamW([{"params": net, "lr": tc.lr, "weight_decay": tc.weight_decay},
                                 {"params": grids, "lr": tc.grid_lr, "weight_decay": 0.0}])
        n, bs = len(ftr), min(tc.batch_size, len(ftr))
        per_epoch, total = n // bs, max(evals) * (n // bs)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * s / total)))  # the trainer's schedule
        t0, rows = time.perf_counter(), []
        for epoch in range(1, max(evals) + 1):
            model.memory.train()
            perm, run = rng.permutation(n), 0.0
            for k in range(per_epoch):
                f = ftr[torch.from_numpy(perm[k * bs:(k + 1) * bs])]
                jitter = tc.jitter_std if rng.random() < tc.jitter_p else 0.0
                loss = F.mse_loss(model.refine(f, model.memory(f, jitter)), f)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.memory.parameters(), tc.clip_grad_norm)
                opt.step()
                sched.step()
                run += loss.item()
            if epoch in evals:
                row = {"epoch": epoch, "loss": round(run / per_epoch, 5),
                       "train_min": round((time.perf_counter() - t0) / 60, 2),
                       **_evaluate(model, fte, labels, loaded.masks, cfg.image_size)}
                rows.append(row)
                print(variant, json.dumps(row), flush=True)
        results[variant] = rows
    if args.json:
        Path(args.json).write_text(json.dumps({"data": str(args.data), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
