"""Contract tests of the event lake (docs/architecture.md: Flush, Read, Files, Faults),
on SQLite and PostgreSQL: claims by batch number (never by "ids above the last
flushed one"), exact recovery after a crash at every flush step, readers that see
each acknowledged event exactly once while a flush commits, retention, the writer
lease, compaction and vacuum, and a reader that needs no network."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select, text, update
from sqlalchemy.engine import make_url

from propel import faults
from propel.core import Propel
from propel.db.meta import utcnow
from propel.ingest import native
from propel.ingest.service import ingest_sync
from propel.ingest.tables import recent_events
from propel.jobs import leases
from propel.jobs.tables import leases as leases_table
from propel.jobs.tasks import TASKS, FlusherThread
from propel.lake import reader, store
from propel.lake.events import query_events
from propel.lake.flush import delete_flushed, flush_batches, should_flush
from propel.lake.reader import message_ids
from propel.lake.store import FLUSHER_APP, LAKE_LEASE
from propel.lake.tables import lake_batches
from propel.settings import Settings

TS = 1_700_000_000  # one fixed day, so every event lands in one partition per account


class SimulatedCrash(BaseException):
    """Stands in for the SIGKILL at a crash point: unwinds without running the rest."""


# --- helpers -----------------------------------------------------------------------


def ingest(propel, tenant, ids, name="Viewed"):
    batch = [{"identity": f"u-{m}", "name": name, "message_id": m, "ts": TS + i}
             for i, m in enumerate(ids)]
    items, rejected = native.parse_all(batch, tenant.id, native.parse_event)
    assert not rejected
    assert ingest_sync(propel.db, tenant.id, items, rejected, "api").accepted == len(ids)
    return list(ids)


def insert_row(propel, tenant, message_id, row_id=None, conn=None):
    """A recent_events row straight into the table, optionally with an explicit id."""
    row = {"account_id": tenant.id, "kind": "event", "message_id": message_id,
           "identity": f"u-{message_id}", "name": "Viewed", "ts": TS * 1_000_000,
           "received_at": time.time_ns() // 1000, "source": "api", "properties": "{}"}
    if row_id is not None:
        row["id"] = row_id
    if conn is not None:
        return conn.execute(insert(recent_events).values(row).returning(recent_events.c.id))
    propel.db.write(lambda c: c.execute(insert(recent_events).values(row)))


def lake_ids(propel, version=None) -> Counter:
    """Message ids in the lake itself (not through the reader)."""
    table = propel.lake.table(version)
    if table is None:
        return Counter()
    return Counter(table.to_pyarrow_table(columns=["message_id"]).column("message_id").to_pylist())


def read_ids(propel, tenant=None) -> Counter:
    return Counter(message_ids(propel.db, propel.lake, tenant.id if tenant else None))


def once(ids) -> Counter:
    return Counter({m: 1 for m in ids})


def txn(propel) -> int:
    return propel.lake.transaction_version(FLUSHER_APP)


def lake_version(propel) -> int | None:
    table = propel.lake.table()
    return None if table is None else table.version()


def batch_rows(propel) -> list:
    with propel.db.read() as conn:
        return conn.execute(select(lake_batches).order_by(lake_batches.c.batch_no)).all()


def unclaimed(propel) -> int:
    with propel.db.read() as conn:
        return conn.execute(
            select(func.count()).where(recent_events.c.batch_no.is_(None))
        ).scalar()


def assert_settled(propel, expected):
    """Everything flushed: every batch marked, nothing unclaimed, the lake exact."""
    assert unclaimed(propel) == 0
    rows = batch_rows(propel)
    assert all(b.flushed_at is not None for b in rows)
    assert txn(propel) == max(b.batch_no for b in rows)
    assert lake_ids(propel) == once(expected)


@pytest.fixture
def crash_at(monkeypatch):
    """crash_at("flush.after_claim", ...) makes those crash points 'kill' the flusher;
    crash_at() disarms them."""

    def arm(*points):
        def crash_point(name):
            if name in points:
                raise SimulatedCrash(name)

        monkeypatch.setattr(faults, "crash_point", crash_point)

    arm()
    return arm


def is_postgres(propel) -> bool:
    return propel.db.engine.dialect.name == "postgresql"


# --- (a) claims never skip rows that commit out of id order ------------------------


def test_row_committed_below_a_claimed_id_is_still_flushed(propel, tenant):
    insert_row(propel, tenant, "late-10", row_id=10)
    insert_row(propel, tenant, "late-11", row_id=11)
    assert flush_batches(propel.db, propel.lake).rows == 2
    # commits after the claim, with an id below the batch's ids (the order in which
    # concurrent transactions commit is not the order in which they took ids)
    insert_row(propel, tenant, "early-5", row_id=5)
    expected = ["late-10", "late-11", "early-5"]
    assert read_ids(propel, tenant) == once(expected)
    result = flush_batches(propel.db, propel.lake)
    assert (result.batches, result.rows) == (1, 1)
    assert_settled(propel, expected)
    assert read_ids(propel, tenant) == once(expected)


def test_postgres_transaction_committing_after_a_later_id_was_flushed(propel, tenant):
    if not is_postgres(propel):
        pytest.skip("concurrent writers only on PostgreSQL (SQLite has one writer)")
    with propel.db.engine.connect() as slow:
        tx = slow.begin()
        slow_id = insert_row(propel, tenant, "slow", conn=slow).scalar()
        ingest(propel, tenant, ["fast-1", "fast-2"])  # later ids, committed first
        with propel.db.read() as conn:
            fast_ids = conn.execute(select(recent_events.c.id).where(
                recent_events.c.message_id.like("fast-%"))).scalars().all()
        assert min(fast_ids) > slow_id
        assert flush_batches(propel.db, propel.lake).rows == 2
        assert read_ids(propel, tenant) == once(["fast-1", "fast-2"])
        tx.commit()
    expected = ["slow", "fast-1", "fast-2"]
    assert read_ids(propel, tenant) == once(expected)
    assert flush_batches(propel.db, propel.lake).rows == 1
    assert_settled(propel, expected)


def test_postgres_claim_skips_locked_rows_instead_of_waiting(propel, tenant):
    if not is_postgres(propel):
        pytest.skip("FOR UPDATE SKIP LOCKED is PostgreSQL's")
    ingest(propel, tenant, ["locked", "free-1", "free-2"])
    with propel.db.engine.connect() as other:
        tx = other.begin()
        other.execute(select(recent_events.c.id).where(
            recent_events.c.message_id == "locked").with_for_update())
        outcome = {}
        flusher = threading.Thread(
            target=lambda: outcome.setdefault("r", flush_batches(propel.db, propel.lake)))
        flusher.start()
        flusher.join(timeout=20)
        assert not flusher.is_alive(), "the claim waited for a locked row"
        assert outcome["r"].rows == 2
        tx.rollback()
    assert flush_batches(propel.db, propel.lake).rows == 1
    assert_settled(propel, ["locked", "free-1", "free-2"])


# --- (b) a crash at any flush step: recovery marks or rewrites exactly --------------


@pytest.mark.parametrize("point, rewritten", [
    ("flush.after_claim", True),
    ("flush.after_lake_commit", False),
    ("flush.before_mark", False),
])
def test_crash_mid_flush_recovers_exactly(propel, tenant, crash_at, point, rewritten):
    first = ingest(propel, tenant, ["a1", "a2"])
    flush_batches(propel.db, propel.lake)
    second = ingest(propel, tenant, ["b1", "b2", "b3"])
    crash_at(point)
    with pytest.raises(SimulatedCrash):
        flush_batches(propel.db, propel.lake)
    crash_at()
    assert [b.flushed_at is None for b in batch_rows(propel)] == [False, True]
    assert txn(propel) == (1 if rewritten else 2)
    assert read_ids(propel, tenant) == once(first + second)  # exact even mid-crash
    before = lake_version(propel)

    result = flush_batches(propel.db, propel.lake)
    assert (result.recovered, result.batches) == (1, 0)
    after = lake_version(propel)
    if rewritten:  # exactly the batch, in one new commit
        assert after == before + 1
        assert lake_ids(propel, after) - lake_ids(propel, before) == once(second)
    else:  # already in the lake: only marked
        assert after == before
    assert_settled(propel, first + second)
    assert read_ids(propel, tenant) == once(first + second)


def test_crashes_during_recovery_still_converge(propel, tenant, crash_at):
    ids = ingest(propel, tenant, [f"m{i}" for i in range(7)])
    for point in ("flush.after_claim", "flush.after_lake_commit", "flush.before_mark",
                  "flush.before_mark"):
        crash_at(point)
        with pytest.raises(SimulatedCrash):
            flush_batches(propel.db, propel.lake)
        assert read_ids(propel, tenant) == once(ids)
    crash_at()
    assert flush_batches(propel.db, propel.lake).recovered == 1
    assert len(batch_rows(propel)) == 1
    assert_settled(propel, ids)


def test_random_crashes_never_lose_or_repeat_an_event(propel, tenant, monkeypatch):
    rng = random.Random(20261129)

    def crash_point(name):
        if name.startswith("flush.") and rng.random() < 0.25:
            raise SimulatedCrash(name)

    monkeypatch.setattr(faults, "crash_point", crash_point)
    expected: list[str] = []
    crashes = 0
    for n in range(30):
        expected += ingest(propel, tenant, [f"r{n}-{i}" for i in range(rng.randint(1, 12))])
        try:
            flush_batches(propel.db, propel.lake, max_rows=rng.randint(1, 10))
        except SimulatedCrash:
            crashes += 1
        assert read_ids(propel, tenant) == once(expected)
    assert crashes > 3
    monkeypatch.setattr(faults, "crash_point", lambda name: None)
    flush_batches(propel.db, propel.lake)
    assert_settled(propel, expected)


def test_batch_numbers_never_fall_back_below_the_lake(propel, tenant, crash_at):
    """The operational database lost its batch records (restored from an older
    backup, recreated) while the lake kept its transaction version: a new batch must
    be numbered above the lake's, or recovery would take it as already written."""
    first = ingest(propel, tenant, ["a1", "a2"])
    flush_batches(propel.db, propel.lake)
    flush_batches(propel.db, propel.lake)
    propel.db.write(lambda c: c.execute(lake_batches.delete()))
    second = ingest(propel, tenant, ["b1"])
    crash_at("flush.after_claim")
    with pytest.raises(SimulatedCrash):
        flush_batches(propel.db, propel.lake)
    crash_at()
    assert batch_rows(propel)[0].batch_no > 1
    flush_batches(propel.db, propel.lake)
    assert lake_ids(propel) == once(first + second)
    assert read_ids(propel, tenant) == once(first + second)


