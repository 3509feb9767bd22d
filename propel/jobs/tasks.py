"""Background tasks on huey.

Tasks take names and ids, are idempotent, and keep their state in the database.
The consumer process sets the Propel object once (``bind``); huey then only
carries the schedule name.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from huey import Huey, RedisHuey, SqliteHuey, crontab
from huey.consumer import Consumer

from propel.core import Propel
from propel.ingest.dedupe import prune_dedupe_keys, settle_recent_keys
from propel.jobs import schedules
from propel.jobs.leases import LeaseUnavailable
from propel.lake import flush
from propel.lake.store import writer_lease
from propel.settings import Settings

log = logging.getLogger("propel.jobs")
DAY = 86_400


def _compact(propel: Propel) -> int:
    with writer_lease(propel.db, wait_seconds=600) as lease:
        lease.check()
        metrics = propel.lake.compact()
    return int(metrics.get("numFilesRemoved", 0)) if metrics else 0


def _vacuum(propel: Propel) -> int:
    with writer_lease(propel.db, wait_seconds=600) as lease:
        lease.check()
        return len(propel.lake.vacuum(propel.settings.vacuum_retention_hours))


def _prune_dedupe(propel: Propel) -> int:
    return prune_dedupe_keys(propel.db, propel.settings.dedupe_days)


def _delete_flushed(propel: Propel) -> int:
    return flush.delete_flushed(propel.db, propel.settings.recent_retention_seconds)


def _score_prediction(propel: Propel, prediction_id: str) -> int:
    from propel.predictions import score_task

    return score_task(propel, prediction_id)


def _train_prediction(propel: Propel, prediction_id: str) -> int:
    from propel.predictions import train_task

    return train_task(propel, prediction_id)


def _advance_journeys(propel: Propel) -> int:
    from propel.journeys import advance

    return advance(propel)["steps"]


# name -> function(propel, **args); each feature registers its own. ``journeys.advance``
# has no default schedule: ``propel serve`` and ``propel worker`` run it every few
# seconds in a thread (``JourneyThread``); the task is there to run it on demand.
TASKS: dict[str, Callable[..., Any]] = {
    "lake.compact": _compact,
    "lake.vacuum": _vacuum,
    "ingest.prune_dedupe": _prune_dedupe,
    "lake.delete_flushed": _delete_flushed,
    "predictions.score": _score_prediction,
    "predictions.train": _train_prediction,
    "journeys.advance": _advance_journeys,
}

DEFAULT_SCHEDULES = [
    ("lake.compact", "lake.compact", DAY),
    ("lake.vacuum", "lake.vacuum", DAY),
    ("ingest.prune_dedupe", "ingest.prune_dedupe", DAY),
    ("lake.delete_flushed", "lake.delete_flushed", 600),
]


def ensure_default_schedules(propel: Propel) -> None:
    for name, task, interval in DEFAULT_SCHEDULES:
        schedules.ensure_schedule(propel.db, name, task, interval)


class _Bound:
    propel: Propel | None = None


def create_huey(settings: Settings, propel_factory: Callable[[], Propel] | None = None) -> Huey:
    """A huey app with Propel's tasks: Redis when configured, else a SQLite file of
    its own (so the queue never contends with the operational database)."""
    if settings.redis_url:
        huey: Huey = RedisHuey("propel", url=settings.redis_url)
    else:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        huey = SqliteHuey("propel", filename=str(settings.huey_path))
    bound = _Bound()

    def current() -> Propel:
        if bound.propel is None:
            bound.propel = (propel_factory or (lambda: Propel(settings)))()
        return bound.propel

    @huey.task(retries=2, retry_delay=30, name="run_schedule")
    def run_schedule(name: str) -> str:
        return schedules.run_claimed(current().db, name, TASKS, current())

    @huey.periodic_task(crontab(minute="*"), name="sweep_schedules")
    def sweep_schedules() -> list[str]:
        return sweep(current(), run_schedule)

    huey.propel_bind = lambda p: setattr(bound, "propel", p)  # type: ignore[attr-defined]
    huey.run_schedule = run_schedule  # type: ignore[attr-defined]
    huey.sweep_schedules = sweep_schedules  # type: ignore[attr-defined]
    return huey


def sweep(propel: Propel, run_schedule: Any) -> list[str]:
    claimed = schedules.claim_due(propel.db)
    for name in claimed:
        run_schedule(name)
    return claimed


class InProcessConsumer(Consumer):
    """huey's consumer without its signal handlers, to run inside ``propel serve``."""

    def _set_signal_handlers(self) -> None:  # the server owns the signals
        pass


def start_consumer(huey: Huey, workers: int) -> InProcessConsumer:
    consumer = InProcessConsumer(huey, workers=workers, worker_type="thread",
                                 periodic=True, check_worker_health=False)
    consumer.start()
    return consumer


class FlusherThread(threading.Thread):
    """Checks every second whether pending rows are due (by count or age) and flushes."""

    def __init__(self, propel: Propel, interval: float = 1.0,
                 on_lag: Callable[[float], None] | None = None) -> None:
        """``on_lag``: told each flush's lag (age of its oldest row), e.g. a gauge's set."""
        super().__init__(name="propel-flusher", daemon=True)
        self.propel = propel
        self.interval = interval
        self.on_lag = on_lag
        self.stopping = threading.Event()

    def run(self) -> None:
        settings = self.propel.settings
        first = True  # a restart finishes a crashed flusher's batches at once
        while first or not self.stopping.wait(self.interval):
            try:
                if first or flush.should_flush(self.propel.db, min_rows=settings.flush_rows,
                                      max_age_seconds=settings.flush_seconds):
                    result = flush.flush_batches(self.propel.db, self.propel.lake,
                                                 max_rows=settings.flush_rows)
                    if self.on_lag is not None:
                        self.on_lag(result.max_lag_seconds)
                settle_recent_keys(self.propel.db, at=settings.dedupe_settle_keys)
                first = False
            except LeaseUnavailable:  # compaction or an import is writing: next time
                continue
            except Exception:  # keep flushing after a transient failure
                log.exception("flush failed; retrying")
                time.sleep(1)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=60)
