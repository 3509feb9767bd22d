"""Named leases held in the database: one holder at a time, expiring if it dies."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from sqlalchemy import Connection, delete, update

from propel.db.engine import Database
from propel.db.meta import upsert_insert, utcnow
from propel.jobs.tables import leases


def new_owner() -> str:
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class LeaseUnavailable(Exception):
    pass


def try_acquire(db: Database, name: str, owner: str, ttl_seconds: float) -> bool:
    def _acquire(conn: Connection) -> bool:
        now = utcnow()
        expires = now + timedelta(seconds=ttl_seconds)
        taken = conn.execute(
            update(leases)
            .where(leases.c.name == name, (leases.c.owner == owner) | (leases.c.expires_at < now))
            .values(owner=owner, expires_at=expires)
        ).rowcount
        if taken:
            return True
        inserted = conn.execute(
            upsert_insert(conn.dialect.name, leases)
            .values(name=name, owner=owner, expires_at=expires)
            .on_conflict_do_nothing()
            .returning(leases.c.name)
        ).first()
        return inserted is not None

    return db.write(_acquire)


def release(db: Database, name: str, owner: str) -> None:
    db.write(
        lambda conn: conn.execute(
            delete(leases).where(leases.c.name == name, leases.c.owner == owner)
        )
    )


@contextmanager
def hold(db: Database, name: str, *, ttl_seconds: float = 300, wait_seconds: float = 0,
         owner: str | None = None) -> Iterator[str]:
    """Hold ``name`` for the block; wait up to ``wait_seconds`` for it, else raise."""
    owner = owner or new_owner()
    deadline = time.monotonic() + wait_seconds
    while not try_acquire(db, name, owner, ttl_seconds):
        if time.monotonic() >= deadline:
            raise LeaseUnavailable(f"{name} is held by another process")
        time.sleep(0.2)
    try:
        yield owner
    finally:
        release(db, name, owner)