def test_faults_spec_is_parsed_strictly(monkeypatch):
    monkeypatch.setattr(faults, "_armed", {})
    faults.arm("flush.after_claim=0.5, ingest.after_commit")
    assert faults._armed == {"flush.after_claim": 0.5, "ingest.after_commit": 1.0}
    with pytest.raises(ValueError, match="unknown crash point"):
        faults.arm("flush.after_claimm=1")
    for point in ("flush.after_claim", "flush.after_lake_commit", "flush.before_mark",
                  "ingest.after_commit"):
        assert point in faults.POINTS


def test_crash_point_kills_the_process_with_sigkill(tmp_path):
    code = "from propel import faults; faults.crash_point('flush.before_mark'); print('alive')"
    env = {**os.environ, "PROPEL_FAULTS": "flush.before_mark=1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          timeout=60)
    assert proc.returncode == -9 and b"alive" not in proc.stdout
    assert b"propel: crash point flush.before_mark: SIGKILL" in proc.stderr
    env["PROPEL_FAULTS"] = "flush.before_mark=0"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          timeout=60)
    assert proc.returncode == 0 and b"alive" in proc.stdout


# --- (c) readers: exactly once while a flush commits; retention ---------------------


@pytest.mark.parametrize("interleaved", ["flush", "lake_commit_then_crash", "claim_then_crash"])
def test_reader_is_exact_when_a_flush_commits_between_pin_and_recent_read(
        propel, tenant, monkeypatch, crash_at, interleaved):
    first = ingest(propel, tenant, ["a1", "a2", "a3"])
    flush_batches(propel.db, propel.lake)
    second = ingest(propel, tenant, ["b1", "b2", "b3", "b4"])
    original = reader._recent
    seen = {}

    def recent_after_a_flush(db, pin, account_id):
        seen["pinned"] = pin
        if interleaved == "flush":
            flush_batches(propel.db, propel.lake)
        else:
            crash_at("flush.after_lake_commit" if interleaved.startswith("lake")
                     else "flush.after_claim")
            with pytest.raises(SimulatedCrash):
                flush_batches(propel.db, propel.lake)
            crash_at()
        seen["lake_version_now"] = lake_version(propel)
        return original(db, pin, account_id)

    monkeypatch.setattr(reader, "_recent", recent_after_a_flush)
    assert read_ids(propel, tenant) == once(first + second)
    assert seen["pinned"].flushed_through == 1
    if interleaved != "claim_then_crash":
        assert seen["lake_version_now"] > seen["pinned"].lake_version
    monkeypatch.setattr(reader, "_recent", original)
    assert read_ids(propel, tenant) == once(first + second)
    # the same holds for the reader's other entry points
    assert reader.count_events(propel.db, propel.lake, tenant.id) == len(first + second)


