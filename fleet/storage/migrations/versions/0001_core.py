"""core records: agents and SLA contracts

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agents",
        sa.Column("agent_id", sa.String(length=128), nullable=False),
        sa.Column("fleet", sa.String(length=128), nullable=False),
        sa.Column("environment", sa.String(length=32), nullable=False),
        sa.Column("id_prefix", sa.String(length=64), nullable=False),
        sa.Column("tier", sa.String(length=32), nullable=False),
        sa.Column("capabilities", sa.JSON(), nullable=False),
        sa.Column("sla_template", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("steps_done", sa.JSON(), nullable=False),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        sa.Column("wallet_id", sa.String(length=128), nullable=True),
        sa.Column("claim_chain_id", sa.String(length=128), nullable=True),
        sa.Column("service_id", sa.String(length=128), nullable=True),
        sa.Column("api_key_encrypted", sa.Text(), nullable=True),
        sa.Column("key_rotated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("traffic_weight", sa.String(length=16), nullable=False),
        sa.Column("extra", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("agent_id", name=op.f("pk_agents")),
    )
    with op.batch_alter_table("agents", schema=None) as batch_op:
        batch_op.create_index("ix_agents_fleet_status", ["fleet", "status"], unique=False)
        batch_op.create_index("ix_agents_prefix", ["id_prefix"], unique=False)

    op.create_table(
        "sla_contracts",
        sa.Column("sla_id", sa.String(length=128), nullable=False),
        sa.Column("agent_id", sa.String(length=128), nullable=False),
        sa.Column("template", sa.String(length=64), nullable=False),
        sa.Column("terms", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.agent_id"], name=op.f("fk_sla_contracts_agent_id_agents")
        ),
        sa.PrimaryKeyConstraint("sla_id", name=op.f("pk_sla_contracts")),
    )
    with op.batch_alter_table("sla_contracts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sla_contracts_agent_id"), ["agent_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("sla_contracts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sla_contracts_agent_id"))

    op.drop_table("sla_contracts")
    with op.batch_alter_table("agents", schema=None) as batch_op:
        batch_op.drop_index("ix_agents_prefix")
        batch_op.drop_index("ix_agents_fleet_status")

    op.drop_table("agents")
