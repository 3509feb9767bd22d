from sqlalchemy import (
    Column,
    Float,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from propel.db.meta import BigId, UTCDateTime, metadata

predictions = Table(
    "predictions",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("account_id", String(32), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("template", String(40)),
    Column("goal_event", String(256), nullable=False),
    Column("goal_where", Text, nullable=False, default="[]"),
    Column("goal_absent", Integer, nullable=False, default=0),
    Column("polarity", String(12), nullable=False),
    Column("window_days", Integer, nullable=False),
    Column("audience", Text, nullable=False, default="{}"),
    Column("score_every_days", Integer, nullable=False, default=1),
    Column("retrain_every_days", Integer, nullable=False, default=15),
    Column("groups", Text, nullable=False),
    Column("status", String(20), nullable=False, default="new"),
    Column("current_version", Integer),
    Column("last_trained_at", UTCDateTime()),
    Column("last_scored_at", UTCDateTime()),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    UniqueConstraint("account_id", "name"),
)

model_versions = Table(
    "model_versions",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("prediction_id", String(32), nullable=False),
    Column("version", Integer, nullable=False),
    Column("kind", String(20), nullable=False),  # lightgbm, logistic, bgnbd
    Column("trained_at", UTCDateTime(), nullable=False),
    Column("as_of", UTCDateTime(), nullable=False),
    Column("lake_version", Integer),
    Column("seed", Integer, nullable=False),
    Column("features", Text, nullable=False),
    Column("metrics", Text, nullable=False),
    Column("promoted", Integer, nullable=False, default=0),
    Column("reason", Text, nullable=False),
    Column("artifact_path", Text, nullable=False),
    Column("artifact_sha256", String(64), nullable=False),
    UniqueConstraint("prediction_id", "version"),
)

# The current score of every scored user; history is kept in the lake (scores table).
user_predictions = Table(
    "user_predictions",
    metadata,
    Column("prediction_id", String(32), primary_key=True),
    Column("identity", String(256), primary_key=True),
    Column("account_id", String(32), nullable=False),
    Column("probability", Float, nullable=False),
    Column("score", Float, nullable=False),
    Column("grp", String(8), nullable=False),
    Column("model_version", Integer, nullable=False),
    Column("scored_at", UTCDateTime(), nullable=False),
    Column("reasons", Text, nullable=False, default="[]"),
    Index("ix_user_predictions_account_identity", "account_id", "identity"),
    Index("ix_user_predictions_group", "prediction_id", "grp"),
)

scoring_runs = Table(
    "scoring_runs",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("prediction_id", String(32), nullable=False),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("finished_at", UTCDateTime()),
    Column("as_of", UTCDateTime(), nullable=False),
    Column("model_version", Integer),
    Column("rows", Integer),
    Column("changed", Integer),
    Column("outcome", String(20), nullable=False),
    Column("error", Text),
    Column("summary", Text),
    Index("ix_scoring_runs_prediction", "prediction_id", "id"),
)
