"""Validate → dedupe → persist, shared by every ingest API.

Routes parse their own payload shapes into :class:`IngestItem` lists and
:class:`Rejection` lists; this module stores both in one transaction. When it
returns, the accepted items are committed (durable), duplicates were skipped, and
every rejection is kept where operators can see it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import Connection, insert, select

from propel import faults
from propel.db.bulk import insert_many
from propel.db.engine import Database
from propel.db.meta import utcnow
from propel.ingest.dedupe import fresh_keys
from propel.ingest.records import EventRecord, IngestItem, Rejection
from propel.ingest.tables import rejections
from propel.profiles import apply_update, merge_identities

# Oversize records are rejected at 32 KiB; keep them whole up to twice that for replay.
MAX_KEPT_RECORD_BYTES = 64 * 1024


@dataclass
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    rejected: list[Rejection] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": [r.as_dict() for r in self.rejected],
        }


EVENT_COLUMNS = ("account_id", "kind", "message_id", "identity", "name", "ts", "received_at",
                 "source", "properties")


def _event_row(account_id: str, ev: EventRecord, now_us: int, source: str) -> tuple:
    return (account_id, ev.kind, ev.message_id, ev.identity, ev.name, ev.ts, now_us, source,
            ev.properties)


def _rejection_row(account_id: str, source: str, rej: Rejection) -> dict[str, Any]:
    raw = orjson.dumps(rej.record, default=str)
    if len(raw) > MAX_KEPT_RECORD_BYTES:
        raw = raw[:MAX_KEPT_RECORD_BYTES]
        record = raw.decode(errors="ignore") + "…"
    else:
        record = raw.decode()
    return {
        "account_id": account_id,
        "source": source,
        "received_at": utcnow(),
        "position": rej.index,
        "field": rej.field[:200].replace("\x00", "\\0"),
        "reason": rej.reason[:500].replace("\x00", "\\0"),
        "record": record,
    }


def store_items(
    conn: Connection,
    account_id: str,
    items: list[IngestItem],
    rejected: list[Rejection],
    source: str,
) -> IngestResult:
    """The transaction body: call inside :meth:`Database.write`."""
    now_us = time.time_ns() // 1000
    day = now_us // 86_400_000_000
    result = IngestResult(rejected=rejected)
    unique: dict[int, IngestItem] = {}
    for item in items:
        unique.setdefault(item.key_hash, item)
    fresh = fresh_keys(conn, account_id, unique, day)
    rows: list[tuple] = []
    for key, item in unique.items():
        if key not in fresh:
            continue
        if item.alias is not None:
            change = merge_identities(conn, account_id, item.alias[0], item.alias[1], now_us)
            if change is not None:
                rows.append(_event_row(account_id, change, now_us, source))
        if item.profile is not None:
            change = apply_update(conn, account_id, item.profile, now_us)
            if change is not None:
                rows.append(_event_row(account_id, change, now_us, source))
        if item.event is not None:
            rows.append(_event_row(account_id, item.event, now_us, source))
    insert_many(conn, "recent_events", EVENT_COLUMNS, rows)
    if rejected:
        conn.execute(insert(rejections), [_rejection_row(account_id, source, r) for r in rejected])
    result.accepted = len(fresh)
    result.duplicates = len(items) - len(fresh)
    return result


async def ingest(
    db: Database, account_id: str, items: list[IngestItem], rejected: list[Rejection], source: str
) -> IngestResult:
    result = await db.awrite(lambda conn: store_items(conn, account_id, items, rejected, source))
    faults.crash_point("ingest.after_commit")
    return result


def ingest_sync(
    db: Database, account_id: str, items: list[IngestItem], rejected: list[Rejection], source: str
) -> IngestResult:
    result = db.write(lambda conn: store_items(conn, account_id, items, rejected, source))
    faults.crash_point("ingest.after_commit")
    return result


def list_rejections(
    db: Database, account_id: str, *, source: str | None = None, before_id: int | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    query = select(rejections).where(rejections.c.account_id == account_id)
    if source:
        query = query.where(rejections.c.source == source)
    if before_id:
        query = query.where(rejections.c.id < before_id)
    with db.read() as conn:
        rows = conn.execute(query.order_by(rejections.c.id.desc()).limit(limit)).all()
    return [
        {
            "id": r.id,
            "source": r.source,
            "received_at": r.received_at.isoformat(),
            "index": r.position,
            "field": r.field,
            "reason": r.reason,
            "record": orjson.loads(r.record) if not r.record.endswith("…") else r.record,
        }
        for r in rows
    ]
