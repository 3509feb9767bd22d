"""The dedupe window: keys older than it are forgotten, newer ones kept, for every
account and across the whole 64-bit hash range (pruning walks it in slices)."""

from __future__ import annotations

import time

from sqlalchemy import func, insert, select

from propel.ingest.records import EventRecord, IngestItem, key_hash
from propel.ingest.service import PRUNE_SLICES, ingest_sync, prune_dedupe_keys
from propel.ingest.tables import dedupe_keys

EDGES = [-(2**63), -(2**63) + 1, -1, 0, 1, 2**63 - 1,
         -(2**63) + 2**64 // PRUNE_SLICES, -(2**63) + 2**64 // PRUNE_SLICES - 1]


def _keys(propel, account_id: str) -> set[tuple[int, int]]:
    with propel.db.read() as conn:
        rows = conn.execute(select(dedupe_keys.c.key_hash, dedupe_keys.c.day)
                            .where(dedupe_keys.c.account_id == account_id)).all()
    return {(r[0], r[1]) for r in rows}


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
        assert _keys(propel, account) == {(k ^ 0x5A5A, today - n % 7)
                                          for n, k in enumerate(EDGES)}


def test_a_pruned_message_id_is_accepted_again(propel, tenant):
    def send() -> int:
        item = IngestItem(key_hash=key_hash(tenant.id, "m-1"), event=EventRecord(
            message_id="m-1", identity="u", name="Charged", ts=time.time_ns() // 1000,
            properties="{}"))
        return ingest_sync(propel.db, tenant.id, [item], [], "api").accepted

    assert send() == 1 and send() == 0
    propel.db.write(lambda conn: conn.execute(dedupe_keys.update().values(day=1)))
    assert prune_dedupe_keys(propel.db, keep_days=7) == 1
    with propel.db.read() as conn:
        assert conn.execute(select(func.count()).select_from(dedupe_keys)).scalar() == 0
    assert send() == 1
