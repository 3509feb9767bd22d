"""Journeys' tables: definitions and their versions, per-user state, the step log.

``journey_step_log`` is the idempotency ledger: one row per (entry, version, step,
seq), written in the same transaction as the step's effect (an outbox message, a
profile change) and the entry's move to its next step. A batch that is re-run after a
crash finds the row and repeats nothing; a batch that never committed left nothing.
"""

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from propel.db.meta import BigId, UTCDateTime, metadata

journeys = Table(
    "journeys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("account_id", String(32), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("status", String(16), nullable=False),  # draft live paused stopped
    Column("version", Integer, nullable=False),  # the version new entries take
    Column("event_cursor_us", BigInteger),  # events received from here on are scanned
    Column("next_entry_at", UTCDateTime()),  # audience / prediction-group entry
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("published_at", UTCDateTime()),
    Column("stopped_at", UTCDateTime()),
)

journey_versions = Table(
    "journey_versions",
    metadata,
    Column("journey_id", String(32), primary_key=True),
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("definition", Text, nullable=False),  # validated JSON (propel.journeys.spec)
    Column("created_at", UTCDateTime(), nullable=False),
    Column("published_at", UTCDateTime()),
)

# One row per time a user entered a journey; the version is fixed at entry.
journey_entries = Table(
    "journey_entries",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("account_id", String(32), nullable=False),
    Column("journey_id", String(32), nullable=False),
    Column("version", Integer, nullable=False),
    Column("identity", String(256), nullable=False),
    Column("entry_no", Integer, nullable=False),  # 1 for the first entry, 2 for a re-entry
    Column("trigger", String(256)),  # the event's message id, or "audience"
    Column("entered_at", UTCDateTime(), nullable=False),
    Column("holdout", Integer, nullable=False, default=0),
    Column("state", String(10), nullable=False),  # active waiting done
    Column("step", String(64)),  # the current step
    Column("seq", Integer, nullable=False, default=1),  # the how-manieth step of this entry
    Column("due_at", UTCDateTime()),
    Column("wait_event", String(256)),  # wait_until: the event awaited
    Column("waiting_since", UTCDateTime()),
    Column("woken", Integer, nullable=False, default=0),  # wait_until: the event came
    Column("converted_at", UTCDateTime()),
    Column("exit_reason", String(16)),  # exit end goal holdout stopped
    Column("exited_at", UTCDateTime()),
    UniqueConstraint("journey_id", "identity", "entry_no"),
    Index("ix_journey_entries_due", "state", "due_at"),
    Index("ix_journey_entries_step", "journey_id", "step", "state"),
)

journey_step_log = Table(
    "journey_step_log",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("journey_id", String(32), nullable=False),
    Column("version", Integer, nullable=False),
    Column("entry_id", BigInteger, nullable=False),
    Column("step", String(64), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    Column("outcome", String(64)),  # branch yes/no, split path, send message state
    Column("message_key", String(80)),
    UniqueConstraint("entry_id", "version", "step", "seq"),
    Index("ix_journey_step_log_step", "journey_id", "version", "step"),
)

# The outbox rows of a send step belong to a campaign of the journey's own (one per
# version and step, status running, never dispatched by itself) and to one dispatch
# per round (entry number × 1,000,000 + step number, so a user has at most one message
# per dispatch): delivery, caps, quiet hours and accounting are the campaigns' own.
journey_sends = Table(
    "journey_sends",
    metadata,
    Column("campaign_id", String(32), primary_key=True),
    Column("round", BigInteger, primary_key=True, autoincrement=False),
    Column("journey_id", String(32), nullable=False),
    Column("version", Integer, nullable=False),
    Column("step", String(64), nullable=False),
    Column("dispatch_id", BigInteger, nullable=False),
)

__all__ = ["journey_entries", "journey_sends", "journey_step_log",
           "journey_versions", "journeys"]
