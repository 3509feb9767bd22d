"""engage

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 16:21:14.430479
"""

import sqlalchemy as sa
from alembic import op

import propel.db.meta

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "campaigns",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("channel", sa.String(length=20), nullable=False),
        sa.Column("prediction_id", sa.String(length=32), nullable=True),
        sa.Column("audience", sa.Text(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("schedule", sa.Text(), nullable=False),
        sa.Column("dnd", sa.Text(), nullable=False),
        sa.Column("caps", sa.Text(), nullable=False),
        sa.Column("rate_per_second", sa.Float(), nullable=True),
        sa.Column("holdout_pct", sa.Float(), nullable=False),
        sa.Column("goal", sa.Text(), nullable=False),
        sa.Column("strategy", sa.Text(), nullable=True),
        sa.Column("next_run_at", propel.db.meta.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", propel.db.meta.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", propel.db.meta.UTCDateTime(timezone=True), nullable=False),
        sa.Column("started_at", propel.db.meta.UTCDateTime(timezone=True), nullable=True),
        sa.Column("finished_at", propel.db.meta.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaigns")),
    )
    with op.batch_alter_table("campaigns", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_campaigns_account_id"), ["account_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_campaigns_prediction_id"), ["prediction_id"], unique=False
        )

    op.create_table(
        "channel_configs",
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("channel", sa.String(length=20), nullable=False),
        sa.Column("config", sa.Text(), nullable=False),
        sa.Column("updated_at", propel.db.meta.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("account_id", "channel", name=op.f("pk_channel_configs")),
    )
    op.create_table(
        "dispatches",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("campaign_id", sa.String(length=32), nullable=False),
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("started_at", propel.db.meta.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", propel.db.meta.UTCDateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("targeted", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dispatches")),
    )
    with op.batch_alter_table("dispatches", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_dispatches_campaign_id"), ["campaign_id"], unique=False
        )

    op.create_table(
        "inbox_messages",
        sa.Column("key", sa.String(length=80), nullable=False),
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("identity", sa.String(length=256), nullable=False),
        sa.Column("campaign_id", sa.String(length=32), nullable=True),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("created_at", propel.db.meta.UTCDateTime(timezone=True), nullable=False),
        sa.Column("viewed_at", propel.db.meta.UTCDateTime(timezone=True), nullable=True),
        sa.Column("clicked_at", propel.db.meta.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_inbox_messages")),
    )
    with op.batch_alter_table("inbox_messages", schema=None) as batch_op:
        batch_op.create_index(
            "ix_inbox_identity", ["account_id", "identity", "created_at"], unique=False
        )

    op.create_table(
        "messages",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("campaign_id", sa.String(length=32), nullable=False),
        sa.Column("dispatch_id", sa.BigInteger(), nullable=False),
        sa.Column("identity", sa.String(length=256), nullable=False),
        sa.Column("key", sa.String(length=80), nullable=False),
        sa.Column("variant", sa.String(length=40), nullable=True),
        sa.Column("grp", sa.String(length=8), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("model_version", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", propel.db.meta.UTCDateTime(timezone=True), nullable=True),
        sa.Column("claim_until", propel.db.meta.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", propel.db.meta.UTCDateTime(timezone=True), nullable=False),
        sa.Column("sent_at", propel.db.meta.UTCDateTime(timezone=True), nullable=True),
        sa.Column("opened_at", propel.db.meta.UTCDateTime(timezone=True), nullable=True),
        sa.Column("clicked_at", propel.db.meta.UTCDateTime(timezone=True), nullable=True),
        sa.Column("converted_at", propel.db.meta.UTCDateTime(timezone=True), nullable=True),
        sa.Column("revenue", sa.Float(), nullable=True),
        sa.Column("provider_ref", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_messages")),
        sa.UniqueConstraint(
            "dispatch_id", "identity", name=op.f("uq_messages_dispatch_id_identity")
        ),
        sa.UniqueConstraint("key", name=op.f("uq_messages_key")),
    )
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.create_index("ix_messages_campaign", ["campaign_id", "state"], unique=False)
        batch_op.create_index("ix_messages_identity", ["account_id", "identity"], unique=False)
        batch_op.create_index("ix_messages_state", ["state", "next_attempt_at"], unique=False)

    op.create_table(
        "send_counts",
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("identity", sa.String(length=256), nullable=False),
        sa.Column("day", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("sends", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("account_id", "identity", "day", name=op.f("pk_send_counts")),
    )
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("client_key", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("inbox_secret", sa.String(length=64), nullable=True))
        batch_op.create_unique_constraint(batch_op.f("uq_accounts_client_key"), ["client_key"])


def downgrade() -> None:

    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_accounts_client_key"), type_="unique")
        batch_op.drop_column("inbox_secret")
        batch_op.drop_column("client_key")

    op.drop_table("send_counts")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_state")
        batch_op.drop_index("ix_messages_identity")
        batch_op.drop_index("ix_messages_campaign")

    op.drop_table("messages")
    with op.batch_alter_table("inbox_messages", schema=None) as batch_op:
        batch_op.drop_index("ix_inbox_identity")

    op.drop_table("inbox_messages")
    with op.batch_alter_table("dispatches", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_dispatches_campaign_id"))

    op.drop_table("dispatches")
    op.drop_table("channel_configs")
    with op.batch_alter_table("campaigns", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_campaigns_prediction_id"))
        batch_op.drop_index(batch_op.f("ix_campaigns_account_id"))

    op.drop_table("campaigns")
