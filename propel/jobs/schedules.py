"""Periodic work, scheduled in the database.

Each schedule has ``next_run_at`` and a lease. The sweeper (every minute) claims due
schedules in one conditional UPDATE each — so two consumers never start the same
run — and moves ``next_run_at`` one interval past *now*, so runs missed while
everything was down happen once after restart, not once per missed interval.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Connection, insert, select, update

from propel.db.engine import Database
from propel.db.meta import upsert_insert, utcnow
from propel.jobs.tables import schedules, task_runs

log = logging.getLogger("propel.jobs")
DEFAULT_LEASE_SECONDS = 3600


@dataclass(frozen=True)
class Schedule:
    name: str
    task: str
    args: dict[str, Any]
    interval_seconds: int
    next_run_at: datetime
    lease_until: datetime | None
    enabled: bool


def ensure_schedule(db: Database, name: str, task: str, interval_seconds: int,
                    args: dict[str, Any] | None = None, first_run_at: datetime | None = None
                    ) -> None:
    """Create the schedule if missing; an existing one keeps its next run time."""
    values = {
        "name": name, "task": task, "args": orjson.dumps(args or {}).decode(),
        "interval_seconds": interval_seconds, "next_run_at": first_run_at or utcnow(),
        "enabled": 1,
    }

    def _ensure(conn: Connection) -> None:
        stmt = upsert_insert(conn.dialect.name, schedules).values(**values)
        conn.execute(stmt.on_conflict_do_update(
            index_elements=["name"],
            set_={"task": task, "args": values["args"], "interval_seconds": interval_seconds},
        ))

    db.write(_ensure)


def list_schedules(db: Database) -> list[Schedule]:
    with db.read() as conn:
        rows = conn.execute(select(schedules).order_by(schedules.c.name)).all()
    return [Schedule(r.name, r.task, orjson.loads(r.args), r.interval_seconds, r.next_run_at,
                     r.lease_until, bool(r.enabled)) for r in rows]


def claim_due(db: Database, now: datetime | None = None,
              lease_seconds: int = DEFAULT_LEASE_SECONDS) -> list[str]:
    now = now or utcnow()
    with db.read() as conn:
        due = conn.execute(
            select(schedules.c.name, schedules.c.interval_seconds).where(
                schedules.c.enabled == 1, schedules.c.next_run_at <= now,
                (schedules.c.lease_until.is_(None)) | (schedules.c.lease_until < now),
            ).order_by(schedules.c.next_run_at)
        ).all()
    claimed = []
    for name, interval in due:
        def _claim(conn: Connection, name: str = name, interval: int = interval) -> bool:
            return conn.execute(
                update(schedules).where(
                    schedules.c.name == name, schedules.c.next_run_at <= now,
                    (schedules.c.lease_until.is_(None)) | (schedules.c.lease_until < now),
                ).values(next_run_at=now + timedelta(seconds=interval),
                         lease_until=now + timedelta(seconds=lease_seconds))
            ).rowcount == 1
        if db.write(_claim):
            claimed.append(name)
    return claimed


def run_claimed(db: Database, name: str, tasks: dict[str, Callable[..., Any]],
                context: Any) -> str:
    """Run a claimed schedule's task, record the run, release the lease."""
    with db.read() as conn:
        row = conn.execute(select(schedules).where(schedules.c.name == name)).one()
    run_id = start_run(db, name, row.task)
    outcome, error, rows = "ok", None, None
    try:
        result = tasks[row.task](context, **orjson.loads(row.args))
        rows = result if isinstance(result, int) else None
    except Exception as exc:  # recorded, not raised: one failing schedule stops nothing else
        outcome, error = "failed", "".join(traceback.format_exception_only(exc)).strip()
        log.exception("scheduled task %s failed", name)
    finish_run(db, run_id, outcome, error=error, rows=rows, release=name)
    return outcome


def start_run(db: Database, schedule: str, task: str) -> int:
    """Record a run as started (outcome ``running``); returns its id. Runs started by
    hand use a ``schedule`` name of their own, so their history stays apart."""
    return db.write(lambda conn: conn.execute(
        insert(task_runs).values(schedule=schedule, task=task, started_at=utcnow(),
                                 outcome="running").returning(task_runs.c.id)).scalar())


def finish_run(db: Database, run_id: int, outcome: str, *, error: str | None = None,
               rows: int | None = None, release: str | None = None) -> None:
    """Record a run's end; ``release``: the schedule whose lease ends with it."""

    def _finish(conn: Connection) -> None:
        conn.execute(update(task_runs).where(task_runs.c.id == run_id).values(
            finished_at=utcnow(), outcome=outcome, error=error, rows=rows))
        if release is not None:
            conn.execute(update(schedules).where(schedules.c.name == release)
                         .values(lease_until=None))

    db.write(_finish)


def get_run(db: Database, run_id: int) -> dict[str, Any] | None:
    with db.read() as conn:
        row = conn.execute(select(task_runs).where(task_runs.c.id == run_id)).first()
    return dict(row._mapping) if row else None


def recent_runs(db: Database, name: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
    query = select(task_runs).order_by(task_runs.c.id.desc()).limit(limit)
    if name:
        query = query.where(task_runs.c.schedule == name)
    with db.read() as conn:
        return [dict(r._mapping) for r in conn.execute(query).all()]
