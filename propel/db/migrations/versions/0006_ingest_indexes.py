"""ingest: drop the two secondary indexes every accepted event paid for; dedupe_recent

Each accepted event inserted a random entry into ``ix_dedupe_keys_day`` and into
``ix_recent_events_account_identity``; a random B-tree insert dirties a page of its
own, and the pages an event dirties are what a SQLite commit costs. Pruning the dedupe
keys walks the primary key in hash ranges instead, and readers of recent rows select
them by ``batch_no``. On SQLite new dedupe keys go to ``dedupe_recent`` in arrival order
and settle into ``dedupe_keys`` in key order (see propel/ingest/dedupe.py).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 01:45:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_dedupe_keys_day", table_name="dedupe_keys")
    op.drop_index("ix_recent_events_account_identity", table_name="recent_events")
    op.create_table(
        "dedupe_recent",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  autoincrement=True, nullable=False),
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("key_hash", sa.BigInteger(), nullable=False),
        sa.Column("day", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_dedupe_recent")),
        sqlite_autoincrement=True,
    )


def downgrade() -> None:
    op.drop_table("dedupe_recent")
    op.create_index("ix_recent_events_account_identity", "recent_events",
                    ["account_id", "identity"], unique=False)
    op.create_index("ix_dedupe_keys_day", "dedupe_keys", ["day"], unique=False)
