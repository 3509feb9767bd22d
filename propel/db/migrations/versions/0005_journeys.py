"""journeys: definitions, versions, per-user state, the step log, send rounds

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 19:02:30.355433
"""

import sqlalchemy as sa
from alembic import op

from propel.db.meta import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "journey_entries",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("journey_id", sa.String(length=32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("identity", sa.String(length=256), nullable=False),
        sa.Column("entry_no", sa.Integer(), nullable=False),
        sa.Column("trigger", sa.String(length=256), nullable=True),
        sa.Column("entered_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("holdout", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("step", sa.String(length=64), nullable=True),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("due_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("wait_event", sa.String(length=256), nullable=True),
        sa.Column("waiting_since", UTCDateTime(timezone=True), nullable=True),
        sa.Column("woken", sa.Integer(), nullable=False),
        sa.Column("converted_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("exit_reason", sa.String(length=16), nullable=True),
        sa.Column("exited_at", UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_journey_entries")),
        sa.UniqueConstraint(
            "journey_id",
            "identity",
            "entry_no",
            name=op.f("uq_journey_entries_journey_id_identity_entry_no"),
        ),
    )
    with op.batch_alter_table("journey_entries", schema=None) as batch_op:
        batch_op.create_index("ix_journey_entries_due", ["state", "due_at"], unique=False)
        batch_op.create_index(
            "ix_journey_entries_step", ["journey_id", "step", "state"], unique=False
        )

    op.create_table(
        "journey_sends",
        sa.Column("campaign_id", sa.String(length=32), nullable=False),
        sa.Column("round", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("journey_id", sa.String(length=32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("step", sa.String(length=64), nullable=False),
        sa.Column("dispatch_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("campaign_id", "round", name=op.f("pk_journey_sends")),
    )
    op.create_table(
        "journey_step_log",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("journey_id", sa.String(length=32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("entry_id", sa.BigInteger(), nullable=False),
        sa.Column("step", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.String(length=64), nullable=True),
        sa.Column("message_key", sa.String(length=80), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_journey_step_log")),
        sa.UniqueConstraint(
            "entry_id",
            "version",
            "step",
            "seq",
            name=op.f("uq_journey_step_log_entry_id_version_step_seq"),
        ),
    )
    with op.batch_alter_table("journey_step_log", schema=None) as batch_op:
        batch_op.create_index(
            "ix_journey_step_log_step", ["journey_id", "version", "step"], unique=False
        )

    op.create_table(
        "journey_versions",
        sa.Column("journey_id", sa.String(length=32), nullable=False),
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("definition", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("published_at", UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("journey_id", "version", name=op.f("pk_journey_versions")),
    )
    op.create_table(
        "journeys",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("event_cursor_us", sa.BigInteger(), nullable=True),
        sa.Column("next_entry_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("published_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("stopped_at", UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_journeys")),
    )
    with op.batch_alter_table("journeys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_journeys_account_id"), ["account_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("journeys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_journeys_account_id"))

    op.drop_table("journeys")
    op.drop_table("journey_versions")
    with op.batch_alter_table("journey_step_log", schema=None) as batch_op:
        batch_op.drop_index("ix_journey_step_log_step")

    op.drop_table("journey_step_log")
    op.drop_table("journey_sends")
    with op.batch_alter_table("journey_entries", schema=None) as batch_op:
        batch_op.drop_index("ix_journey_entries_step")
        batch_op.drop_index("ix_journey_entries_due")

    op.drop_table("journey_entries")
