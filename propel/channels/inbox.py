"""The in-app inbox: messages stored in Propel's own database for the SDK to fetch.

The message key is the row's primary key and the insert is ``ON CONFLICT DO NOTHING``,
so storing the same message again (a resend after a crash) changes nothing: the inbox
deduplicates by construction (``dedupes = True``). A whole batch is one write, i.e.
one group commit on SQLite. If that write fails for a reason other than a busy
database, the messages are stored one by one so a single bad row (an over-long
identity, say) fails alone instead of taking the batch with it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson
from sqlalchemy import Connection
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError

from propel.campaigns.tables import inbox_messages
from propel.channels.base import Outbound, Outcome
from propel.core import Propel
from propel.db.engine import DatabaseBusy
from propel.db.meta import upsert_insert, utcnow

log = logging.getLogger("propel.channels")
# The database is unreachable or busy: nothing is wrong with the messages themselves.
_TRANSIENT = (DatabaseBusy, OperationalError, InterfaceError)


@dataclass(frozen=True)
class InboxConfig:
    """The inbox has no settings; it exists so every channel has a config type."""

    SECRETS: ClassVar[tuple[str, ...]] = ()


class InboxChannel:
    """Stores messages in ``inbox_messages``."""

    name = "inbox"
    dedupes = True

    def __init__(self, propel: Propel, config: InboxConfig | None = None) -> None:
        self.db = propel.db

    async def send(self, batch: list[Outbound]) -> list[Outcome]:
        if not batch:
            return []
        now = utcnow()
        rows: list[dict[str, Any] | None] = []
        early: dict[str, Outcome] = {}
        for ob in batch:
            try:
                rows.append(self._row(ob, now))
            except TypeError as exc:
                early[ob.key] = Outcome(ob.key, delivered=False, error=f"invalid message: {exc}")
                rows.append(None)
        good = [r for r in rows if r is not None]
        try:
            await self.db.awrite(lambda conn: self._store(conn, good))
        except _TRANSIENT as exc:
            error = f"database unavailable: {type(exc).__name__}"
            return [early.get(ob.key) or Outcome(ob.key, delivered=False, retryable=True,
                                                 error=error) for ob in batch]
        except SQLAlchemyError:
            log.warning("inbox batch failed; storing its %d messages one by one", len(good))
            return [early.get(ob.key) or await self._store_alone(ob.key, row)
                    for ob, row in zip(batch, rows, strict=True)]
        return [early.get(ob.key) or Outcome(ob.key, delivered=True) for ob in batch]

    async def aclose(self) -> None:
        """Nothing to close: the database belongs to the Propel object."""

    @staticmethod
    def _row(ob: Outbound, now: Any) -> dict[str, Any]:
        return {"key": ob.key, "account_id": ob.account_id, "identity": ob.identity,
                "campaign_id": ob.campaign_id or None, "title": ob.title or ob.subject,
                "body": ob.body or ob.text, "url": ob.url,
                "data": orjson.dumps(ob.data, default=str).decode(), "created_at": now}

    def _store(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        if rows:
            stmt = upsert_insert(conn.dialect.name, inbox_messages).on_conflict_do_nothing(
                index_elements=["key"])
            conn.execute(stmt, rows)

    async def _store_alone(self, key: str, row: dict[str, Any] | None) -> Outcome:
        try:
            await self.db.awrite(lambda conn: self._store(conn, [row] if row else []))
        except _TRANSIENT as exc:
            return Outcome(key, delivered=False, retryable=True,
                           error=f"database unavailable: {type(exc).__name__}")
        except SQLAlchemyError as exc:
            return Outcome(key, delivered=False, error=f"cannot store: {type(exc).__name__}")
        return Outcome(key, delivered=True)
