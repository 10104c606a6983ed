"""Initial schema: lines, cameras (+ threshold history), inspections, images, blobs,
feedback, users, model_versions.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('blobs',
    sa.Column('key', sa.String(length=512), nullable=False),
    sa.Column('content_type', sa.String(length=100), nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_blobs'))
    )
    op.create_table('images',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('blob_key', sa.String(length=512), nullable=False),
    sa.Column('content_type', sa.String(length=50), nullable=False),
    sa.Column('size_bytes', sa.Integer(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('width', sa.Integer(), nullable=True),
    sa.Column('height', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("kind IN ('heatmap', 'flagged_frame', 'sampled_normal')", name=op.f('ck_images_kind')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_images')),
    sa.UniqueConstraint('blob_key', name=op.f('uq_images_blob_key'))
    )
    op.create_table('lines',
    sa.Column('id', sa.String(length=100), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_lines'))
    )
    op.create_table('model_versions',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('product', sa.String(length=100), nullable=False),
    sa.Column('version', sa.String(length=100), nullable=False),
    sa.Column('artifact_path', sa.String(length=1000), nullable=False),
    sa.Column('artifact_sha256', sa.String(length=64), nullable=False),
    sa.Column('parent_id', sa.Integer(), nullable=True),
    sa.Column('train_window_start', sa.DateTime(timezone=True), nullable=True),
    sa.Column('train_window_end', sa.DateTime(timezone=True), nullable=True),
    sa.Column('data_fingerprint', sa.String(length=128), nullable=True),
    sa.Column('train_image_count', sa.Integer(), nullable=True),
    sa.Column('metrics', sa.JSON(), nullable=True),
    sa.Column('threshold', sa.Float(), nullable=True),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('report_path', sa.String(length=1000), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.String(length=100), nullable=True),
    sa.Column('promoted_by', sa.String(length=100), nullable=True),
    sa.Column('promoted_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.CheckConstraint("status IN ('candidate', 'active', 'retired', 'rejected')", name=op.f('ck_model_versions_status')),
    sa.ForeignKeyConstraint(['parent_id'], ['model_versions.id'], name=op.f('fk_model_versions_parent_id_model_versions'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_model_versions'))
    )
    op.create_index(op.f('ix_model_versions_product_status_created_at'), 'model_versions', ['product', 'status', 'created_at'], unique=False)
    op.create_index('uq_model_versions_one_active', 'model_versions', ['product'], unique=True, sqlite_where=sa.text("status = 'active'"), postgresql_where=sa.text("status = 'active'"))
    op.create_index('uq_model_versions_product_version', 'model_versions', ['product', 'version'], unique=True)

    op.create_table('users',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('username', sa.String(length=100), nullable=False),
    sa.Column('password_hash', sa.String(length=255), nullable=False),
    sa.Column('role', sa.String(length=20), nullable=False),
    sa.Column('is_active', sa.Boolean(), server_default=sa.text('(true)'), nullable=False),
    sa.Column('failed_logins', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('last_failed_login_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('locked_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_login_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("role IN ('operator', 'engineer', 'admin')", name=op.f('ck_users_role')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_users')),
    sa.UniqueConstraint('username', name=op.f('uq_users_username'))
    )
    op.create_table('cameras',
    sa.Column('id', sa.String(length=100), nullable=False),
    sa.Column('line_id', sa.String(length=100), nullable=False),
    sa.Column('station', sa.String(length=100), nullable=True),
    sa.Column('product', sa.String(length=100), nullable=True),
    sa.Column('name', sa.String(length=200), nullable=True),
    sa.Column('threshold_override', sa.Float(), nullable=True),
    sa.Column('threshold_updated_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['line_id'], ['lines.id'], name=op.f('fk_cameras_line_id_lines')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_cameras'))
    )
    op.create_index(op.f('ix_cameras_line_id'), 'cameras', ['line_id'], unique=False)

    op.create_table('camera_threshold_changes',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('camera_id', sa.String(length=100), nullable=False),
    sa.Column('old_threshold', sa.Float(), nullable=True),
    sa.Column('new_threshold', sa.Float(), nullable=True),
    sa.Column('changed_by', sa.String(length=100), nullable=False),
    sa.Column('changed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['camera_id'], ['cameras.id'], name=op.f('fk_camera_threshold_changes_camera_id_cameras'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_camera_threshold_changes'))
    )
    op.create_index(op.f('ix_camera_threshold_changes_camera_id_changed_at'), 'camera_threshold_changes', ['camera_id', 'changed_at'], unique=False)

    op.create_table('inspections',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('frame_id', sa.String(length=200), nullable=False),
    sa.Column('line_id', sa.String(length=100), nullable=False),
    sa.Column('camera_id', sa.String(length=100), nullable=False),
    sa.Column('station', sa.String(length=100), nullable=True),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('part_id', sa.String(length=200), nullable=True),
    sa.Column('product', sa.String(length=100), nullable=True),
    sa.Column('captured_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('inferred_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('stored_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('score', sa.Float(), nullable=False),
    sa.Column('threshold', sa.Float(), nullable=False),
    sa.Column('is_anomalous', sa.Boolean(), nullable=False),
    sa.Column('model_version', sa.String(length=100), nullable=False),
    sa.Column('frame_width', sa.Integer(), nullable=True),
    sa.Column('frame_height', sa.Integer(), nullable=True),
    sa.Column('heatmap_max', sa.Float(), nullable=True),
    sa.Column('heatmap_image_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('frame_image_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('frame_reason', sa.String(length=20), nullable=True),
    sa.Column('current_feedback', sa.String(length=20), nullable=True),
    sa.CheckConstraint("current_feedback IS NULL OR current_feedback IN ('defect_confirmed', 'false_alarm', 'unsure')", name=op.f('ck_inspections_current_feedback')),
    sa.CheckConstraint("frame_reason IS NULL OR frame_reason IN ('flagged', 'sampled')", name=op.f('ck_inspections_frame_reason')),
    sa.ForeignKeyConstraint(['camera_id'], ['cameras.id'], name=op.f('fk_inspections_camera_id_cameras')),
    sa.ForeignKeyConstraint(['frame_image_id'], ['images.id'], name=op.f('fk_inspections_frame_image_id_images'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['heatmap_image_id'], ['images.id'], name=op.f('fk_inspections_heatmap_image_id_images'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['line_id'], ['lines.id'], name=op.f('fk_inspections_line_id_lines')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_inspections')),
    sa.UniqueConstraint('frame_id', name=op.f('uq_inspections_frame_id'))
    )
    op.create_index(op.f('ix_inspections_camera_id_captured_at'), 'inspections', ['camera_id', 'captured_at'], unique=False)
    op.create_index(op.f('ix_inspections_captured_at'), 'inspections', ['captured_at'], unique=False)
    op.create_index(op.f('ix_inspections_current_feedback_captured_at'), 'inspections', ['current_feedback', 'captured_at'], unique=False)
    op.create_index(op.f('ix_inspections_frame_image_id'), 'inspections', ['frame_image_id'], unique=False)
    op.create_index(op.f('ix_inspections_heatmap_image_id'), 'inspections', ['heatmap_image_id'], unique=False)
    op.create_index(op.f('ix_inspections_is_anomalous_captured_at'), 'inspections', ['is_anomalous', 'captured_at'], unique=False)
    op.create_index(op.f('ix_inspections_line_id_captured_at'), 'inspections', ['line_id', 'captured_at'], unique=False)
    op.create_index(op.f('ix_inspections_product_captured_at'), 'inspections', ['product', 'captured_at'], unique=False)

    op.create_table('feedback',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('inspection_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('label', sa.String(length=20), nullable=False),
    sa.Column('username', sa.String(length=100), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('comment', sa.Text(), nullable=True),
    sa.CheckConstraint("label IN ('defect_confirmed', 'false_alarm', 'unsure')", name=op.f('ck_feedback_label')),
    sa.ForeignKeyConstraint(['inspection_id'], ['inspections.id'], name=op.f('fk_feedback_inspection_id_inspections'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_feedback'))
    )
    op.create_index(op.f('ix_feedback_created_at'), 'feedback', ['created_at'], unique=False)
    op.create_index(op.f('ix_feedback_inspection_id_created_at'), 'feedback', ['inspection_id', 'created_at'], unique=False)



def downgrade() -> None:
    op.drop_index(op.f('ix_feedback_inspection_id_created_at'), table_name='feedback')
    op.drop_index(op.f('ix_feedback_created_at'), table_name='feedback')

    op.drop_table('feedback')
    op.drop_index(op.f('ix_inspections_product_captured_at'), table_name='inspections')
    op.drop_index(op.f('ix_inspections_line_id_captured_at'), table_name='inspections')
    op.drop_index(op.f('ix_inspections_is_anomalous_captured_at'), table_name='inspections')
    op.drop_index(op.f('ix_inspections_heatmap_image_id'), table_name='inspections')
    op.drop_index(op.f('ix_inspections_frame_image_id'), table_name='inspections')
    op.drop_index(op.f('ix_inspections_current_feedback_captured_at'), table_name='inspections')
    op.drop_index(op.f('ix_inspections_captured_at'), table_name='inspections')
    op.drop_index(op.f('ix_inspections_camera_id_captured_at'), table_name='inspections')

    op.drop_table('inspections')
    op.drop_index(op.f('ix_camera_threshold_changes_camera_id_changed_at'), table_name='camera_threshold_changes')

    op.drop_table('camera_threshold_changes')
    op.drop_index(op.f('ix_cameras_line_id'), table_name='cameras')

    op.drop_table('cameras')
    op.drop_table('users')
    op.drop_index('uq_model_versions_product_version', table_name='model_versions')
    op.drop_index('uq_model_versions_one_active', table_name='model_versions', sqlite_where=sa.text("status = 'active'"), postgresql_where=sa.text("status = 'active'"))
    op.drop_index(op.f('ix_model_versions_product_status_created_at'), table_name='model_versions')

    op.drop_table('model_versions')
    op.drop_table('lines')
    op.drop_table('images')
    op.drop_table('blobs')
