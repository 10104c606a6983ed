"""Nightly retraining of one product's model: ``linewatch-detector retrain --product P``.

What a run does, in order (:func:`retrain`):

1. **Lock** the product (:func:`product_lock`): a lock file in the model store, plus a
   PostgreSQL advisory lock when the database is PostgreSQL (retraining jobs on different hosts
   that share the database).  A second run for the same product fails at once with a clear
   message; other products are not affected.
2. **Gather** (:func:`gather`) the captures stored since the active version's training window
   ended, for this product, that carry their frame image:

   * *sampled normals the detector scored low*: ``frame_reason = 'sampled'``, not flagged,
     ``score <= low_score_ratio x threshold`` (clearly normal, not borderline), no feedback;
   * *false alarms*: frames whose newest operator decision is ``false_alarm``;
   * never anything whose newest decision is ``defect_confirmed`` or ``unsure``.

   Near-duplicates are removed (:func:`dedup`): the same part captured again (a stopped line,
   a free-running camera), i.e. the same image up to sensor noise and compression.  Two tests:
   a 64-bit perceptual hash (DCT pHash, ``imagehash.phash``) within ``dedup_max_distance`` bits
   finds candidates cheaply, and the mean absolute difference of 32x32 grey thumbnails at most
   ``dedup_max_diff`` grey levels confirms them.  The hash alone is not enough on a production
   line: every good part looks alike by design and pHash, made to be robust to small shifts,
   calls most of them duplicates (measured on the simulator: re-captures differ by < 1.2 grey
   levels, different parts by >= 2.8, typically 8-14).  A deterministic
   ``holdout_fraction`` of them (by a hash of the frame id; sampled normals and false alarms
   alike, so the active model's false alarms count in the comparison) is held out of training.  Below ``min_images`` training images the run stops (:class:`NotEnoughData`).
3. **Train** a candidate warm-started from the active checkpoint (its architecture, masker,
   mosaic scale; :func:`detector.workflow.train_from_folder` with ``init_checkpoint``); its
   threshold is calibrated for ``target_far`` on a held-out part of the training images.
4. **Evaluate** candidate and active on the same holdout: the held-out recent normals plus every
   confirmed defect of the product.  Image AUROC (when there are defects; scikit-learn, raw
   scores), and the false-alarm and detection rates of each at its own threshold.
5. **Decide** (:func:`criteria`): promote only if the candidate's AUROC is at least the active
   one's minus ``margin_auroc``, its false-alarm rate at most the active one's plus ``margin_far``
   and its detection rate (confirmed defects above its own threshold) at least the active one's
   minus ``margin_detection``; otherwise record it as ``rejected`` with the reason.  A criterion
   without data (no confirmed defects yet) is reported as not compared.
6. **Record**, all or nothing: the checkpoint is written under a temporary name in the store,
   loaded back and evaluated, then renamed to ``<version>.ckpt``; the report
   (``<version>.report.md`` + ``<version>.scores.png`` next to it) is written; then ONE database
   transaction registers the version with its metrics, threshold, data window and fingerprint
   and promotes or rejects it.  ``active.json`` is rewritten after that commit (storage.registry).
   A crash before the commit leaves no registry row (an unregistered file at most; temporary
   files are swept by the next run).

Settings: :class:`RetrainSettings` (``LINEWATCH_RETRAIN_*``), overridable on the command line.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import Engine, and_, or_, select, text
from sqlalchemy.orm import Session

from detector.model_store import ModelStore

from .blobs import BlobNotFound, BlobStore
from .db import write_session
from .models import Image, Inspection, ModelVersion, utcnow
from .registry import active_version, promote, register_candidate, reject

log = logging.getLogger(__name__)

KEEP_MAX_SIDE = 512  # images are kept in memory at most this large (hashing, holdout scoring)


class RetrainError(Exception):
    """A retraining run that cannot go on; ``str(e)`` is one line for the operator."""


class NotEnoughData(RetrainError):
    pass


class LockBusy(RetrainError):
    pass


class RetrainSettings(BaseSettings):
    """``LINEWATCH_RETRAIN_*``."""

    model_config = SettingsConfigDict(env_prefix="LINEWATCH_RETRAIN_", extra="ignore")

    min_images: int = Field(32, ge=2, description="refuse to train on fewer (after de-duplication)")
    min_holdout: int = Field(4, ge=1, description="held-out normal images needed to compare the models")
    max_images: int = Field(2000, ge=2, description="newest images used at most")
    holdout_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="share of sampled normals held out")
    low_score_ratio: float = Field(0.8, gt=0.0, le=1.0,
                                   description="a sampled normal is used only if score <= ratio x threshold")
    dedup_max_distance: int = Field(10, ge=0, le=64, description="pHash bits: at most this far = maybe duplicate")
    dedup_max_diff: float = Field(2.0, ge=0.0, description="32x32 grey thumbnails: mean |difference| at most "
                                                           "this = duplicate (grey levels 0..255)")
    epochs_ear: int = Field(10, ge=1)
    epochs_fader: int = Field(5, ge=0)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(3e-4, gt=0, description="stage-1 learning rate (lower than from scratch: warm start)")
    fader_lr: float = Field(3e-4, gt=0)
    target_far: float = Field(0.01, gt=0.0, lt=1.0, description="false-alarm rate the threshold is set for")
    margin_auroc: float = Field(0.02, ge=0.0, description="candidate AUROC may be this much lower")
    margin_far: float = Field(0.02, ge=0.0, description="candidate false-alarm rate may be this much higher")
    margin_detection: float = Field(0.05, ge=0.0, description="candidate detection rate (confirmed defects above "
                                                              "its threshold) may be this much lower")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0


# ---------------------------------------------------------------------------------- lock

@contextlib.contextmanager
def product_lock(store: ModelStore, product: str, engine: Engine | None = None) -> Iterator[None]:
    """One retraining (or registry change) per product at a time, across processes and hosts.

    A lock file ``<store>/<product>/.retrain.lock`` (``filelock``: an OS lock, released by the
    kernel when the process dies, so a crashed run never leaves it stuck) and, on PostgreSQL, a
    session advisory lock held on a connection of its own for the run's duration.
    """
    from filelock import FileLock, Timeout

    d = store.product_dir(product)
    d.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(d / ".retrain.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise LockBusy(f"another retraining of {product!r} is running (lock {d / '.retrain.lock'}); "
                       "try again when it has finished") from None
    conn = None
    held = False
    key = int.from_bytes(hashlib.sha256(f"linewatch-retrain:{product}".encode()).digest()[:8], "big", signed=True)
    try:
        if engine is not None and engine.dialect.name == "postgresql":
            conn = engine.connect()
            held = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar())
            conn.commit()
            if not held:
                raise LockBusy(f"another retraining of {product!r} is running (database lock held elsewhere)")
        yield
    finally:
        if conn is not None:
            # the connection goes back to the pool, so the session lock must be given back explicitly
            try:
                if held:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                    conn.commit()
            except Exception:  # noqa: BLE001 - a broken connection: drop it, which ends the session
                conn.invalidate()
            conn.close()
        lock.release()


# ---------------------------------------------------------------------------------- gather

@dataclass
class Capture:
    inspection_id: int
    frame_id: str
    captured_at: datetime
    kind: Literal["sampled", "false_alarm", "defect"]
    blob_key: str
    content_type: str
    image_sha256: str
    score: float
    rgb: np.ndarray | None = None


@dataclass
class Gathered:
    window: tuple[datetime | None, datetime]
    train: list[Capture]
    holdout_normal: list[Capture]
    holdout_defect: list[Capture]
    counts: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for c in sorted(self.train, key=lambda c: c.frame_id):
            h.update(c.frame_id.encode() + b"\0" + c.image_sha256.encode() + b"\n")
        return h.hexdigest()


def in_holdout(frame_id: str, fraction: float) -> bool:
    """Deterministic: the same frame always falls on the same side."""
    h = int.from_bytes(hashlib.sha256(b"holdout:" + frame_id.encode()).digest()[:8], "big")
    return h / 2**64 < fraction


def _rows(session: Session, product: str, cond, limit: int | None) -> list[Any]:
    q = (select(Inspection.id, Inspection.frame_id, Inspection.captured_at, Inspection.score,
                Inspection.current_feedback, Image.blob_key, Image.content_type, Image.sha256)
         .join(Image, Image.id == Inspection.frame_image_id)
         .where(Inspection.product == product, cond)
         .order_by(Inspection.captured_at.desc(), Inspection.id.desc()))
    if limit:
        q = q.limit(limit)
    return list(session.execute(q).all())


def select_captures(session: Session, product: str, since: datetime | None, until: datetime,
                    settings: RetrainSettings) -> tuple[list[Capture], list[Capture]]:
    """-> (normal captures for training/holdout, confirmed defects); newest first; no images loaded."""
    window = Inspection.captured_at <= until
    if since is not None:
        window = and_(window, Inspection.captured_at > since)
    sampled_low = and_(Inspection.frame_reason == "sampled", Inspection.is_anomalous.is_(False),
                       Inspection.current_feedback.is_(None),
                       Inspection.score <= settings.low_score_ratio * Inspection.threshold)
    false_alarm = Inspection.current_feedback == "false_alarm"
    normal_rows = _rows(session, product, and_(window, or_(sampled_low, false_alarm)), settings.max_images)
    defect_rows = _rows(session, product, Inspection.current_feedback == "defect_confirmed", None)

    def cap(r, kind) -> Capture:
        return Capture(r.id, r.frame_id, r.captured_at, kind, r.blob_key, r.content_type, r.sha256, float(r.score))

    normals = [cap(r, "false_alarm" if r.current_feedback == "false_alarm" else "sampled") for r in normal_rows]
    return normals, [cap(r, "defect") for r in defect_rows]


def _load(captures: list[Capture], blobs: BlobStore, skipped: list[str], desc: str, progress: bool) -> list[Capture]:
    from tqdm.auto import tqdm

    from detector.data import CorruptImageError, decode_image

    import cv2

    out = []
    for c in tqdm(captures, desc=desc, disable=not progress, leave=False):
        try:
            rgb = decode_image(blobs.get(c.blob_key), c.frame_id)
        except (BlobNotFound, CorruptImageError) as e:
            skipped.append(f"{c.frame_id}: {type(e).__name__}: {e}")
            continue
        h, w = rgb.shape[:2]
        if max(h, w) > KEEP_MAX_SIDE:  # bounded memory for thousands of large frames; models use less
            f = KEEP_MAX_SIDE / max(h, w)
            rgb = cv2.resize(rgb, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
        c.rgb = rgb
        out.append(c)
    return out


def phash(rgb: np.ndarray) -> int:
    """64-bit DCT perceptual hash (imagehash.phash) as an int."""
    import imagehash
    from PIL import Image as PILImage

    h = imagehash.phash(PILImage.fromarray(rgb))
    return int(str(h), 16)


def thumbnail(rgb: np.ndarray) -> np.ndarray:
    """32x32 grey, area-averaged (sensor noise averages out), float32."""
    import cv2

    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)


def dedup(captures: list[Capture], max_distance: int, max_diff: float) -> tuple[list[Capture], int]:
    """Keep the first of every group of near-duplicates (see the module docstring)."""
    kept: list[Capture] = []
    hashes = np.zeros(len(captures), np.uint64)
    thumbs = np.zeros((len(captures), 32, 32), np.float32)
    n = 0
    for c in captures:
        assert c.rgb is not None
        h, t = np.uint64(phash(c.rgb)), thumbnail(c.rgb)
        if n:
            near = np.flatnonzero(np.bitwise_count(np.bitwise_xor(hashes[:n], h)) <= max_distance)
            if near.size and float(np.abs(thumbs[near] - t).mean(axis=(1, 2)).min()) <= max_diff:
                continue
        hashes[n], thumbs[n] = h, t
        n += 1
        kept.append(c)
    return kept, len(captures) - len(kept)


def gather(session: Session, blobs: BlobStore, product: str, since: datetime | None, until: datetime,
           settings: RetrainSettings, progress: bool = True) -> Gathered:
    normals, defects = select_captures(session, product, since, until, settings)
    skipped: list[str] = []
    # false alarms first: they are the rarer, more informative images, so they win over a duplicate
    normals.sort(key=lambda c: (c.kind != "false_alarm", -c.captured_at.timestamp()))
    normals = _load(normals, blobs, skipped, "loading captures", progress)
    normals, n_dup = dedup(normals, settings.dedup_max_distance, settings.dedup_max_diff)
    defects = _load(defects, blobs, skipped, "loading confirmed defects", progress)
    # false alarms are held out too: normals the active model flagged belong in a fair comparison
    holdout = [c for c in normals if in_holdout(c.frame_id, settings.holdout_fraction)]
    held = {c.inspection_id for c in holdout}
    train = [c for c in normals if c.inspection_id not in held]
    counts = {"sampled_normals": sum(c.kind == "sampled" for c in normals),
              "false_alarms": sum(c.kind == "false_alarm" for c in normals),
              "duplicates_removed": n_dup, "unreadable": len(skipped), "train": len(train),
              "holdout_normal": len(holdout), "holdout_defect": len(defects)}
    return Gathered((since, until), train, holdout, defects, counts, skipped)


# ---------------------------------------------------------------------------------- evaluate

def evaluate_on(detector: Any, normal: list[Capture], defect: list[Capture], threshold: float | None = None
                ) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Scores of ``detector`` (a detector.inference.Detector) on the holdout and the metrics."""
    from detector.metrics import image_auroc

    thr = float(detector.threshold if threshold is None else threshold)
    sn = detector.score_images([c.rgb for c in normal]) if normal else np.zeros(0, np.float32)
    sd = detector.score_images([c.rgb for c in defect]) if defect else np.zeros(0, np.float32)
    m: dict[str, Any] = {
        "threshold": thr,
        "n_normal": int(len(sn)), "n_defect": int(len(sd)),
        "false_alarm_rate": float((sn > thr).mean()) if len(sn) else None,
        "detection_rate": float((sd > thr).mean()) if len(sd) else None,
        "image_auroc": None,
        "normal_score_p50": float(np.median(sn)) if len(sn) else None,
        "normal_score_max": float(sn.max()) if len(sn) else None,
    }
    if len(sn) and len(sd):
        m["image_auroc"] = image_auroc(np.r_[np.zeros(len(sn)), np.ones(len(sd))], np.r_[sn, sd])
    return m, sn, sd


