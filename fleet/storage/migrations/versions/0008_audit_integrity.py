"""audit: chained checkpoints (counter, link to the previous one); archive rows only at a checkpoint

Revision ID: 0008
Revises: 0005

``audit_checkpoints`` gains ``counter`` (1, 2, 3… in signing order, unique per
chain) and ``prev_checkpoint`` (the digest of the checkpoint before), both
covered by the signature; rows from before keep 0 and "" and stay valid under
the version 1 payload they were signed over.

An ``audit_archives`` row is the anchor the retained chain starts from, and
the append-only trigger lets entries it covers be deleted; so a new row is
refused unless a checkpoint at exactly its ``last_seq`` carries its ``head``.
That only stops the casual forgery (an owner can drop triggers): ``fleet audit
verify`` checks the checkpoint's signature against the pinned key and the
archive file's digest and contents, and names a forged anchor.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_SQLITE_ANCHOR_GUARD = """
CREATE TRIGGER audit_archives_at_checkpoint BEFORE INSERT ON audit_archives
WHEN NOT EXISTS (
    SELECT 1 FROM audit_checkpoints
    WHERE chain = NEW.chain AND size = NEW.last_seq AND head = NEW.head
)
BEGIN SELECT RAISE(ABORT, 'audit_archives: no checkpoint at this last_seq with this head'); END
"""

_PG_ANCHOR_GUARD = """
CREATE FUNCTION audit_archive_at_checkpoint() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM audit_checkpoints
        WHERE chain = NEW.chain AND size = NEW.last_seq AND head = NEW.head
    ) THEN
        RAISE EXCEPTION 'audit_archives: no checkpoint at this last_seq with this head'
            USING HINT = 'an archive is written by retention, at a checkpoint it signed';
    END IF;
    RETURN NEW;
END
$$;
"""


def upgrade() -> None:
    op.add_column(
        "audit_checkpoints",
        sa.Column("counter", sa.BigInteger(), nullable=False, server_default="0"),
    )
    op.add_column(
        "audit_checkpoints",
        sa.Column("prev_checkpoint", sa.String(length=64), nullable=False, server_default=""),
    )
    op.create_index(
        "ux_audit_checkpoints_counter",
        "audit_checkpoints",
        ["chain", "counter"],
        unique=True,
        sqlite_where=sa.text("counter > 0"),
        postgresql_where=sa.text("counter > 0"),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PG_ANCHOR_GUARD)
        op.execute(
            "CREATE TRIGGER audit_archives_at_checkpoint BEFORE INSERT ON audit_archives "
            "FOR EACH ROW EXECUTE FUNCTION audit_archive_at_checkpoint()"
        )
    else:
        op.execute(_SQLITE_ANCHOR_GUARD)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_archives_at_checkpoint ON audit_archives")
        op.execute("DROP FUNCTION IF EXISTS audit_archive_at_checkpoint()")
    else:
        op.execute("DROP TRIGGER IF EXISTS audit_archives_at_checkpoint")
    op.drop_index("ux_audit_checkpoints_counter", table_name="audit_checkpoints")
    # Plain ALTER TABLE … DROP COLUMN (SQLite 3.35+): a batch copy would drop the triggers.
    op.execute("ALTER TABLE audit_checkpoints DROP COLUMN prev_checkpoint")
    op.execute("ALTER TABLE audit_checkpoints DROP COLUMN counter")
