"""Move acknowledged rows from ``recent_events`` into the lake, exactly once.

Contract (docs/architecture.md, "Flush"):
1. claim: one transaction numbers a batch (max + 1, and always above the lake's
   transaction version) and stamps unclaimed rows with it — ``FOR UPDATE SKIP
   LOCKED`` on PostgreSQL, the single writer on SQLite. Rows are chosen by
   ``batch_no IS NULL``, never by "id above the last flushed id", which would skip
   rows whose transactions committed out of id order;
2. write the batch's rows to Delta with application-transaction version = batch no;
3. mark the batch flushed.
After a crash, an unmarked batch whose number is <= the lake's transaction version
is only marked; a later one is written again from its (unchanged) rows.

All of it happens under the lake's writer lease (``store.writer_lease``), renewed
before every lake commit, so two flushers never interleave batches.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import timedelta

import pyarrow as pa
from sqlalchemy import Connection, delete, func, insert, select, update

from propel import faults
from propel.db.engine import Database
from propel.db.meta import utcnow
from propel.ingest.tables import recent_events
from propel.lake.store import FLUSHER_APP, SCHEMA, Lake, WriterLease, writer_lease
from propel.lake.tables import lake_batches

log = logging.getLogger("propel.lake")

_COLUMNS = [
    recent_events.c.account_id,
    recent_events.c.kind,
    recent_events.c.message_id,
    recent_events.c.identity,
    recent_events.c.name,
    recent_events.c.ts,
    recent_events.c.received_at,
    recent_events.c.source,
    recent_events.c.properties,
]


@dataclass
class FlushResult:
    batches: int = 0
    rows: int = 0
    recovered: int = 0
    max_lag_seconds: float = 0.0


def rows_to_arrow(rows: list) -> pa.Table:
    """recent_events rows (tuples in _COLUMNS order) → the lake's arrow schema."""
    cols = list(zip(*rows, strict=True)) if rows else [[] for _ in _COLUMNS]
    ts = pa.array(cols[5], pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    received = pa.array(cols[6], pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    return pa.table(
        {
            "account_id": pa.array(cols[0], pa.string()),
            "event_date": ts.cast(pa.timestamp("us")).cast(pa.date32()),
            "kind": pa.array(cols[1], pa.string()),
            "message_id": pa.array(cols[2], pa.string()),
            "identity": pa.array(cols[3], pa.string()),
            "name": pa.array(cols[4], pa.string()),
            "ts": ts,
            "received_at": received,
            "source": pa.array(cols[7], pa.string()),
            "properties": pa.array(cols[8], pa.string()),
        },
        schema=SCHEMA,
    )


def pending_stats(db: Database) -> tuple[int, int | None]:
    """(rows waiting to be claimed, received_at of the oldest in microseconds)."""
    with db.read() as conn:
        count, oldest = conn.execute(
            select(func.count(), func.min(recent_events.c.received_at)).where(
                recent_events.c.batch_no.is_(None)
            )
        ).one()
    return count, oldest


def _claim(conn: Connection, max_rows: int, floor: int = 0) -> tuple[int, int, int] | None:
    """Number a batch above both the last claimed batch and ``floor`` (the lake's
    transaction version: numbers must never fall back to or below what the lake
    already holds, or the batch would be taken as flushed) and stamp rows with it."""
    ids = select(recent_events.c.id).where(recent_events.c.batch_no.is_(None))
    ids = ids.order_by(recent_events.c.id).limit(max_rows)
    if conn.dialect.name == "postgresql":
        ids = ids.with_for_update(skip_locked=True)
    last = conn.execute(select(func.max(lake_batches.c.batch_no))).scalar() or 0
    batch_no = max(last, floor) + 1
    # One statement: the chosen ids never travel through Python.
    count = conn.execute(
        update(recent_events).where(recent_events.c.id.in_(ids))
        .values(batch_no=batch_no)
    ).rowcount
    if not count:
        return None
    oldest = conn.execute(
        select(func.min(recent_events.c.received_at)).where(recent_events.c.batch_no == batch_no)
    ).scalar()
    conn.execute(
        insert(lake_batches).values(
            batch_no=batch_no, row_count=count, created_at=utcnow(),
            oldest_received_at=oldest,
        )
    )
    return batch_no, count, oldest


def _batch_rows(db: Database, batch_no: int) -> list:
    with db.read() as conn:
        return conn.execute(
            select(*_COLUMNS).where(recent_events.c.batch_no == batch_no).order_by(
                recent_events.c.id
            )
        ).all()


def _mark(db: Database, batch_no: int) -> None:
    db.write(
        lambda conn: conn.execute(
            update(lake_batches)
            .where(lake_batches.c.batch_no == batch_no)
            .values(flushed_at=utcnow())
        )
    )


def _write_batch(db: Database, lake: Lake, batch_no: int, lease: WriterLease | None = None
                 ) -> int:
    rows = _batch_rows(db, batch_no)
    if rows:
        if lease is not None:
            lease.check()
        lake.append(rows_to_arrow(rows), app_id=FLUSHER_APP, version=batch_no)
    faults.crash_point("flush.after_lake_commit")
    return len(rows)


def recover(db: Database, lake: Lake, lease: WriterLease | None = None) -> int:
    """Finish batches a crashed flusher claimed but did not mark."""
    with db.read() as conn:
        unmarked = conn.execute(
            select(lake_batches.c.batch_no).where(lake_batches.c.flushed_at.is_(None)).order_by(
                lake_batches.c.batch_no
            )
        ).scalars().all()
    for batch_no in unmarked:
        if batch_no > lake.transaction_version(FLUSHER_APP):
            _write_batch(db, lake, batch_no, lease)
            log.info("rewrote unflushed batch %s after a crash", batch_no)
        faults.crash_point("flush.before_mark")
        _mark(db, batch_no)
    return len(unmarked)


def flush_batches(db: Database, lake: Lake, *, max_rows: int = 50_000, max_batches: int = 1000,
                  lease_wait: float = 0) -> FlushResult:
    """Flush everything pending now (holding the lake's writer lease)."""
    result = FlushResult()
    with writer_lease(db, wait_seconds=lease_wait) as lease:
        result.recovered = recover(db, lake, lease)
        floor = lake.transaction_version(FLUSHER_APP)
        for _ in range(max_batches):
            claimed = db.write(lambda conn: _claim(conn, max_rows, floor))
            if claimed is None:
                break
            batch_no, count, oldest = claimed
            faults.crash_point("flush.after_claim")
            _write_batch(db, lake, batch_no, lease)
            faults.crash_point("flush.before_mark")
            _mark(db, batch_no)
            result.batches += 1
            result.rows += count
            lag = time.time() - oldest / 1_000_000
            result.max_lag_seconds = max(result.max_lag_seconds, lag)
    return result


def should_flush(db: Database, *, min_rows: int, max_age_seconds: float) -> bool:
    count, oldest = pending_stats(db)
    if count == 0:
        return False
    return count >= min_rows or (time.time() - oldest / 1_000_000) >= max_age_seconds


def delete_flushed(db: Database, retention_seconds: int) -> int:
    """Drop rows whose batch has been in the lake longer than the retention; until
    then a reader that pinned an older lake version still finds them here. The batches'
    own records go too, except the newest, which keeps batch numbers increasing."""
    cutoff = utcnow() - timedelta(seconds=retention_seconds)

    def _delete(conn: Connection) -> int:
        old = select(lake_batches.c.batch_no).where(lake_batches.c.flushed_at < cutoff)
        deleted = conn.execute(
            delete(recent_events).where(recent_events.c.batch_no.in_(old))
        ).rowcount
        newest = select(func.max(lake_batches.c.batch_no)).scalar_subquery()
        conn.execute(delete(lake_batches).where(lake_batches.c.flushed_at < cutoff,
                                                lake_batches.c.batch_no < newest))
        return deleted

    return db.write(_delete)