@dataclass(frozen=True)
class Criterion:
    """One promotion criterion: the candidate's value against the active one's, with its margin."""

    name: str
    candidate: float | None
    active: float | None
    margin: float
    higher_is_better: bool
    n: int  # images it was measured on

    @property
    def compared(self) -> bool:
        return not any(v is None or math.isnan(v) for v in (self.candidate, self.active))

    @property
    def passed(self) -> bool:
        if not self.compared:
            return True  # nothing to compare on (e.g. no confirmed defects yet): not a reason to reject
        if self.higher_is_better:
            return self.candidate >= self.active - self.margin
        return self.candidate <= self.active + self.margin

    def describe(self) -> str:
        if not self.compared:
            return f"{self.name} not compared (measured on {self.n} images)"
        if self.passed:
            return f"{self.name} {self.candidate:.4f} vs active {self.active:.4f}"
        sign, cmp = ("-", "<") if self.higher_is_better else ("+", ">")
        return f"{self.name} {self.candidate:.4f} {cmp} active {self.active:.4f} {sign} margin {self.margin}"


def criteria(candidate: dict[str, Any], active: dict[str, Any], settings: RetrainSettings) -> list[Criterion]:
    """The three things a candidate must not lose: ranking (AUROC), false alarms and detection, the
    last two each at its own calibrated threshold.  AUROC alone misses a candidate whose threshold
    lands above the defects; the false-alarm rate alone rewards exactly that."""
    n_normal, n_defect = int(candidate.get("n_normal") or 0), int(candidate.get("n_defect") or 0)
    return [
        Criterion("image AUROC", candidate.get("image_auroc"), active.get("image_auroc"), settings.margin_auroc,
                  True, n_normal + n_defect),
        Criterion("false-alarm rate", candidate.get("false_alarm_rate"), active.get("false_alarm_rate"),
                  settings.margin_far, False, n_normal),
        Criterion("detection rate", candidate.get("detection_rate"), active.get("detection_rate"),
                  settings.margin_detection, True, n_defect),
    ]


