from sqlalchemy import BigInteger, Column, Index, Integer, String, Table, Text

from propel.db.meta import BigId, UTCDateTime, metadata

# Accepted events and profile changes wait here until the flusher moves them to the lake.
# batch_no is NULL until a flush claims the row; see docs/architecture.md, "Flush".
recent_events = Table(
    "recent_events",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("account_id", String(32), nullable=False),
    Column("batch_no", BigInteger),
    Column("kind", String(8), nullable=False),  # "event" or "profile"
    Column("message_id", String(256), nullable=False),
    Column("identity", String(256), nullable=False),
    Column("name", String(256), nullable=False),
    Column("ts", BigInteger, nullable=False),  # epoch microseconds
    Column("received_at", BigInteger, nullable=False),
    Column("source", String(16), nullable=False),
    Column("properties", Text, nullable=False),
    Index("ix_recent_events_batch_no", "batch_no"),
)

# Key-only: which message ids an account has sent lately. Pruned by day, walking the
# primary key in hash ranges: an index on day would cost every accepted event a random
# B-tree insert of its own.
dedupe_keys = Table(
    "dedupe_keys",
    metadata,
    Column("account_id", String(32), primary_key=True),
    Column("key_hash", BigInteger, primary_key=True, autoincrement=False),
    Column("day", Integer, nullable=False),
    sqlite_with_rowid=False,
)

# Keys accepted lately on SQLite, in arrival order, until they settle into dedupe_keys
# (see propel/ingest/dedupe.py).
dedupe_recent = Table(
    "dedupe_recent",
    metadata,
    Column("seq", BigId, primary_key=True, autoincrement=True),
    Column("account_id", String(32), nullable=False),
    Column("key_hash", BigInteger, nullable=False),
    Column("day", Integer, nullable=False),
    # Never reuse a seq after the table empties: readers remember the last one they saw.
    sqlite_autoincrement=True,
)

rejections = Table(
    "rejections",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("account_id", String(32), nullable=False),
    Column("source", String(16), nullable=False),
    Column("received_at", UTCDateTime(), nullable=False),
    Column("position", Integer),  # the record's index in its batch
    Column("field", String(200), nullable=False),
    Column("reason", String(500), nullable=False),
    Column("record", Text, nullable=False),
    Index("ix_rejections_account_id", "account_id", "id"),
)
