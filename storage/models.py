"""The linewatch database schema (SQLAlchemy 2.0, typed ``Mapped[...]`` models).

Tables
======

``lines``, ``cameras``
    Keyed by their natural ids (the ``line`` / ``camera_id`` strings the frames carry), so
    every stage can name them without a lookup.  ``cameras.threshold_override`` is the
    per-camera threshold an engineer set in the dashboard (``NULL`` = the model's own);
    each change is kept in ``camera_threshold_changes`` (who, when, old, new, why), and
    ``cameras.threshold_updated_at`` lets detectors notice a change cheaply.
``inspections``
    One row per frame, ``UNIQUE(frame_id)`` — the writer inserts with
    ``ON CONFLICT DO NOTHING``, so a replayed result never makes a second row.
    ``current_feedback`` mirrors the newest ``feedback`` row (kept in step by
    :func:`storage.feedback.add_feedback`) so the dashboard can filter on it with an index.
``images``
    Heatmaps, flagged frames and sampled normal frames: kind, blob key (the bytes live in
    the blob store, see :mod:`storage.blobs`), content type, size, sha256.
    Inspections point at them (``heatmap_image_id``, ``frame_image_id``).
``blobs``
    Image bytes when ``LINEWATCH_BLOB_STORE=database`` (unused by the local store).
``feedback``
    Operator decisions: label, user, time, comment.  Append-only; the newest row (by
    ``created_at``, then ``id``) is the current decision.
``users``
    Dashboard accounts: argon2 hash, role, active flag, failed-login counters for rate
    limiting (see :mod:`storage.users`).
``login_sessions``
    Dashboard logins that survive a reload: the sha256 of a random token (the token itself
    lives only in the browser's HttpOnly cookie), the user, expiry, revocation (see
    :mod:`storage.sessions`).
``login_address_failures``
    Failed dashboard logins per client address, for throttling (see :mod:`storage.users`).
``model_versions``
    The model registry: per product, artifact path + sha256, parent, training
    window + data fingerprint, metrics, threshold, status, who promoted it and when.  At
    most one ``active`` version per product (partial unique index).

All timestamps are timezone-aware UTC in Python (:class:`UTCDateTime`); SQLite stores them
as naive UTC text (which sorts correctly), PostgreSQL as ``timestamptz``.  A naive datetime
handed to a query is taken to be UTC.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

FEEDBACK_LABELS = ("defect_confirmed", "false_alarm", "unsure")
ROLES = ("operator", "engineer", "admin")
IMAGE_KINDS = ("heatmap", "flagged_frame", "sampled_normal")
MODEL_STATUSES = ("candidate", "active", "retired", "rejected")

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# BIGINT on PostgreSQL, INTEGER (the rowid alias, so it autoincrements) on SQLite
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, on both dialects."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        value = value.astimezone(timezone.utc)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime()}


class Line(Base):
    __tablename__ = "lines"

    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    cameras: Mapped[list["Camera"]] = relationship(back_populates="line")


class Camera(Base):
    __tablename__ = "cameras"

    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    line_id: Mapped[str] = mapped_column(String(100), ForeignKey("lines.id"), index=True)
    station: Mapped[str | None] = mapped_column(String(100))
    product: Mapped[str | None] = mapped_column(String(100))
    name: Mapped[str | None] = mapped_column(String(200))
    threshold_override: Mapped[float | None] = mapped_column(Float)
    threshold_updated_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    line: Mapped[Line] = relationship(back_populates="cameras")
    threshold_changes: Mapped[list["CameraThresholdChange"]] = relationship(
        back_populates="camera", order_by="CameraThresholdChange.id"
    )


class CameraThresholdChange(Base):
    __tablename__ = "camera_threshold_changes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    camera_id: Mapped[str] = mapped_column(String(100), ForeignKey("cameras.id", ondelete="CASCADE"))
    old_threshold: Mapped[float | None] = mapped_column(Float)
    new_threshold: Mapped[float | None] = mapped_column(Float)  # NULL: back to the model's threshold
    changed_by: Mapped[str] = mapped_column(String(100))
    changed_at: Mapped[datetime] = mapped_column(default=utcnow)
    reason: Mapped[str | None] = mapped_column(Text)

    camera: Mapped[Camera] = relationship(back_populates="threshold_changes")

    __table_args__ = (Index(None, "camera_id", "changed_at"),)


class Image(Base):
    __tablename__ = "images"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(20))
    blob_key: Mapped[str] = mapped_column(String(512), unique=True)
    content_type: Mapped[str] = mapped_column(String(50))
    size_bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (CheckConstraint(_in("kind", IMAGE_KINDS), name="kind"),)


class Blob(Base):
    """Bytes of the database blob store."""

    __tablename__ = "blobs"

    key: Mapped[str] = mapped_column(String(512), primary_key=True)
    content_type: Mapped[str] = mapped_column(String(100))
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Inspection(Base):
    __tablename__ = "inspections"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    frame_id: Mapped[str] = mapped_column(String(200), unique=True)
    line_id: Mapped[str] = mapped_column(String(100), ForeignKey("lines.id"))
    camera_id: Mapped[str] = mapped_column(String(100), ForeignKey("cameras.id"))
    station: Mapped[str | None] = mapped_column(String(100))
    seq: Mapped[int] = mapped_column(BigInteger)
    part_id: Mapped[str | None] = mapped_column(String(200))
    product: Mapped[str | None] = mapped_column(String(100))
    captured_at: Mapped[datetime]
    inferred_at: Mapped[datetime]
    stored_at: Mapped[datetime] = mapped_column(default=utcnow)
    score: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    is_anomalous: Mapped[bool] = mapped_column(Boolean)
    model_version: Mapped[str] = mapped_column(String(100))
    frame_width: Mapped[int | None] = mapped_column(Integer)
    frame_height: Mapped[int | None] = mapped_column(Integer)
    heatmap_max: Mapped[float | None] = mapped_column(Float)  # png value / 255 * heatmap_max = score scale
    heatmap_image_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("images.id", ondelete="SET NULL"))
    frame_image_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("images.id", ondelete="SET NULL"))
    frame_reason: Mapped[str | None] = mapped_column(String(20))  # 'flagged' | 'sampled' | NULL
    current_feedback: Mapped[str | None] = mapped_column(String(20))

    camera: Mapped[Camera] = relationship()
    heatmap_image: Mapped[Image | None] = relationship(foreign_keys=[heatmap_image_id])
    frame_image: Mapped[Image | None] = relationship(foreign_keys=[frame_image_id])
    feedback: Mapped[list["Feedback"]] = relationship(
        back_populates="inspection", order_by="Feedback.id", passive_deletes=True
    )

    __table_args__ = (
        CheckConstraint("frame_reason IS NULL OR frame_reason IN ('flagged', 'sampled')", name="frame_reason"),
        CheckConstraint(
            "current_feedback IS NULL OR " + _in("current_feedback", FEEDBACK_LABELS), name="current_feedback"
        ),
        Index(None, "captured_at"),
        Index(None, "camera_id", "captured_at"),
        Index(None, "line_id", "captured_at"),
        Index(None, "is_anomalous", "captured_at"),
        Index(None, "product", "captured_at"),
        Index(None, "current_feedback", "captured_at"),
        Index(None, "heatmap_image_id"),
        Index(None, "frame_image_id"),
        # dashboard read paths (migration 0002): review queue, covering indexes for the
        # live aggregates and the per-camera score distributions
        Index("ix_inspections_review_queue", "is_anomalous", "current_feedback", "captured_at"),
        Index("ix_inspections_live_window", "captured_at", "line_id", "camera_id", "is_anomalous"),
        Index("ix_inspections_camera_scores", "camera_id", "captured_at", "score", "is_anomalous",
              "current_feedback"),
    )


class Feedback(Base):
    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    inspection_id: Mapped[int] = mapped_column(BigId, ForeignKey("inspections.id", ondelete="CASCADE"))
    label: Mapped[str] = mapped_column(String(20))
    username: Mapped[str] = mapped_column(String(100))  # kept as text: history outlives accounts
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    comment: Mapped[str | None] = mapped_column(Text)

    inspection: Mapped[Inspection] = relationship(back_populates="feedback")

    __table_args__ = (
        CheckConstraint(_in("label", FEEDBACK_LABELS), name="label"),
        Index(None, "inspection_id", "created_at"),
        Index(None, "created_at"),
    )


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(100), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(20))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("true"))
    failed_logins: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    last_failed_login_at: Mapped[datetime | None]
    locked_until: Mapped[datetime | None]
    last_login_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (CheckConstraint(_in("role", ROLES), name="role"),)


class LoginSession(Base):
    __tablename__ = "login_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(Integer, ForeignKey("users.id", ondelete="CASCADE"))
    # sha256 hex of the cookie's token; NULL until the browser has taken it (see storage.sessions)
    token_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    # sha256 hex of the one-time code the browser exchanges for the token
    handoff_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    client_address: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]

    user: Mapped[User] = relationship()

    __table_args__ = (Index(None, "user_id", "revoked_at"), Index(None, "expires_at"))


class LoginAddressFailure(Base):
    __tablename__ = "login_address_failures"

    address: Mapped[str] = mapped_column(String(64), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    last_failed_at: Mapped[datetime]
    blocked_until: Mapped[datetime | None]


class ModelVersion(Base):
    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    product: Mapped[str] = mapped_column(String(100))
    version: Mapped[str] = mapped_column(String(100))
    artifact_path: Mapped[str] = mapped_column(String(1000))
    artifact_sha256: Mapped[str] = mapped_column(String(64))
    parent_id: Mapped[int | None] = mapped_column(Integer, ForeignKey("model_versions.id", ondelete="SET NULL"))
    train_window_start: Mapped[datetime | None]
    train_window_end: Mapped[datetime | None]
    data_fingerprint: Mapped[str | None] = mapped_column(String(128))
    train_image_count: Mapped[int | None] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    threshold: Mapped[float | None] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(20), default="candidate")
    report_path: Mapped[str | None] = mapped_column(String(1000))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(100))
    promoted_by: Mapped[str | None] = mapped_column(String(100))
    promoted_at: Mapped[datetime | None]
    reason: Mapped[str | None] = mapped_column(Text)

    parent: Mapped["ModelVersion | None"] = relationship(remote_side=[id])

    __table_args__ = (
        CheckConstraint(_in("status", MODEL_STATUSES), name="status"),
        Index("uq_model_versions_product_version", "product", "version", unique=True),
        # at most one active version per product
        Index(
            "uq_model_versions_one_active",
            "product",
            unique=True,
            sqlite_where=text("status = 'active'"),
            postgresql_where=text("status = 'active'"),
        ),
        Index(None, "product", "status", "created_at"),
    )