def test_reader_pinned_before_a_flush_needs_the_retention(propel, tenant, monkeypatch):
    """Why flushed rows stay in recent_events: a reader pinned before the flush finds
    them only there. Within the retention delete_flushed keeps them; past it they go."""
    ids = ingest(propel, tenant, ["a1", "a2"])
    original = reader._recent

    def flush_and_prune(retention):
        def recent(db, pin, account_id):
            flush_batches(propel.db, propel.lake)
            delete_flushed(propel.db, retention)
            return original(db, pin, account_id)
        return recent

    monkeypatch.setattr(reader, "_recent", flush_and_prune(3600))
    assert read_ids(propel, tenant) == once(ids)
    more = ingest(propel, tenant, ["b1"])
    monkeypatch.setattr(reader, "_recent", flush_and_prune(0))
    assert read_ids(propel, tenant) == once(ids)  # b1 was pruned under the reader's feet
    monkeypatch.setattr(reader, "_recent", original)
    assert read_ids(propel, tenant) == once(ids + more)


def test_flushed_rows_are_deleted_only_after_the_retention(propel, tenant, crash_at):
    flushed = ingest(propel, tenant, ["a1", "a2", "a3"])
    flush_batches(propel.db, propel.lake)
    claimed = ingest(propel, tenant, ["b1"])
    crash_at("flush.after_claim")
    with pytest.raises(SimulatedCrash):
        flush_batches(propel.db, propel.lake)
    crash_at()
    pending = ingest(propel, tenant, ["c1", "c2"])
    retention = 3600

    def age_batch_1(seconds):
        propel.db.write(lambda c: c.execute(
            update(lake_batches).where(lake_batches.c.batch_no == 1)
            .values(flushed_at=utcnow() - timedelta(seconds=seconds))))

    assert delete_flushed(propel.db, retention) == 0
    age_batch_1(retention - 60)
    assert delete_flushed(propel.db, retention) == 0
    age_batch_1(retention + 1)
    assert delete_flushed(propel.db, retention) == len(flushed)
    with propel.db.read() as conn:
        left = conn.execute(select(recent_events.c.message_id)).scalars().all()
    assert sorted(left) == sorted(claimed + pending)  # unflushed rows are never deleted
    assert read_ids(propel, tenant) == once(flushed + claimed + pending)
    assert delete_flushed(propel.db, 0) == 0  # the claimed batch is not marked yet
    flush_batches(propel.db, propel.lake)
    assert delete_flushed(propel.db, 0) == 3
    assert read_ids(propel, tenant) == once(flushed + claimed + pending)
    # the batches' records are pruned too, all but the newest, so numbering continues
    with propel.db.read() as conn:
        kept = conn.execute(select(lake_batches.c.batch_no)).scalars().all()
    assert kept == [3]
    later = ingest(propel, tenant, ["d1"])
    flush_batches(propel.db, propel.lake)
    with propel.db.read() as conn:
        assert conn.execute(select(func.max(lake_batches.c.batch_no))).scalar() == 4
    assert read_ids(propel, tenant) == once(flushed + claimed + pending + later)


