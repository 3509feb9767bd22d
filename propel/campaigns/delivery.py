"""Delivery: workers claim due outbox messages, apply caps and quiet hours, render,
send through the channel, and record exactly one outcome per message.

Honest accounting. A claimed message is marked ``sending`` (with a lease) and that is
committed *before* it is handed to the provider; a live worker renews the lease while
the provider answers, however slowly. If the worker dies before recording the outcome,
the lease expires and the message can only be one thing: sent or not, unknown. For a
receiver that deduplicates on our key (e-mail Message-ID, webhook Idempotency-Key,
inbox id) it is queued again, safely; for any other (push, SMS) it ends as
``in_doubt`` and is never resent automatically.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import zoneinfo
from collections import defaultdict
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from time import monotonic
from typing import Any, TypeVar

import orjson
from sqlalchemy import Connection, bindparam, func, or_, select, update

from propel import faults
from propel.campaigns.service import Campaign, _from_row
from propel.campaigns.tables import campaigns, messages, send_counts, send_rates
from propel.channels.base import Channel, Outbound, Outcome
from propel.core import Propel
from propel.db.meta import upsert_insert, utcnow
from propel.profiles.tables import profiles
from propel.serving import run_event_loop

log = logging.getLogger("propel.delivery")
MAX_ATTEMPTS = 5
PIPELINES = 2  # batches in flight per engine: one on the wire while another is claimed
CHUNK = 500  # rows per statement: well under any driver's parameter limit
T = TypeVar("T")
DEDUPING = {"email": True, "webhook": True, "inbox": True, "push": False, "sms": False}


@dataclass
class Claimed:
    id: int
    key: str
    identity: str
    variant: str | None
    attempts: int
    campaign: Campaign
    profile: Any


def backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(3600, 30 * 2 ** max(0, attempts - 1)))


def _local(now: datetime, tz_name: str | None) -> datetime:
    try:
        return now.astimezone(zoneinfo.ZoneInfo(tz_name or "UTC"))
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return now


def quiet_until(dnd: dict[str, Any] | None, now: datetime, tz_name: str | None
                ) -> datetime | None:
    """End of the quiet period the user is in now (their local time), else None."""
    if not dnd:
        return None
    local = _local(now, tz_name)
    start, end = time.fromisoformat(dnd["start"]), time.fromisoformat(dnd["end"])
    t = local.time()
    inside = (start <= t or t < end) if start > end else (start <= t < end)
    if not inside:
        return None
    end_day = local.date() if t < end else local.date() + timedelta(days=1)
    local_end = datetime.combine(end_day, end, tzinfo=local.tzinfo)
    return local_end.astimezone(now.tzinfo)


UNCAPPED = 2**31 - 1  # a campaign without a daily cap: its sends are counted, never refused


def _day(now: datetime) -> int:
    return int(now.timestamp() // 86400)


def _take_daily_caps(conn: Connection, account_id: str, identities: list[str], day: int,
                     cap: int) -> set[str]:
    """One more send today for each of these (distinct) users that is under the cap;
    returns those that got one. A guarded upsert, atomic under concurrent workers (row
    locks on PostgreSQL, the writer on SQLite), run as one executemany: the driver
    batches the rows, and the statement compiles once rather than once per batch."""
    stmt = upsert_insert(conn.dialect.name, send_counts).values(
        account_id=bindparam("a"), identity=bindparam("i"), day=bindparam("d"), sends=1)
    stmt = stmt.on_conflict_do_update(
        index_elements=["account_id", "identity", "day"],
        set_={"sends": send_counts.c.sends + 1},
        where=send_counts.c.sends < cap,
    ).returning(send_counts.c.identity)
    params = [{"a": account_id, "i": identity, "d": day} for identity in identities]
    return {row.identity for row in conn.execute(stmt, params)}


def _release_daily_cap(conn: Connection, account_id: str, identity: str, day: int) -> None:
    conn.execute(update(send_counts).where(
        send_counts.c.account_id == account_id, send_counts.c.identity == identity,
        send_counts.c.day == day, send_counts.c.sends > 0).values(sends=send_counts.c.sends - 1))


def _campaign_sends(conn: Connection, campaign_id: str, identities: list[str]
                    ) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for start in range(0, len(identities), CHUNK):
        out.update(conn.execute(
            select(messages.c.identity, func.count()).where(
                messages.c.campaign_id == campaign_id,
                messages.c.identity.in_(identities[start:start + CHUNK]),
                messages.c.state.in_(("sending", "sent", "in_doubt")))
            .group_by(messages.c.identity)).tuples().all())
    return out


def _rounds(rows: list[Any]) -> list[list[Any]]:
    """Split rows so each identity appears once per round (one upsert may not touch a
    row twice); a user with two messages in the batch takes two rounds."""
    rounds: list[list[Any]] = []
    seen: dict[str, int] = defaultdict(int)
    for r in rows:
        k = seen[r.identity]
        seen[r.identity] += 1
        if k == len(rounds):
            rounds.append([])
        rounds[k].append(r)
    return rounds


def capped(conn: Connection, pending: list[tuple[Any, Campaign]], now: datetime) -> set[int]:
    """Ids of the messages that frequency caps suppress, in batch order: a few
    statements per batch rather than one per message."""
    out: set[int] = set()
    by_campaign: dict[str, list[Any]] = defaultdict(list)
    for r, c in pending:
        if (c.caps or {}).get("per_campaign"):
            by_campaign[c.id].append((r, c.caps["per_campaign"]))
    for campaign_id, items in by_campaign.items():
        sent = _campaign_sends(conn, campaign_id, sorted({r.identity for r, _ in items}))
        for r, cap in items:
            if sent[r.identity] >= cap:
                out.add(r.id)
            else:
                sent[r.identity] += 1
    by_cap: dict[tuple[str, int], list[Any]] = defaultdict(list)
    for r, c in pending:
        if r.id not in out:  # uncapped sends count too: a cap is across campaigns
            by_cap[(r.account_id, (c.caps or {}).get("per_day") or UNCAPPED)].append(r)
    for (account_id, cap), rows in by_cap.items():
        for group in _rounds(rows):
            for start in range(0, len(group), CHUNK):
                part = group[start:start + CHUNK]
                granted = _take_daily_caps(conn, account_id, [r.identity for r in part],
                                           _day(now), cap)
                out.update(r.id for r in part if r.identity not in granted)
    return out


RATE_WAIT_SECONDS = 0.1  # how often a draining command looks at a spent send rate again


def rate_tokens(conn: Connection, campaign: Campaign, now: datetime) -> float | None:
    """The campaign's send-rate tokens at ``now`` (None: no rate), from its bucket in
    ``send_rates``, read inside the claim's transaction so that every delivery process
    and pipeline draws from the one bucket (on PostgreSQL the row stays locked until the
    claim commits). A full bucket holds one second's worth."""
    rate = campaign.rate_per_second
    if not rate:
        return None
    conn.execute(upsert_insert(conn.dialect.name, send_rates).values(
        campaign_id=campaign.id, tokens=float(rate), updated_at=now)
        .on_conflict_do_nothing(index_elements=["campaign_id"]))
    query = select(send_rates.c.tokens, send_rates.c.updated_at).where(
        send_rates.c.campaign_id == campaign.id)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    held, since = conn.execute(query).one()
    return min(rate, held + max(0.0, (now - since).total_seconds()) * rate)


