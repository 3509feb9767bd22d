"""foundation

Revision ID: 0001
Revises:
Create Date: 2026-11-29 15:46:18.034569
"""

import sqlalchemy as sa
from alembic import op

import propel.db.meta

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "accounts",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("passcode_hash", sa.String(length=64), nullable=False),
        sa.Column("write_key_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", propel.db.meta.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_accounts")),
        sa.UniqueConstraint("write_key_hash", name=op.f("uq_accounts_write_key_hash")),
    )
    op.create_table(
        "dedupe_keys",
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("key_hash", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("day", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("account_id", "key_hash", name=op.f("pk_dedupe_keys")),
        sqlite_with_rowid=False,
    )
    with op.batch_alter_table("dedupe_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_dedupe_keys_day"), ["day"], unique=False)

    op.create_table(
        "identity_aliases",
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("alias", sa.String(length=256), nullable=False),
        sa.Column("identity", sa.String(length=256), nullable=False),
        sa.Column("created_at", propel.db.meta.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("account_id", "alias", name=op.f("pk_identity_aliases")),
    )
    op.create_table(
        "lake_batches",
        sa.Column("batch_no", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("row_count", sa.Integer(), nullable=False),
        sa.Column("created_at", propel.db.meta.UTCDateTime(timezone=True), nullable=False),
        sa.Column("oldest_received_at", sa.BigInteger(), nullable=False),
        sa.Column("flushed_at", propel.db.meta.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("batch_no", name=op.f("pk_lake_batches")),
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("owner", sa.String(length=100), nullable=False),
        sa.Column("expires_at", propel.db.meta.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_leases")),
    )
    op.create_table(
        "profiles",
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("identity", sa.String(length=256), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("phone", sa.String(length=20), nullable=True),
        sa.Column("timezone", sa.String(length=64), nullable=True),
        sa.Column("push_tokens", sa.Text(), nullable=False),
        sa.Column("consent", sa.Text(), nullable=False),
        sa.Column("properties", sa.Text(), nullable=False),
        sa.Column("created_at", propel.db.meta.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", propel.db.meta.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("account_id", "identity", name=op.f("pk_profiles")),
    )
    with op.batch_alter_table("profiles", schema=None) as batch_op:
        batch_op.create_index("ix_profiles_account_email", ["account_id", "email"], unique=False)

    op.create_table(
        "recent_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("batch_no", sa.BigInteger(), nullable=True),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("message_id", sa.String(length=256), nullable=False),
        sa.Column("identity", sa.String(length=256), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("ts", sa.BigInteger(), nullable=False),
        sa.Column("received_at", sa.BigInteger(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("properties", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recent_events")),
    )
    with op.batch_alter_table("recent_events", schema=None) as batch_op:
        batch_op.create_index(
            "ix_recent_events_account_identity", ["account_id", "identity"], unique=False
        )
        batch_op.create_index("ix_recent_events_batch_no", ["batch_no"], unique=False)

    op.create_table(
        "rejections",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("received_at", propel.db.meta.UTCDateTime(timezone=True), nullable=False),
        sa.Column("field", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("record", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rejections")),
    )
    with op.batch_alter_table("rejections", schema=None) as batch_op:
        batch_op.create_index("ix_rejections_account_id", ["account_id", "id"], unique=False)

    op.create_table(
        "schedules",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("task", sa.String(length=100), nullable=False),
        sa.Column("args", sa.Text(), nullable=False),
        sa.Column("interval_seconds", sa.Integer(), nullable=False),
        sa.Column("next_run_at", propel.db.meta.UTCDateTime(timezone=True), nullable=False),
        sa.Column("lease_until", propel.db.meta.UTCDateTime(timezone=True), nullable=True),
        sa.Column("enabled", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_schedules")),
    )
    op.create_table(
        "task_runs",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("schedule", sa.String(length=200), nullable=False),
        sa.Column("task", sa.String(length=100), nullable=False),
        sa.Column("started_at", propel.db.meta.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", propel.db.meta.UTCDateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(length=20), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_runs")),
    )
    with op.batch_alter_table("task_runs", schema=None) as batch_op:
        batch_op.create_index("ix_task_runs_schedule", ["schedule", "id"], unique=False)

    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", propel.db.meta.UTCDateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", propel.db.meta.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_api_keys_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
    )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_keys_account_id"), ["account_id"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_keys_account_id"))

    op.drop_table("api_keys")
    with op.batch_alter_table("task_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_task_runs_schedule")

    op.drop_table("task_runs")
    op.drop_table("schedules")
    with op.batch_alter_table("rejections", schema=None) as batch_op:
        batch_op.drop_index("ix_rejections_account_id")

    op.drop_table("rejections")
    with op.batch_alter_table("recent_events", schema=None) as batch_op:
        batch_op.drop_index("ix_recent_events_batch_no")
        batch_op.drop_index("ix_recent_events_account_identity")

    op.drop_table("recent_events")
    with op.batch_alter_table("profiles", schema=None) as batch_op:
        batch_op.drop_index("ix_profiles_account_email")

    op.drop_table("profiles")
    op.drop_table("leases")
    op.drop_table("lake_batches")
    op.drop_table("identity_aliases")
    with op.batch_alter_table("dedupe_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_dedupe_keys_day"))

    op.drop_table("dedupe_keys")
    op.drop_table("accounts")