def test_reads_stay_exact_under_concurrent_ingest_and_flush(propel, tenant):
    acked: list[str] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer():
        n = 0
        while not stop.is_set() and n < 300:
            acked.extend(ingest(propel, tenant, [f"w{n}-{i}" for i in range(5)]))
            n += 1
            time.sleep(0.002)

    def flusher():
        rng = random.Random(3)
        while not stop.is_set():
            try:
                flush_batches(propel.db, propel.lake, max_rows=rng.randint(3, 40))
            except BaseException as exc:  # reported below
                errors.append(exc)
                return

    threads = [threading.Thread(target=writer), threading.Thread(target=flusher)]
    for t in threads:
        t.start()
    reads = 0
    try:
        soft, hard = time.monotonic() + 2, time.monotonic() + 30
        while (time.monotonic() < soft or reads < 3) and time.monotonic() < hard:
            acked_before = set(acked)
            seen = read_ids(propel, tenant)
            assert max(seen.values(), default=1) == 1, "an event was read twice"
            assert acked_before <= set(seen), "an acknowledged event was not read"
            reads += 1
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not errors
    assert reads > 3 and txn(propel) > 1
    flush_batches(propel.db, propel.lake)
    assert_settled(propel, acked)


def test_reader_returns_the_rows_as_written(propel, tenant):
    ingest(propel, tenant, ["x1"], name="Charged")
    before = query_events(propel.db, propel.lake, tenant.id, "Charged", 0,
                          (TS + 10) * 1_000_000, None, 10)
    flush_batches(propel.db, propel.lake)
    after = query_events(propel.db, propel.lake, tenant.id, "Charged", 0,
                         (TS + 10) * 1_000_000, None, 10)
    assert before == after == [("x1", "u-x1", TS * 1_000_000, "{}")]


