from sqlalchemy import Column, Index, Integer, String, Table, Text

from propel.db.meta import BigId, UTCDateTime, metadata

# A named lease: who may act as the lake writer, the flusher, ... and until when.
leases = Table(
    "leases",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("owner", String(100), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
)

# Periodic work keeps its schedule here, not in the queue, so runs missed while
# everything was down happen once after restart.
schedules = Table(
    "schedules",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("task", String(100), nullable=False),
    Column("args", Text, nullable=False, default="{}"),
    Column("interval_seconds", Integer, nullable=False),
    Column("next_run_at", UTCDateTime(), nullable=False),
    Column("lease_until", UTCDateTime()),
    Column("enabled", Integer, nullable=False, default=1),
)

task_runs = Table(
    "task_runs",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("schedule", String(200), nullable=False),
    Column("task", String(100), nullable=False),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("finished_at", UTCDateTime()),
    Column("outcome", String(20), nullable=False),  # running, ok, failed
    Column("rows", Integer),
    Column("error", Text),
    Index("ix_task_runs_schedule", "schedule", "id"),
)
