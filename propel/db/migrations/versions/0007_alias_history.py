"""profiles: identity_alias_history, every (re)pointing of an alias

A merge re-points older aliases in place in ``identity_aliases``, so a reader could not
tell where an alias pointed at a past date. Existing aliases are copied in with the
time they were created.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 02:20:00
"""

import sqlalchemy as sa
from alembic import op

from propel.db.meta import UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "identity_alias_history",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  autoincrement=True, nullable=False),
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("alias", sa.String(length=256), nullable=False),
        sa.Column("identity", sa.String(length=256), nullable=False),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_identity_alias_history")),
    )
    op.create_index("ix_identity_alias_history_account", "identity_alias_history",
                    ["account_id", "alias"], unique=False)
    op.execute("INSERT INTO identity_alias_history (account_id, alias, identity, created_at) "
               "SELECT account_id, alias, identity, created_at FROM identity_aliases")


def downgrade() -> None:
    op.drop_index("ix_identity_alias_history_account", table_name="identity_alias_history")
    op.drop_table("identity_alias_history")
