"""The dedupe window. On SQLite new keys wait in ``dedupe_recent`` (arrival order, an
in-memory copy per process) and settle into ``dedupe_keys`` in key order; a message
id is a duplicate wherever its key is. Keys older than the window are forgotten, for
every account and across the whole 64-bit hash range."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import func, insert, select

from propel.core import Propel
from propel.db.engine import Database
from propel.ingest.dedupe import PRUNE_SLICES, prune_dedupe_keys, settle_recent_keys
from propel.ingest.records import EventRecord, IngestItem, key_hash
from propel.ingest.service import ingest_sync, store_items
from propel.ingest.tables import dedupe_keys, dedupe_recent, recent_events

EDGES = [-(2**63), -(2**63) + 1, -1, 0, 1, 2**63 - 1,
         -(2**63) + 2**64 // PRUNE_SLICES, -(2**63) + 2**64 // PRUNE_SLICES - 1]


def _item(account_id: str, message_id: str) -> IngestItem:
    return IngestItem(key_hash=key_hash(account_id, message_id), event=EventRecord(
        message_id=message_id, identity="u", name="Charged", ts=time.time_ns() // 1000,
        properties="{}"))


def _send(db: Database, account_id: str, *message_ids: str) -> int:
    items = [_item(account_id, m) for m in message_ids]
    return ingest_sync(db, account_id, items, [], "api").accepted


def _count(db: Database, table) -> int:
    with db.read() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar()


def _stored(db: Database) -> list[str]:
    with db.read() as conn:
        return sorted(conn.execute(select(recent_events.c.message_id)).scalars())


def test_prune_forgets_only_days_before_the_window(propel, tenant, other_tenant):
    today = time.time_ns() // 1000 // 86_400_000_000
    rows = []
    for account in (tenant.id, other_tenant.id):
        for n, key in enumerate(EDGES):
            rows.append({"account_id": account, "key_hash": key, "day": today - 8 - n % 3})
            rows.append({"account_id": account, "key_hash": key ^ 0x5A5A, "day": today - n % 7})
    propel.db.write(lambda conn: conn.execute(insert(dedupe_keys), rows))

    pruned = prune_dedupe_keys(propel.db, keep_days=7)

    assert pruned == 2 * len(EDGES)
    for account in (tenant.id, other_tenant.id):
        with propel.db.read() as conn:
            kept = set(conn.execute(select(dedupe_keys.c.key_hash, dedupe_keys.c.day).where(
                dedupe_keys.c.account_id == account)).all())
        assert kept == {(k ^ 0x5A5A, today - n % 7) for n, k in enumerate(EDGES)}


def test_a_pruned_message_id_is_accepted_again(propel, tenant):
    assert _send(propel.db, tenant.id, "m-1") == 1
    assert _send(propel.db, tenant.id, "m-1") == 0
    settle_recent_keys(propel.db, at=1)  # on SQLite, half the keys settle first
    assert _send(propel.db, tenant.id, "m-2") == 1
    for table in (dedupe_keys, dedupe_recent):
        propel.db.write(lambda conn, t=table: conn.execute(t.update().values(day=1)))
    assert prune_dedupe_keys(propel.db, keep_days=7) == 2
    assert _count(propel.db, dedupe_keys) + _count(propel.db, dedupe_recent) == 0
    assert _send(propel.db, tenant.id, "m-1", "m-2") == 2


def test_a_key_is_a_duplicate_before_and_after_it_settles(propel, tenant, other_tenant):
    assert _send(propel.db, tenant.id, *[f"m-{i}" for i in range(300)]) == 300
    moved = settle_recent_keys(propel.db, at=100, chunk=70)
    if propel.db.is_sqlite:
        assert moved == 300 and _count(propel.db, dedupe_recent) == 0
    assert _count(propel.db, dedupe_keys) == 300
    # settled keys, new keys and keys still waiting, in one batch
    assert _send(propel.db, tenant.id, *[f"m-{i}" for i in range(250, 350)]) == 50
    assert _send(propel.db, tenant.id, *[f"m-{i}" for i in range(0, 400, 7)]) == 8  # 350, 357 … 399
    # the same message id is another account's own
    assert _send(propel.db, other_tenant.id, "m-1", "m-299") == 2
    assert len(_stored(propel.db)) == 300 + 50 + 8 + 2


def test_two_processes_see_each_others_keys(settings, tenant, propel):
    """Two Database objects on one SQLite file are what two server processes have:
    each keeps its own copy of the recent keys and catches up on the other's."""
    if not propel.db.is_sqlite:
        pytest.skip("PostgreSQL checks dedupe_keys directly")
    other = Propel(settings)
    try:
        assert _send(propel.db, tenant.id, "a", "b") == 2
        assert _send(other.db, tenant.id, "b", "c") == 1
        assert _send(propel.db, tenant.id, "c", "d") == 1
        settle_recent_keys(other.db, at=1)
        assert _send(propel.db, tenant.id, "a", "d", "e") == 1
        assert _send(other.db, tenant.id, "e", "f") == 1
        assert _stored(propel.db) == ["a", "b", "c", "d", "e", "f"]
    finally:
        other.close()


def test_keys_of_a_rolled_back_transaction_are_not_remembered(propel, tenant):
    """A write that fails after taking its keys must not make them duplicates: a
    client retrying the failed request would lose its events."""
    assert _send(propel.db, tenant.id, "a") == 1
    items = [_item(tenant.id, "x"), _item(tenant.id, "y")]

    def store_then_fail(conn):
        store_items(conn, tenant.id, items[:1], [], "api")
        store_items(conn, tenant.id, items[1:], [], "api")  # reads the first one's key
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError), propel.db.engine.connect() as conn, conn.begin():
        store_then_fail(conn)
    assert _count(propel.db, dedupe_recent) + _count(propel.db, dedupe_keys) == 1
    assert _send(propel.db, tenant.id, "x", "y", "a") == 2


def test_a_restarted_process_still_knows_the_waiting_keys(settings, propel, tenant):
    assert _send(propel.db, tenant.id, "r-1", "r-2") == 2
    propel.close()
    again = Propel(settings)
    try:
        assert _send(again.db, tenant.id, "r-2", "r-3") == 1
    finally:
        again.close()
