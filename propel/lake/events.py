"""Event look-ups for one user or one query, over a lake snapshot."""

from __future__ import annotations

from typing import Any

import orjson
import pyarrow as pa
from sqlalchemy import select

from propel.db.engine import Database
from propel.lake.reader import snapshot
from propel.lake.store import Lake
from propel.profiles.tables import identity_aliases


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


def _aliases(db: Database, account_id: str) -> pa.Table:
    """alias -> identity for one account (one hop: merges re-point older aliases)."""
    with db.read() as conn:
        rows = conn.execute(
            select(identity_aliases.c.alias, identity_aliases.c.identity).where(
                identity_aliases.c.account_id == account_id)
        ).all()
    return pa.table({"alias": pa.array([r[0] for r in rows], pa.string()),
                     "identity": pa.array([r[1] for r in rows], pa.string())})


def identities_with_event(db: Database, lake: Lake, account_id: str, name: str, from_us: int,
                          to_us: int, after: str, limit: int) -> list[str]:
    """The profiles (identities after alias resolution, each once, in order, after the
    keyset position ``after``) with an event ``name`` at from_us <= ts < to_us. Events
    stay under the id they were sent with, so without resolving, a merged anonymous id
    and its identity would list the same profile twice."""
    aliases = _aliases(db, account_id)
    with snapshot(db, lake, account_id) as (con, _):
        con.register("_aliases", aliases)
        rows = con.execute(
            "SELECT DISTINCT who FROM (SELECT coalesce(a.identity, e.identity) AS who "
            "FROM events e LEFT JOIN _aliases a ON a.alias = e.identity "
            "WHERE e.kind = 'event' AND e.name = ? AND e.ts >= make_timestamptz(?) "
            "AND e.ts < make_timestamptz(?)) WHERE who > ? ORDER BY who LIMIT ?",
            [name, from_us, to_us, after, limit],
        ).fetchall()
    return [r[0] for r in rows]