def test_reads_are_scoped_to_the_account(propel, tenant, other_tenant):
    mine = ingest(propel, tenant, ["same-1", "mine"])
    theirs = ingest(propel, other_tenant, ["same-1", "theirs"])
    flush_batches(propel.db, propel.lake)
    assert read_ids(propel, tenant) == once(mine)
    assert read_ids(propel, other_tenant) == once(theirs)
    assert read_ids(propel) == Counter(mine + theirs)


# --- flush by size or age -----------------------------------------------------------


def test_flush_is_due_by_size_or_by_age(propel, tenant):
    due = lambda: should_flush(propel.db, min_rows=5, max_age_seconds=60)  # noqa: E731
    assert not due()
    ingest(propel, tenant, ["a1", "a2", "a3"])
    assert not due()
    ingest(propel, tenant, ["a4", "a5"])
    assert due()
    flush_batches(propel.db, propel.lake)
    assert not due()
    ingest(propel, tenant, ["b1"])
    assert not due()
    old = (time.time() - 61) * 1_000_000
    propel.db.write(lambda c: c.execute(update(recent_events).where(
        recent_events.c.batch_no.is_(None)).values(received_at=int(old))))
    assert due()


def test_flusher_thread_flushes_on_its_own_and_rows_cap_batches(propel, tenant):
    propel.settings.flush_rows = 4
    ids = ingest(propel, tenant, [f"m{i}" for i in range(10)])
    lags: list[float] = []
    flusher = FlusherThread(propel, interval=0.05, on_lag=lags.append)
    flusher.start()
    try:
        deadline = time.monotonic() + 20
        while unclaimed(propel) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        flusher.stop()
    assert [b.row_count for b in batch_rows(propel)] == [4, 4, 2]
    assert_settled(propel, ids)
    assert lags and max(lags) > 0  # each flush tells its lag (the /metrics gauge)


