"""Autoscaling: the decision log and each segment's mode and cooldown

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "scaling_decisions",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("decision_id", sa.String(length=32), nullable=False),
        sa.Column("segment", sa.String(length=64), nullable=False),
        sa.Column("fleet", sa.String(length=128), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("action", sa.String(length=20), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("inputs", sa.JSON(), nullable=False),
        sa.Column("acted", sa.JSON(), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_scaling_decisions")),
        sa.UniqueConstraint("decision_id", name=op.f("uq_scaling_decisions_decision_id")),
    )
    op.create_index(
        "ix_scaling_decisions_segment_at",
        "scaling_decisions",
        ["segment", "decided_at"],
        unique=False,
    )
    op.create_table(
        "scaling_segments",
        sa.Column("segment", sa.String(length=64), nullable=False),
        sa.Column("fleet", sa.String(length=128), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("mode_changed_by", sa.String(length=128), nullable=True),
        sa.Column("mode_reason", sa.Text(), nullable=True),
        sa.Column("mode_approval_id", sa.String(length=32), nullable=True),
        sa.Column("mode_changed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_decision_id", sa.String(length=32), nullable=True),
        sa.Column("last_action", sa.String(length=20), nullable=True),
        sa.Column("last_action_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cooldown_until", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("segment", name=op.f("pk_scaling_segments")),
    )


def downgrade() -> None:
    op.drop_table("scaling_segments")
    op.drop_index("ix_scaling_decisions_segment_at", table_name="scaling_decisions")
    op.drop_table("scaling_decisions")
