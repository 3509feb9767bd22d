"""``propel serve --workers N``: several processes answer on one port, every
acknowledged event is stored once, and background work runs in exactly one of them."""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from killloop import ServerConfig, ServerProcess, cli

from propel.core import Propel
from propel.lake.flush import pending_stats
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
        server.stop()
    assert not children(server.proc.pid)  # the workers went with the supervisor
    assert int(cli(config, "events", "count", "--account", creds["account_id"])) == 1000
