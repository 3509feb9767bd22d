"""The engine: advance every due entry, in batches, exactly once per step.

A batch is read (which entries are due, and — only when a branch tests events — their
events from the lake), then applied in **one write transaction**: the entries are
claimed again under lock (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; the single writer
on SQLite), each walks from its current step through every step that takes no time
(send, branch, split, update property) to the next wait or its end, and the step log
rows, their effects (outbox messages, profile changes through ingest) and the entries'
new positions commit together. A step log row is keyed by (entry, version, step, seq):
inserted with ``ON CONFLICT DO NOTHING``, only a new row carries its effect. So a crash
before the commit leaves nothing (the batch runs again), after it everything, and two
workers never both run a step.

Time is injected: ``advance(propel, now=...)`` uses that clock for every due date and
wait, so tests and simulations move time without sleeping.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

import orjson
from sqlalchemy import Connection

from propel import faults
from propel.core import Propel
from propel.db.meta import utcnow
from propel.journeys import conditions, store
from propel.journeys.events import Matcher, done_by
from propel.journeys.spec import seconds_of

log = logging.getLogger("propel.journeys")
MAX_CHAIN = 64  # steps one entry may take in one batch (validation forbids instant loops)
BATCH = 2000


def step_campaign_id(journey_id: str, version: int, step: str) -> str:
    digest = hashlib.blake2b(f"{journey_id}:{version}:{step}".encode(), digest_size=14)
    return "cj_" + digest.hexdigest()


def message_key(journey_id: str, entry_id: int, step: str, seq: int) -> str:
    return "m" + hashlib.blake2b(f"journey:{journey_id}:{entry_id}:{step}:{seq}".encode(),
                                 digest_size=16).hexdigest()


def split_path(journey_id: str, entry_id: int, step: dict[str, Any], seq: int) -> int:
    digest = hashlib.blake2b(f"split:{journey_id}:{entry_id}:{step['id']}:{seq}".encode(),
                             digest_size=8).digest()
    point = int.from_bytes(digest, "big") / 2**64 * 100
    total = 0.0
    for i, path in enumerate(step["paths"]):
        total += path["percent"]
        if point < total:
            return i
    return len(step["paths"]) - 1


@dataclass
class Version:
    journey_id: str
    version: int
    spec: dict[str, Any]
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    tests: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def of(cls, journey_id: str, version: int, spec: dict[str, Any]) -> Version:
        return cls(journey_id, version, spec, {s["id"]: s for s in spec["steps"]},
                   conditions.event_tests(spec))


@dataclass
class Walk:
    """What one entry did in this batch."""

    logs: list[tuple] = field(default_factory=list)
    sends: list[tuple[str, int, str]] = field(default_factory=list)  # step, seq, key
    props: list[tuple[str, int, str, Any]] = field(default_factory=list)  # step, seq, name, value
    move: dict[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    now: datetime
    props: dict[str, Any]
    hits: dict[str, list[int]]


def _move(row: Any, **values: Any) -> dict[str, Any]:
    base = {"_id": row.id, "_seq": row.seq, "state": "active", "step": row.step,
            "seq": row.seq, "due_at": None, "wait_event": None, "waiting_since": None,
            "exit_reason": None, "exited_at": None}
    base.update(values)
    return base


def walk(row: Any, v: Version, ctx: Context) -> Walk:
    """Run the entry from where it is to its next wait or its end (pure: no I/O)."""
    out = Walk()
    now = ctx.now
    step_id, seq = row.step, row.seq
    if row.state == "waiting":  # a wait is over (its time, or the awaited event came)
        step = v.steps[step_id]
        if step["type"] == "wait":
            step_id = step.get("next")
        else:
            step_id = step.get("on_event") if row.woken else step.get("on_timeout")
        seq += 1
    for _ in range(MAX_CHAIN):
        if step_id is None:
            out.move = _move(row, state="done", step=None, seq=seq, exit_reason="end",
                             exited_at=now)
            return out
        step = v.steps[step_id]
        kind = step["type"]
        outcome, key, nxt = None, None, step.get("next")
        if kind == "send":
            key = message_key(v.journey_id, row.id, step_id, seq)
            out.sends.append((step_id, seq, key))
        elif kind == "branch":
            yes = conditions.holds(step["condition"], ctx.props, ctx.hits,
                                   int(row.entered_at.timestamp() * 1e6),
                                   int(now.timestamp() * 1e6))
            outcome, nxt = ("yes", step.get("yes")) if yes else ("no", step.get("no"))
        elif kind == "split":
            i = split_path(v.journey_id, row.id, step, seq)
            outcome, nxt = f"path {i}", step["paths"][i].get("next")
        elif kind == "update_property":
            out.props.append((step_id, seq, step["property"], step["value"]))
            ctx.props[step["property"]] = step["value"]
        out.logs.append((v.journey_id, v.version, row.id, step_id, seq, now, outcome, key))
        if kind == "exit":
            out.move = _move(row, state="done", step=step_id, seq=seq, exit_reason="exit",
                             exited_at=now)
            return out
        if kind == "wait":
            out.move = _move(row, state="waiting", step=step_id, seq=seq,
                             due_at=now + timedelta(seconds=seconds_of(step["duration"])))
            return out
        if kind == "wait_until":
            out.move = _move(row, state="waiting", step=step_id, seq=seq,
                             due_at=now + timedelta(seconds=seconds_of(step["timeout"])),
                             wait_event=step["event"], waiting_since=now)
            return out
        step_id, seq = nxt, seq + 1
    out.move = _move(row, step=step_id, seq=seq, due_at=now)  # goes on in the next batch
    return out


# ------------------------------------------------------------------------ batches

class Engine:
    """Advances entries; keeps parsed versions between batches."""

    def __init__(self, propel: Propel, batch_size: int = BATCH) -> None:
        self.propel = propel
        self.batch_size = batch_size
        self._versions: dict[tuple[str, int], Version] = {}

    def version(self, conn: Connection, journey_id: str, number: int) -> Version:
        key = (journey_id, number)
        if key not in self._versions:
            self._versions[key] = Version.of(journey_id, number,
                                             store.definition(conn, journey_id, number))
        return self._versions[key]

    def run_batch(self, now: datetime) -> int:
        """One batch; returns the number of steps taken (0: nothing was due)."""
        with self.propel.db.read() as conn:
            due = store.due(conn, now, self.batch_size)
            if not due:
                return 0
            ids = [r.id for r in due]
            tested = any(self.version(conn, j, v).tests for j, v in {
                (r.journey_id, r.version) for r in due})
            hits = self._event_hits(conn, ids, now) if tested else {}
        faults.crash_point("journeys.after_read")
        taken = self.propel.db.write(lambda conn: self._apply(conn, ids, hits, now))
        faults.crash_point("journeys.after_commit")
        return taken

    def _event_hits(self, conn: Connection, ids: list[int], now: datetime
                    ) -> dict[str, dict[str, list[int]]]:
        """Events of the batch's users, only for versions whose branches test events."""
        rows = store.entries_by_id(conn, ids)
        wanted: dict[str, list[Any]] = {}
        for r in rows:
            if self.version(conn, r.journey_id, r.version).tests:
                wanted.setdefault(r.account_id, []).append(r)
        out: dict[str, dict[str, list[int]]] = {}
        for account_id, entries in wanted.items():
            tests = {conditions.event_key(t): t for e in entries
                     for t in self.version(conn, e.journey_id, e.version).tests}
            matchers = [Matcher(k, t["event"], tuple(t.get("where") or ()))
                        for k, t in tests.items()]
            since = min(e.entered_at for e in entries) - timedelta(days=366)
            found = done_by(self.propel, account_id, sorted({e.identity for e in entries}),
                            matchers, since)
            for ident, per_key in found.items():
                out[f"{account_id}\x00{ident}"] = per_key
        return out

    def _apply(self, conn: Connection, ids: list[int], hits: dict[str, Any], now: datetime
               ) -> int:
        rows = store.claim(conn, ids, now)
        if not rows:
            return 0
        by_account: dict[str, list[Any]] = {}
        for r in rows:
            by_account.setdefault(r.account_id, []).append(r)
        logs, moves, sends, props = [], [], [], []
        for account_id, entries in by_account.items():
            idents = sorted({e.identity for e in entries})
            profiles = store.profiles_of(conn, account_id, idents)
            scores = store.scores_of(conn, account_id, idents)
            for e in entries:
                v = self.version(conn, e.journey_id, e.version)
                ctx = Context(now, _props(profiles.get(e.identity), scores.get(e.identity),
                                          e.identity),
                              hits.get(f"{account_id}\x00{e.identity}", {}))
                w = walk(e, v, ctx)
                logs += w.logs
                moves.append(w.move)
                sends += [(e, v, s, profiles.get(e.identity)) for s in w.sends]
                props += [(e, p) for p in w.props]
        new = store.log_steps(conn, logs)
        self._send(conn, [s for s in sends if (s[0].id, s[2][0], s[2][1]) in new], now)
        self._update_profiles(conn, [p for p in props if (p[0].id, p[1][0], p[1][1]) in new])
        store.save_entries(conn, moves)
        faults.crash_point("journeys.before_commit")
        return len(new)

    @staticmethod
    def _send(conn: Connection, sends: list[tuple], now: datetime) -> None:
        from propel.campaigns.dispatch import reachable
        from propel.campaigns.render import choose_variant

        cache: dict[tuple[str, int], int] = {}
        rows = []
        for e, v, (step_id, seq, key), profile in sends:
            step = v.steps[step_id]
            campaign_id = step_campaign_id(v.journey_id, v.version, step_id)
            dispatch_id = store.dispatch_for(conn, cache, e.account_id, campaign_id,
                                             e.entry_no * 1_000_000 + seq, v.journey_id,
                                             v.version, step_id, now)
            reason = reachable(step["channel"], _member(profile))
            rows.append((e.account_id, campaign_id, dispatch_id, e.identity, key,
                         choose_variant(step["content"]["variants"], key),
                         "suppressed" if reason else "queued", reason, 0, now))
        store.insert_messages(conn, rows)

    @staticmethod
    def _update_profiles(conn: Connection, props: list[tuple]) -> None:
        """Property changes go through ingest (so they are profile-change records in the
        lake too), deduplicated on a key derived from (entry, step number)."""
        from propel.ingest.records import IngestItem, ProfileUpdate, key_hash
        from propel.ingest.service import store_items

        by_account: dict[str, list[IngestItem]] = {}
        for e, (_step, seq, name, value) in props:
            mid = f"journey:{e.id}:{seq}"
            by_account.setdefault(e.account_id, []).append(IngestItem(
                key_hash(e.account_id, mid),
                profile=ProfileUpdate(identity=e.identity, properties={name: value})))
        for account_id, items in by_account.items():
            store_items(conn, account_id, items, [], "journey")