def spend_rate(conn: Connection, campaign_id: str, tokens: float, now: datetime) -> None:
    conn.execute(update(send_rates).where(send_rates.c.campaign_id == campaign_id)
                 .values(tokens=tokens, updated_at=now))


def recover_expired(propel: Propel, now: datetime | None = None) -> dict[str, int]:
    """Messages whose worker died mid-send: re-queue where the receiver deduplicates,
    otherwise record them as in_doubt."""
    now = now or utcnow()

    def _recover(conn: Connection) -> dict[str, int]:
        rows = conn.execute(select(messages.c.id, campaigns.c.channel).join(
            campaigns, campaigns.c.id == messages.c.campaign_id).where(
            messages.c.state == "sending", messages.c.claim_until < now)).all()
        resend = [r.id for r in rows if DEDUPING.get(r.channel)]
        doubt = [r.id for r in rows if not DEDUPING.get(r.channel)]
        for ids, values in ((resend, {"state": "queued", "reason": "resent after a crash"}),
                            (doubt, {"state": "in_doubt",
                                     "reason": "worker stopped after handing it over"})):
            for start in range(0, len(ids), 1000):
                conn.execute(update(messages).where(messages.c.id.in_(ids[start:start + 1000]))
                             .values(claim_until=None, **values))
        return {"resent": len(resend), "in_doubt": len(doubt)}

    return propel.db.write(_recover)


