"""Which message ids an account has sent lately: the dedupe window.

A key is a 64-bit hash of (account, message id), kept for ``dedupe_days`` and then
forgotten a whole day at a time.

On PostgreSQL every accepted key goes straight into ``dedupe_keys`` with
``INSERT … ON CONFLICT DO NOTHING RETURNING``.

On SQLite that insert was the most expensive thing ingest did. Hashes are random, so
each one lands on a page of its own in the ``dedupe_keys`` B-tree, and every dirtied
page is written to the WAL and then again by the checkpoint: about 8 KB of writes per
event. So on SQLite, keys are kept like a small log-structured merge tree:

- new keys are appended to ``dedupe_recent`` in ``seq`` order, which dirties a page
  for every hundred or so keys;
- each process keeps the keys of ``dedupe_recent`` in memory (:class:`RecentKeys`),
  catching up on the rows other processes appended (``seq`` above the last one it
  read) inside the write transaction, so under SQLite's single write lock the check
  sees every committed key;
- a key not found in memory is looked up in ``dedupe_keys``, which only reads;
- :func:`settle_recent_keys` (the flusher calls it) moves ``dedupe_recent`` into
  ``dedupe_keys`` in key order, so each B-tree page is written once per move rather
  than once per key.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, and_, delete, event, func, select
from sqlalchemy.engine import Engine

from propel.accounts.tables import accounts
from propel.db.bulk import insert_ignore_returning, insert_many
from propel.db.engine import Database
from propel.ingest.tables import dedupe_keys, dedupe_recent

# Keys moved per write transaction, so the single writer is never held for long.
SETTLE_CHUNK = 50_000
# SQLite's limit on bound parameters is 32,766; stay well below it.
LOOKUP_CHUNK = 900


class RecentKeys:
    """One process's copy of ``dedupe_recent`` for one database (SQLite)."""

    def __init__(self) -> None:
        self.keys: set[int] = set()
        # (highest seq, keys) per catch-up read, oldest first: forgetting settled keys
        # drops whole reads, and a key costs the set one slot plus a list slot.
        self._reads: deque[tuple[int, list[int]]] = deque()
        self.last_seq = 0
        self.lock = threading.Lock()

    def reset(self) -> None:
        with self.lock:
            self.keys.clear()
            self._reads.clear()
            self.last_seq = 0

    def catch_up(self, conn: Connection) -> None:
        """Read the rows appended since the last call and forget the ones settled."""
        # Driver SQL: this runs in every write transaction that takes keys.
        first = conn.exec_driver_sql("SELECT min(seq) FROM dedupe_recent").scalar()
        # A read is dropped once all of it has settled; a partly settled read stays
        # (still duplicates) until the next settle moves the rest.
        while self._reads and (first is None or self._reads[0][0] < first):
            self.keys.difference_update(self._reads.popleft()[1])
        rows = conn.exec_driver_sql(
            "SELECT seq, key_hash FROM dedupe_recent WHERE seq > ? ORDER BY seq",
            (self.last_seq,)).all()
        if rows:
            keys = [key for _seq, key in rows]
            self.keys.update(keys)
            self.last_seq = rows[-1][0]
            self._reads.append((self.last_seq, keys))


_recent: weakref.WeakKeyDictionary[Engine, RecentKeys] = weakref.WeakKeyDictionary()
_recent_lock = threading.Lock()


def _recent_keys(engine: Engine) -> RecentKeys:
    with _recent_lock:
        recent = _recent.get(engine)
        if recent is None:
            recent = _recent[engine] = RecentKeys()
            _forget_on_failed_commit(engine, recent)
        return recent


def _forget_on_failed_commit(engine: Engine, recent: RecentKeys) -> None:
    """The copy may hold keys of an open transaction (a later write in the same group
    commit reads them back); if that transaction rolls back, they never became durable,
    so start over from the table."""

    @event.listens_for(engine, "commit")
    def _on_commit(conn: Connection) -> None:
        conn.info.pop(_READ_OPEN, None)

    @event.listens_for(engine, "rollback")
    def _on_rollback(conn: Connection) -> None:
        if conn.info.pop(_READ_OPEN, None):
            recent.reset()


