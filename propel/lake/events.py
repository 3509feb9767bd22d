"""Event look-ups for one user or one query, over a lake snapshot."""

from __future__ import annotations

from typing import Any

import orjson

from propel.db.engine import Database
from propel.lake.reader import snapshot
from propel.lake.store import Lake


def recent_events_of(db: Database, lake: Lake, account_id: str, identities: list[str],
                     limit: int) -> list[dict[str, Any]]:
    if limit == 0:
        return []
    with snapshot(db, lake, account_id) as (con, _):
        rows = con.execute(
            "SELECT message_id, name, ts, properties FROM events "
            "WHERE kind = 'event' AND identity IN (SELECT unnest(?)) "
            "ORDER BY ts DESC, message_id LIMIT ?",
            [identities, limit],
        ).fetchall()
    return [
        {"message_id": m, "name": n, "ts": ts.isoformat(), "properties": orjson.loads(p)}
        for m, n, ts, p in rows
    ]


def query_events(db: Database, lake: Lake, account_id: str, name: str, from_us: int, to_us: int,
                 after: tuple[int, str] | None, limit: int) -> list[tuple]:
    """Events named ``name`` with from_us <= ts < to_us, in (ts, message_id) order,
    after the keyset position ``after``: rows (message_id, identity, ts_us, properties)."""
    sql = ("SELECT message_id, identity, epoch_us(ts) AS t, properties FROM events "
           "WHERE kind = 'event' AND name = ? AND ts >= make_timestamptz(?) "
           "AND ts < make_timestamptz(?)")
    params: list[Any] = [name, from_us, to_us]
    if after is not None:
        sql += " AND (epoch_us(ts), message_id) > (?, ?)"
        params += list(after)
    sql += " ORDER BY t, message_id LIMIT ?"
    params.append(limit)
    with snapshot(db, lake, account_id) as (con, _):
        return con.execute(sql, params).fetchall()


def identities_with_event(db: Database, lake: Lake, account_id: str, name: str, from_us: int,
                          to_us: int, after: str, limit: int) -> list[str]:
    with snapshot(db, lake, account_id) as (con, _):
        rows = con.execute(
            "SELECT DISTINCT identity FROM events WHERE kind = 'event' AND name = ? "
            "AND ts >= make_timestamptz(?) AND ts < make_timestamptz(?) AND identity > ? "
            "ORDER BY identity LIMIT ?",
            [name, from_us, to_us, after, limit],
        ).fetchall()
    return [r[0] for r in rows]