class DeliveryEngine:
    def __init__(self, propel: Propel, *, batch_size: int = 500,
                 lease_seconds: int | None = None, channel_factory: Any = None,
                 campaign_id: str | None = None) -> None:
        self.propel = propel
        self.batch_size = batch_size
        self.campaign_id = campaign_id  # deliver this campaign's messages only
        self.lease = timedelta(seconds=lease_seconds or propel.settings.delivery_lease_seconds)
        self._channels: dict[tuple[str, str], Channel] = {}
        self._factory = channel_factory
        # One claim at a time per engine (a claim is short); the pipelines overlap one
        # batch's send with the next one's claim and the last one's record.
        self._claiming = threading.Lock()

    def _channel(self, account_id: str, name: str) -> Channel:
        key = (account_id, name)
        if key not in self._channels:
            if self._factory is not None:
                self._channels[key] = self._factory(account_id, name)
            else:
                from propel.channels.registry import build_channel

                self._channels[key] = build_channel(self.propel, account_id, name)
        return self._channels[key]

    async def aclose(self) -> None:
        for channel in self._channels.values():
            await channel.aclose()
        self._channels.clear()

    # -- claim -----------------------------------------------------------------------

    def claim(self, now: datetime | None = None) -> list[Claimed]:
        return self._claim_and_decide(now)[0]

    def _claim_and_decide(self, now: datetime | None = None) -> tuple[list[Claimed], int]:
        """(messages to send now, messages otherwise decided: suppressed or delayed)."""
        now = now or utcnow()
        with self._claiming:
            return self.propel.db.write(lambda conn: self._claim(conn, now))

    def _due(self, now: datetime, *columns: Any) -> Any:
        """Messages of this engine's scope that may be sent at ``now``."""
        query = select(*columns).where(
            messages.c.state.in_(("queued", "pending_retry")),
            or_(messages.c.next_attempt_at.is_(None), messages.c.next_attempt_at <= now))
        if self.campaign_id is not None:
            query = query.where(messages.c.campaign_id == self.campaign_id)
        return query

    def _claim(self, conn: Connection, now: datetime) -> tuple[list[Claimed], int]:
        due = self._due(now, messages.c.id, messages.c.key, messages.c.identity,
                        messages.c.variant, messages.c.attempts, messages.c.campaign_id,
                        messages.c.account_id).order_by(messages.c.id).limit(self.batch_size)
        if conn.dialect.name == "postgresql":
            due = due.with_for_update(skip_locked=True, of=messages)
        rows = conn.execute(due).all()
        if not rows:
            return [], 0
        camp_rows = conn.execute(select(campaigns).where(
            campaigns.c.id.in_({r.campaign_id for r in rows}))).all()
        camps = {r.id: _from_row(r) for r in camp_rows}
        profs = self._profiles(conn, rows)
        tokens = {cid: rate_tokens(conn, c, now) for cid, c in camps.items()}
        budget = {cid: None if t is None else int(t) for cid, t in tokens.items()}
        decided: list[tuple[int, dict[str, Any]]] = []
        pending: list[tuple[Any, Campaign]] = []
        for r in rows:
            campaign = camps[r.campaign_id]
            verdict = self._verdict(campaign, profs.get((r.account_id, r.identity)), now,
                                    budget)
            if verdict is None:
                pending.append((r, campaign))
            elif verdict:
                decided.append((r.id, verdict))
        suppressed = capped(conn, pending, now)
        claimed = [Claimed(r.id, r.key, r.identity, r.variant, r.attempts + 1, campaign,
                           profs.get((r.account_id, r.identity)))
                   for r, campaign in pending if r.id not in suppressed]
        decided += [(msg_id, {"state": "suppressed", "reason": "cap"}) for msg_id in suppressed]
        _record_decisions(conn, decided)
        ids = [c.id for c in claimed]
        for start in range(0, len(ids), 1000):
            conn.execute(update(messages).where(messages.c.id.in_(ids[start:start + 1000]))
                         .values(state="sending", attempts=messages.c.attempts + 1,
                                 claim_until=now + self.lease))
        for cid, n in _count_by(claimed).items():
            if tokens[cid] is not None:
                spend_rate(conn, cid, tokens[cid] - n, now)
        return claimed, len(decided)

    @staticmethod
    def _profiles(conn: Connection, rows: list) -> dict[tuple[str, str], Any]:
        out = {}
        by_account: dict[str, list[str]] = defaultdict(list)
        for r in rows:
            by_account[r.account_id].append(r.identity)
        for account_id, idents in by_account.items():
            for p in conn.execute(select(profiles).where(
                    profiles.c.account_id == account_id, profiles.c.identity.in_(idents))):
                out[(account_id, p.identity)] = p
        return out

    def _verdict(self, campaign: Campaign, profile: Any, now: datetime,
                 budget: dict[str, int | None]) -> dict[str, Any] | None:
        """None: send it now, unless a cap says otherwise (see ``capped``). Otherwise
        the values to record instead ({} = leave it for later)."""
        if campaign.status == "stopped":
            return {"state": "suppressed", "reason": "stopped"}
        consent = orjson.loads(profile.consent) if profile is not None else {}
        if consent.get(campaign.channel) is False:
            return {"state": "suppressed", "reason": "unsubscribed"}
        until = quiet_until(campaign.dnd, now, profile.timezone if profile else None)
        if until is not None:
            if campaign.dnd["action"] == "drop":
                return {"state": "suppressed", "reason": "dnd"}
            return {"next_attempt_at": until}
        allowance = budget.get(campaign.id)
        if allowance is not None:
            if allowance <= 0:
                return {}
            budget[campaign.id] = allowance - 1
        return None

    # -- send and record ---------------------------------------------------------------

    async def run_once(self, now: datetime | None = None) -> int:
        """Handle one batch; returns how many messages moved (sent, failed, suppressed,
        delayed), 0 when nothing is due. Database work runs in a thread, so the event
        loop keeps sending the batches of other ``run_once`` calls meanwhile."""
        now = now or utcnow()
        await asyncio.to_thread(recover_expired, self.propel, now)
        claimed, decided = await asyncio.to_thread(self._claim_and_decide, now)
        if not claimed:
            return decided
        faults.crash_point("deliver.after_claim")
        groups: dict[tuple[str, str], list[Claimed]] = defaultdict(list)
        for c in claimed:
            groups[(c.campaign.account_id, c.campaign.channel)].append(c)
        for (account_id, channel_name), batch in groups.items():
            await self._send_group(account_id, channel_name, batch, now)
        return len(claimed) + decided

    async def run_batches(self, now: datetime | None = None, *, pipelines: int = PIPELINES,
                          seconds: float | None = None) -> int:
        """Handle batches until nothing is due (or, with ``seconds``, until that long has
        passed), ``pipelines`` at a time: while one batch is on the wire, the next is
        claimed and the last recorded. Returns how many messages moved."""
        deadline = None if seconds is None else monotonic() + seconds

        async def pipeline() -> int:
            total = 0
            while deadline is None or monotonic() < deadline:
                moved = await self.run_once(now)
                if not moved:
                    break
                total += moved
            return total

        return sum(await asyncio.gather(*(pipeline() for _ in range(pipelines))))

    async def drain(self, now: datetime | None = None) -> int:
        """Handle batches until nothing is due, then close the channels; returns how many
        messages moved. On the real clock (no ``now``), messages a send rate holds back
        are waited for. For commands and tests; the server runs ``DeliveryThread``."""
        try:
            total = await self.run_batches(now)
            while now is None and await asyncio.to_thread(self._held_back):
                await asyncio.sleep(RATE_WAIT_SECONDS)
                total += await self.run_batches()
            return total
        finally:
            await self.aclose()

    def _held_back(self) -> bool:
        """Due messages left after a pass that claimed all it could: a send rate's."""
        with self.propel.db.read() as conn:
            return conn.execute(self._due(utcnow(), messages.c.id).limit(1)).first() is not None

    async def _send_group(self, account_id: str, channel_name: str, batch: list[Claimed],
                          now: datetime) -> None:
        from propel.campaigns.compose import compose
        from propel.predictions.properties import score_properties

        scores = await asyncio.to_thread(score_properties, self.propel.db, account_id,
                                         [c.identity for c in batch])
        outbound: list[Outbound] = []
        failed: list[Outcome] = []
        for c in batch:
            try:
                outbound.append(compose(self.propel, c, scores.get(c.identity, {})))
            except Exception as exc:  # one bad message must not block the others
                log.exception("could not compose message %s", c.key)
                failed.append(Outcome(c.key, delivered=False, error=f"compose: {exc}"))
        try:
            channel = self._channel(account_id, channel_name)
            outcomes = (await self._keeping_claim([c.id for c in batch],
                                                  channel.send(outbound))
                        if outbound else [])
        except Exception as exc:  # misconfigured channel: nothing was handed over
            log.warning("channel %s failed: %s", channel_name, exc)
            outcomes = [Outcome(o.key, delivered=False, retryable=True, error=str(exc))
                        for o in outbound]
        faults.crash_point("deliver.after_send")
        await asyncio.to_thread(self.record, batch, outcomes + failed, now)

    async def _keeping_claim(self, ids: list[int], sending: Awaitable[T]) -> T:
        """Await ``sending`` while renewing the batch's claim every third of the lease:
        a slow provider must not make a live worker's messages look like a dead one's
        (in_doubt, or sent twice)."""
        async def renew() -> None:
            while True:
                await asyncio.sleep(self.lease.total_seconds() / 3)
                await asyncio.to_thread(self._extend_claim, ids)

        renewing = asyncio.create_task(renew())
        try:
            return await sending
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing

    def _extend_claim(self, ids: list[int]) -> None:
        until = utcnow() + self.lease

        def _extend(conn: Connection) -> None:
            for start in range(0, len(ids), CHUNK):
                conn.execute(update(messages).where(
                    messages.c.id.in_(ids[start:start + CHUNK]),
                    messages.c.state == "sending").values(claim_until=until))

        self.propel.db.write(_extend)

    def record(self, batch: list[Claimed], outcomes: list[Outcome], now: datetime) -> None:
        by_key = {c.key: c for c in batch}

        def _record(conn: Connection) -> list[tuple[str, str, str]]:
            bounces = []
            updates: list[dict[str, Any]] = []
            for o in outcomes:
                c = by_key[o.key]
                if o.delivered:
                    values = {"state": "sent", "sent_at": now, "reason": None,
                              "provider_ref": o.provider_ref}
                elif o.unknown and not DEDUPING.get(c.campaign.channel):
                    # it may have arrived: a second copy is worse than none
                    values = {"state": "in_doubt", "reason": (o.error or "")[:200]}
                elif o.retryable and c.attempts < MAX_ATTEMPTS:
                    values = {"state": "pending_retry", "reason": (o.error or "")[:200],
                              "next_attempt_at": now + backoff(c.attempts)}
                else:
                    values = {"state": "failed",
                              "reason": ("bounced: " if o.bounced else "")
                              + (o.error or "failed")[:180]}
                    if o.bounced:
                        bounces.append((c.campaign.account_id, c.identity, c.campaign.channel))
                if not o.delivered:
                    _release_daily_cap(conn, c.campaign.account_id, c.identity, _day(now))
                updates.append({"_id": c.id, "state": values["state"],
                                "reason": values.get("reason"),
                                "sent_at": values.get("sent_at"),
                                "next_attempt_at": values.get("next_attempt_at"),
                                "provider_ref": values.get("provider_ref")})
            if updates:
                # one statement, many parameter sets: the driver's executemany
                conn.execute(update(messages).where(
                    messages.c.id == bindparam("_id"), messages.c.state == "sending").values(
                    claim_until=None, state=bindparam("state"), reason=bindparam("reason"),
                    sent_at=func.coalesce(bindparam("sent_at", type_=messages.c.sent_at.type),
                                          messages.c.sent_at),
                    next_attempt_at=bindparam("next_attempt_at",
                                              type_=messages.c.next_attempt_at.type),
                    provider_ref=bindparam("provider_ref")), updates)
            return bounces

        bounces = self.propel.db.write(_record)
        if bounces:
            from propel.campaigns.consent import revoke_consent

            for account_id, identity, channel in bounces:
                revoke_consent(self.propel, account_id, identity, channel, "bounce")


