"""Conversion attribution: did each targeted user (messaged *and* holdout, on the same
clock) reach the campaign's goal within the window after the run was due for them?

Set-based: one lake snapshot for the whole campaign and, per dispatch, one DuckDB join
between the dispatch's messages and the goal events in their windows. A user's window
is ``[due, due + window_hours)`` (default 24 h, cut at ``now`` while it is still open),
where ``due`` is the dispatch's start or, for a campaign in each user's timezone, the
user's local send time (``messages.due_at``, set for holdout users too): such a run
starts at the earliest zone's time, up to a day before it reaches the last zone. Both
sides are resolved through the account's
aliases, so a conversion made under a merged anonymous id counts for the user, and a
message sent to an id that was later merged into another still sees that identity's
events. The same join compares the result with what the messages hold and returns only
the rows that differ, which are written in bulk (one ``UPDATE … FROM
json_to_recordset(…)`` per chunk on PostgreSQL, one prepared statement over the chunk
on SQLite). A re-run
therefore writes nothing and leaves every value as it was, and a conversion that no
longer qualifies (the goal was edited) is cleared.

Per (dispatch, user): ``converted_at`` is the first goal event in the window, ``revenue``
the sum of the revenue property over all goal events in the window, added as a
fixed-point decimal so that the total does not depend on the order DuckDB adds in.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import Connection, String, func, select, text, type_coerce

from propel.campaigns.tables import campaigns, dispatches, messages
from propel.core import Propel
from propel.db.engine import Database
from propel.lake.reader import snapshot
from propel.predictions.features import condition_sql, json_text, lit, ts_lit
from propel.predictions.spec import Condition
from propel.profiles.tables import identity_aliases

DEFAULT_WINDOW_HOURS = 24
WRITE_CHUNK = 20_000
# How both databases' timestamps are compared and written: UTC text, the form SQLite
# stores (and SQLAlchemy reads back).
_TS_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


def _goal_sql(goal: dict[str, Any], started: datetime, window: timedelta, now: datetime,
              bounds: tuple[datetime, datetime]) -> str:
    """Per target: the first goal time (UTC text) and the revenue in its own window,
    ``[start, start + window)`` cut at ``now``, where ``start`` is the message's
    ``due_at`` or else the dispatch's start; plus what the message holds now.
    ``bounds`` (the earliest start, the latest end) only narrow the scan."""
    conds = [condition_sql(Condition(**c)) for c in goal.get("where") or []]
    where = "".join(f" AND {c}" for c in conds)  # conditions read ``properties``
    revenue = (f"TRY_CAST(TRY_CAST({json_text(goal['revenue_property'])} AS DOUBLE)"
               " AS DECIMAL(38, 6))" if goal.get("revenue_property") else "NULL")
    low, high = bounds
    first_day = low.astimezone(UTC).date().isoformat()
    last_day = high.astimezone(UTC).date().isoformat()
    seconds = int(window.total_seconds())
    return f"""
      WITH windows AS (
        SELECT t.identity, t.cur_at, t.cur_rev, COALESCE(a.identity, t.identity) AS uid,
               COALESCE(CAST(t.due_at || '+00:00' AS TIMESTAMPTZ), {ts_lit(started)}) AS opens
        FROM targets t LEFT JOIN aliases a ON a.alias = t.identity
      ), goal_events AS (
        SELECT COALESCE(a.identity, e.identity) AS uid, e.ts, {revenue} AS revenue
        FROM events e LEFT JOIN aliases a ON a.alias = e.identity
        WHERE kind = 'event' AND name = {lit(goal['event'])}
          AND event_date >= DATE '{first_day}' AND event_date <= DATE '{last_day}'
          AND ts >= {ts_lit(low)} AND ts < {ts_lit(high)}{where}
      ), per_target AS (
        SELECT w.identity, min(g.ts) AS converted_at,
               CAST(sum(g.revenue) AS DOUBLE) AS revenue
        FROM windows w JOIN goal_events g ON g.uid = w.uid AND g.ts >= w.opens
          AND g.ts < least(w.opens + INTERVAL {seconds} SECOND, {ts_lit(now)})
        GROUP BY w.identity
      )
      SELECT w.identity, w.cur_at, w.cur_rev,
             strftime(CAST(p.converted_at AS TIMESTAMP), '{_TS_FORMAT}') AS new_at,
             p.revenue AS new_rev
      FROM windows w LEFT JOIN per_target p ON p.identity = w.identity"""


def _diff_sql(goal_sql: str) -> str:
    return f"""
      SELECT count(new_at) OVER () AS converted, identity, new_at, new_rev,
             new_at IS DISTINCT FROM cur_at OR new_rev IS DISTINCT FROM cur_rev AS changed
      FROM ({goal_sql}) j
      QUALIFY changed OR row_number() OVER () = 1"""


def _current(db: Database, dispatch_id: int) -> pa.Table:
    """The dispatch's messages: identity, conversion time as UTC text, revenue (read
    with the driver's own cursor: no per-row processing for 100,000s of rows)."""
    m = messages.c
    with db.read() as conn:
        at = _utc_text(conn, m.converted_at)
        query = select(m.identity, at, m.revenue, _utc_text(conn, m.due_at)).where(
            m.dispatch_id == dispatch_id)
        compiled = query.compile(dialect=conn.dialect)
        params = compiled.construct_params()
        args = ([params[k] for k in compiled.positiontup] if compiled.positional else params)
        cursor = conn.connection.dbapi_connection.cursor()
        try:
            cursor.execute(str(compiled), args)
            rows = cursor.fetchall()
        finally:
            cursor.close()
    return pa.table({"identity": pa.array([r[0] for r in rows], pa.string()),
                     "cur_at": pa.array([r[1] for r in rows], pa.string()),
                     "cur_rev": pa.array([r[2] for r in rows], pa.float64()),
                     "due_at": pa.array([r[3] for r in rows], pa.string())})


