"""Event look-ups for journeys, over one lake snapshot (lake ∪ recent rows, each event
once; ``propel.lake.reader``). All of this folder's DuckDB SQL is here.

Two questions are asked:
- which matching events were *received* since a cursor (entry by event, a
  ``wait_until`` coming true, a goal reached), and
- which matching events did these users do (branch conditions).
Events are matched by name and property filters (``where``, the conditions of
``propel.predictions.spec``). An event whose own time is more than ``LATE_DAYS`` before
the cursor is not looked at (it keeps the scan to recent lake partitions).

Events stay under the id they were sent with; an anonymous id merged into a profile is
resolved to that profile through ``identity_aliases`` as it points now, for the ids at
hand only (an account's aliases can number millions).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from propel.core import Propel
from propel.lake.reader import snapshot
from propel.predictions.features import condition_sql, lit
from propel.predictions.spec import Condition
from propel.profiles import aliases_of_many, resolve_many

LATE_DAYS = 7


@dataclass(frozen=True)
class Matcher:
    key: str
    name: str
    where: tuple[dict[str, Any], ...] = ()

    def sql(self) -> str:
        conds = [condition_sql(Condition(**c)) for c in self.where]
        return "".join(f" AND {c}" for c in [f"name = {lit(self.name)}", *conds])


def _day(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, UTC).date().isoformat()


def received_since(propel: Propel, account_id: str, matchers: list[Matcher], from_us: int
                   ) -> dict[str, list[tuple[str, int, str]]]:
    """Per matcher key: (identity, ts µs, message id) of events received at or after
    ``from_us``, in event-time order."""
    out: dict[str, list[tuple[str, int, str]]] = {m.key: [] for m in matchers}
    if not matchers:
        return out
    oldest = from_us - LATE_DAYS * 86_400_000_000
    with snapshot(propel.db, propel.lake, account_id) as (con, _):
        for m in matchers:
            out[m.key] = [tuple(r) for r in con.execute(
                "SELECT identity, epoch_us(ts), message_id FROM events "
                f"WHERE kind = 'event'{m.sql()} AND event_date >= DATE '{_day(oldest)}' "
                "AND received_at >= make_timestamptz(?) AND ts >= make_timestamptz(?) "
                "ORDER BY ts, message_id", [from_us, oldest]).fetchall()]
    sent_as = sorted({r[0] for rows in out.values() for r in rows})
    with propel.db.read() as conn:
        now_is = resolve_many(conn, account_id, sent_as)
    return {key: [(now_is.get(who, who), ts, mid) for who, ts, mid in rows]
            for key, rows in out.items()}


def done_by(propel: Propel, account_id: str, identities: list[str], matchers: list[Matcher],
            since: datetime) -> dict[str, dict[str, list[int]]]:
    """Per user: matcher key -> times (µs) of the user's matching events since
    ``since``."""
    out: dict[str, dict[str, list[int]]] = {}
    if not matchers or not identities:
        return out
    since = since - timedelta(seconds=1)
    with propel.db.read() as conn:
        owner = {i: i for i in identities} | aliases_of_many(conn, account_id, identities)
    with snapshot(propel.db, propel.lake, account_id) as (con, _):
        for m in matchers:
            rows = con.execute(
                "SELECT identity, epoch_us(ts) FROM events "
                f"WHERE kind = 'event'{m.sql()} AND event_date >= DATE "
                f"'{since.astimezone(UTC).date().isoformat()}' AND ts >= ? "
                "AND identity IN (SELECT unnest(?))", [since, list(owner)]).fetchall()
            for sent_as, ts in rows:
                out.setdefault(owner[sent_as], {}).setdefault(m.key, []).append(ts)
    return out