def decide(candidate: dict[str, Any], active: dict[str, Any], settings: RetrainSettings) -> tuple[bool, str]:
    """-> (promote?, reason): promote only when no criterion is lost beyond its margin."""
    checks = criteria(candidate, active, settings)
    failed = [c.describe() for c in checks if not c.passed]
    if failed:
        return False, "; ".join(failed)
    return True, "not worse than the active model: " + ", ".join(c.describe() for c in checks)


# ---------------------------------------------------------------------------------- report

def write_report(md_path: Path, png_path: Path, *, product: str, version: str, active_version: str,
                 decision: tuple[bool, str], cand: dict[str, Any], act: dict[str, Any],
                 scores: dict[str, tuple[np.ndarray, np.ndarray]], gathered: Gathered,
                 settings: RetrainSettings, timings: dict[str, float]) -> None:
    """Markdown with the metrics side by side and a PNG of the score histograms (atomic writes)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from detector.model_store import atomic_write_bytes

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharex=True, sharey=True)
    allv = np.concatenate([np.r_[sn, sd] for sn, sd in scores.values()] + [[act["threshold"], cand["threshold"]]])
    bins = np.linspace(float(allv.min()), float(allv.max()) + 1e-9, 30)  # same bins: compare side by side
    for ax, (name, (sn, sd)), thr in zip(axes, scores.items(), (act["threshold"], cand["threshold"])):
        ax.hist(sn, bins=bins, alpha=0.6, label=f"normal holdout ({len(sn)})", color="tab:blue")
        if len(sd):
            ax.hist(sd, bins=bins, alpha=0.6, label=f"confirmed defects ({len(sd)})", color="tab:red")
        ax.axvline(thr, color="black", linestyle="--", label=f"threshold {thr:.4g}")
        ax.set_title(name)
        ax.set_xlabel("image score")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("images")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(png_path, buf.getvalue())

    def f(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "–"
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    promoted, reason = decision
    since, until = gathered.window
    rows = [("image AUROC (holdout)", "image_auroc"), ("false-alarm rate at threshold", "false_alarm_rate"),
            ("detection rate at threshold", "detection_rate"), ("threshold", "threshold"),
            ("median normal score", "normal_score_p50"), ("max normal score", "normal_score_max"),
            ("holdout normal images", "n_normal"), ("holdout confirmed defects", "n_defect")]
    lines = [
        f"# Retraining report: {product} {version}",
        "",
        f"**Decision: {'PROMOTED' if promoted else 'REJECTED'}** — {reason}",
        "",
        f"| metric | active `{active_version}` | candidate `{version}` |",
        "| --- | ---: | ---: |",
        *[f"| {label} | {f(act.get(k))} | {f(cand.get(k))} |" for label, k in rows],
        "",
        "## Promotion criteria",
        "",
        "| criterion | active | candidate | rule | met |",
        "| --- | ---: | ---: | --- | :---: |",
        *[f"| {c.name} | {f(c.active)} | {f(c.candidate)} | "
          f"{'at least active -' if c.higher_is_better else 'at most active +'} {c.margin} | "
          f"{('yes' if c.passed else '**no**') if c.compared else 'not compared'} |"
          for c in criteria(cand, act, settings)],
        "",
        "False-alarm and detection rates are each model's at its own calibrated threshold, on the same "
        "held-out normals and confirmed defects. Target false-alarm rate for the candidate's threshold: "
        f"{settings.target_far}.",
        "",
        f"![score histograms]({png_path.name})",
        "",
        "## Training data",
        "",
        f"* window: {since.isoformat() if since else 'all captures'} → {until.isoformat()}",
        *[f"* {k.replace('_', ' ')}: {v}" for k, v in gathered.counts.items()],
        f"* fingerprint: `{gathered.fingerprint()}`",
        f"* warm start from `{active_version}`; epochs EAR {settings.epochs_ear}, FADeR {settings.epochs_fader}; "
        f"training {timings.get('train_min', 0) * 60:.0f} s, evaluation {timings.get('eval_min', 0) * 60:.0f} s",
        "",
    ]
    if gathered.skipped:
        lines += ["## Unreadable captures (skipped)", "", *[f"* {s}" for s in gathered.skipped[:50]], ""]
    atomic_write_bytes(md_path, "\n".join(lines).encode("utf-8"))


# ---------------------------------------------------------------------------------- the run

@dataclass
class RetrainOutcome:
    product: str
    version: str
    status: str  # "active" | "rejected"
    reason: str
    artifact: Path
    report: Path
    metrics: dict[str, Any]
    counts: dict[str, int]


def _write_training_folder(root: Path, captures: list[Capture], blobs: BlobStore,
                           transform: Callable[[np.ndarray], np.ndarray] | None = None) -> Path:
    """MVTec layout (``train/good``) of the original image bytes, for the detector's training API."""
    import cv2

    good = root / "data" / "train" / "good"
    good.mkdir(parents=True)
    for i, c in enumerate(captures):
        if transform is not None:
            assert c.rgb is not None
            cv2.imwrite(str(good / f"{i:05d}.png"), cv2.cvtColor(transform(c.rgb), cv2.COLOR_RGB2BGR))
            continue
        ext = ".png" if c.content_type == "image/png" else ".jpg"
        (good / f"{i:05d}{ext}").write_bytes(blobs.get(c.blob_key))
    return root / "data"


