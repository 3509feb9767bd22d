"""campaigns: send_rates, each campaign's send-rate token bucket in the database

The bucket was kept in each delivery process's memory, so two processes (``propel serve
--workers 2``, or a server and a ``propel worker``) could together send twice a
campaign's rate.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 09:10:00
"""

import sqlalchemy as sa
from alembic import op

from propel.db.meta import UTCDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "send_rates",
        sa.Column("campaign_id", sa.String(length=32), nullable=False),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("updated_at", UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("campaign_id", name=op.f("pk_send_rates")),
    )


def downgrade() -> None:
    op.drop_table("send_rates")
