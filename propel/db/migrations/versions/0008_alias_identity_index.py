"""profiles: identity_aliases indexed by the identity they point to

A merge re-points the aliases of the id being merged, the profile page lists a
profile's aliases and journeys look them up per user: each is a question by
``identity``, which the primary key (account, alias) cannot answer without reading
every alias of the account.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 09:00:00
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_identity_aliases_identity", "identity_aliases",
                    ["account_id", "identity"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_identity_aliases_identity", table_name="identity_aliases")
