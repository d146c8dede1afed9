"""monitoring: hourly agent history, fleet sweeps, alerts

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "monitoring_agent_hourly",
        sa.Column("agent_id", sa.String(length=128), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("fleet", sa.String(length=128), nullable=True),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("unknown", sa.Integer(), nullable=False),
        sa.Column("critical", sa.Integer(), nullable=False),
        sa.Column("degraded", sa.Integer(), nullable=False),
        sa.Column("latency_p99_avg", sa.Float(), nullable=True),
        sa.Column("latency_p99_max", sa.Float(), nullable=True),
        sa.Column("error_rate_avg", sa.Float(), nullable=True),
        sa.Column("reputation_avg", sa.Float(), nullable=True),
        sa.Column("balance_min", sa.String(length=32), nullable=True),
        sa.Column("burn_rate_avg", sa.String(length=32), nullable=True),
        sa.Column("sla_compliant", sa.Integer(), nullable=False),
        sa.Column("sla_checked", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("agent_id", "hour", name=op.f("pk_monitoring_agent_hourly")),
    )
    with op.batch_alter_table("monitoring_agent_hourly", schema=None) as batch_op:
        batch_op.create_index("ix_monitoring_agent_hourly_hour", ["hour"], unique=False)

    op.create_table(
        "monitoring_alerts",
        sa.Column("alert_id", sa.String(length=32), nullable=False),
        sa.Column("rule", sa.String(length=64), nullable=False),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("subject", sa.String(length=160), nullable=False),
        sa.Column("fleet", sa.String(length=128), nullable=True),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("audience", sa.String(length=16), nullable=False),
        sa.Column("open_key", sa.String(length=240), nullable=True),
        sa.Column("value", sa.String(length=64), nullable=False),
        sa.Column("threshold", sa.String(length=64), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("fired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("actions", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("alert_id", name=op.f("pk_monitoring_alerts")),
        sa.UniqueConstraint("open_key", name=op.f("uq_monitoring_alerts_open_key")),
    )
    with op.batch_alter_table("monitoring_alerts", schema=None) as batch_op:
        batch_op.create_index("ix_monitoring_alerts_fired_at", ["fired_at"], unique=False)
        batch_op.create_index("ix_monitoring_alerts_subject", ["subject"], unique=False)

    op.create_table(
        "monitoring_fleet_sweeps",
        sa.Column("sweep_id", sa.String(length=40), nullable=False),
        sa.Column("fleet", sa.String(length=128), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("agents", sa.Integer(), nullable=False),
        sa.Column("healthy", sa.Integer(), nullable=False),
        sa.Column("degraded", sa.Integer(), nullable=False),
        sa.Column("critical", sa.Integer(), nullable=False),
        sa.Column("unknown", sa.Integer(), nullable=False),
        sa.Column("latency_p99", sa.Float(), nullable=True),
        sa.Column("error_rate", sa.Float(), nullable=True),
        sa.Column("sla_compliance", sa.Float(), nullable=True),
        sa.Column("burn_rate_per_hour", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("sweep_id", "fleet", name=op.f("pk_monitoring_fleet_sweeps")),
    )
    with op.batch_alter_table("monitoring_fleet_sweeps", schema=None) as batch_op:
        batch_op.create_index("ix_monitoring_fleet_sweeps_started_at", ["started_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("monitoring_fleet_sweeps", schema=None) as batch_op:
        batch_op.drop_index("ix_monitoring_fleet_sweeps_started_at")

    op.drop_table("monitoring_fleet_sweeps")
    with op.batch_alter_table("monitoring_alerts", schema=None) as batch_op:
        batch_op.drop_index("ix_monitoring_alerts_subject")
        batch_op.drop_index("ix_monitoring_alerts_fired_at")

    op.drop_table("monitoring_alerts")
    with op.batch_alter_table("monitoring_agent_hourly", schema=None) as batch_op:
        batch_op.drop_index("ix_monitoring_agent_hourly_hour")

    op.drop_table("monitoring_agent_hourly")