# --- (d) one writer per lake --------------------------------------------------------


def test_a_second_writer_is_refused_while_the_lease_is_held(propel, tenant):
    ids = ingest(propel, tenant, ["a1", "a2"])
    with leases.hold(propel.db, LAKE_LEASE, ttl_seconds=60):  # e.g. compaction
        with pytest.raises(leases.LeaseUnavailable):
            flush_batches(propel.db, propel.lake)
        with pytest.raises(leases.LeaseUnavailable), store.writer_lease(propel.db):
            pass
        assert unclaimed(propel) == 2 and batch_rows(propel) == []
        assert propel.lake.table() is None
    with store.writer_lease(propel.db), pytest.raises(leases.LeaseUnavailable):
        flush_batches(propel.db, propel.lake)
    assert flush_batches(propel.db, propel.lake).rows == 2
    assert_settled(propel, ids)


def test_a_writer_waits_for_the_lease_when_asked(propel, tenant):
    ids = ingest(propel, tenant, ["a1"])
    held = threading.Event()

    def hold_briefly():
        with leases.hold(propel.db, LAKE_LEASE, ttl_seconds=60):
            held.set()
            time.sleep(0.6)

    holder = threading.Thread(target=hold_briefly)
    holder.start()
    held.wait(10)
    start = time.monotonic()
    assert flush_batches(propel.db, propel.lake, lease_wait=10).rows == 1
    assert time.monotonic() - start > 0.3
    holder.join()
    assert_settled(propel, ids)


def test_the_lease_is_renewed_while_held_and_released_after(propel):
    with store.writer_lease(propel.db, ttl_seconds=1.5) as lease:
        time.sleep(3.5)  # more than twice the TTL
        assert not leases.try_acquire(propel.db, LAKE_LEASE, "intruder", 60)
        lease.check()
    assert leases.try_acquire(propel.db, LAKE_LEASE, "intruder", 60)


def test_a_lost_lease_stops_the_flush_before_its_lake_commit(propel, tenant, monkeypatch):
    ids = ingest(propel, tenant, ["a1", "a2"])

    def steal(name):
        if name == "flush.after_claim":  # the lease passes to another writer
            propel.db.write(lambda c: c.execute(
                update(leases_table).where(leases_table.c.name == LAKE_LEASE)
                .values(owner="thief", expires_at=utcnow() + timedelta(seconds=60))))

    monkeypatch.setattr(faults, "crash_point", steal)
    with pytest.raises(store.LeaseLost):
        flush_batches(propel.db, propel.lake)
    monkeypatch.setattr(faults, "crash_point", lambda name: None)
    assert propel.lake.table() is None
    with pytest.raises(leases.LeaseUnavailable):  # the thief's lease was left alone
        flush_batches(propel.db, propel.lake)
    leases.release(propel.db, LAKE_LEASE, "thief")
    assert flush_batches(propel.db, propel.lake).recovered == 1
    assert_settled(propel, ids)


def test_the_lease_of_a_dead_writer_on_this_machine_is_taken_over_at_once(propel, tenant):
    if store._proc_identity(os.getpid()) is None:
        pytest.skip("needs /proc")
    ids = ingest(propel, tenant, ["a1"])
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        owner = f"somehost:{child.pid}:deadbeef:{store._proc_identity(child.pid)}"
        assert len(owner) <= 100
        assert leases.try_acquire(propel.db, LAKE_LEASE, owner, 600)
        with pytest.raises(leases.LeaseUnavailable):  # alive: its lease stands
            flush_batches(propel.db, propel.lake)
    finally:
        child.kill()
        child.wait()
    assert store.holder_is_dead(owner)
    # the lease has 10 minutes left, and this flush does not wait: only a takeover works
    assert flush_batches(propel.db, propel.lake, lease_wait=0).rows == 1
    assert_settled(propel, ids)


