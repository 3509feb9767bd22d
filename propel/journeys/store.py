"""The journeys' operational SQL, in one place. Functions taking a ``Connection`` run
inside the caller's transaction (``Database.write`` or ``read``)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import orjson
from sqlalchemy import Connection, and_, bindparam, case, func, insert, select, update

from propel.campaigns.tables import campaigns, dispatches, messages
from propel.db.bulk import db_time, insert_many
from propel.journeys.tables import (
    journey_entries,
    journey_sends,
    journey_step_log,
    journey_versions,
    journeys,
)
from propel.predictions.tables import predictions, user_predictions
from propel.profiles.tables import profiles

IN_FLIGHT = ("active", "waiting")
_CHUNK = 500
E = journey_entries.c


def chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


# ---------------------------------------------------------------- journeys, versions

def journey_row(conn: Connection, account_id: str | None, journey_id: str) -> Any:
    query = select(journeys).where(journeys.c.id == journey_id)
    if account_id is not None:
        query = query.where(journeys.c.account_id == account_id)
    return conn.execute(query).first()


def journey_rows(conn: Connection, account_id: str | None = None,
                 statuses: tuple[str, ...] | None = None) -> list[Any]:
    query = select(journeys).order_by(journeys.c.created_at)
    if account_id is not None:
        query = query.where(journeys.c.account_id == account_id)
    if statuses:
        query = query.where(journeys.c.status.in_(statuses))
    return conn.execute(query).all()


def definition(conn: Connection, journey_id: str, version: int) -> dict[str, Any]:
    text = conn.execute(select(journey_versions.c.definition).where(
        journey_versions.c.journey_id == journey_id,
        journey_versions.c.version == version)).scalar()
    return orjson.loads(text)


def versions(conn: Connection, journey_id: str) -> list[Any]:
    return conn.execute(select(journey_versions).where(
        journey_versions.c.journey_id == journey_id).order_by(journey_versions.c.version)).all()


def insert_version(conn: Connection, journey_id: str, version: int, spec: dict[str, Any],
                   now: datetime, published: bool) -> None:
    conn.execute(insert(journey_versions).values(
        journey_id=journey_id, version=version, definition=orjson.dumps(spec).decode(),
        created_at=now, published_at=now if published else None))


def replace_version(conn: Connection, journey_id: str, version: int, spec: dict[str, Any]
                    ) -> None:
    conn.execute(update(journey_versions).where(
        journey_versions.c.journey_id == journey_id,
        journey_versions.c.version == version).values(definition=orjson.dumps(spec).decode()))


def set_journey(conn: Connection, journey_id: str, allowed: tuple[str, ...] | None,
                **values: Any) -> bool:
    query = update(journeys).where(journeys.c.id == journey_id)
    if allowed:
        query = query.where(journeys.c.status.in_(allowed))
    return conn.execute(query.values(**values)).rowcount == 1


def mark_published(conn: Connection, journey_id: str, version: int, now: datetime) -> None:
    conn.execute(update(journey_versions).where(
        journey_versions.c.journey_id == journey_id, journey_versions.c.version == version,
        journey_versions.c.published_at.is_(None)).values(published_at=now))


def insert_step_campaign(conn: Connection, values: dict[str, Any]) -> None:
    exists = conn.execute(select(campaigns.c.id).where(campaigns.c.id == values["id"])).first()
    if exists is None:
        conn.execute(insert(campaigns).values(**values))


def step_campaigns(conn: Connection, journey_id: str) -> list[Any]:
    return conn.execute(select(journey_sends.c.campaign_id, journey_sends.c.step).where(
        journey_sends.c.journey_id == journey_id).distinct()).all()


# ---------------------------------------------------------------- entries

def entry_history(conn: Connection, journey_id: str, identities: list[str] | None
                  ) -> dict[str, tuple[int, datetime, bool]]:
    """identity -> (last entry number, last entry time, still in flight)."""
    in_flight = func.max(case((E.state.in_(IN_FLIGHT), 1), else_=0))
    query = select(E.identity, func.max(E.entry_no), func.max(E.entered_at), in_flight).where(
        E.journey_id == journey_id).group_by(E.identity)
    out: dict[str, tuple[int, datetime, bool]] = {}
    parts = [None] if identities is None else list(chunks(identities))
    for part in parts:
        q = query if part is None else query.where(E.identity.in_(part))
        for ident, no, at, flying in conn.execute(q):
            out[ident] = (int(no), at, bool(flying))
    return out


_ENTRY_COLUMNS = ("account_id", "journey_id", "version", "identity", "entry_no", "trigger",
                  "entered_at", "holdout", "state", "step", "seq", "due_at", "woken",
                  "exit_reason", "exited_at")


def insert_entries(conn: Connection, rows: list[tuple]) -> int:
    """Rows in ``_ENTRY_COLUMNS`` order; an entry number already taken is skipped."""
    stored = [(*r[:6], db_time(conn, r[6]), *r[7:11], db_time(conn, r[11]), r[12], r[13],
               db_time(conn, r[14])) for r in rows]
    done = 0
    for part in chunks(stored, 1000):
        done += len(_insert_ignore(conn, "journey_entries", _ENTRY_COLUMNS, part, "id"))
    return done


@lru_cache(maxsize=32)
def _ignore_sql(table: str, columns: tuple[str, ...], rows: int, mark: str, returning: str
                ) -> str:
    one = "(" + ", ".join([mark] * len(columns)) + ")"
    return (f"INSERT INTO {table} ({', '.join(columns)}) VALUES " + ", ".join([one] * rows)
            + f" ON CONFLICT DO NOTHING RETURNING {returning}")


def _insert_ignore(conn: Connection, table: str, columns: tuple[str, ...],
                   rows: Sequence[tuple], returning: str) -> list[tuple]:
    if not rows:
        return []
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    sql = _ignore_sql(table, columns, len(rows), mark, returning)
    return [tuple(r) for r in conn.exec_driver_sql(
        sql, tuple(v for row in rows for v in row)).fetchall()]


def due(conn: Connection, now: datetime, limit: int) -> list[Any]:
    """(id, journey_id, version) of entries due now in live journeys, oldest first."""
    live = select(journeys.c.id).where(journeys.c.status == "live")
    return conn.execute(select(E.id, E.journey_id, E.version).where(
        E.state.in_(IN_FLIGHT), E.due_at <= now, E.journey_id.in_(live)).order_by(
        E.due_at).limit(limit)).all()


def entries_by_id(conn: Connection, ids: list[int]) -> list[Any]:
    return [r for part in chunks(ids) for r in conn.execute(
        select(journey_entries).where(E.id.in_(part))).all()]


def claim(conn: Connection, ids: list[int], now: datetime) -> list[Any]:
    """Lock the entries still due (another worker may have moved some meanwhile); on
    PostgreSQL rows locked by another worker are skipped, not waited for."""
    live = select(journeys.c.id).where(journeys.c.status == "live")
    query = select(journey_entries).where(
        E.id.in_(ids), E.state.in_(IN_FLIGHT), E.due_at <= now, E.journey_id.in_(live))
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True, of=journey_entries)
    return conn.execute(query.order_by(E.id)).all()


def save_entries(conn: Connection, moves: list[dict[str, Any]]) -> None:
    """One executemany; each move guarded by the step it was read at."""
    if not moves:
        return
    conn.execute(update(journey_entries).where(
        E.id == bindparam("_id"), E.seq == bindparam("_seq")).values(
        state=bindparam("state"), step=bindparam("step"), seq=bindparam("seq"),
        due_at=bindparam("due_at", type_=E.due_at.type), woken=0,
        wait_event=bindparam("wait_event"),
        waiting_since=bindparam("waiting_since", type_=E.waiting_since.type),
        exit_reason=bindparam("exit_reason"),
        exited_at=bindparam("exited_at", type_=E.exited_at.type)), moves)


_LOG_COLUMNS = ("journey_id", "version", "entry_id", "step", "seq", "at", "outcome",
                "message_key")


def log_steps(conn: Connection, rows: list[tuple]) -> set[tuple[int, str, int]]:
    """Insert step-log rows; returns the (entry, step, seq) that were new."""
    new: set[tuple[int, str, int]] = set()
    stored = [(*r[:5], db_time(conn, r[5]), r[6], r[7]) for r in rows]
    for part in chunks(stored, 1000):
        new.update(_insert_ignore(conn, "journey_step_log", _LOG_COLUMNS, part,
                                  "entry_id, step, seq"))
    return new


# ---------------------------------------------------------------- context for a batch

def profiles_of(conn: Connection, account_id: str, identities: list[str]) -> dict[str, Any]:
    out = {}
    for part in chunks(identities):
        for row in conn.execute(select(profiles).where(profiles.c.account_id == account_id,
                                                       profiles.c.identity.in_(part))):
            out[row.identity] = row
    return out


def scores_of(conn: Connection, account_id: str, identities: list[str]
              ) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for part in chunks(identities):
        for ident, name, grp, score in conn.execute(
                select(user_predictions.c.identity, predictions.c.name, user_predictions.c.grp,
                       user_predictions.c.score)
                .join(predictions, predictions.c.id == user_predictions.c.prediction_id)
                .where(user_predictions.c.account_id == account_id,
                       user_predictions.c.identity.in_(part))):
            out.setdefault(ident, {})[name] = grp
            out[ident][f"{name} score"] = score
    return out


# ---------------------------------------------------------------- the outbox

def dispatch_for(conn: Connection, cache: dict[tuple[str, int], int], account_id: str,
                 campaign_id: str, rnd: int, journey_id: str, version: int, step: str,
                 now: datetime) -> int:
    key = (campaign_id, rnd)
    if key in cache:
        return cache[key]
    found = conn.execute(select(journey_sends.c.dispatch_id).where(
        journey_sends.c.campaign_id == campaign_id, journey_sends.c.round == rnd)).scalar()
    if found is None:
        found = conn.execute(insert(dispatches).values(
            campaign_id=campaign_id, account_id=account_id, started_at=now,
            status="sending", targeted=0).returning(dispatches.c.id)).scalar()
        conn.execute(insert(journey_sends).values(
            campaign_id=campaign_id, round=rnd, journey_id=journey_id, version=version,
            step=step, dispatch_id=found))
    cache[key] = found
    return found


_MSG_COLUMNS = ("account_id", "campaign_id", "dispatch_id", "identity", "key", "variant",
                "state", "reason", "attempts", "created_at")


def insert_messages(conn: Connection, rows: list[tuple]) -> None:
    stored = [(*r[:9], db_time(conn, r[9])) for r in rows]
    for part in chunks(stored, 2000):
        insert_many(conn, "messages", _MSG_COLUMNS, part)


def cancel_messages(conn: Connection, keys: list[str], reason: str) -> int:
    n = 0
    for part in chunks(keys):
        n += conn.execute(update(messages).where(
            messages.c.key.in_(part), messages.c.state.in_(("queued", "pending_retry"))
        ).values(state="suppressed", reason=reason)).rowcount
    return n


def message_keys(conn: Connection, entry_ids: list[int]) -> list[str]:
    keys = []
    for part in chunks(entry_ids):
        keys += conn.execute(select(journey_step_log.c.message_key).where(
            journey_step_log.c.entry_id.in_(part),
            journey_step_log.c.message_key.is_not(None))).scalars().all()
    return keys


# ---------------------------------------------------------------- events' effects

def wake(conn: Connection, journey_id: str, version: int, step: str,
         hits: list[tuple[str, datetime]], now: datetime) -> int:
    """Users waiting at ``step`` whose awaited event came (at or after they started to
    wait) are due now, on the event branch."""
    n = 0
    for identity, at in hits:
        n += conn.execute(update(journey_entries).where(
            E.journey_id == journey_id, E.version == version, E.step == step,
            E.state == "waiting", E.identity == identity, E.woken == 0,
            E.wait_event.is_not(None), E.waiting_since <= at).values(
            woken=1, due_at=now)).rowcount
    return n


def convert(conn: Connection, journey_id: str, version: int, within_days: float,
            hits: list[tuple[str, datetime]], now: datetime) -> list[int]:
    """Record the first goal event within the window of each entry; entries in flight
    exit at once. Returns the ids of entries that exited."""
    from datetime import timedelta

    exited: list[int] = []
    window = timedelta(days=within_days)
    for identity, at in hits:
        rows = conn.execute(select(E.id, E.state, E.entered_at).where(
            E.journey_id == journey_id, E.version == version, E.identity == identity,
            E.converted_at.is_(None), E.entered_at <= at)).all()
        for entry_id, state, entered in rows:
            if at >= entered + window:
                continue
            values: dict[str, Any] = {"converted_at": at}
            if state in IN_FLIGHT:
                values.update(state="done", exit_reason="goal", exited_at=now, due_at=None)
                exited.append(entry_id)
            conn.execute(update(journey_entries).where(
                E.id == entry_id, E.converted_at.is_(None)).values(**values))
    return exited


def waiting_steps(conn: Connection, journey_id: str) -> list[tuple[int, str, str]]:
    """(version, step, event) of the wait_until steps users wait at now."""
    return [tuple(r) for r in conn.execute(select(E.version, E.step, E.wait_event).where(
        E.journey_id == journey_id, E.state == "waiting", E.wait_event.is_not(None)
    ).distinct()).all()]


def versions_with_goal_window(conn: Connection, journey_id: str, since: datetime) -> list[int]:
    """Versions with entries recent enough to still convert."""
    return list(conn.execute(select(E.version).where(
        E.journey_id == journey_id, E.entered_at >= since,
        E.converted_at.is_(None)).distinct()).scalars())


def stop_entries(conn: Connection, journey_id: str, now: datetime) -> list[int]:
    ids = list(conn.execute(select(E.id).where(
        E.journey_id == journey_id, E.state.in_(IN_FLIGHT))).scalars())
    for part in chunks(ids):
        conn.execute(update(journey_entries).where(E.id.in_(part), E.state.in_(IN_FLIGHT))
                     .values(state="done", exit_reason="stopped", exited_at=now, due_at=None))
    return ids


# ---------------------------------------------------------------- reads for stats / paths

def step_counts(conn: Connection, journey_id: str, version: int | None) -> dict[str, Any]:
    L = journey_step_log.c
    q_log = select(L.step, func.count()).where(L.journey_id == journey_id).group_by(L.step)
    q_at = select(E.step, E.state, func.count()).where(
        E.journey_id == journey_id, E.state.in_(IN_FLIGHT)).group_by(E.step, E.state)
    q_msg = select(journey_sends.c.step, messages.c.state,
                   func.count(), func.count(messages.c.opened_at),
                   func.count(messages.c.clicked_at)).join(
        messages, and_(messages.c.dispatch_id == journey_sends.c.dispatch_id)).where(
        journey_sends.c.journey_id == journey_id).group_by(journey_sends.c.step,
                                                          messages.c.state)
    if version is not None:
        q_log = q_log.where(L.version == version)
        q_at = q_at.where(E.version == version)
        q_msg = q_msg.where(journey_sends.c.version == version)
    return {"log": conn.execute(q_log).all(), "at": conn.execute(q_at).all(),
            "messages": conn.execute(q_msg).all()}


def entry_counts(conn: Connection, journey_id: str, version: int | None) -> list[Any]:
    q = select(E.holdout, E.state, E.exit_reason, func.count(), func.count(E.converted_at)
               ).where(E.journey_id == journey_id).group_by(E.holdout, E.state, E.exit_reason)
    if version is not None:
        q = q.where(E.version == version)
    return conn.execute(q).all()


def user_entries(conn: Connection, journey_id: str, identity: str) -> list[Any]:
    return conn.execute(select(journey_entries).where(
        E.journey_id == journey_id, E.identity == identity).order_by(E.entry_no)).all()


def user_steps(conn: Connection, entry_ids: list[int]) -> list[Any]:
    L = journey_step_log.c
    return conn.execute(select(journey_step_log, messages.c.state.label("message_state"))
                        .outerjoin(messages, messages.c.key == L.message_key)
                        .where(L.entry_id.in_(entry_ids)).order_by(L.entry_id, L.seq)).all()
