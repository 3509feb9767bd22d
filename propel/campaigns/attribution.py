"""Conversion attribution: did each targeted user (messaged *and* holdout, on the same
clock) reach the campaign's goal within the window after the dispatch started?

Set-based: one DuckDB query joins the dispatch's identities (resolved through aliases,
so a conversion made under a merged anonymous id counts) with one lake snapshot; the
first conversion time and the revenue sum are then written back in bulk. Re-running
writes the same values, so it is idempotent.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
from sqlalchemy import Connection, bindparam, select, update

from propel.campaigns.tables import campaigns, dispatches, messages
from propel.core import Propel
from propel.lake.reader import snapshot
from propel.predictions.features import condition_sql, json_text, lit, ts_lit
from propel.predictions.spec import Condition
from propel.profiles.tables import identity_aliases


def _goal_sql(goal: dict[str, Any], start: datetime, end: datetime) -> str:
    conds = [condition_sql(Condition(**c)) for c in goal.get("where", [])]
    where = "".join(f" AND {c}" for c in conds)
    revenue = (f"TRY_CAST({json_text(goal['revenue_property'])} AS DOUBLE)"
               if goal.get("revenue_property") else "NULL")
    return f"""
      SELECT t.identity AS identity, min(e.ts) AS converted_at, sum({revenue}) AS revenue
      FROM targets t
      JOIN (SELECT COALESCE(a.identity, ev.identity) AS uid, ev.ts, ev.properties
            FROM events ev LEFT JOIN aliases a ON a.alias = ev.identity
            WHERE ev.kind = 'event' AND ev.name = {lit(goal['event'])}
              AND ev.ts >= {ts_lit(start)} AND ev.ts < {ts_lit(end)}{where}) e
        ON e.uid = t.identity
      GROUP BY t.identity"""


def attribute_conversions(propel: Propel, campaign_id: str, *, now: datetime | None = None
                          ) -> int:
    """Record conversions for every dispatch of the campaign; returns users converted."""
    import orjson

    now = now or datetime.now(UTC)
    with propel.db.read() as conn:
        row = conn.execute(select(campaigns.c.account_id, campaigns.c.goal).where(
            campaigns.c.id == campaign_id)).first()
        if row is None:
            return 0
        goal = orjson.loads(row.goal)
        if not goal:
            return 0
        runs = conn.execute(select(dispatches.c.id, dispatches.c.started_at).where(
            dispatches.c.campaign_id == campaign_id)).all()
        aliases = conn.execute(select(identity_aliases.c.alias, identity_aliases.c.identity)
                               .where(identity_aliases.c.account_id == row.account_id)).all()
    total = 0
    window = timedelta(hours=goal.get("window_hours", 24))
    for dispatch_id, started in runs:
        with propel.db.read() as conn:
            idents = conn.execute(select(messages.c.identity).where(
                messages.c.dispatch_id == dispatch_id)).scalars().all()
        if not idents:
            continue
        with snapshot(propel.db, propel.lake, row.account_id) as (con, _):
            con.execute("SET TimeZone = 'UTC'")
            con.register("targets", pd.DataFrame({"identity": idents}))
            con.register("aliases", pd.DataFrame(aliases, columns=["alias", "identity"])
                         if aliases else pd.DataFrame({"alias": pd.Series([], dtype=str),
                                                       "identity": pd.Series([], dtype=str)}))
            found = con.execute(_goal_sql(goal, started, min(started + window, now))).fetchall()
        propel.db.write(lambda conn, d=dispatch_id, f=found: _record(conn, d, f))
        total += len(found)
    return total


def _record(conn: Connection, dispatch_id: int, found: list[tuple]) -> None:
    if not found:
        return
    stmt = update(messages).where(
        messages.c.dispatch_id == dispatch_id, messages.c.identity == bindparam("ident")
    ).values(converted_at=bindparam("at"), revenue=bindparam("rev"))
    conn.execute(stmt, [{"ident": i, "at": at.astimezone(UTC), "rev": rev}
                        for i, at, rev in found])
