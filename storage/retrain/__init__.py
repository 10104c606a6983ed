"""Nightly retraining of one product's model: ``linewatch-detector retrain --product P``.

What a run does, in order (:func:`retrain`, ``run.py``; one module per step):

1. **Lock** the product (``lock.py``: :func:`product_lock`): a lock file in the model store, plus a
   PostgreSQL advisory lock when the database is PostgreSQL (retraining jobs on different hosts
   that share the database).  A second run for the same product fails at once with a clear
   message; other products are not affected.
2. **Gather** (``gather.py``: :func:`gather`) the captures stored since the active version's training window
   ended, for this product, that carry their frame image:

   * *sampled normals the detector scored low*: ``frame_reason = 'sampled'``, not flagged,
     ``score <= low_score_ratio x threshold`` (clearly normal, not borderline), no feedback;
   * *false alarms*: frames whose newest operator decision is ``false_alarm``;
   * never anything whose newest decision is ``defect_confirmed`` or ``unsure``.

   Near-duplicates are removed (``dedup.py``: :func:`dedup`): the same part captured again (a stopped line,
   a free-running camera), i.e. the same image up to sensor noise and compression.  Two tests:
   a 64-bit perceptual hash (DCT pHash, ``imagehash.phash``) within ``dedup_max_distance`` bits
   finds candidates cheaply, and the mean absolute difference of 32x32 grey thumbnails at most
   ``dedup_max_diff`` grey levels confirms them.  The hash alone is not enough on a production
   line: every good part looks alike by design and pHash, made to be robust to small shifts,
   calls most of them duplicates (measured on the simulator: re-captures differ by < 1.2 grey
   levels, different parts by >= 2.8, typically 8-14).  A deterministic
   ``holdout_fraction`` of them (by a hash of the frame id; sampled normals and false alarms
   alike, so the active model's false alarms count in the comparison) is held out of training.
   Below ``min_images`` training images the run stops (:class:`NotEnoughData`).
3. **Train** (``train.py``: :func:`train_candidate`, the one call into the detector's training) a candidate,
   on the gathered captures in memory, warm-started from the active checkpoint (its family and architecture;
   :func:`detector.workflow.train_on_images` with ``init_checkpoint``) with family-neutral settings
   (``epochs``, ``batch_size``, ``lr``: :class:`detector.models.CommonSettings`, which each family reads
   its own way); its threshold is calibrated for ``target_far`` on a held-out part of the training images.
4. **Evaluate** (``evaluate.py``) candidate and active on the same holdout: the held-out recent normals plus every
   confirmed defect of the product.  Image AUROC (when there are defects; scikit-learn, raw
   scores), and the false-alarm and detection rates of each at its own threshold.
5. **Decide** (``decide.py``: :func:`criteria`): promote only if the candidate's AUROC is at least the active
   one's minus ``margin_auroc``, its false-alarm rate at most the active one's plus ``margin_far``
   and its detection rate (confirmed defects above its own threshold) at least the active one's
   minus ``margin_detection``; otherwise record it as ``rejected`` with the reason.  A criterion
   without data (no confirmed defects yet) is reported as not compared.
6. **Record** (``report.py``, ``register.py``), all or nothing: the checkpoint is written under a temporary name in the store,
   loaded back and evaluated, then renamed to ``<version>.ckpt``; the report
   (``<version>.report.md`` + ``<version>.scores.png`` next to it) is written; then ONE database
   transaction registers the version with its metrics, threshold, data window and fingerprint
   and promotes or rejects it.  ``active.json`` is rewritten after that commit (storage.registry).
   A crash before the commit leaves no registry row (an unregistered file at most; temporary
   files are swept by the next run).

Settings: :class:`RetrainSettings` (``LINEWATCH_RETRAIN_*``, ``settings.py``), overridable on the command
line.  ``register.py`` also holds the registry commands (``register``, ``rollback``).
"""

from .decide import Criterion, criteria, decide
from .dedup import dedup, phash, thumbnail
from .errors import LockBusy, NotEnoughData, RetrainError
from .evaluate import evaluate_on
from .gather import Capture, Gathered, gather, in_holdout, select_captures
from .lock import product_lock
from .register import register_checkpoint, rollback_product
from .report import write_report
from .run import RetrainOutcome, retrain
from .settings import RetrainSettings

__all__ = ["Capture", "Criterion", "Gathered", "LockBusy", "NotEnoughData", "RetrainError", "RetrainOutcome",
           "RetrainSettings", "criteria", "decide", "dedup", "evaluate_on", "gather", "in_holdout", "phash",
           "product_lock", "register_checkpoint", "retrain", "rollback_product", "select_captures", "thumbnail",
           "write_report"]
