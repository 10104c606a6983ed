"""Model registry: versions per product, one active at a time.

Life of a version: :func:`register_candidate` (status ``candidate``) -> :func:`promote`
(``active``; the previous active one becomes ``retired``) or :func:`reject` (``rejected``, with
the reason).  :func:`rollback` makes the most recently retired version active again.  Every
change happens in the caller's transaction, so a crashed retraining run leaves no
half-registered model: register the candidate only once its artifact is written and
hashed, and commit the promotion together with whatever else the run records.

The partial unique index ``uq_model_versions_one_active`` guarantees at most one active
version per product even if two processes race.

Detectors cannot read these tables (data flows detector -> storage), so :func:`promote` (and
with it :func:`rollback`) also writes the product's pointer file ``<product>/active.json`` in the
model store the artifact lives in (:mod:`detector.model_store`), once the transaction has
committed; detector services watch that file.  :func:`publish_active` rewrites the pointers
from the database (repair after a crash between the commit and the file write).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import logging

from sqlalchemy import event, select
from sqlalchemy.orm import Session

from detector.hashing import file_sha256
from detector.model_store import ModelStore

from .models import ModelVersion, utcnow

log = logging.getLogger(__name__)


def active_version(session: Session, product: str) -> ModelVersion | None:
    return session.scalars(
        select(ModelVersion).where(ModelVersion.product == product, ModelVersion.status == "active")
    ).first()


def get_version(session: Session, product: str, version: str) -> ModelVersion | None:
    return session.scalars(
        select(ModelVersion).where(ModelVersion.product == product, ModelVersion.version == version)
    ).first()


def list_versions(session: Session, product: str | None = None) -> list[ModelVersion]:
    q = select(ModelVersion).order_by(ModelVersion.product, ModelVersion.created_at, ModelVersion.id)
    if product is not None:
        q = q.where(ModelVersion.product == product)
    return list(session.scalars(q))


def register_candidate(
    session: Session,
    product: str,
    version: str,
    artifact_path: str | Path,
    *,
    artifact_sha256: str | None = None,
    parent: ModelVersion | None = None,
    train_window: tuple[datetime | None, datetime | None] = (None, None),
    data_fingerprint: str | None = None,
    train_image_count: int | None = None,
    metrics: dict[str, Any] | None = None,
    threshold: float | None = None,
    report_path: str | Path | None = None,
    created_by: str | None = None,
) -> ModelVersion:
    """Record a trained model as a candidate; the sha256 is computed from the file if not given."""
    if get_version(session, product, version) is not None:
        raise ValueError(f"model {product}/{version} is already registered")
    mv = ModelVersion(
        product=product, version=version, artifact_path=str(artifact_path),
        artifact_sha256=artifact_sha256 or file_sha256(artifact_path),
        parent_id=parent.id if parent is not None else None,
        train_window_start=train_window[0], train_window_end=train_window[1],
        data_fingerprint=data_fingerprint, train_image_count=train_image_count, metrics=metrics,
        threshold=threshold, status="candidate", report_path=str(report_path) if report_path else None,
        created_at=utcnow(), created_by=created_by,
    )
    session.add(mv)
    session.flush()
    return mv


def promote(session: Session, mv: ModelVersion, promoted_by: str, reason: str | None = None) -> ModelVersion:
    """Make ``mv`` the active version of its product; the previous active one is retired."""
    if mv.status == "active":
        return mv
    current = active_version(session, mv.product)
    if current is not None:
        current.status = "retired"
        session.flush()  # free the one-active slot before taking it
    mv.status = "active"
    mv.promoted_by = promoted_by
    mv.promoted_at = utcnow()
    if reason:
        mv.reason = reason
    session.flush()
    pointer = (mv.product, mv.version, mv.artifact_path, mv.artifact_sha256, mv.promoted_at)
    # the file follows the database: written only once the promotion is committed
    event.listen(session, "after_commit", lambda _s: _write_pointer(*pointer), once=True)
    return mv


def _write_pointer(product: str, version: str, artifact_path: str, sha256: str, at: datetime | None) -> None:
    store = ModelStore.of_artifact(artifact_path, product)
    if store is None:
        log.warning("model %s/%s: artifact %s is not in a model store (<store>/%s/<version>.ckpt); "
                    "no active.json written, detectors will not switch to it", product, version, artifact_path,
                    product)
        return
    try:
        store.write_active(product, version, artifact_path, sha256, at)
    except Exception:  # noqa: BLE001 - the promotion is committed; publish_active repairs the file
        log.exception("model %s/%s is active in the database but %s/%s/active.json could not be written",
                      product, version, store.root, product)


def publish_active(session: Session, product: str | None = None) -> list[str]:
    """(Re)write ``active.json`` for every product with an active version; returns the products."""
    q = select(ModelVersion).where(ModelVersion.status == "active")
    if product is not None:
        q = q.where(ModelVersion.product == product)
    done = []
    for mv in session.scalars(q):
        _write_pointer(mv.product, mv.version, mv.artifact_path, mv.artifact_sha256, mv.promoted_at)
        done.append(mv.product)
    return done


def reject(session: Session, mv: ModelVersion, reason: str, by: str | None = None) -> ModelVersion:
    if mv.status == "active":
        raise ValueError("the active version cannot be rejected; promote or roll back another first")
    mv.status = "rejected"
    mv.reason = reason
    if by:
        mv.promoted_by = by
    session.flush()
    return mv


def rollback(session: Session, product: str, by: str, reason: str | None = None) -> ModelVersion:
    """Re-activate the most recently retired version (the one active before the current)."""
    previous = session.scalars(
        select(ModelVersion).where(ModelVersion.product == product, ModelVersion.status == "retired")
        .order_by(ModelVersion.promoted_at.desc(), ModelVersion.id.desc()).limit(1)
    ).first()
    if previous is None:
        raise LookupError(f"no earlier version of {product!r} to roll back to")
    return promote(session, previous, by, reason or "rollback")