def _utc_text(conn: Connection, column: Any) -> Any:
    """A timestamp column as UTC text in ``_TS_FORMAT`` (SQLite stores it so)."""
    if conn.dialect.name == "sqlite":
        return type_coerce(column, String)
    return func.to_char(func.timezone("UTC", column), "YYYY-MM-DD HH24:MI:SS.US",
                        type_=String)


def attribute_conversions(propel: Propel, campaign_id: str, *, now: datetime | None = None
                          ) -> int:
    """Record conversions for every dispatch of the campaign; returns the number of
    (dispatch, user) rows converted."""
    now = now or datetime.now(UTC)
    with propel.db.read() as conn:
        row = conn.execute(select(campaigns.c.account_id, campaigns.c.goal).where(
            campaigns.c.id == campaign_id)).first()
        if row is None:
            return 0
        goal = orjson.loads(row.goal) if row.goal else None
        runs = conn.execute(select(dispatches.c.id, dispatches.c.started_at).where(
            dispatches.c.campaign_id == campaign_id).order_by(dispatches.c.id)).all()
        aliases = conn.execute(select(identity_aliases.c.alias, identity_aliases.c.identity)
                               .where(identity_aliases.c.account_id == row.account_id)).all()
    if not goal or not goal.get("event") or not runs:
        return 0
    window = timedelta(hours=goal.get("window_hours") or DEFAULT_WINDOW_HOURS)
    total = 0
    with snapshot(propel.db, propel.lake, row.account_id) as (con, _):
        con.execute("SET TimeZone = 'UTC'")
        con.register("aliases", pa.table({
            "alias": pa.array([a for a, _ in aliases], pa.string()),
            "identity": pa.array([i for _, i in aliases], pa.string())}))
        for dispatch_id, started in runs:
            targets = _current(propel.db, dispatch_id)
            if targets.num_rows == 0:
                continue
            # a window not yet open finds nothing (and clears what no longer holds)
            con.register("targets", targets)
            sql = _goal_sql(goal, started, window, now, _bounds(targets, started, window, now))
            rows = con.execute(_diff_sql(sql)).fetchall()
            con.unregister("targets")
            if rows:
                total += rows[0][0]
            changes = [(ident, at, rev) for _, ident, at, rev, changed in rows if changed]
            for i in range(0, len(changes), WRITE_CHUNK):
                chunk = changes[i:i + WRITE_CHUNK]
                propel.db.write(lambda conn, d=dispatch_id, c=chunk: _record(conn, d, c))
    return total


def _bounds(targets: pa.Table, started: datetime, window: timedelta, now: datetime
            ) -> tuple[datetime, datetime]:
    """The span every target's window lies in (empty when none is open yet)."""
    due = [datetime.fromisoformat(t).replace(tzinfo=UTC)
           for t in pc.unique(targets["due_at"].drop_null()).to_pylist()]
    first = min([started, *due])
    last = max([started, *due]) + window
    return first, max(first, min(last, now))


def _record(conn: Connection, dispatch_id: int,
            changes: list[tuple[str, str | None, float | None]]) -> None:
    """Set (identity, converted_at as UTC text, revenue) on the dispatch's messages."""
    if not changes:
        return
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql(
            "UPDATE messages SET converted_at = ?, revenue = ? "
            "WHERE dispatch_id = ? AND identity = ?",
            [(at, rev, dispatch_id, ident) for ident, at, rev in changes])
        return
    rows = orjson.dumps([{"i": ident, "a": at, "r": rev} for ident, at, rev in changes])
    conn.execute(text(
        "UPDATE messages AS m SET converted_at = CAST(v.a || '+00' AS timestamptz), "
        "revenue = v.r FROM json_to_recordset(CAST(:rows AS json)) "
        "AS v(i text, a text, r double precision) "
        "WHERE m.dispatch_id = :d AND m.identity = v.i"), {"rows": rows.decode(), "d": dispatch_id})