def retrain(engine: Engine, blobs: BlobStore, store: ModelStore, product: str,
            settings: RetrainSettings | None = None, *, by: str = "retrain", progress: bool = True,
            now: datetime | None = None, on_stage: Callable[[str], None] | None = None,
            train_transform: Callable[[np.ndarray], np.ndarray] | None = None) -> RetrainOutcome:
    """One retraining run (see the module docstring); raises :class:`RetrainError` subclasses.

    ``on_stage`` is told each stage's name as it starts (gather, train, evaluate, record).
    ``train_transform`` is applied to every training image (RGB uint8) before training, never to
    the holdout: an augmentation hook, which the proof test uses to train a deliberately worse
    candidate (as if the lighting had failed) and to see that it is rejected.
    """
    from detector.checkpoint import save_checkpoint
    from detector.inference import Detector
    from detector.workflow import train_from_folder

    settings = settings or RetrainSettings()
    stage = on_stage or (lambda s: None)
    with product_lock(store, product, engine):
        store.sweep_temp(product)
        now = now or utcnow()
        with Session(engine, expire_on_commit=False) as s:
            active = active_version(s, product)
            if active is None:
                raise RetrainError(f"no active model for product {product!r}: register the first one with "
                                   f"'linewatch-detector register --product {product} --checkpoint FILE'")
            active_id, active_ver, active_path = active.id, active.version, Path(active.artifact_path)
            since = active.train_window_end
            stage("gather")
            g = gather(s, blobs, product, since, now, settings, progress)
        log.info("gathered %s", g.counts)
        if len(g.train) < settings.min_images:
            raise NotEnoughData(
                f"only {len(g.train)} training images for {product!r} since "
                f"{since.isoformat() if since else 'the beginning'} ({g.counts['sampled_normals']} sampled normals, "
                f"{g.counts['false_alarms']} false alarms, {g.counts['duplicates_removed']} near-duplicates removed, "
                f"{g.counts['holdout_normal']} held out); at least {settings.min_images} are needed "
                "(LINEWATCH_RETRAIN_MIN_IMAGES): not training")
        if len(g.holdout_normal) < settings.min_holdout:
            raise NotEnoughData(f"only {len(g.holdout_normal)} held-out normal images for {product!r}; at least "
                                f"{settings.min_holdout} are needed to compare the models: not training")
        if not active_path.is_file():
            raise RetrainError(f"the active model's checkpoint is missing: {active_path}")

        t0 = time.perf_counter()
        stage("train")
        # settings the active model's family has are applied (the EAR + FADeR ones to EAR + FADeR)
        overrides = {"epochs_ear": settings.epochs_ear, "epochs_fader": settings.epochs_fader,
                     "batch_size": settings.batch_size, "lr": settings.lr, "fader_lr": settings.fader_lr}
        work = Path(tempfile.mkdtemp(prefix=".tmp-retrain-", dir=store.product_dir(product)))
        tmp_ckpt = None
        try:
            data_root = _write_training_folder(work, g.train, blobs, train_transform)
            summary = train_from_folder(data_root, None, overrides=overrides, product=product,
                                        target_far=settings.target_far, seed=settings.seed, device=settings.device,
                                        progress=progress, init_checkpoint=active_path)
            meta = dict(summary["meta"])
            meta["training_data"] = {**meta.get("training_data", {}), "root": f"registry:{product}",
                                     "fingerprint_sha256": g.fingerprint(), "counts": g.counts,
                                     "window": [since.isoformat() if since else None, now.isoformat()]}
            meta["parent_version"] = active_ver
            tmp_ckpt = store.temp_artifact(product)
            save_checkpoint(tmp_ckpt, summary["model"], meta)
            train_min = (time.perf_counter() - t0) / 60

            stage("evaluate")
            t1 = time.perf_counter()
            device = settings.device
            candidate = Detector.load(tmp_ckpt, device)  # proves the artifact loads before it is registered
            current = Detector.load(active_path, device)
            cand_m, cs_n, cs_d = evaluate_on(candidate, g.holdout_normal, g.holdout_defect)
            act_m, as_n, as_d = evaluate_on(current, g.holdout_normal, g.holdout_defect)
            promoted, reason = decide(cand_m, act_m, settings)
            eval_min = (time.perf_counter() - t1) / 60
            with Session(engine) as s:
                now_active = active_version(s, product)
            if promoted and (now_active is None or now_active.id != active_id):
                # e.g. an operator rolled back while this run trained: never undo that silently
                promoted = False
                reason = (f"the active version changed during the run ({active_ver} -> "
                          f"{now_active.version if now_active else 'none'}); not promoting over it")

            stage("record")
            artifact, sha, version = store.install_artifact(product, tmp_ckpt, move=True)
            tmp_ckpt = None
            report = artifact.with_suffix(".report.md")
            write_report(report, artifact.with_suffix(".scores.png"), product=product, version=version,
                         active_version=active_ver, decision=(promoted, reason), cand=cand_m, act=act_m,
                         scores={f"active {active_ver}": (as_n, as_d), f"candidate {version}": (cs_n, cs_d)},
                         gathered=g, settings=settings, timings={"train_min": train_min, "eval_min": eval_min})
            metrics = {**{k: v for k, v in cand_m.items() if k != "threshold"},
                       "active": {k: v for k, v in act_m.items()}, "counts": g.counts,
                       "train_minutes": round(train_min, 2), "eval_minutes": round(eval_min, 2)}
            with write_session(engine) as s:
                now_active = active_version(s, product)
                if promoted and (now_active is None or now_active.id != active_id):
                    raise RetrainError(f"the active version of {product!r} changed while the run recorded its "
                                       "result; nothing registered, run it again")
                parent = s.get(ModelVersion, active_id)
                mv = register_candidate(s, product, version, artifact, artifact_sha256=sha, parent=parent,
                                        train_window=(since, now), data_fingerprint=g.fingerprint(),
                                        train_image_count=len(g.train), metrics=_jsonable(metrics),
                                        threshold=cand_m["threshold"], report_path=report, created_by=by)
                if promoted:
                    promote(s, mv, by, reason)
                else:
                    reject(s, mv, reason, by)
        finally:
            shutil.rmtree(work, ignore_errors=True)
            if tmp_ckpt is not None:
                Path(tmp_ckpt).unlink(missing_ok=True)
    return RetrainOutcome(product, version, "active" if promoted else "rejected", reason, artifact, report,
                          metrics, g.counts)


