"""Dispatch: turn a due campaign into outbox messages, one per targeted user.

The holdout is drawn here, per campaign and deterministically from the user id,
*before* caps, quiet hours and reachability are applied, so "assigned to be
messaged" and "held out" are comparable groups (intent-to-treat). Everything the
audience matched is recorded: holdout, suppressed (unreachable, unsubscribed) or
queued, with the user's prediction group, score and model version at that moment.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, insert, select, update

from propel import faults
from propel.campaigns.service import (
    Campaign,
    first_run_at,
    get_campaign,
    local_send_time,
)
from propel.campaigns.tables import campaigns, dispatches, messages
from propel.core import Propel
from propel.db.bulk import db_time, insert_many
from propel.db.meta import utcnow

log = logging.getLogger("propel.campaigns")
ADDRESS = {"email": "email", "sms": "phone", "push": "push_tokens"}
_MSG_COLUMNS = ("account_id", "campaign_id", "dispatch_id", "identity", "key", "variant",
                "grp", "score", "model_version", "state", "reason", "attempts",
                "next_attempt_at", "created_at", "due_at")


def in_holdout(campaign_id: str, identity: str, pct: float) -> bool:
    digest = hashlib.blake2b(f"holdout:{campaign_id}:{identity}".encode(),
                             digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < pct


def message_key(campaign_id: str, run_at: datetime, identity: str) -> str:
    """The message's key (Message-ID, idempotency key), known before its dispatch is
    stored: one per user and run of the campaign."""
    seed = f"{campaign_id}:{run_at.astimezone(UTC).isoformat()}:{identity}"
    return "m" + hashlib.blake2b(seed.encode(), digest_size=16).hexdigest()


def reachable(channel: str, member: Any) -> str | None:
    """None when the member can get this channel, else the suppression reason."""
    consent = member.consent or {}
    if consent.get(channel) is False:
        return "unsubscribed"
    field = ADDRESS.get(channel)
    if field and not getattr(member, field):
        return "unreachable"
    return None


def _group_for(campaign: Campaign, member: Any, prediction_name: str | None
               ) -> tuple[str | None, float | None, int | None]:
    if not prediction_name:
        return None, None, None
    found = (member.predictions or {}).get(prediction_name)
    return tuple(found) if found else (None, None, None)  # type: ignore[return-value]


def _prediction_name(propel: Propel, campaign: Campaign) -> str | None:
    """The prediction whose group and score each message records: the campaign's own,
    else the one prediction its audience rule names (a campaign made through the API
    or CleverTap's on ``Predict Conversions = High``), else none."""
    from propel.predictions.registry import NotFound, get_by_id, list_all

    if campaign.prediction_id:
        try:
            return get_by_id(propel.db, campaign.prediction_id).spec.name
        except NotFound:
            return None
    from propel.audiences import named_properties

    named = {name.removesuffix(" score") for name in named_properties(campaign.audience)}
    used = named & {p.spec.name for p in list_all(propel.db, campaign.account_id)}
    return used.pop() if len(used) == 1 else None


def _claim_run(conn: Connection, campaign: Campaign, run_at: datetime) -> bool:
    """Claim this run of the campaign: advance next_run_at, so two workers never
    dispatch the same run."""
    schedule = campaign.schedule
    nxt = None
    if schedule["type"] == "recurring":
        nxt = first_run_at(schedule, run_at + timedelta(minutes=1))
        until = schedule.get("until")
        if until and nxt > datetime.fromisoformat(until):
            nxt = None
    return conn.execute(update(campaigns).where(
        campaigns.c.id == campaign.id, campaigns.c.next_run_at == run_at,
        campaigns.c.status.in_(("scheduled", "running"))).values(
        next_run_at=nxt, status="running", started_at=campaign.started_at or utcnow(),
        updated_at=utcnow())).rowcount == 1


def dispatch_campaign(propel: Propel, account_id: str, campaign_id: str) -> int | None:
    """Start the due run of a campaign; returns the dispatch id (None if not due or
    another worker took it). The audience is read first; the run is then claimed and
    every member's message stored in one transaction, so a worker that dies on the way
    leaves the run due for the next one, and nobody is lost."""
    from propel import audiences

    campaign = get_campaign(propel, account_id, campaign_id)
    if campaign.next_run_at is None or campaign.status not in ("scheduled", "running"):
        return None
    if campaign.next_run_at > utcnow():
        return None  # not due yet
    run_at = campaign.next_run_at
    members = audiences.materialize(propel, account_id, campaign.audience)
    rows = _message_rows(campaign, members, run_at, _prediction_name(propel, campaign))
    faults.crash_point("dispatch.before_store")
    dispatch_id = propel.db.write(lambda conn: _store_dispatch(conn, campaign, run_at, rows))
    if dispatch_id is not None:
        log.info("dispatched %s: %s users", campaign.name, len(rows))
    return dispatch_id


def _message_rows(campaign: Campaign, members: list[Any], run_at: datetime,
                  prediction_name: str | None) -> list[tuple]:
    """A message per member (without its dispatch id, not known yet): holdout,
    suppressed with the reason, or queued."""
    from propel.campaigns.render import choose_variant

    variants = campaign.content.get("variants", [])
    now = utcnow()
    rows = []
    for member in members:
        key = message_key(campaign.id, run_at, member.identity)
        group, score, version = _group_for(campaign, member, prediction_name)
        if in_holdout(campaign.id, member.identity, campaign.holdout_pct):
            state, reason = "holdout", None
        else:
            reason = reachable(campaign.channel, member)
            state = "suppressed" if reason else "queued"
        when = local_send_time(campaign.schedule, run_at, member.timezone)
        rows.append((campaign.account_id, campaign.id, member.identity, key,
                     choose_variant(variants, key) if variants else None, group, score,
                     version, state, reason, 0, when, now, when))
    return rows


def _store_dispatch(conn: Connection, campaign: Campaign, run_at: datetime,
                    rows: list[tuple]) -> int | None:
    if not _claim_run(conn, campaign, run_at):
        return None
    dispatch_id = conn.execute(insert(dispatches).values(
        campaign_id=campaign.id, account_id=campaign.account_id, started_at=utcnow(),
        status="sending", targeted=len(rows)).returning(dispatches.c.id)).scalar()
    stored = [(*r[:2], dispatch_id, *r[2:11], *(db_time(conn, t) for t in r[11:]))
              for r in rows]
    for start in range(0, len(stored), 5000):
        insert_many(conn, "messages", _MSG_COLUMNS, stored[start:start + 5000])
    return dispatch_id


def cancel_pending(propel: Propel, campaign_id: str) -> int:
    """A stopped campaign sends nothing more: queued and retrying messages end as
    suppressed (stopped); messages already handed to a provider keep their state."""
    def _cancel(conn: Connection) -> int:
        n = conn.execute(update(messages).where(
            messages.c.campaign_id == campaign_id,
            messages.c.state.in_(("queued", "pending_retry"))).values(
            state="suppressed", reason="stopped")).rowcount
        conn.execute(update(dispatches).where(dispatches.c.campaign_id == campaign_id,
                                              dispatches.c.status != "done").values(
            status="stopped", finished_at=utcnow()))
        return n

    return propel.db.write(_cancel)


def finish_dispatches(propel: Propel) -> int:
    """Mark dispatches done once nothing is left to send; a campaign with no further
    run is then completed."""
    from sqlalchemy import exists

    busy = ("queued", "pending_retry", "sending")

    def _finish(conn: Connection) -> int:
        open_ids = conn.execute(select(dispatches.c.id, dispatches.c.campaign_id).where(
            dispatches.c.status == "sending")).all()
        done = 0
        for dispatch_id, campaign_id in open_ids:
            pending = conn.execute(select(exists().where(
                messages.c.dispatch_id == dispatch_id, messages.c.state.in_(busy)))).scalar()
            if pending:
                continue
            conn.execute(update(dispatches).where(dispatches.c.id == dispatch_id).values(
                status="done", finished_at=utcnow()))
            conn.execute(update(campaigns).where(
                campaigns.c.id == campaign_id, campaigns.c.status == "running",
                campaigns.c.next_run_at.is_(None)).values(
                status="completed", finished_at=utcnow(), updated_at=utcnow()))
            done += 1
        return done

    return propel.db.write(_finish)
