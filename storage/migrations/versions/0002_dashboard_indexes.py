"""Dashboard read-path indexes on inspections: the review queue (flagged, not yet
reviewed, newest first), a covering index for the live per-camera aggregates over a time
window, and a covering index for per-camera score distributions (Thresholds page).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op


revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index('ix_inspections_review_queue', 'inspections',
                    ['is_anomalous', 'current_feedback', 'captured_at'], unique=False)
    op.create_index('ix_inspections_live_window', 'inspections',
                    ['captured_at', 'line_id', 'camera_id', 'is_anomalous'], unique=False)
    op.create_index('ix_inspections_camera_scores', 'inspections',
                    ['camera_id', 'captured_at', 'score', 'is_anomalous', 'current_feedback'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_inspections_camera_scores', table_name='inspections')
    op.drop_index('ix_inspections_live_window', table_name='inspections')
    op.drop_index('ix_inspections_review_queue', table_name='inspections')
