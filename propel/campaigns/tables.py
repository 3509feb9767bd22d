from sqlalchemy import (
    BigInteger,
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

campaigns = Table(
    "campaigns",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("account_id", String(32), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("status", String(20), nullable=False),  # draft scheduled running completed stopped
    Column("channel", String(20), nullable=False),
    Column("prediction_id", String(32), index=True),
    Column("audience", Text, nullable=False),  # rule tree JSON (propel.audiences)
    Column("content", Text, nullable=False),  # {"variants": [...]} JSON
    Column("schedule", Text, nullable=False),  # {"type": "now" | "at" | "recurring", ...}
    Column("dnd", Text, nullable=False, default="null"),
    Column("caps", Text, nullable=False, default="null"),
    Column("rate_per_second", Float),
    Column("holdout_pct", Float, nullable=False),
    Column("goal", Text, nullable=False, default="null"),
    Column("strategy", Text),
    Column("next_run_at", UTCDateTime()),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("started_at", UTCDateTime()),
    Column("finished_at", UTCDateTime()),
)

# One run of a campaign (recurring campaigns have many); its started_at is the clock
# that conversion attribution uses for messaged and holdout users alike.
dispatches = Table(
    "dispatches",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("campaign_id", String(32), nullable=False, index=True),
    Column("account_id", String(32), nullable=False),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("finished_at", UTCDateTime()),
    Column("status", String(20), nullable=False),  # sending, done, stopped
    Column("targeted", Integer, nullable=False, default=0),
)

# The outbox: one row per (dispatch, user); every targeted user ends in one state.
messages = Table(
    "messages",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("account_id", String(32), nullable=False),
    Column("campaign_id", String(32), nullable=False),
    Column("dispatch_id", BigInteger, nullable=False),
    Column("identity", String(256), nullable=False),
    Column("key", String(80), nullable=False, unique=True),  # Message-ID / idempotency key
    Column("variant", String(40)),
    Column("grp", String(8)),  # prediction group at send time
    Column("score", Float),
    Column("model_version", Integer),
    Column("state", String(16), nullable=False),
    Column("reason", String(200)),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UTCDateTime()),
    Column("claim_until", UTCDateTime()),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("sent_at", UTCDateTime()),
    Column("opened_at", UTCDateTime()),
    Column("clicked_at", UTCDateTime()),
    Column("converted_at", UTCDateTime()),
    Column("revenue", Float),
    Column("provider_ref", String(200)),
    # When the run is due for this user (their local time, for a campaign in each
    # user's timezone; NULL: the dispatch's start): where their conversion window opens.
    Column("due_at", UTCDateTime()),
    UniqueConstraint("dispatch_id", "identity"),
    Index("ix_messages_state", "state", "next_attempt_at"),
    Index("ix_messages_campaign", "campaign_id", "state"),
    Index("ix_messages_identity", "account_id", "identity"),
)

# Frequency caps: messages counted per user and day, updated in the same transaction
# that hands a message to a worker, so concurrent workers cannot exceed a cap.
send_counts = Table(
    "send_counts",
    metadata,
    Column("account_id", String(32), primary_key=True),
    Column("identity", String(256), primary_key=True),
    Column("day", Integer, primary_key=True, autoincrement=False),
    Column("sends", Integer, nullable=False),
)

# A campaign's send rate as a token bucket, read and spent in the transaction that
# hands messages to a worker, so every delivery process draws from the same bucket.
send_rates = Table(
    "send_rates",
    metadata,
    Column("campaign_id", String(32), primary_key=True),
    Column("tokens", Float, nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)

inbox_messages = Table(
    "inbox_messages",
    metadata,
    Column("key", String(80), primary_key=True),
    Column("account_id", String(32), nullable=False),
    Column("identity", String(256), nullable=False),
    Column("campaign_id", String(32)),
    Column("title", Text, nullable=False),
    Column("body", Text, nullable=False),
    Column("url", Text),
    Column("data", Text, nullable=False, default="{}"),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("viewed_at", UTCDateTime()),
    Column("clicked_at", UTCDateTime()),
    Index("ix_inbox_identity", "account_id", "identity", "created_at"),
)

channel_configs = Table(
    "channel_configs",
    metadata,
    Column("account_id", String(32), primary_key=True),
    Column("channel", String(20), primary_key=True),
    Column("config", Text, nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)
