"""``linewatch-detector retrain | rollback | models | register``: the model registry's commands.

They are subcommands of ``linewatch-detector`` (where an engineer looks for model commands) but
live in storage, because they need the registry tables; detector finds them through the
entry-point group ``linewatch.detector_commands`` (pyproject.toml) and never imports storage.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from detector.cli import Command, UserError

STORE_HELP = """\
Where things are: LINEWATCH_DATABASE_URL (default SQLite <data dir>/linewatch.db), LINEWATCH_DATA_DIR
(default ./var), LINEWATCH_BLOB_STORE, LINEWATCH_MODEL_STORE_DIR (default <data dir>/models); the
options --database-url / --data-dir override them.  Detector services watch
<model store>/<product>/active.json and switch to a newly active version between two batches."""


def _add_location(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("storage location (override the environment)")
    g.add_argument("--database-url", metavar="URL", help="SQLAlchemy database URL (LINEWATCH_DATABASE_URL)")
    g.add_argument("--data-dir", metavar="DIR", help="data directory (LINEWATCH_DATA_DIR, default ./var)")


def _open(args: argparse.Namespace):
    """-> (settings, engine, blobs, store), schema migrated, model-store files in step with the DB."""
    from detector.model_store import ModelStore

    from .blobs import make_blob_store
    from .db import init_db, make_engine
    from .settings import StorageSettings

    overrides: dict[str, Any] = {}
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    if args.database_url:
        overrides["database_url"] = args.database_url
    try:
        settings = StorageSettings(**overrides)
        engine = make_engine(settings=settings)
        init_db(engine)
    except Exception as e:  # noqa: BLE001 - bad URL, unreachable server: one line
        raise UserError(f"database: {str(e).splitlines()[0]}") from None
    return settings, engine, make_blob_store(settings, engine), ModelStore(settings.model_store_dir)


def _product(args: argparse.Namespace) -> str:
    from detector.model_store import ModelStoreError, check_name

    try:
        return check_name("product", args.product)
    except ModelStoreError as e:
        raise UserError(str(e)) from None


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    if hasattr(v, "strftime"):
        return v.strftime("%Y-%m-%d %H:%M")
    return str(v)


# ------------------------------------------------------------------------------------ retrain

def _add_retrain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--product", required=True, help="product whose model is retrained")
    g = p.add_argument_group("data (defaults: LINEWATCH_RETRAIN_* or the value shown)")
    g.add_argument("--min-images", type=int, metavar="N", help="refuse to train on fewer images (default 32)")
    g.add_argument("--max-images", type=int, metavar="N", help="use at most the newest N (default 2000)")
    g.add_argument("--holdout-fraction", type=float, metavar="F",
                   help="share of the sampled normals held out to compare the models (default 0.2)")
    g.add_argument("--low-score-ratio", type=float, metavar="R",
                   help="a sampled normal is used only if its score <= R x its threshold (default 0.8)")
    g.add_argument("--dedup-max-distance", type=int, metavar="BITS",
                   help="near-duplicate candidates: 64-bit perceptual hashes at most BITS bits apart (default 10)")
    g.add_argument("--dedup-max-diff", type=float, metavar="GREY",
                   help="...are duplicates if their 32x32 grey thumbnails differ by at most GREY levels on "
                        "average (default 2.0; re-captures of one part differ by ~1, different parts by 3+)")
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, metavar="N",
                   help="passes over the captures, read by the active model's family its own way (stages, "
                        "steps: detector/README.md, 'Training') (default 10)")
    g.add_argument("--epochs-ear", type=int, dest="epochs", help=argparse.SUPPRESS)  # its old name
    g.add_argument("--batch-size", type=int, metavar="N", help="default 8")
    g.add_argument("--lr", type=float, metavar="LR", help="learning rate of the warm start (default 3e-4)")
    g.add_argument("--target-far", type=float, metavar="F",
                   help="false-alarm rate the candidate's threshold is calibrated for (default 0.01)")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default auto (CUDA when present)")
    g = p.add_argument_group("promotion")
    g.add_argument("--margin-auroc", type=float, metavar="D",
                   help="promote only if the candidate's image AUROC >= active's - D (default 0.02)")
    g.add_argument("--margin-far", type=float, metavar="D",
                   help="promote only if the candidate's false-alarm rate <= active's + D (default 0.02)")
    g.add_argument("--margin-detection", type=float, metavar="D",
                   help="promote only if the candidate's detection rate (confirmed defects above its own threshold) "
                        ">= active's - D (default 0.05)")
    p.add_argument("--by", default="retrain", help="recorded as who created/promoted the version (default retrain)")
    p.add_argument("--json", metavar="PATH", help="also write the outcome as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_location(p)


_RETRAIN_FIELDS = ("min_images", "max_images", "holdout_fraction", "low_score_ratio", "dedup_max_distance",
                   "dedup_max_diff",
                   "epochs", "batch_size", "lr", "target_far", "device", "margin_auroc", "margin_far",
                   "margin_detection")


def run_retrain(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from .retrain import RetrainError, RetrainSettings, retrain

    product = _product(args)
    overrides = {k: getattr(args, k) for k in _RETRAIN_FIELDS if getattr(args, k, None) is not None}
    try:
        rs = RetrainSettings(**overrides)
    except ValidationError as e:
        err = e.errors()[0]
        raise UserError(f"--{str(err['loc'][0]).replace('_', '-')}: {err['msg']}") from None
    logging.getLogger().setLevel(min(logging.getLogger().level, logging.INFO))
    _, engine, blobs, store = _open(args)

    def stage(name: str) -> None:
        print(f"[retrain {product}] {name}", file=sys.stderr, flush=True)

    try:
        out = retrain(engine, blobs, store, product, rs, by=args.by, progress=not args.quiet, on_stage=stage)
    except RetrainError as e:
        raise UserError(str(e)) from None
    print(f"{product}: candidate {out.version} {'PROMOTED (now active)' if out.status == 'active' else 'REJECTED'}"
          f" — {out.reason}")
    print(f"  trained on {out.counts['train']} images ({out.counts['false_alarms']} false alarms, "
          f"{out.counts['duplicates_removed']} near-duplicates removed); report: {out.report}")
    if args.json:
        from pathlib import Path

        Path(args.json).write_text(json.dumps({
            "product": out.product, "version": out.version, "status": out.status, "reason": out.reason,
            "artifact": str(out.artifact), "report": str(out.report), "metrics": out.metrics,
            "counts": out.counts}, indent=2, default=str) + "\n")
    return 0


# ------------------------------------------------------------------------------------ rollback

def _add_rollback_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--product", required=True, help="product whose previous version becomes active again")
    p.add_argument("--by", default="rollback", help="recorded as who rolled back (default rollback)")
    p.add_argument("--reason", help="why (kept in the registry)")
    _add_location(p)


def run_rollback(args: argparse.Namespace) -> int:
    from .retrain import rollback_product

    product = _product(args)
    _, engine, _, store = _open(args)
    try:
        before, mv = rollback_product(engine, store, product, args.by, args.reason)
    except LookupError as e:
        raise UserError(str(e).strip("'\"")) from None
    print(f"{product}: {mv.version} is active again (was {before or 'none'}); detectors switch between batches")
    return 0


# ------------------------------------------------------------------------------------ models

def _add_models_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--product", help="only this product (default: all)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_location(p)


def run_models(args: argparse.Namespace) -> int:
    from sqlalchemy.orm import Session

    from .registry import list_versions

    product = _product(args) if args.product else None
    _, engine, _, _ = _open(args)
    with Session(engine) as s:
        versions = list_versions(s, product)
        rows = [{
            "product": mv.product, "version": mv.version, "status": mv.status,
            "created_at": mv.created_at, "created_by": mv.created_by, "promoted_at": mv.promoted_at,
            "promoted_by": mv.promoted_by, "parent": mv.parent.version if mv.parent else None,
            "threshold": mv.threshold, "image_auroc": (mv.metrics or {}).get("image_auroc"),
            "false_alarm_rate": (mv.metrics or {}).get("false_alarm_rate"),
            "train_images": mv.train_image_count, "reason": mv.reason, "artifact": mv.artifact_path,
            "report": mv.report_path,
        } for mv in versions]
    if args.json:
        print(json.dumps(rows, indent=2, default=lambda o: o.isoformat() if hasattr(o, "isoformat") else str(o)))
        return 0
    if not rows:
        print(f"no model versions{' for ' + product if product else ''}")
        return 0
    header = ["product", "version", "status", "created", "parent", "threshold", "auroc", "far", "images", "reason"]
    table = [[r["product"], r["version"], r["status"], _fmt(r["created_at"]), _fmt(r["parent"]), _fmt(r["threshold"]),
              _fmt(r["image_auroc"]), _fmt(r["false_alarm_rate"]), _fmt(r["train_images"]),
              (r["reason"] or "")[:80]] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *table)]
    for line in [header, *table]:
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip())
    return 0


# ------------------------------------------------------------------------------------ register

def _add_register_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--product", required=True, help="product the model is for")
    p.add_argument("--checkpoint", required=True, help="checkpoint file (written by 'train'); it is copied into the store")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--activate", action="store_true", default=None,
                   help="make it the active version (default: only if the product has none yet)")
    g.add_argument("--no-activate", dest="activate", action="store_false", help="register as a candidate only")
    p.add_argument("--by", default="register", help="recorded as who registered it (default register)")
    _add_location(p)


def run_register(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .retrain import register_checkpoint

    product = _product(args)
    if not Path(args.checkpoint).is_file():
        raise UserError(f"checkpoint not found: {args.checkpoint}")
    _, engine, _, store = _open(args)
    mv = register_checkpoint(engine, store, product, args.checkpoint, activate=args.activate, by=args.by)
    print(f"{product}: registered {mv.version} ({mv.status}) -> {mv.artifact_path}")
    return 0


COMMANDS = [
    Command("retrain", "retrain a product's model on recent normal captures; promote it only if not worse",
            "Gather the product's captures since the active version's training window: sampled normal frames the\n"
            "detector scored low plus frames operators marked false alarm (never confirmed defects or 'unsure');\n"
            "remove near-duplicates (perceptual hash + thumbnail difference); refuse below --min-images.  Train a candidate warm-started\n"
            "from the active model, calibrate its threshold for --target-far, and evaluate candidate and active on\n"
            "the same holdout (held-out recent normals + every confirmed defect).  Promote it if its image AUROC,\n"
            "false-alarm rate and detection rate (each at its own threshold) are not worse than the active\n"
            "model's by more than the margins; otherwise\n"
            "record it as rejected with the reason.  Writes <version>.report.md and <version>.scores.png next to\n"
            "the checkpoint.  One run per product at a time (lock); a crash registers nothing.\n"
            "Exit status: 0 done (promoted or rejected), 2 not run (not enough data, locked, bad input).\n\n"
            + STORE_HELP,
            _add_retrain_args, run_retrain),
    Command("rollback", "make a product's previous model version active again",
            "The version that was active before the current one becomes active; the current one is retired.\n"
            "Running detectors switch to it between two batches.\n\n" + STORE_HELP,
            _add_rollback_args, run_rollback),
    Command("models", "list a product's model versions (registry)",
            "Every registered version: status (candidate, active, retired, rejected), parent, threshold, holdout\n"
            "metrics, training images and the reason it was promoted or rejected.\n\n" + STORE_HELP,
            _add_models_args, run_models),
    Command("register", "add a trained checkpoint to the registry (e.g. a product's first model)",
            "Copy the checkpoint into the model store as <product>/<version>.ckpt (version = first 12 hex digits\n"
            "of its sha256, the model_version results carry) and register it; it becomes active if the product\n"
            "has no active version yet (or with --activate).  'retrain' needs an active version to start from.\n\n"
            + STORE_HELP,
            _add_register_args, run_register),
]
