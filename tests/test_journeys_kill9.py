"""kill -9 of the journey engine, on SQLite and PostgreSQL.

A worker process advances a journey (sends to a real webhook receiver, property
updates, real one-second waits, a branch and a split) for a few hundred users while
crash points inside a batch (after its read, inside its transaction, after its commit)
SIGKILL it and the harness SIGKILLs it from outside; it is restarted each time. Then
a calm run finishes everything and every user's step log is checked against the
graph: consecutive step numbers (none skipped), each a legal move (branch by the
user's plan, split by its deterministic draw), each step once, one outbox message per
send step taken, no message without its step, every webhook key received once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections import Counter

import pytest
from killloop import KillLoop, ServerConfig, ServerProcess, random_faults
from peers.webhook import WebhookReceiver
from sqlalchemy import create_engine, select, text

from propel import journeys
from propel.accounts import create_account
from propel.campaigns.tables import messages
from propel.channels.registry import set_config
from propel.core import Propel
from propel.ingest.records import IngestItem, ProfileUpdate, key_hash
from propel.ingest.service import ingest_sync
from propel.journeys.engine import split_path
from propel.journeys.tables import journey_entries, journey_step_log
from propel.profiles import get_profile
from propel.settings import Settings

USERS = 400
POINTS = ["journeys.after_read", "journeys.before_commit", "journeys.after_commit"]


def hook_send(step_id, nxt):
    return {"id": step_id, "type": "send", "channel": "webhook", "next": nxt,
            "content": {"variants": [{"name": "A", "split": 100, "title": step_id,
                                      "body": "{{ user.identity }}"}]}}


SPEC = {
    "name": "Crash-proof",
    "entry": {"type": "audience", "audience": {"property": "plan", "op": "is set"}},
    "steps": [
        hook_send("hello", "mark"),
        {"id": "mark", "type": "update_property", "property": "touched", "value": "yes",
         "next": "w1"},
        {"id": "w1", "type": "wait", "duration": {"seconds": 1}, "next": "pro"},
        {"id": "pro", "type": "branch",
         "condition": {"property": "plan", "op": "=", "value": "pro"},
         "yes": "offer", "no": "w2"},
        hook_send("offer", "w2"),
        {"id": "w2", "type": "wait", "duration": {"seconds": 3}, "next": "ab"},
        {"id": "ab", "type": "split", "paths": [{"percent": 50, "next": "last"},
                                                {"percent": 50, "next": "bye"}]},
        hook_send("last", None),
        {"id": "bye", "type": "exit"},
    ],
}
STEPS = {s["id"]: s for s in SPEC["steps"]}


class EngineProcess(ServerProcess):
    """The journey worker in place of ``propel serve``: ready once it says so."""

    def start(self, faults: str = "") -> None:
        assert not self.alive()
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"\n=== start {self.starts} faults={faults!r} ===\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "propel.journeys.worker", "0.1", "10"],
                env=self.config.env(faults), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)

    def wait_ready(self, timeout: float = 60) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                return False
            if "journeys worker ready" in self.last_run_log():
                return True
            time.sleep(0.05)
        return False


def _setup(settings: Settings, hook: WebhookReceiver) -> tuple[str, str]:
    propel = Propel(settings)
    try:
        propel.migrate()
        account = create_account(propel.db, "Kill").account_id
        ingest_sync(propel.db, account, [IngestItem(key_hash(account, f"p{i}"), profile=(
            ProfileUpdate(identity=f"u{i:04d}", properties={"plan": "pro" if i % 3 else
                                                                "free"})))
            for i in range(USERS)], [], "test")
        set_config(propel.db, account, "webhook", {"url": hook.endpoint, "secret": hook.secret,
                                                   "timeout": 5})
        j = journeys.create(propel, account, SPEC)
        journeys.publish(propel, account, j.id)
        return account, j.id
    finally:
        propel.close()


def _expected_next(journey_id, entry, step_id, seq, outcome):
    step = STEPS[step_id]
    if step["type"] == "branch":
        pro = int(entry.identity[1:]) % 3 != 0
        assert outcome == ("yes" if pro else "no"), (entry.identity, outcome)
        return step["yes"] if pro else step["no"]
    if step["type"] == "split":
        i = split_path(journey_id, entry.id, step, seq)
        assert outcome == f"path {i}"
        return step["paths"][i]["next"]
    return step.get("next")


def _check(propel, account, journey_id, hook):
    with propel.db.read() as conn:
        entries = conn.execute(select(journey_entries).where(
            journey_entries.c.journey_id == journey_id)).all()
        logs = conn.execute(select(journey_step_log).order_by(
            journey_step_log.c.entry_id, journey_step_log.c.seq)).all()
        sent = conn.execute(select(messages.c.key, messages.c.identity, messages.c.state)).all()
    assert len(entries) == USERS and {e.entry_no for e in entries} == {1}
    assert Counter(e.state for e in entries) == {"done": USERS}
    by_entry: dict[int, list] = {}
    for r in logs:
        by_entry.setdefault(r.entry_id, []).append(r)
    keys = set()
    for e in entries:
        rows = by_entry[e.id]
        assert [r.seq for r in rows] == list(range(1, len(rows) + 1)), e.identity
        assert rows[0].step == "hello"
        for here, there in zip(rows, rows[1:], strict=False):
            assert there.step == _expected_next(journey_id, e, here.step, here.seq,
                                                here.outcome)
        last = rows[-1]
        assert _expected_next(journey_id, e, last.step, last.seq, last.outcome) is None
        assert e.exit_reason == ("exit" if last.step == "bye" else "end")
        keys |= {r.message_key for r in rows if r.message_key}
        assert get_profile(propel.db, account, e.identity).properties["touched"] == "yes"
    assert Counter(m.state for m in sent) == {"sent": len(keys)}
    assert {m.key for m in sent} == keys  # one message per send step taken, no other
    assert set(hook.processed) == keys  # the receiver got each (resends share the key)


@pytest.mark.slow
@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgres",
                                                             marks=pytest.mark.postgres)])
def test_kill9_never_skips_or_repeats_a_step(tmp_path, database):
    base = os.environ.get("PROPEL_TEST_POSTGRES_URL")
    if database == "postgres" and not base:
        pytest.skip("PROPEL_TEST_POSTGRES_URL is not set")
    schema, url = None, None
    if database == "postgres":
        schema = f"k9j_{uuid.uuid4().hex[:10]}"
        with create_engine(base).begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
        url = f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{schema}"
    try:
        with WebhookReceiver("k9-journey-secret-123") as hook:
            settings = Settings(data_dir=tmp_path / "data", database_url=url, secret_key="k9",
                                log_format="text")
            account, journey_id = _setup(settings, hook)
            config = ServerConfig(data_dir=settings.data_dir, database_url=url,
                                  secret_key="k9",
                                  extra_env={"PROPEL_DELIVERY_LEASE_SECONDS": "3"})
            server = EngineProcess(config, tmp_path / "engine.log")
            loop = KillLoop(server, load=[], max_seconds=20, min_cycles=4, hard_seconds=45,
                            faults=random_faults(POINTS, {p: 0.15 for p in POINTS}),
                            kill_every=(0.5, 2.0), seed=5, final="kill")
            stats = loop.run()
            assert stats.cycles >= 4, stats.describe()
            assert sum(stats.crash_points.values()) >= 1, stats.describe()
            server.start_ready()
            propel = Propel(settings)
            try:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    try:
                        _check(propel, account, journey_id, hook)
                        break
                    except AssertionError:
                        time.sleep(1)
                server.kill9()
                _check(propel, account, journey_id, hook)
            finally:
                propel.close()
                server.kill9()
    finally:
        if schema:
            with create_engine(base).begin() as conn:
                conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