def _props(profile: Any, scores: dict[str, Any] | None, identity: str) -> dict[str, Any]:
    props: dict[str, Any] = orjson.loads(profile.properties) if profile is not None else {}
    if profile is not None:
        props.update(email=profile.email, phone=profile.phone, timezone=profile.timezone)
    props["identity"] = identity
    props.update(scores or {})
    return props


def _member(profile: Any) -> Any:
    if profile is None:
        return SimpleNamespace(consent={}, email=None, phone=None, push_tokens=[])
    return SimpleNamespace(consent=orjson.loads(profile.consent), email=profile.email,
                           phone=profile.phone, push_tokens=orjson.loads(profile.push_tokens))


def advance(propel: Propel, now: datetime | None = None, *, batch_size: int = BATCH,
            max_batches: int | None = None, events: bool = True) -> dict[str, int]:
    """Let users in (scheduled audiences, new events), wake and convert them from new
    events, then run every due step in batches. Returns counts."""
    from propel.journeys import entry

    now = now or utcnow()
    counts = {"entered": 0, "woken": 0, "converted": 0, "steps": 0, "batches": 0}
    counts["entered"] += entry.enter_scheduled(propel, now)
    if events:
        for key, n in entry.scan_events(propel, now).items():
            counts[key] += n
    engine = Engine(propel, batch_size)
    while max_batches is None or counts["batches"] < max_batches:
        taken = engine.run_batch(now)
        if not taken:
            break
        counts["steps"] += taken
        counts["batches"] += 1
    return counts