def test_only_provably_dead_holders_are_taken_over():
    me = store.writer_owner()
    assert not store.holder_is_dead(me)
    host, pid, tag, ident = me.rsplit(":", 3)
    boot, pid_ns, start = ident.split(".")
    other_boot = ("0" if boot[0] != "0" else "1") + boot[1:]
    assert not store.holder_is_dead(f"{host}:999999:{tag}:{other_boot}.{pid_ns}.{start}")
    assert not store.holder_is_dead(f"{host}:999999:{tag}:{boot}.{int(pid_ns) + 1}.{start}")
    assert store.holder_is_dead(f"{host}:{pid}:{tag}:{boot}.{pid_ns}.{int(start) + 1}")
    assert not store.holder_is_dead(leases.new_owner())  # no identity: wait for the TTL


# --- (e) files: compaction, vacuum, checkpoints -------------------------------------


def _parquet_files(propel) -> set[str]:
    root = Path(propel.lake.events_uri)
    return {p.relative_to(root).as_posix() for p in root.rglob("*.parquet")
            if "_delta_log" not in p.parts}


def test_compaction_reduces_files_and_vacuum_removes_the_replaced_ones(propel, tenant):
    expected = []
    for b in range(6):
        expected += ingest(propel, tenant, [f"b{b}-{i}" for i in range(5)])
        flush_batches(propel.db, propel.lake)
    files_before = len(propel.lake.table().file_uris())
    assert files_before == 6

    assert TASKS["lake.compact"](propel) == files_before
    table = propel.lake.table()
    assert len(table.file_uris()) == 1
    assert lake_ids(propel) == once(expected)
    assert read_ids(propel, tenant) == once(expected)
    assert txn(propel) == 6  # compaction keeps the flusher's transaction version

    assert TASKS["lake.vacuum"](propel) == 0  # within the retention: kept for readers
    assert len(_parquet_files(propel)) == files_before + 1
    removed = propel.lake.vacuum(retention_hours=0)
    assert len(removed) == files_before
    referenced = {Path(u).relative_to(Path(propel.lake.events_uri)).as_posix()
                  for u in propel.lake.table().file_uris()}
    assert _parquet_files(propel) == referenced
    assert read_ids(propel, tenant) == once(expected)
    more = ingest(propel, tenant, ["after-1"])
    flush_batches(propel.db, propel.lake)
    assert_settled(propel, expected + more)


def test_flushed_through_survives_a_checkpoint_without_the_older_log(propel, tenant):
    expected = []
    for b in range(3):
        expected += ingest(propel, tenant, [f"b{b}"])
        flush_batches(propel.db, propel.lake)
    table = propel.lake.table()
    table.create_checkpoint()
    log_dir = Path(propel.lake.events_uri) / "_delta_log"
    for entry in log_dir.glob("*.json"):
        if int(entry.stem) < table.version():
            entry.unlink()
    assert txn(propel) == 3
    expected += ingest(propel, tenant, ["after"])
    flush_batches(propel.db, propel.lake)
    assert_settled(propel, expected)
    assert read_ids(propel, tenant) == once(expected)


# --- (f) the reader needs no network -------------------------------------------------

