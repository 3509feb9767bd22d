"""``propel serve --workers N``: several processes answer on one port, every
acknowledged event is stored once, and background work runs in exactly one of them."""

from __future__ import annotations

import gc
import json
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from killloop import ServerConfig, ServerProcess, cli
from peers import Certificate
from peers.smtp import SMTP_LOGIN, SmtpPeer
from peers.webhook import WEBHOOK_SECRET, WebhookReceiver

from propel.channels.base import Outbound, Outcome
from propel.channels.email import EmailChannel, EmailConfig
from propel.channels.webhook import WebhookChannel, WebhookConfig
from propel.core import Propel
from propel.lake.flush import pending_stats
from propel.serving import GC_YOUNG_THRESHOLD, loop_factory, run_event_loop, settle_heap
from propel.settings import Settings

pytestmark = pytest.mark.timeout(240)


def children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def batch(run: str, n: int, size: int) -> dict:
    return {"batch": [{"type": "track", "event": "Product Viewed", "userId": f"u{i % 37}",
                       "messageId": f"{run}-{n}-{i}", "properties": {"n": i}}
                      for i in range(size)]}


def segment_count(metrics: str, name: str) -> float:
    found = re.findall(rf'^{name}_total{{source="segment"}} (\S+)$', metrics, re.M)
    return sum(map(float, found))


def test_two_workers_store_every_event_once_and_one_runs_background(tmp_path: Path) -> None:
    config = ServerConfig(data_dir=tmp_path / "data", serve_args=("--workers", "2"))
    creds = json.loads(cli(config, "accounts", "create", "Shop", "--json"))
    write_key = creds["write_key"]
    with ServerProcess(config, tmp_path / "server.log") as server:
        server.start_ready()
        workers = children(server.proc.pid)
        deadline = time.monotonic() + 30
        while len(workers) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
            workers = children(server.proc.pid)
        assert len(workers) >= 2, server.log_tail()

        run = uuid.uuid4().hex[:6]

        def post(n: int) -> int:
            return httpx.post(f"{server.url}/v1/batch", json=batch(run, n, 25),
                              auth=(write_key, ""), timeout=30).status_code

        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(post, range(40))) == {200}
            assert set(pool.map(post, range(40))) == {200}  # retried: stored nothing twice

        propel = Propel(Settings(data_dir=config.data_dir))
        try:
            deadline = time.monotonic() + 60
            while pending_stats(propel.db)[0] and time.monotonic() < deadline:
                time.sleep(0.3)
            assert pending_stats(propel.db)[0] == 0  # the flusher runs, in one worker
        finally:
            propel.close()
        assert (config.data_dir / "serve-background.lock").exists()
        # Each worker counted its own requests; a scrape, whichever worker answers it,
        # reports all of them (the flusher's lag too, set in the background worker).
        counters = {p.name for p in (config.data_dir / "metrics").glob("counter_*.db")}
        assert len(counters) >= 2, counters
        for _ in range(6):
            text = httpx.get(f"{server.url}/metrics", timeout=10).text
            assert segment_count(text, "propel_ingest_accepted") == 1000, text
            assert segment_count(text, "propel_ingest_duplicates") == 1000
        lag = re.search(r"^propel_lake_flush_lag_seconds (\S+)$", text, re.M)
        assert lag and float(lag.group(1)) > 0, text
        server.stop()
    assert not children(server.proc.pid)  # the workers went with the supervisor
    assert int(cli(config, "events", "count", "--account", creds["account_id"])) == 1000


def test_settle_heap_freezes_the_startup_heap_and_collects_young_objects_less_often():
    threshold = gc.get_threshold()
    try:
        settle_heap()
        assert gc.get_freeze_count() > 1000  # the imported libraries, the app
        assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD > threshold[0]
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_writer_processes_take_turns_on_one_sqlite_file(tmp_path: Path) -> None:
    """Each group commit holds the file's writer lock, so while another process holds
    it a write waits, and goes through as soon as it is released; two databases on one
    file (as two server processes have) both get every write in."""
    import fcntl
    import os
    import threading

    from propel.db.engine import Database

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    first, second = Database(url), Database(url)
    first.write(lambda c: c.exec_driver_sql("CREATE TABLE t (who TEXT, n INTEGER)"))

    other_process = os.open(tmp_path / "shared.db-writer.lock", os.O_RDWR)
    fcntl.flock(other_process, fcntl.LOCK_EX)
    waiting = threading.Thread(target=lambda: second.write(
        lambda c: c.exec_driver_sql("INSERT INTO t VALUES ('held', 0)")))
    waiting.start()
    waiting.join(timeout=0.5)
    assert waiting.is_alive()  # blocked on the lock, not on SQLite's busy handler
    fcntl.flock(other_process, fcntl.LOCK_UN)
    os.close(other_process)
    waiting.join(timeout=5)
    assert not waiting.is_alive()

    def insert(db: Database, who: str) -> None:
        for n in range(200):
            db.write(lambda c, n=n: c.exec_driver_sql("INSERT INTO t VALUES (?, ?)", (who, n)))

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(insert, (first, second), ("a", "b")))
    with first.read() as conn:
        counts = dict(conn.exec_driver_sql("SELECT who, count(*) FROM t GROUP BY who").all())
    assert counts == {"a": 200, "b": 200, "held": 1}
    first.close()
    second.close()


def test_event_loop_setting_chooses_the_loop() -> None:
    import asyncio

    import uvloop

    assert loop_factory("auto") is uvloop.new_event_loop  # installed with uvicorn[standard]
    assert loop_factory("uvloop") is uvloop.new_event_loop
    assert loop_factory("asyncio") is asyncio.new_event_loop
    with pytest.raises(ValueError, match="event_loop"):
        Settings(event_loop="trio")


def test_channels_deliver_on_uvloop(smtp_starttls_peer: SmtpPeer, tls_cert: Certificate,
                                    webhook_peer: WebhookReceiver, tmp_path: Path) -> None:
    """STARTTLS, SMTP AUTH and aiohttp's webhooks on the loop delivery runs on."""
    import asyncio

    import uvloop

    user, password = SMTP_LOGIN
    email = EmailChannel(EmailConfig(
        host=smtp_starttls_peer.host, port=smtp_starttls_peer.port, security="starttls",
        ca_file=str(tls_cert.cert_file), username=user, password=password,
        from_address="Shop <news@shop.test>", timeout=5))
    hook = WebhookChannel(WebhookConfig(url=webhook_peer.endpoint, secret=WEBHOOK_SECRET))

    async def send() -> tuple[type, list[Outcome]]:
        batch = [Outbound(key=f"k{i}", account_id="a", campaign_id="c", identity=f"u{i}",
                          to=f"u{i}@example.test", subject="Hi", text="Hello",
                          data={"n": i}) for i in range(3)]
        try:
            outcomes = await email.send(batch) + await hook.send(batch)
        finally:
            await email.aclose()
            await hook.aclose()
        return type(asyncio.get_running_loop()), outcomes

    loop_type, outcomes = run_event_loop(
        send(), Settings(data_dir=tmp_path, event_loop="uvloop"))
    assert loop_type is uvloop.Loop
    assert all(o.delivered for o in outcomes) and len(outcomes) == 6
    assert [m.tls and m.login == user for m in smtp_starttls_peer.received] == [True] * 3
    assert webhook_peer.unique_keys == 3
