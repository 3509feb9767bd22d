"""Letting users in, and the events that move them.

Entry by audience or prediction groups: the rule is evaluated when the journey is
published and then every ``every_hours``; each run is claimed by moving
``next_entry_at`` in one conditional UPDATE, so two workers never run it twice.

Entry by event or likelihood change, ``wait_until`` and the goal: every pass reads the
matching events *received* since the journey's cursor (minus ``OVERLAP``, because on
PostgreSQL an event can commit a little after a later-received one), and applies them
idempotently: an entry takes the next entry number of its user (unique per journey,
so a re-read event or a second worker adds nothing), a waiting user is woken only
while still waiting, a conversion is recorded only once.

Re-entry: ``once`` lets a user in once ever; ``after_days`` lets them in again when
they are not in the journey and their last entry is at least that many days old.
The holdout is drawn at entry, per journey, entry number and user, deterministically:
a holdout entry is recorded (for the lift) and goes no further.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection

from propel.campaigns.dispatch import in_holdout
from propel.core import Propel
from propel.journeys import store
from propel.journeys.events import Matcher, received_since
from propel.journeys.spec import entry_audience, entry_event

log = logging.getLogger("propel.journeys")
OVERLAP_US = 300 * 1_000_000
ENTER_CHUNK = 5000


def _now_us() -> int:
    return time.time_ns() // 1000


def enter(conn: Connection, journey: Any, version: int, spec: dict[str, Any],
          candidates: list[tuple[str, str]], now: datetime,
          history: dict[str, tuple[int, datetime, bool]] | None = None) -> int:
    """Let in the (identity, trigger) candidates that the re-entry policy allows."""
    if not candidates:
        return 0
    if history is None:
        history = store.entry_history(conn, journey.id, sorted({c[0] for c in candidates}))
    policy = spec["reentry"]
    first = spec["steps"][0]["id"]
    rows, seen = [], set()
    for identity, trigger in candidates:
        if identity in seen:
            continue
        seen.add(identity)
        last = history.get(identity)
        if last is not None and (policy["policy"] == "once" or last[2]
                                 or last[1] > now - timedelta(days=policy["days"])):
            continue
        number = last[0] + 1 if last else 1
        held = in_holdout(journey.id, f"{identity}:{number}", spec["holdout_pct"])
        rows.append((journey.account_id, journey.id, version, identity, number, trigger[:256],
                     now, int(held), "done" if held else "active", None if held else first,
                     1, None if held else now, 0, "holdout" if held else None,
                     now if held else None))
    return store.insert_entries(conn, rows)


def enter_scheduled(propel: Propel, now: datetime) -> int:
    """Run the due audience / prediction-group entries of live journeys."""
    from propel import audiences

    with propel.db.read() as conn:
        due = [j for j in store.journey_rows(conn, statuses=("live",))
               if j.next_entry_at is not None and j.next_entry_at <= now]
        specs = {j.id: store.definition(conn, j.id, j.version) for j in due}
    entered = 0
    for j in due:
        spec = specs[j.id]
        rule = entry_audience(spec["entry"])
        if rule is None:
            continue
        nxt = now + timedelta(hours=spec["entry"]["every_hours"])
        if not propel.db.write(lambda conn, j=j, nxt=nxt: store.set_journey(
                conn, j.id, ("live",), next_entry_at=nxt) if _same_run(conn, j) else False):
            continue
        members = audiences.members(propel, j.account_id, rule, now=now, fresh=True)
        with propel.db.read() as conn:
            history = store.entry_history(conn, j.id, None)
        for start in range(0, len(members), ENTER_CHUNK):
            part = [(m, "audience") for m in members[start:start + ENTER_CHUNK]]
            entered += propel.db.write(
                lambda conn, j=j, part=part, spec=spec, history=history: enter(
                    conn, j, j.version, spec, part, now, history))
        log.info("journey %s: %s of %s audience members entered", j.name, entered,
                 len(members))
    return entered


def _same_run(conn: Connection, j: Any) -> bool:
    row = store.journey_row(conn, None, j.id)
    return row is not None and row.next_entry_at == j.next_entry_at


def _matchers(conn: Connection, j: Any, spec: dict[str, Any], now: datetime
              ) -> tuple[list[Matcher], dict[str, Any]]:
    """What to look for in this journey's new events, and what each match means."""
    matchers: list[Matcher] = []
    meaning: dict[str, Any] = {}
    trigger = entry_event(spec["entry"])
    if trigger is not None and j.status == "live":
        key = f"entry:{j.id}"
        matchers.append(Matcher(key, trigger[0], tuple(trigger[1])))
        meaning[key] = ("entry", j.version, spec)
    for version, step, _event in store.waiting_steps(conn, j.id):
        v_spec = store.definition(conn, j.id, version)
        found = next((s for s in v_spec["steps"] if s["id"] == step), None)
        if found is None or found["type"] != "wait_until":
            continue
        key = f"wait:{j.id}:{version}:{step}"
        matchers.append(Matcher(key, found["event"], tuple(found.get("where") or ())))
        meaning[key] = ("wait", version, step)
    for version in store.versions_with_goal_window(conn, j.id, now - timedelta(days=366)):
        goal = store.definition(conn, j.id, version).get("goal")
        if goal:
            key = f"goal:{j.id}:{version}"
            matchers.append(Matcher(key, goal["event"], tuple(goal.get("where") or ())))
            meaning[key] = ("goal", version, goal)
    return matchers, meaning


def scan_events(propel: Propel, now: datetime) -> dict[str, int]:
    """Apply the events received since each journey's cursor; moves the cursors."""
    counts = {"entered": 0, "woken": 0, "converted": 0}
    with propel.db.read() as conn:
        rows = store.journey_rows(conn, statuses=("live", "paused"))
        plans = []
        for j in rows:
            spec = store.definition(conn, j.id, j.version)
            matchers, meaning = _matchers(conn, j, spec, now)
            plans.append((j, matchers, meaning))
    for j, matchers, meaning in plans:
        started = _now_us()
        cursor = (j.event_cursor_us or started) - OVERLAP_US
        hits = received_since(propel, j.account_id, matchers, cursor) if matchers else {}
        for key, found in hits.items():
            if found:
                kind, n = _apply(propel, j, meaning[key], found, now)
                counts[kind] += n
        propel.db.write(lambda conn, j=j, started=started: store.set_journey(
            conn, j.id, None, event_cursor_us=started))
    return counts


def _at(ts_us: int) -> datetime:
    return datetime.fromtimestamp(ts_us / 1e6, UTC)


def _apply(propel: Propel, j: Any, meaning: tuple, found: list[tuple[str, int, str]],
           now: datetime) -> tuple[str, int]:
    kind, version, extra = meaning
    if kind == "entry":
        candidates = [(ident, mid) for ident, _ts, mid in found]
        return "entered", propel.db.write(lambda conn: enter(conn, j, version, extra,
                                                             candidates, now))
    hits = [(ident, _at(ts)) for ident, ts, _mid in found]
    if kind == "wait":
        return "woken", propel.db.write(lambda conn: store.wake(conn, j.id, version, extra,
                                                                hits, now))

    def _convert(conn: Connection) -> int:
        exited = store.convert(conn, j.id, version, extra["within_days"], hits, now)
        store.cancel_messages(conn, store.message_keys(conn, exited), "goal")
        return len(exited)

    return "converted", propel.db.write(_convert)
