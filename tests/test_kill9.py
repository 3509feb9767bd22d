"""kill -9 under load, on SQLite and PostgreSQL: ``propel serve`` takes events through
``POST /api/v1/events`` while crash points (ingest.after_commit and every flush step)
SIGKILL it at random and the harness SIGKILLs it from outside; clients retry failed
requests with the same message ids. Afterwards: every id that got a 2xx is stored
exactly once (lake ∪ recent), and no id is ever stored twice."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter

import httpx
import pytest
from killloop import KillLoop, LoadContext, ServerConfig, ServerProcess, cli, random_faults
from sqlalchemy import func, select

from propel.core import Propel
from propel.ingest.tables import recent_events
from propel.lake.reader import message_ids
from propel.lake.store import FLUSHER_APP
from propel.lake.tables import lake_batches
from propel.settings import Settings

CHAOS_SECONDS = 28
WORKERS = 4
BATCH = 20
TS = 1_750_000_000
POINTS = ["ingest.after_commit", "flush.after_claim", "flush.after_lake_commit",
          "flush.before_mark"]
PROBABILITIES = {"ingest.after_commit": 0.01, "flush.after_claim": 0.4,
                 "flush.after_lake_commit": 0.4, "flush.before_mark": 0.4}


class Ledger:
    """What the clients know: ids acknowledged with a 2xx, ids sent whose fate is
    unknown (their last attempt failed), and anything that broke a promise."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.acked: set[str] = set()
        self.unknown: dict[str, list[str]] = {}  # batch key -> ids
        self.violations: list[str] = []
        self.outcomes: Counter = Counter()

    def ack(self, ids: list[str]) -> None:
        with self.lock:
            assert not self.acked.intersection(ids)
            self.acked.update(ids)


def payload(ids: list[str]) -> dict:
    return {"events": [{"identity": f"user-{m.split('-')[1]}", "name": "Tapped",
                        "message_id": m, "ts": TS + n, "properties": {"n": n}}
                       for n, m in enumerate(ids)]}


def post_batch(client: httpx.Client, url: str, api_key: str, ids: list[str], first: bool,
               ledger: Ledger) -> bool:
    """One attempt; True once the batch is acknowledged."""
    try:
        r = client.post(f"{url}/api/v1/events", json=payload(ids),
                        headers={"Authorization": f"Bearer {api_key}"})
    except httpx.HTTPError as exc:  # refused, reset by a kill, timed out: retry
        ledger.outcomes[type(exc).__name__] += 1
        return False
    ledger.outcomes[r.status_code] += 1
    if r.is_success:
        body = r.json()
        if body["rejected"] or body["accepted"] + body["duplicates"] != len(ids):
            ledger.violations.append(f"{ids[0]}: {body}")
        if first and body["duplicates"]:
            ledger.violations.append(f"{ids[0]}: duplicates on a first attempt: {body}")
        ledger.ack(ids)
        return True
    if r.status_code not in (429, 500, 502, 503, 504):
        ledger.violations.append(f"{ids[0]}: unexpected {r.status_code} {r.text[:300]}")
    return False


def event_load(api_key: str, ledger: Ledger):
    def run(ctx: LoadContext) -> None:
        client = httpx.Client(timeout=httpx.Timeout(10, connect=2))
        seq, ids, attempts = 0, None, 0
        try:
            while not ctx.stopping.is_set():
                if ids is None:
                    ids = [f"k{ctx.index}-{seq}-{i}" for i in range(BATCH)]
                    seq, attempts = seq + 1, 0
                if not ctx.up.wait(0.2):
                    continue
                attempts += 1
                if post_batch(client, ctx.url, api_key, ids, attempts == 1, ledger):
                    ids = None
                else:
                    time.sleep(0.02)
        finally:
            client.close()
            if ids is not None and attempts:
                with ledger.lock:
                    ledger.unknown[ids[0]] = ids

    return run


def stored(config: ServerConfig, account: str) -> tuple[Counter, Counter, dict]:
    """(ids read through the reader, ids in the lake itself, bookkeeping) read
    directly from the database and the lake, with no server running."""
    settings = Settings(data_dir=config.data_dir, database_url=config.database_url,
                        secret_key=config.secret_key)
    with Propel(settings) as propel:
        read = Counter(message_ids(propel.db, propel.lake, account))
        table = propel.lake.table()
        lake = Counter(table.to_pyarrow_table(columns=["message_id"])
                       .column("message_id").to_pylist()) if table else Counter()
        with propel.db.read() as conn:
            unclaimed = conn.execute(select(func.count()).where(
                recent_events.c.batch_no.is_(None))).scalar()
            unmarked = conn.execute(select(func.count()).where(
                lake_batches.c.flushed_at.is_(None))).scalar()
            last_batch = conn.execute(select(func.max(lake_batches.c.batch_no))).scalar()
        info = {"unclaimed": unclaimed, "unmarked": unmarked, "last_batch": last_batch,
                "flushed_through": propel.lake.transaction_version(FLUSHER_APP)}
    return read, lake, info