# Set in a connection's info while its open transaction has caught up on dedupe_recent.
_READ_OPEN = "propel_dedupe_read_open"


def _settled(conn: Connection, account_id: str, keys: list[int]) -> set[int]:
    found: set[int] = set()
    for start in range(0, len(keys), LOOKUP_CHUNK):
        part = keys[start:start + LOOKUP_CHUNK]
        marks = ", ".join("?" * len(part))
        found.update(conn.exec_driver_sql(
            "SELECT key_hash FROM dedupe_keys WHERE account_id = ? "
            f"AND key_hash IN ({marks})", (account_id, *part)).scalars())
    return found


def fresh_keys(conn: Connection, account_id: str, keys: Iterable[int], day: int) -> set[int]:
    """Record ``keys`` (distinct) as seen today and return the ones not seen before.
    Call inside the write transaction that stores what they belong to."""
    keys = list(keys)
    if not keys:
        return set()
    if conn.dialect.name != "sqlite":
        rows = [(account_id, key, day) for key in keys]
        return set(insert_ignore_returning(conn, "dedupe_keys",
                                           ("account_id", "key_hash", "day"), rows, "key_hash"))
    recent = _recent_keys(conn.engine)
    with recent.lock:
        conn.info[_READ_OPEN] = True
        recent.catch_up(conn)
        candidates = [key for key in keys if key not in recent.keys]
    fresh = set(candidates) - _settled(conn, account_id, candidates)
    insert_many(conn, "dedupe_recent", ("account_id", "key_hash", "day"),
                [(account_id, key, day) for key in keys if key in fresh])
    return fresh


def settle_recent_keys(db: Database, *, at: int, chunk: int = SETTLE_CHUNK) -> int:
    """Move ``dedupe_recent`` into ``dedupe_keys`` once it holds ``at`` keys or more
    (``PROPEL_DEDUPE_SETTLE_KEYS``; each process holds that many in memory)."""
    if not db.is_sqlite:
        return 0
    with db.read() as conn:
        low, high = conn.execute(
            select(func.min(dedupe_recent.c.seq), func.max(dedupe_recent.c.seq))).one()
    if low is None or high - low + 1 < at:
        return 0
    moved = 0
    for start in range(low, high + 1, chunk):
        moved += db.write(lambda conn, s=start: _settle(conn, s + chunk - 1))
    return moved


def _settle(conn: Connection, through_seq: int) -> int:
    conn.exec_driver_sql(
        "INSERT INTO dedupe_keys (account_id, key_hash, day) "
        "SELECT account_id, key_hash, day FROM dedupe_recent WHERE seq <= ? "
        "ORDER BY account_id, key_hash ON CONFLICT DO NOTHING", (through_seq,))
    return conn.execute(delete(dedupe_recent).where(dedupe_recent.c.seq <= through_seq)).rowcount


# Pruning walks each account's keys in this many hash ranges, one short write each, so
# the single writer is never held for a whole table scan.
PRUNE_SLICES = 64
_SLICE = 2**64 // PRUNE_SLICES


def _hash_slices() -> list[Any]:
    """Conditions on key_hash that together cover every signed 64-bit value once."""
    starts = [-(2**63) + i * _SLICE for i in range(PRUNE_SLICES)]
    key = dedupe_keys.c.key_hash
    return [key >= lo if lo == starts[-1] else and_(key >= lo, key < lo + _SLICE)
            for lo in starts]


def prune_dedupe_keys(db: Database, keep_days: int) -> int:
    """Forget message ids older than the dedupe window (whole days at a time)."""
    oldest_kept = time.time_ns() // 1000 // 86_400_000_000 - keep_days
    pruned = db.write(lambda conn: conn.execute(
        delete(dedupe_recent).where(dedupe_recent.c.day < oldest_kept)).rowcount)
    with db.read() as conn:
        account_ids = conn.execute(select(accounts.c.id)).scalars().all()
    for account_id in account_ids:
        for in_slice in _hash_slices():
            pruned += db.write(lambda conn, a=account_id, in_slice=in_slice: conn.execute(
                delete(dedupe_keys).where(dedupe_keys.c.account_id == a, in_slice,
                                          dedupe_keys.c.day < oldest_kept)
            ).rowcount)
    return pruned
