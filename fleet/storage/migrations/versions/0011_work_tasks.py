"""Work tasks: each task submitted, the model and agent chosen and why, its outcome and cost

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "work_tasks",
        sa.Column("task_id", sa.String(length=64), nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=False),
        sa.Column("type", sa.String(length=128), nullable=False),
        sa.Column("fleet", sa.String(length=128), nullable=True),
        sa.Column("capabilities", sa.JSON(), nullable=False),
        sa.Column("estimated_tokens", sa.Integer(), nullable=False),
        sa.Column("payer_kind", sa.String(length=16), nullable=False),
        sa.Column("payer_id", sa.String(length=128), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("model_reason", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("agent_id", sa.String(length=128), nullable=True),
        sa.Column("attempts", sa.JSON(), nullable=False),
        sa.Column("estimate", sa.String(length=32), nullable=True),
        sa.Column("actual", sa.String(length=32), nullable=True),
        sa.Column("charged", sa.String(length=32), nullable=True),
        sa.Column("input_tokens", sa.Integer(), nullable=True),
        sa.Column("output_tokens", sa.Integer(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("trace_id", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("task_id", name=op.f("pk_work_tasks")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_work_tasks_idempotency_key")),
    )
    op.create_index("ix_work_tasks_agent", "work_tasks", ["agent_id", "finished_at"])
    op.create_index("ix_work_tasks_fleet_finished", "work_tasks", ["fleet", "finished_at"])


def downgrade() -> None:
    op.drop_index("ix_work_tasks_fleet_finished", table_name="work_tasks")
    op.drop_index("ix_work_tasks_agent", table_name="work_tasks")
    op.drop_table("work_tasks")