def twice(ids: Counter) -> list[str]:
    return sorted(m for m, n in ids.items() if n > 1)[:20]


@pytest.mark.slow
def test_kill9_under_load_loses_nothing_and_stores_nothing_twice(db_url, tmp_path, request):
    timings: dict[str, float] = {}
    began = time.monotonic()
    config = ServerConfig(data_dir=tmp_path / "data", database_url=db_url, flush_seconds=0.3)
    if db_url:
        cli(config, "db", "upgrade")
    account = json.loads(cli(config, "accounts", "create", "Kill9", "--json"))["account_id"]
    api_key = json.loads(cli(config, "keys", "create", "--account", account, "--json"))["api_key"]
    timings["setup"] = time.monotonic() - began

    server = ServerProcess(config, tmp_path / "server.log")
    request.addfinalizer(server.kill9)  # no server outlives the test, pass or fail
    ledger = Ledger()
    seed = int(time.time())
    loop = KillLoop(server, load=[event_load(api_key, ledger)] * WORKERS,
                    max_seconds=CHAOS_SECONDS, max_cycles=40, min_cycles=3,
                    hard_seconds=100,
                    faults=random_faults(POINTS, PROBABILITIES, quiet_every=3),
                    kill_every=(1.0, 3.0), kill_armed_after=(5.0, 8.0),
                    seed=seed, final="kill")
    stats = loop.run()
    timings["chaos"] = stats.seconds
    report = (f"seed {seed}: {stats.describe()}; acked {len(ledger.acked)} ids, "
              f"{sum(map(len, ledger.unknown.values()))} unknown; responses "
              f"{dict(ledger.outcomes)}")
    print(report)
    assert not stats.load_errors, f"{stats.load_errors!r}\n{report}"
    assert not ledger.violations, f"{ledger.violations[:10]}\n{report}"
    # every death was a SIGKILL, and every one the server did itself was a crash point
    # (a point may also fire just as the loop's final kill lands: hence >=)
    assert all(r.code == -signal.SIGKILL for r in stats.runs if r.end), report
    assert sum(stats.crash_points.values()) >= stats.crashes, report
    assert stats.kills >= 1 and stats.cycles >= 2, report
    armed = [r for r in stats.runs if r.faults and r.ready_after is not None]
    assert stats.crashes >= 1 or len(armed) < 2, report  # only a very slow machine
    assert len(ledger.acked) >= 20 * BATCH, report

    # 1. The crashed state as it is, then the CLI flush recovering it (the dead
    #    server still holds the writer lease; a dead holder on this machine is taken
    #    over at once): each acknowledged id once, unacknowledged ones at most once.
    unknown = {m for ids in ledger.unknown.values() for m in ids}
    mark = time.monotonic()
    read, _, _ = stored(config, account)
    assert not twice(read), f"stored twice: {twice(read)}\n{report}"
    assert ledger.acked <= set(read), f"lost: {sorted(ledger.acked - set(read))[:20]}"
    assert set(read) <= ledger.acked | unknown
    cli(config, "lake", "flush")
    timings["recovery flush"] = time.monotonic() - mark
    read, lake, info = stored(config, account)
    assert not twice(read) and not twice(lake), f"{twice(read)} {twice(lake)}\n{report}"
    assert read == lake, "after a flush the lake holds everything"
    assert ledger.acked <= set(lake) <= ledger.acked | unknown
    assert info["unclaimed"] == info["unmarked"] == 0, info

    # 2. A clean restart; the batches whose fate the clients never learned are sent
    #    again with the same ids (now every id is acknowledged); a graceful stop; a
    #    final flush: lake ∪ recent is exactly the acknowledged ids, once each.
    mark = time.monotonic()
    server.start_ready(faults="")
    with httpx.Client(timeout=10) as client:
        for ids in ledger.unknown.values():
            deadline = time.monotonic() + 30
            while not post_batch(client, server.url, api_key, ids, False, ledger):
                assert time.monotonic() < deadline, server.log_tail()
                time.sleep(0.1)
    assert not ledger.violations, ledger.violations[:10]
    assert server.stop() in (0, -signal.SIGTERM), server.log_tail()
    assert "Application shutdown complete" in server.last_run_log(), server.log_tail()
    cli(config, "lake", "flush")
    timings["clean restart and flush"] = time.monotonic() - mark
    read, lake, info = stored(config, account)
    expected = Counter({m: 1 for m in ledger.acked})
    assert read == expected, (f"lost {sorted(set(expected) - set(read))[:20]}, twice "
                              f"{twice(read)}, extra {sorted(set(read) - set(expected))[:20]}")
    assert lake == expected
    assert info["unclaimed"] == info["unmarked"] == 0, info
    assert info["flushed_through"] == info["last_batch"], info
    timings["total"] = time.monotonic() - began
    print({k: round(v, 1) for k, v in timings.items()})
