"""The operational database: SQLite single writer with group commit, busy → 503."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, insert, select, text

from propel.app import create_app
from propel.core import Propel
from propel.db.engine import DatabaseBusy
from propel.db.meta import utcnow
from propel.db.migrate import current
from propel.ingest.tables import rejections


def _row(i: int) -> dict:
    return {"account_id": "a", "source": "t", "received_at": utcnow(), "field": str(i),
            "reason": "r", "record": "{}"}


def test_migrations_reach_head(propel):
    assert current(propel.db.engine) is not None


def test_migrations_build_what_the_tables_declare(propel):
    """Every table, column and index a folder declares is what the migrations made."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from propel.db.tables import metadata

    with propel.db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_sqlite_runs_in_wal_with_configured_sync(tmp_path):
    from propel.settings import Settings

    p = Propel(Settings(data_dir=tmp_path, sqlite_synchronous="NORMAL"))
    try:
        with p.db.read() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(text("PRAGMA synchronous")).scalar() == 1  # NORMAL
    finally:
        p.close()
    p = Propel(Settings(data_dir=tmp_path))
    try:
        with p.db.read() as conn:
            assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL, the default
    finally:
        p.close()


def test_concurrent_writes_all_commit(propel):
    def write(i: int) -> int:
        propel.db.write(lambda conn: conn.execute(insert(rejections).values(_row(i))))
        return 1

    with ThreadPoolExecutor(16) as pool:
        assert sum(pool.map(write, range(400))) == 400
    with propel.db.read() as conn:
        assert conn.execute(select(func.count()).select_from(rejections)).scalar() == 400


def test_one_failing_write_does_not_undo_its_group(propel):
    gate = threading.Event()
    results = {}

    def blocker(conn):
        gate.wait(5)

    def good(conn):
        conn.execute(insert(rejections).values(_row(1)))
        return "ok"

    def bad(conn):
        conn.execute(insert(rejections).values(_row(2)))
        raise ValueError("this write fails")

    if not propel.db.is_sqlite:
        pytest.skip("group commit is SQLite's writer")
    first = propel.db._writer.submit(blocker)
    futures = [propel.db._writer.submit(fn) for fn in (good, bad, good)]
    gate.set()
    first.result(5)
    for i, fut in enumerate(futures):
        try:
            results[i] = fut.result(5)
        except ValueError as exc:
            results[i] = str(exc)
    assert results == {0: "ok", 1: "this write fails", 2: "ok"}
    with propel.db.read() as conn:
        fields = conn.execute(select(rejections.c.field)).scalars().all()
    assert sorted(fields) == ["1", "1"]


def test_busy_database_answers_503_with_retry_after(tmp_path):
    from propel.settings import Settings

    p = Propel(Settings(data_dir=tmp_path, write_queue_limit=1, write_timeout_seconds=0.5,
                        secret_key="s"))
    p.migrate()
    from propel.accounts import create_account, create_api_key

    acc = create_account(p.db, "Busy")
    _, token = create_api_key(p.db, acc.account_id)
    gate = threading.Event()
    try:
        running = p.db._writer.submit(lambda conn: gate.wait(10))
        while not running.running():
            time.sleep(0.01)
        p.db._writer.submit(lambda conn: None)  # the queue is now full
        with pytest.raises(DatabaseBusy):
            p.db.write(lambda conn: None)
        with TestClient(create_app(propel=p, background=False)) as client:
            r = client.post("/api/v1/events", headers={"Authorization": f"Bearer {token}"},
                            json={"events": [{"identity": "u", "name": "n"}]})
            assert r.status_code == 503
            assert r.headers["retry-after"] == "1"
            assert r.json()["error"]["code"] == "busy"
            gate.set()
            r = client.post("/api/v1/events", headers={"Authorization": f"Bearer {token}"},
                            json={"events": [{"identity": "u", "name": "n"}]})
            assert r.status_code == 200
    finally:
        gate.set()
        p.close()