def _jsonable(o: Any) -> Any:
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, float) and math.isnan(o):
        return None
    if hasattr(o, "item"):
        return o.item()
    return o


# ---------------------------------------------------------------------------------- registration

def register_checkpoint(engine: Engine, store: ModelStore, product: str, checkpoint: str | Path, *,
                        activate: bool | None = None, by: str = "register", reason: str | None = None
                        ) -> ModelVersion:
    """Copy a checkpoint into the store and register it (e.g. the first model of a product).

    ``activate=None`` activates it only when the product has no active version yet.  The file
    must load as a detector checkpoint (:class:`detector.checkpoint.CheckpointError` otherwise).
    """
    from detector.checkpoint import read_checkpoint

    from .registry import get_version

    _, meta, _, _ = read_checkpoint(checkpoint)
    artifact, sha, version = store.install_artifact(product, checkpoint)
    with write_session(engine) as s:
        mv = get_version(s, product, version)
        if mv is None:
            mv = register_candidate(s, product, version, artifact, artifact_sha256=sha,
                                    threshold=meta.get("threshold"), metrics=_jsonable(meta.get("metrics")),
                                    created_by=by)
        if activate or (activate is None and active_version(s, product) is None):
            promote(s, mv, by, reason or "registered")
    return mv


def rollback_product(engine: Engine, store: ModelStore, product: str, by: str, reason: str | None = None
                     ) -> tuple[str | None, ModelVersion]:
    """Make the previous version active again -> (version that was active, now active version)."""
    from .registry import rollback

    # no product lock: a rollback must not wait for a nightly run; the run notices the change
    # before it records anything and does not promote over it
    with write_session(engine) as s:
        cur = active_version(s, product)
        before = cur.version if cur else None
        mv = rollback(s, product, by, reason)
    return before, mv
