"""Budgets: the spend ledger, spending pauses and raised budget limits

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "spend_ledger",
        sa.Column("task_id", sa.String(length=128), nullable=False),
        sa.Column("agent_id", sa.String(length=128), nullable=False),
        sa.Column("fleet", sa.String(length=128), nullable=False),
        sa.Column("model", sa.String(length=64), nullable=False),
        sa.Column("pool", sa.String(length=128), nullable=True),
        sa.Column("estimate", sa.String(length=40), nullable=False),
        sa.Column("actual", sa.String(length=40), nullable=False),
        sa.Column("charged", sa.String(length=40), nullable=True),
        sa.Column("currency", sa.String(length=8), nullable=False),
        sa.Column("usage", sa.JSON(), nullable=False),
        sa.Column("trace_id", sa.String(length=64), nullable=True),
        sa.Column("reserved_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("settled_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("task_id", name=op.f("pk_spend_ledger")),
    )
    op.create_index(
        "ix_spend_ledger_fleet_settled", "spend_ledger", ["fleet", "settled_at"], unique=False
    )
    op.create_index(
        "ix_spend_ledger_agent_settled", "spend_ledger", ["agent_id", "settled_at"], unique=False
    )
    op.create_table(
        "spending_pauses",
        sa.Column("fleet", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("limit", sa.String(length=40), nullable=False),
        sa.Column("would_be", sa.String(length=40), nullable=False),
        sa.Column("paused_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("alert_id", sa.String(length=32), nullable=True),
        sa.PrimaryKeyConstraint("fleet", name=op.f("pk_spending_pauses")),
    )
    op.create_table(
        "budget_limits",
        sa.Column("field", sa.String(length=200), nullable=False),
        sa.Column("budget", sa.String(length=32), nullable=False),
        sa.Column("subject", sa.String(length=160), nullable=False),
        sa.Column("limit", sa.String(length=40), nullable=False),
        sa.Column("approval_id", sa.String(length=32), nullable=True),
        sa.Column("raised_by", sa.String(length=128), nullable=False),
        sa.Column("raised_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("field", name=op.f("pk_budget_limits")),
    )


def downgrade() -> None:
    op.drop_table("budget_limits")
    op.drop_table("spending_pauses")
    op.drop_index("ix_spend_ledger_agent_settled", table_name="spend_ledger")
    op.drop_index("ix_spend_ledger_fleet_settled", table_name="spend_ledger")
    op.drop_table("spend_ledger")
