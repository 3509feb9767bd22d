"""Journey engine throughput: step transitions per second with N users in flight.

N users enter a journey (audience entry) and the real engine advances them through
branch → split → update property (half of the pro users) → send (an outbox message
each) → wait 1 h, then, an hour later by the injected clock, wait → exit. Every step
taken is a transition (a step-log row with its effect, committed with the entry's
move). Prints entries/s, transitions/s of each pass and overall, and the ratio to the
target.

    python benchmarks/bench_journeys.py --users 100000 [--batch 2000] [--postgres URL]

Target: >= 5,000 step transitions/s on 2 cores with 100,000 users in flight.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

TARGET = 5_000


def _users(propel: Any, account: str, n: int) -> None:
    from propel.ingest.records import IngestItem, ProfileUpdate, key_hash
    from propel.ingest.service import ingest_sync

    for start in range(0, n, 5000):
        items = [IngestItem(key_hash(account, f"p{i}"), profile=ProfileUpdate(
            identity=f"u{i:07d}", email=f"u{i}@bench.example", consent={"email": True},
            properties={"plan": "pro" if i % 2 else "free"}))
            for i in range(start, min(n, start + 5000))]
        ingest_sync(propel.db, account, items, [], "bench")


def _spec() -> dict[str, Any]:
    send = {"type": "send", "channel": "inbox", "next": "w",
            "content": {"variants": [{"name": "A", "split": 100, "title": "Hi",
                                      "body": "{{ user.plan | default('you') }}"}]}}
    return {"name": "bench", "entry": {"type": "audience", "audience": {"and": []}},
            "steps": [
                {"id": "b", "type": "branch", "yes": "sp", "no": "s2",
                 "condition": {"property": "plan", "op": "=", "value": "pro"}},
                {"id": "sp", "type": "split", "paths": [{"percent": 50, "next": "up"},
                                                        {"percent": 50, "next": "s1"}]},
                {"id": "up", "type": "update_property", "property": "vip", "value": True,
                 "next": "s1"},
                {**send, "id": "s1"}, {**send, "id": "s2"},
                {"id": "w", "type": "wait", "duration": {"hours": 1}, "next": "x"},
                {"id": "x", "type": "exit"}]}


def _pass(propel: Any, now: datetime, batch: int) -> tuple[int, float]:
    from propel.journeys.engine import Engine

    engine = Engine(propel, batch)
    started = time.perf_counter()
    steps = 0
    while taken := engine.run_batch(now):
        steps += taken
    return steps, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--postgres", default=None, help="a PostgreSQL URL (default SQLite)")
    args = parser.parse_args()

    from propel import journeys
    from propel.accounts import create_account
    from propel.core import Propel
    from propel.journeys.entry import enter_scheduled
    from propel.settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp) / "data", database_url=args.postgres,
                            secret_key="bench", write_timeout_seconds=600)
        propel = Propel(settings)
        propel.migrate()
        account = create_account(propel.db, "Bench").account_id
        t = time.perf_counter()
        _users(propel, account, args.users)
        print(f"{args.users:,} profiles in {time.perf_counter() - t:.1f}s")
        now = datetime.now(UTC)
        j = journeys.create(propel, account, _spec())
        journeys.publish(propel, account, j.id, now=now)
        t = time.perf_counter()
        entered = enter_scheduled(propel, now)
        took = time.perf_counter() - t
        print(f"entered: {entered:,} users in {took:.1f}s ({entered / took:,.0f}/s)")
        total_steps, total_time = 0, 0.0
        for label, when in (("send and wait", now), ("wait over, exit",
                                                    now + timedelta(hours=1, minutes=1))):
            steps, took = _pass(propel, when, args.batch)
            total_steps += steps
            total_time += took
            print(f"{label}: {steps:,} transitions in {took:.1f}s ({steps / took:,.0f}/s)")
        rate = total_steps / total_time
        print(f"overall: {total_steps:,} transitions in {total_time:.1f}s = {rate:,.0f}/s "
              f"with {entered:,} users in flight; target {TARGET:,}/s, "
              f"ratio {rate / TARGET:.2f}")
        propel.close()


if __name__ == "__main__":
    main()
