"""Model registry (issue 5): versions per product, one active at a time.

Life of a version: :func:`register_candidate` (status ``candidate``) -> :func:`promote`
(``active``; the previous active one becomes ``retired``) or :func:`reject` (``rejected``, with
the reason).  :func:`rollback` makes the most recently retired version active again.  Every
change happens in the caller's transaction, so a crashed retraining run leaves no
half-registered model: register the candidate only once its artifact is written and
hashed, and commit the promotion together with whatever else the run records.

The partial unique index ``uq_model_versions_one_active`` guarantees at most one active
version per product even if two processes race.  Detectors poll :func:`active_version`.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import ModelVersion, utcnow


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
    return mv


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
