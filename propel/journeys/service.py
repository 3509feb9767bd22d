"""Journeys' lifecycle: draft → live ⇄ paused → stopped, and versions.

A draft is edited in place. Editing a live or paused journey saves a **new version**,
which new entries take at once; users already inside finish on the version they
entered with (their entries name it). Publishing creates, for every send step of the
version, a campaign of the journey's own (status ``running``, strategy ``journey``,
never dispatched by itself) that owns the step's outbox rows: delivery, caps, quiet
hours and delivery accounting are the campaigns'.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection

from propel.core import Propel
from propel.db.meta import utcnow
from propel.journeys import store
from propel.journeys.engine import step_campaign_id
from propel.journeys.spec import JourneyError, entry_audience, validate

__all__ = ["Journey", "JourneyError", "create", "get", "list_journeys", "pause", "publish",
           "resume", "stop", "update"]


@dataclass
class Journey:
    id: str
    account_id: str
    name: str
    status: str
    version: int
    definition: dict[str, Any]
    versions: list[dict[str, Any]]
    created_at: datetime
    updated_at: datetime
    published_at: datetime | None
    stopped_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        for key in ("created_at", "updated_at", "published_at", "stopped_at"):
            out[key] = out[key].isoformat() if out[key] else None
        return out


def _load(conn: Connection, account_id: str | None, journey_id: str) -> Journey:
    row = store.journey_row(conn, account_id, journey_id)
    if row is None:
        raise LookupError(f"no journey {journey_id!r} in this account")
    versions = [{"version": v.version, "created_at": v.created_at.isoformat(),
                 "published_at": v.published_at.isoformat() if v.published_at else None}
                for v in store.versions(conn, journey_id)]
    return Journey(row.id, row.account_id, row.name, row.status, row.version,
                   store.definition(conn, row.id, row.version), versions, row.created_at,
                   row.updated_at, row.published_at, row.stopped_at)


def get(propel: Propel, account_id: str, journey_id: str) -> Journey:
    with propel.db.read() as conn:
        return _load(conn, account_id, journey_id)


def get_version(propel: Propel, account_id: str, journey_id: str, version: int
                ) -> dict[str, Any]:
    with propel.db.read() as conn:
        _load(conn, account_id, journey_id)
        if not any(v.version == version for v in store.versions(conn, journey_id)):
            raise LookupError(f"journey {journey_id!r} has no version {version}")
        return store.definition(conn, journey_id, version)


def list_journeys(propel: Propel, account_id: str) -> list[Journey]:
    with propel.db.read() as conn:
        return [_load(conn, account_id, r.id) for r in store.journey_rows(conn, account_id)]


def create(propel: Propel, account_id: str, definition: dict[str, Any]) -> Journey:
    """Save a draft; the definition is validated now (see ``propel.journeys.spec``)."""
    spec = validate(definition)
    journey_id = "jrn_" + secrets.token_hex(6)
    now = utcnow()

    def _create(conn: Connection) -> None:
        conn.execute(store.insert(store.journeys).values(
            id=journey_id, account_id=account_id, name=spec["name"], status="draft",
            version=1, created_at=now, updated_at=now))
        store.insert_version(conn, journey_id, 1, spec, now, published=False)

    propel.db.write(_create)
    return get(propel, account_id, journey_id)


def _step_campaigns(conn: Connection, j: Any, version: int, spec: dict[str, Any],
                    now: datetime) -> None:
    for step in spec["steps"]:
        if step["type"] != "send":
            continue
        store.insert_step_campaign(conn, {
            "id": step_campaign_id(j.id, version, step["id"]), "account_id": j.account_id,
            "name": f"{spec['name'][:150]} › {step['id']} (v{version})"[:200],
            "status": "running", "channel": step["channel"],
            "audience": orjson.dumps({"journey": j.id, "version": version,
                                      "step": step["id"]}).decode(),
            "content": orjson.dumps(step["content"]).decode(), "schedule": '{"type": "now"}',
            "dnd": orjson.dumps(step.get("dnd")).decode(),
            "caps": orjson.dumps(step.get("caps")).decode(), "holdout_pct": 0.0,
            "goal": "null", "strategy": "journey", "created_at": now, "updated_at": now,
            "started_at": now})


def update(propel: Propel, account_id: str, journey_id: str, definition: dict[str, Any]
           ) -> Journey:
    """Edit: a draft in place; a live or paused journey gets a new version."""
    spec = validate(definition)
    now = utcnow()

    def _update(conn: Connection) -> None:
        j = store.journey_row(conn, account_id, journey_id)
        if j is None:
            raise LookupError(f"no journey {journey_id!r} in this account")
        if j.status == "stopped":
            raise JourneyError("a stopped journey cannot be edited")
        if j.status == "draft":
            store.replace_version(conn, j.id, j.version, spec)
            store.set_journey(conn, j.id, ("draft",), name=spec["name"], updated_at=now)
            return
        version = j.version + 1
        store.insert_version(conn, j.id, version, spec, now, published=True)
        _step_campaigns(conn, j, version, spec, now)
        store.set_journey(conn, j.id, None, version=version, name=spec["name"],
                          updated_at=now)

    propel.db.write(_update)
    return get(propel, account_id, journey_id)


def publish(propel: Propel, account_id: str, journey_id: str, now: datetime | None = None
            ) -> Journey:
    """Go live: users start entering (an audience entry runs at ``now``)."""
    now = now or utcnow()
    j = get(propel, account_id, journey_id)
    if j.status != "draft":
        raise JourneyError(f"only a draft can be published; this one is {j.status}")
    validate(j.definition)  # a channel or template rule may have changed meanwhile

    def _publish(conn: Connection) -> None:
        row = store.journey_row(conn, account_id, journey_id)
        _step_campaigns(conn, row, row.version, j.definition, now)
        store.mark_published(conn, journey_id, row.version, now)
        if not store.set_journey(conn, journey_id, ("draft",), status="live",
                                 published_at=now, updated_at=now,
                                 next_entry_at=now if entry_audience(j.definition["entry"])
                                 else None,
                                 event_cursor_us=time.time_ns() // 1000):
            raise JourneyError("the journey was published meanwhile")

    propel.db.write(_publish)
    return get(propel, account_id, journey_id)


def _transition(propel: Propel, account_id: str, journey_id: str, allowed: tuple[str, ...],
                status: str) -> Journey:
    j = get(propel, account_id, journey_id)
    if j.status not in allowed:
        raise JourneyError(f"a {j.status} journey cannot be {status}")
    propel.db.write(lambda conn: store.set_journey(conn, journey_id, allowed, status=status,
                                                   updated_at=utcnow()))
    return get(propel, account_id, journey_id)


def pause(propel: Propel, account_id: str, journey_id: str) -> Journey:
    """Nobody enters and nobody moves on; goal events and awaited events are still
    recorded. Resume continues where everyone was."""
    return _transition(propel, account_id, journey_id, ("live",), "paused")


def resume(propel: Propel, account_id: str, journey_id: str) -> Journey:
    return _transition(propel, account_id, journey_id, ("paused",), "live")


def stop(propel: Propel, account_id: str, journey_id: str, now: datetime | None = None
         ) -> Journey:
    """Everyone inside exits (reason ``stopped``); messages not yet handed to a provider
    are not sent."""
    from propel.campaigns.dispatch import cancel_pending

    now = now or utcnow()
    j = get(propel, account_id, journey_id)
    if j.status == "stopped":
        raise JourneyError("the journey is already stopped")

    def _stop(conn: Connection) -> list[str]:
        store.set_journey(conn, journey_id, None, status="stopped", stopped_at=now,
                          updated_at=now, next_entry_at=None)
        store.stop_entries(conn, journey_id, now)
        return [r.campaign_id for r in store.step_campaigns(conn, journey_id)]

    for campaign_id in propel.db.write(_stop):
        cancel_pending(propel, campaign_id)
    return get(propel, account_id, journey_id)