_READER_SCRIPT = textwrap.dedent("""
    import json, socket, sys
    import duckdb
    from propel.core import Propel
    from propel.lake.events import query_events
    from propel.lake.reader import message_ids, snapshot

    account, strict = sys.argv[1], sys.argv[2] == "strict"
    out = {}
    try:
        socket.create_connection(("1.1.1.1", 443), timeout=3).close()
        out["python_network"] = True
    except OSError:
        out["python_network"] = False
    if strict:  # DuckDB's own HTTP client: only a network namespace can stop it
        try:
            duckdb.connect().execute("INSTALL httpfs")
            out["duckdb_network"] = True
        except duckdb.Error as exc:
            out["duckdb_network"] = False
            out["duckdb_error"] = str(exc)[:300]
    propel = Propel()
    out["ids"] = message_ids(propel.db, propel.lake, account)
    out["query"] = len(query_events(propel.db, propel.lake, account, "Viewed", 0,
                                    2_000_000_000_000_000, None, 1000))
    with snapshot(propel.db, propel.lake, account) as (con, _):
        out["extensions"] = con.execute(
            "SELECT extension_name, install_mode FROM duckdb_extensions() WHERE loaded"
        ).fetchall()
    print(json.dumps(out))
""")

_NO_INET_SITECUSTOMIZE = textwrap.dedent("""
    import socket
    _connect = socket.socket.connect
    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in (
                "127.0.0.1", "::1", "localhost"):
            raise OSError(101, "network blocked by the test")
        return _connect(self, address)
    socket.socket.connect = connect
""")


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    try:
        return subprocess.run(["unshare", "-n", "true"], capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _postgres_over_unix_socket(propel) -> str | None:
    """The test database's URL through its Unix socket (reachable without a network)."""
    url = make_url(propel.db.url)
    port = url.port or 5432
    with propel.db.read() as conn:
        dirs = conn.execute(text("SHOW unix_socket_directories")).scalar() or ""
    for folder in (d.strip() for d in dirs.split(",")):
        if folder and (Path(folder) / f".s.PGSQL.{port}").exists():
            query = dict(url.query)
            query["host"] = folder
            query["port"] = str(port)
            return url.set(host=None, port=None, query=query).render_as_string(
                hide_password=False)
    return None


def test_reader_works_with_the_network_unavailable(propel, tenant, tmp_path):
    flushed = ingest(propel, tenant, ["a1", "a2"])
    flush_batches(propel.db, propel.lake)
    pending = ingest(propel, tenant, ["b1"])
    home = tmp_path / "home"  # no cached DuckDB extensions either
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.lower().endswith("_proxy") and not k.startswith("PROPEL_")}
    env.update(HOME=str(home), PROPEL_DATA_DIR=str(propel.settings.data_dir),
               PROPEL_SECRET_KEY="test-secret", PROPEL_LOG_FORMAT="text")
    strict = _unshare_works()
    if is_postgres(propel):
        socket_url = _postgres_over_unix_socket(propel) if strict else None
        strict = socket_url is not None
        env["PROPEL_DATABASE_URL"] = socket_url or propel.db.url
    command = [sys.executable, "-c", _READER_SCRIPT, tenant.id, "strict" if strict else "py"]
    if strict:  # a network namespace of its own: no interface but a downed loopback
        command = ["unshare", "-n", *command]
    else:  # no root: block Python's sockets (DuckDB's autoinstall is off, HOME is empty)
        site = tmp_path / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(_NO_INET_SITECUSTOMIZE)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["python_network"] is False
    if strict:
        assert out["duckdb_network"] is False, out
    assert Counter(out["ids"]) == once(flushed + pending)
    assert out["query"] == 3
    assert {mode for _, mode in out["extensions"]} <= {"STATICALLY_LINKED"}, out["extensions"]


def test_lake_queries_are_held_to_the_memory_limit_and_spill_under_the_data_dir(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", query_memory_limit="300MB")
    with Propel(settings) as propel:
        propel.migrate()
        with reader.snapshot(propel.db, propel.lake) as (con, _):
            limit, temp = con.execute("SELECT current_setting('memory_limit'), "
                                      "current_setting('temp_directory')").fetchone()
    assert limit in ("286.1 MiB", "300.0 MB")  # DuckDB reports it in binary units
    assert temp == str(tmp_path / "data" / "query-tmp")
    with pytest.raises(ValueError, match="query_memory_limit"):
        Settings(data_dir=tmp_path, query_memory_limit="lots")
