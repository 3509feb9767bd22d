"""Database-held schedules, the sweeper, and huey on SQLite and Redis."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest

from propel.db.meta import utcnow
from propel.jobs import schedules
from propel.jobs.tasks import TASKS, create_huey, ensure_default_schedules, start_consumer, sweep


@pytest.fixture
def counting_task():
    calls: list[dict] = []

    def task(propel, **args):
        calls.append(args)
        return len(calls)

    TASKS["test.count"] = task
    yield calls
    TASKS.pop("test.count", None)


def test_missed_runs_happen_once_after_restart(propel, counting_task):
    long_ago = utcnow() - timedelta(days=10)
    schedules.ensure_schedule(propel.db, "every-hour", "test.count", 3600, {"x": 1},
                              first_run_at=long_ago)
    claimed = schedules.claim_due(propel.db)
    assert claimed == ["every-hour"]
    assert schedules.claim_due(propel.db) == []  # leased and moved forward
    assert schedules.run_claimed(propel.db, "every-hour", TASKS, propel) == "ok"
    assert counting_task == [{"x": 1}]
    (sched,) = schedules.list_schedules(propel.db)
    assert sched.lease_until is None
    assert sched.next_run_at > utcnow() + timedelta(minutes=59)
    assert schedules.claim_due(propel.db) == []
    later = utcnow() + timedelta(hours=1, minutes=1)
    assert schedules.claim_due(propel.db, now=later) == ["every-hour"]


def test_ensure_schedule_keeps_next_run(propel):
    first = utcnow() + timedelta(days=3)
    schedules.ensure_schedule(propel.db, "s", "test.count", 60, first_run_at=first)
    schedules.ensure_schedule(propel.db, "s", "test.count", 120)
    (sched,) = schedules.list_schedules(propel.db)
    assert abs((sched.next_run_at - first).total_seconds()) < 1
    assert sched.interval_seconds == 120


def test_concurrent_sweepers_never_start_the_same_run(propel, counting_task):
    for i in range(20):
        schedules.ensure_schedule(propel.db, f"s{i}", "test.count", 3600)
    claimed: list[str] = []
    lock = threading.Lock()

    def sweeper():
        got = schedules.claim_due(propel.db)
        with lock:
            claimed.extend(got)

    threads = [threading.Thread(target=sweeper) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(f"s{i}" for i in range(20))


def test_running_schedule_is_not_started_again_until_done(propel, counting_task):
    schedules.ensure_schedule(propel.db, "s", "test.count", 1)
    assert schedules.claim_due(propel.db) == ["s"]
    # its interval has passed, but the run still holds the lease
    assert schedules.claim_due(propel.db, now=utcnow() + timedelta(seconds=5)) == []
    schedules.run_claimed(propel.db, "s", TASKS, propel)
    assert schedules.claim_due(propel.db, now=utcnow() + timedelta(seconds=5)) == ["s"]


def test_failed_run_is_recorded_with_its_error(propel):
    def boom(propel):
        raise ValueError("lake unreachable")

    TASKS["test.boom"] = boom
    try:
        schedules.ensure_schedule(propel.db, "b", "test.boom", 60)
        schedules.claim_due(propel.db)
        assert schedules.run_claimed(propel.db, "b", TASKS, propel) == "failed"
    finally:
        TASKS.pop("test.boom")
    (run,) = schedules.recent_runs(propel.db, "b")
    assert run["outcome"] == "failed"
    assert "lake unreachable" in run["error"]
    assert run["finished_at"] is not None


def test_default_schedules_run(propel):
    ensure_default_schedules(propel)
    names = {s.name for s in schedules.list_schedules(propel.db)}
    assert {"lake.compact", "lake.vacuum", "ingest.prune_dedupe"} <= names
    ran = []
    sweep(propel, lambda name: ran.append(
        schedules.run_claimed(propel.db, name, TASKS, propel)))
    assert ran and set(ran) == {"ok"}


def _wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def _run_through_consumer(propel, settings, counting_task):
    huey = create_huey(settings)
    huey.propel_bind(propel)
    schedules.ensure_schedule(propel.db, "via-huey", "test.count", 3600, {"via": "huey"})
    consumer = start_consumer(huey, workers=1)
    try:
        huey.sweep_schedules()  # what the minute crontab enqueues
        assert _wait_for(lambda: counting_task == [{"via": "huey"}])
        assert _wait_for(lambda: schedules.recent_runs(propel.db, "via-huey")[0]["outcome"]
                         == "ok")
    finally:
        consumer.stop(graceful=True)
        huey.flush()


def test_huey_on_sqlite_runs_schedules_in_process(propel, settings, counting_task):
    assert not settings.redis_url
    _run_through_consumer(propel, settings, counting_task)
    assert settings.huey_path.exists()  # the queue lives in its own file


@pytest.mark.skipif(not os.environ.get("PROPEL_TEST_REDIS_URL"),
                    reason="PROPEL_TEST_REDIS_URL is not set")
def test_huey_on_redis_runs_schedules(propel, settings, counting_task):
    redis_settings = settings.model_copy(update={
        "redis_url": os.environ["PROPEL_TEST_REDIS_URL"]})
    assert type(create_huey(redis_settings)).__name__ == "RedisHuey"
    _run_through_consumer(propel, redis_settings, counting_task)


@pytest.mark.skipif(not os.environ.get("PROPEL_TEST_REDIS_URL"),
                    reason="PROPEL_TEST_REDIS_URL is not set")
def test_propel_worker_process_takes_tasks_from_redis(propel, settings, tmp_path):
    env = {**os.environ, "PROPEL_REDIS_URL": os.environ["PROPEL_TEST_REDIS_URL"],
           "PROPEL_DATA_DIR": str(settings.data_dir), "PROPEL_LOG_FORMAT": "text"}
    if settings.database_url:
        env["PROPEL_DATABASE_URL"] = settings.database_url
    huey = create_huey(settings.model_copy(update={"redis_url": env["PROPEL_REDIS_URL"]}))
    huey.flush()
    schedules.ensure_schedule(propel.db, "prune", "ingest.prune_dedupe", 3600)
    assert schedules.claim_due(propel.db) == ["prune"]
    huey.run_schedule("prune")  # enqueued to Redis; only the worker process can run it
    worker = subprocess.Popen([sys.executable, "-m", "propel", "worker", "--threads", "1"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert _wait_for(lambda: (schedules.recent_runs(propel.db, "prune") or [{}])[0]
                         .get("outcome") == "ok", timeout=30)
    finally:
        worker.terminate()
        worker.wait(timeout=20)
        huey.flush()
