"""Step 6b and the registry commands: versions into the store and the database."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from detector.model_store import ModelStore

from ..db import write_session
from ..models import ModelVersion
from ..registry import active_version, get_version, promote, register_candidate, reject, rollback
from .errors import RetrainError


def jsonable(o: Any) -> Any:
    if isinstance(o, dict):
        return {str(k): jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [jsonable(v) for v in o]
    if isinstance(o, float) and math.isnan(o):
        return None
    if hasattr(o, "item"):
        return o.item()
    return o


def register_checkpoint(engine: Engine, store: ModelStore, product: str, checkpoint: str | Path, *,
                        activate: bool | None = None, by: str = "register", reason: str | None = None
                        ) -> ModelVersion:
    """Copy a checkpoint into the store and register it (e.g. the first model of a product).

    ``activate=None`` activates it only when the product has no active version yet.  The file
    must load as a detector checkpoint (:class:`detector.checkpoint.CheckpointError` otherwise).
    """
    from detector.checkpoint import read_checkpoint

    _, meta, _, _ = read_checkpoint(checkpoint)
    artifact, sha, version = store.install_artifact(product, checkpoint)
    with write_session(engine) as s:
        mv = get_version(s, product, version)
        if mv is None:
            mv = register_candidate(s, product, version, artifact, artifact_sha256=sha,
                                    threshold=meta.get("threshold"), metrics=jsonable(meta.get("metrics")),
                                    created_by=by)
        if activate or (activate is None and active_version(s, product) is None):
            promote(s, mv, by, reason or "registered")
    return mv


def rollback_product(engine: Engine, store: ModelStore, product: str, by: str, reason: str | None = None
                     ) -> tuple[str | None, ModelVersion]:
    """Make the previous version active again -> (version that was active, now active version)."""
    # no product lock: a rollback must not wait for a nightly run; the run notices the change
    # before it records anything and does not promote over it
    with write_session(engine) as s:
        cur = active_version(s, product)
        before = cur.version if cur else None
        mv = rollback(s, product, by, reason)
    return before, mv


def register_run(engine: Engine, product: str, version: str, artifact: Path, sha: str, *, active_id: int,
                 promoted: bool, reason: str, train_window: tuple, data_fingerprint: str, train_image_count: int,
                 metrics: dict[str, Any], threshold: float, report: Path, by: str) -> ModelVersion:
    """ONE transaction: the candidate's registry row, promoted or rejected.  Refuses to promote over
    an active version that changed since the run started (an operator's rollback, another run)."""
    with write_session(engine) as s:
        now_active = active_version(s, product)
        if promoted and (now_active is None or now_active.id != active_id):
            raise RetrainError(f"the active version of {product!r} changed while the run recorded its "
                               "result; nothing registered, run it again")
        parent = s.get(ModelVersion, active_id)
        mv = register_candidate(s, product, version, artifact, artifact_sha256=sha, parent=parent,
                                train_window=train_window, data_fingerprint=data_fingerprint,
                                train_image_count=train_image_count, metrics=jsonable(metrics),
                                threshold=threshold, report_path=report, created_by=by)
        if promoted:
            promote(s, mv, by, reason)
        else:
            reject(s, mv, reason, by)
    return mv