def _record_decisions(conn: Connection, decided: list[tuple[int, dict[str, Any]]]) -> None:
    """One executemany per shape of decision (suppressed with a reason, or delayed)."""
    shapes: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
    for msg_id, values in decided:
        shapes[tuple(sorted(values))].append({"_id": msg_id, **values})
    for names, params in shapes.items():
        conn.execute(update(messages).where(messages.c.id == bindparam("_id")).values(
            {name: bindparam(name, type_=messages.c[name].type) for name in names}), params)


def _count_by(claimed: list[Claimed]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for c in claimed:
        out[c.campaign.id] += 1
    return out


def pending_count(propel: Propel) -> int:
    now = utcnow()
    with propel.db.read() as conn:
        return conn.execute(select(func.count()).select_from(messages).where(
            messages.c.state.in_(("queued", "pending_retry")),
            or_(messages.c.next_attempt_at.is_(None), messages.c.next_attempt_at <= now),
        )).scalar()


class DeliveryThread(threading.Thread):
    """Runs due campaign dispatches and the delivery engine inside serve / worker."""

    def __init__(self, propel: Propel, interval: float = 0.5) -> None:
        super().__init__(name="propel-delivery", daemon=True)
        self.propel = propel
        self.interval = interval
        self.stopping = threading.Event()

    def run(self) -> None:
        run_event_loop(self._loop(), self.propel.settings)

    async def _loop(self) -> None:
        from propel.campaigns.dispatch import dispatch_campaign, finish_dispatches
        from propel.campaigns.service import due_campaigns

        engine = DeliveryEngine(self.propel)
        try:
            while not self.stopping.is_set():
                try:
                    for campaign_id in due_campaigns(self.propel):
                        account = _account_of(self.propel, campaign_id)
                        dispatch_campaign(self.propel, account, campaign_id)
                    # a time budget, so new due campaigns start meanwhile
                    sent = await engine.run_batches(seconds=5.0)
                    finish_dispatches(self.propel)
                except Exception:  # keep delivering after a transient failure
                    log.exception("delivery loop failed; retrying")
                    sent = 0
                if not sent:
                    await asyncio.sleep(self.interval)
        finally:
            await engine.aclose()

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=60)


def _account_of(propel: Propel, campaign_id: str) -> str:
    with propel.db.read() as conn:
        return conn.execute(select(campaigns.c.account_id).where(
            campaigns.c.id == campaign_id)).scalar()


