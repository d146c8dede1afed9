"""SLA: violation episodes, escalation actions (one row per episode and tier), disputes, burn-rate
alerts

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sla_burn_alerts",
        sa.Column("alert_id", sa.String(length=32), nullable=False),
        sa.Column("scope", sa.String(length=160), nullable=False),
        sa.Column("rule", sa.String(length=64), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("open_key", sa.String(length=240), nullable=True),
        sa.Column("long_rate", sa.String(length=32), nullable=False),
        sa.Column("short_rate", sa.String(length=32), nullable=False),
        sa.Column("fired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("notified", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("alert_id", name=op.f("pk_sla_burn_alerts")),
        sa.UniqueConstraint("open_key", name=op.f("uq_sla_burn_alerts_open_key")),
    )
    with op.batch_alter_table("sla_burn_alerts", schema=None) as batch_op:
        batch_op.create_index("ix_sla_burn_alerts_scope", ["scope", "fired_at"], unique=False)

    op.create_table(
        "sla_episodes",
        sa.Column("episode_id", sa.String(length=32), nullable=False),
        sa.Column("agent_id", sa.String(length=128), nullable=False),
        sa.Column("fleet", sa.String(length=128), nullable=False),
        sa.Column("sla_id", sa.String(length=128), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("open_agent", sa.String(length=128), nullable=True),
        sa.Column("breached_terms", sa.JSON(), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("opened_by", sa.String(length=128), nullable=False),
        sa.Column("last_breach_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("compliant_streak", sa.Integer(), nullable=False),
        sa.Column("recovering_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("counterparty", sa.String(length=128), nullable=True),
        sa.Column("disputed_amount", sa.String(length=32), nullable=True),
        sa.Column("acked_by", sa.String(length=128), nullable=True),
        sa.Column("acked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ack_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("weight_before", sa.String(length=16), nullable=True),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("close_reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.agent_id"], name=op.f("fk_sla_episodes_agent_id_agents")
        ),
        sa.PrimaryKeyConstraint("episode_id", name=op.f("pk_sla_episodes")),
        sa.UniqueConstraint("open_agent", name=op.f("uq_sla_episodes_open_agent")),
    )
    with op.batch_alter_table("sla_episodes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sla_episodes_agent_id"), ["agent_id"], unique=False)
        batch_op.create_index("ix_sla_episodes_closed_at", ["closed_at"], unique=False)
        batch_op.create_index("ix_sla_episodes_fleet", ["fleet"], unique=False)
        batch_op.create_index("ix_sla_episodes_state_opened", ["state", "opened_at"], unique=False)

    op.create_table(
        "sla_disputes",
        sa.Column("dispute_id", sa.String(length=64), nullable=False),
        sa.Column("episode_id", sa.String(length=32), nullable=False),
        sa.Column("agent_id", sa.String(length=128), nullable=False),
        sa.Column("counterparty", sa.String(length=128), nullable=False),
        sa.Column("claimed", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolution", sa.String(length=64), nullable=True),
        sa.Column("refund", sa.String(length=32), nullable=True),
        sa.Column("notes", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["episode_id"],
            ["sla_episodes.episode_id"],
            name=op.f("fk_sla_disputes_episode_id_sla_episodes"),
        ),
        sa.PrimaryKeyConstraint("dispute_id", name=op.f("pk_sla_disputes")),
    )
    with op.batch_alter_table("sla_disputes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sla_disputes_agent_id"), ["agent_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_sla_disputes_episode_id"), ["episode_id"], unique=False
        )

    op.create_table(
        "sla_escalations",
        sa.Column("episode_id", sa.String(length=32), nullable=False),
        sa.Column("tier", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("task", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("dispatched_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("episode_age_s", sa.Integer(), nullable=False),
        sa.Column("dispatch_count", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("claimed_by", sa.String(length=160), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("queue", sa.String(length=32), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("steps", sa.JSON(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("approval_id", sa.String(length=32), nullable=True),
        sa.ForeignKeyConstraint(
            ["episode_id"],
            ["sla_episodes.episode_id"],
            name=op.f("fk_sla_escalations_episode_id_sla_episodes"),
        ),
        sa.PrimaryKeyConstraint("episode_id", "tier", name=op.f("pk_sla_escalations")),
    )
    with op.batch_alter_table("sla_escalations", schema=None) as batch_op:
        batch_op.create_index(
            "ix_sla_escalations_status", ["status", "dispatched_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("sla_escalations", schema=None) as batch_op:
        batch_op.drop_index("ix_sla_escalations_status")

    op.drop_table("sla_escalations")
    with op.batch_alter_table("sla_disputes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sla_disputes_episode_id"))
        batch_op.drop_index(batch_op.f("ix_sla_disputes_agent_id"))

    op.drop_table("sla_disputes")
    with op.batch_alter_table("sla_episodes", schema=None) as batch_op:
        batch_op.drop_index("ix_sla_episodes_state_opened")
        batch_op.drop_index("ix_sla_episodes_fleet")
        batch_op.drop_index("ix_sla_episodes_closed_at")
        batch_op.drop_index(batch_op.f("ix_sla_episodes_agent_id"))

    op.drop_table("sla_episodes")
    with op.batch_alter_table("sla_burn_alerts", schema=None) as batch_op:
        batch_op.drop_index("ix_sla_burn_alerts_scope")

    op.drop_table("sla_burn_alerts")
