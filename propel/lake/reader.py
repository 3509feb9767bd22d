"""Read events exactly once: one pinned lake version plus the recent rows above it.

A snapshot pins the lake's current version V, reads the flusher's transaction
version T recorded in V, and adds only the ``recent_events`` rows of batches above T
(or not yet claimed). A flush committing meanwhile lands in a later version, which
this snapshot does not see, and its rows are still in ``recent_events`` (they are
deleted only after ``recent_retention_seconds``).

DuckDB scans the pinned version through ``DeltaTable.to_pyarrow_dataset()``: no
DuckDB extension is downloaded or loaded.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
from sqlalchemy import or_, select

from propel.db.engine import Database
from propel.ingest.tables import recent_events
from propel.lake.flush import _COLUMNS, rows_to_arrow
from propel.lake.store import FLUSHER_APP, SCHEMA, Lake


@dataclass(frozen=True)
class Pin:
    lake_version: int | None
    flushed_through: int  # the flusher's batch number recorded in that version


def duckdb_connection(threads: int | None = None, *, memory_limit: str | None = None,
                      temp_directory: str | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB that never downloads or loads extensions; with a memory
    limit, large aggregates spill to ``temp_directory`` instead of growing."""
    config: dict[str, Any] = {"autoinstall_known_extensions": False,
                              "autoload_known_extensions": False}
    if threads:
        config["threads"] = threads
    if memory_limit:
        config["memory_limit"] = memory_limit
    if temp_directory:
        config["temp_directory"] = temp_directory
    con = duckdb.connect(config=config)
    con.execute("SET enable_progress_bar = false")  # it would print into command output
    return con


def _recent(db: Database, pin: Pin, account_id: str | None) -> pa.Table:
    query = select(*_COLUMNS).where(
        or_(recent_events.c.batch_no.is_(None), recent_events.c.batch_no > pin.flushed_through)
    )
    if account_id is not None:
        query = query.where(recent_events.c.account_id == account_id)
    with db.read() as conn:
        rows = conn.execute(query).all()
    return rows_to_arrow(rows)


def pin(lake: Lake) -> tuple[Pin, ds.Dataset | None]:
    table = lake.table()
    if table is None:
        return Pin(None, 0), None
    return (
        Pin(table.version(), table.transaction_version(FLUSHER_APP) or 0),
        table.to_pyarrow_dataset(),
    )


@contextmanager
def snapshot(db: Database, lake: Lake, account_id: str | None = None,
             con: duckdb.DuckDBPyConnection | None = None
             ) -> Iterator[tuple[duckdb.DuckDBPyConnection, Pin]]:
    """A DuckDB connection with a view ``events`` (lake ∪ recent, each event once),
    scoped to ``account_id`` when given. Columns: see ``propel.lake.store.SCHEMA``."""
    the_pin, dataset = pin(lake)
    recent = _recent(db, the_pin, account_id)
    own = con is None
    con = con or duckdb_connection(memory_limit=lake.query_memory_limit,
                                   temp_directory=lake.query_temp_dir)
    try:
        con.register("_recent_events", recent)
        if dataset is None:
            con.register("_lake_events", SCHEMA.empty_table())
        else:
            if account_id is not None:
                dataset = dataset.filter(ds.field("account_id") == account_id)
            con.register("_lake_events", dataset)
        con.execute(
            "CREATE OR REPLACE TEMP VIEW events AS "
            "SELECT * FROM _lake_events UNION ALL SELECT * FROM _recent_events"
        )
        yield con, the_pin
    finally:
        if own:
            con.close()


def count_events(db: Database, lake: Lake, account_id: str, name: str | None = None,
                 kind: str = "event") -> int:
    with snapshot(db, lake, account_id) as (con, _):
        sql = "SELECT count(*) FROM events WHERE kind = ?"
        params: list = [kind]
        if name:
            sql += " AND name = ?"
            params.append(name)
        return con.execute(sql, params).fetchone()[0]


def message_ids(db: Database, lake: Lake, account_id: str | None = None) -> list[str]:
    """Every stored message id (with repeats, if any): for exactly-once checks."""
    with snapshot(db, lake, account_id) as (con, _):
        return [r[0] for r in con.execute("SELECT message_id FROM events").fetchall()]
