"""predictions

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 16:09:48.945440
"""

import sqlalchemy as sa
from alembic import op

import propel.db.meta

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "model_versions",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("prediction_id", sa.String(length=32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("trained_at", propel.db.meta.UTCDateTime(timezone=True), nullable=False),
        sa.Column("as_of", propel.db.meta.UTCDateTime(timezone=True), nullable=False),
        sa.Column("lake_version", sa.Integer(), nullable=True),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("features", sa.Text(), nullable=False),
        sa.Column("metrics", sa.Text(), nullable=False),
        sa.Column("promoted", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("artifact_path", sa.Text(), nullable=False),
        sa.Column("artifact_sha256", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_versions")),
        sa.UniqueConstraint(
            "prediction_id", "version", name=op.f("uq_model_versions_prediction_id_version")
        ),
    )
    op.create_table(
        "predictions",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("template", sa.String(length=40), nullable=True),
        sa.Column("goal_event", sa.String(length=256), nullable=False),
        sa.Column("goal_where", sa.Text(), nullable=False),
        sa.Column("goal_absent", sa.Integer(), nullable=False),
        sa.Column("polarity", sa.String(length=12), nullable=False),
        sa.Column("window_days", sa.Integer(), nullable=False),
        sa.Column("audience", sa.Text(), nullable=False),
        sa.Column("score_every_days", sa.Integer(), nullable=False),
        sa.Column("retrain_every_days", sa.Integer(), nullable=False),
        sa.Column("groups", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("current_version", sa.Integer(), nullable=True),
        sa.Column("last_trained_at", propel.db.meta.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_scored_at", propel.db.meta.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", propel.db.meta.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", propel.db.meta.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_predictions")),
        sa.UniqueConstraint("account_id", "name", name=op.f("uq_predictions_account_id_name")),
    )
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_predictions_account_id"), ["account_id"], unique=False)

    op.create_table(
        "scoring_runs",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("prediction_id", sa.String(length=32), nullable=False),
        sa.Column("started_at", propel.db.meta.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", propel.db.meta.UTCDateTime(timezone=True), nullable=True),
        sa.Column("as_of", propel.db.meta.UTCDateTime(timezone=True), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=True),
        sa.Column("rows", sa.Integer(), nullable=True),
        sa.Column("changed", sa.Integer(), nullable=True),
        sa.Column("outcome", sa.String(length=20), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("summary", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scoring_runs")),
    )
    with op.batch_alter_table("scoring_runs", schema=None) as batch_op:
        batch_op.create_index("ix_scoring_runs_prediction", ["prediction_id", "id"], unique=False)

    op.create_table(
        "user_predictions",
        sa.Column("prediction_id", sa.String(length=32), nullable=False),
        sa.Column("identity", sa.String(length=256), nullable=False),
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("probability", sa.Float(), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("grp", sa.String(length=8), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=False),
        sa.Column("scored_at", propel.db.meta.UTCDateTime(timezone=True), nullable=False),
        sa.Column("reasons", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("prediction_id", "identity", name=op.f("pk_user_predictions")),
    )
    with op.batch_alter_table("user_predictions", schema=None) as batch_op:
        batch_op.create_index(
            "ix_user_predictions_account_identity", ["account_id", "identity"], unique=False
        )
        batch_op.create_index("ix_user_predictions_group", ["prediction_id", "grp"], unique=False)

    with op.batch_alter_table("rejections", schema=None) as batch_op:
        batch_op.add_column(sa.Column("position", sa.Integer(), nullable=True))


def downgrade() -> None:

    with op.batch_alter_table("rejections", schema=None) as batch_op:
        batch_op.drop_column("position")

    with op.batch_alter_table("user_predictions", schema=None) as batch_op:
        batch_op.drop_index("ix_user_predictions_group")
        batch_op.drop_index("ix_user_predictions_account_identity")

    op.drop_table("user_predictions")
    with op.batch_alter_table("scoring_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_scoring_runs_prediction")

    op.drop_table("scoring_runs")
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_predictions_account_id"))

    op.drop_table("predictions")
    op.drop_table("model_versions")
