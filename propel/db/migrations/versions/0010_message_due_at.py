"""campaigns: messages.due_at, when a run is due for each user

A campaign in each user's timezone starts its run at the earliest zone's time and
reaches each user at their own; the conversion window of every user, messaged or
holdout, starts then, not at the start of the run.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30 16:00:00
"""

import sqlalchemy as sa
from alembic import op

from propel.db.meta import UTCDateTime

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("due_at", UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_column("due_at")
