"""The Delta Lake table of events and profile changes.

One table, partitioned by account and event date. Only the holder of the lake
lease writes to it (flusher, importer, compaction, vacuum): see :func:`writer_lease`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, Transaction, WriterProperties, write_deltalake
from deltalake.exceptions import TableNotFoundError
from sqlalchemy import select, update

from propel.db.engine import Database
from propel.db.meta import utcnow
from propel.jobs import leases
from propel.jobs.tables import leases as leases_table

log = logging.getLogger("propel.lake")

LAKE_LEASE = "lake.writer"
FLUSHER_APP = "propel-flusher"

SCHEMA = pa.schema(
    [
        ("account_id", pa.string()),
        ("event_date", pa.date32()),
        ("kind", pa.string()),
        ("message_id", pa.string()),
        ("identity", pa.string()),
        ("name", pa.string()),
        ("ts", pa.timestamp("us", tz="UTC")),
        ("received_at", pa.timestamp("us", tz="UTC")),
        ("source", pa.string()),
        ("properties", pa.string()),
    ]
)
PARTITIONS = ["account_id", "event_date"]
_WRITER_PROPS = WriterProperties(compression="ZSTD")


class Lake:
    def __init__(self, uri: str, *, query_memory_limit: str | None = None,
                 query_temp_dir: str | None = None) -> None:
        self.uri = str(uri)
        self.query_memory_limit = query_memory_limit
        self.query_temp_dir = query_temp_dir
        self.events_uri = os.path.join(self.uri, "events") if "://" not in self.uri else (
            self.uri.rstrip("/") + "/events"
        )
        if "://" not in self.uri:
            Path(self.uri).mkdir(parents=True, exist_ok=True)

    def table(self, version: int | None = None) -> DeltaTable | None:
        try:
            return DeltaTable(self.events_uri, version=version)
        except TableNotFoundError:
            return None

    def transaction_version(self, app_id: str, table: DeltaTable | None = None) -> int:
        table = table or self.table()
        if table is None:
            return 0
        return table.transaction_version(app_id) or 0

    def append(self, data: pa.Table, *, app_id: str, version: int) -> None:
        """Append with Delta's application-transaction version, so a reader (or a
        restarted writer) can tell exactly which of our batches the table holds."""
        write_deltalake(
            self.events_uri,
            data.cast(SCHEMA),
            mode="append",
            partition_by=PARTITIONS,
            writer_properties=_WRITER_PROPS,
            commit_properties=CommitProperties(
                app_transactions=[Transaction(app_id=app_id, version=version)]
            ),
        )

    def compact(self) -> dict:
        table = self.table()
        if table is None:
            return {}
        return table.optimize.compact(writer_properties=_WRITER_PROPS)

    def vacuum(self, retention_hours: int) -> list[str]:
        table = self.table()
        if table is None:
            return []
        return table.vacuum(
            retention_hours=retention_hours, dry_run=False, enforce_retention_duration=False
        )


# --- the writer lease -------------------------------------------------------------
#
# One writer per lake, by a lease row in the database. It is held with a short TTL and
# renewed by a heartbeat, so a writer that dies (kill -9, power cut) blocks the lake
# for at most WRITER_LEASE_TTL seconds; and a holder that died on this very machine
# (same boot, same PID namespace, its process gone) is taken over at once, so a
# restarted server finishes a crashed flush immediately.

WRITER_LEASE_TTL = 15.0


class LeaseLost(RuntimeError):
    """The writer lease expired or passed to another holder: stop writing."""


def _proc_identity(pid: int) -> str | None:
    """boot id . PID namespace . start time of a live (non-zombie) ``pid``, or None."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")
        pid_ns = os.stat("/proc/self/ns/pid").st_ino
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in ("Z", "X"):  # killed, not yet reaped: dead all the same
        return None
    return f"{boot[:16]}.{pid_ns}.{fields[19]}"  # fields[19] is stat field 22, starttime


def writer_owner() -> str:
    """host:pid:tag[:identity] (at most 100 characters, the column's width)."""
    base = f"{socket.gethostname()[:24]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    ident = _proc_identity(os.getpid())
    return f"{base}:{ident}" if ident else base


def holder_is_dead(owner: str) -> bool:
    """True only when certain: the holder ran on this machine's boot and PID namespace
    and its process (pid + start time) no longer exists. Anything else: unknown."""
    parts = owner.rsplit(":", 3)
    if len(parts) != 4 or not parts[1].isdigit():
        return False
    ident = parts[3].split(".")
    mine = (_proc_identity(os.getpid()) or "").split(".")
    if len(ident) != 3 or len(mine) != 3 or ident[:2] != mine[:2]:
        return False
    return _proc_identity(int(parts[1])) != parts[3]


def lease_held(db: Database, name: str) -> bool:
    """Whether a live holder has the lease ``name`` now (an expired one, or one whose
    process is known to be gone, does not count)."""
    with db.read() as conn:
        row = conn.execute(select(leases_table.c.owner, leases_table.c.expires_at).where(
            leases_table.c.name == name)).first()
    return row is not None and row.expires_at > utcnow() and not holder_is_dead(row.owner)


def _expire_dead_holder(db: Database, name: str) -> bool:
    with db.read() as conn:
        owner = conn.execute(
            select(leases_table.c.owner).where(leases_table.c.name == name)
        ).scalar()
    if owner is None or not holder_is_dead(owner):
        return False
    log.warning("taking over lease %s from dead holder %s", name, owner)
    return bool(db.write(lambda conn: conn.execute(
        update(leases_table)
        .where(leases_table.c.name == name, leases_table.c.owner == owner)
        .values(expires_at=utcnow() - timedelta(seconds=1))
    ).rowcount))


class WriterLease:
    """A held lease, renewed every ttl/3 by a daemon thread. Renewal only extends a
    lease still recorded as ours: once another holder took it (or it was released),
    it is lost for good, never silently re-acquired."""

    def __init__(self, db: Database, name: str, owner: str, ttl_seconds: float) -> None:
        self.db, self.name, self.owner, self.ttl = db, name, owner, ttl_seconds
        self.lost = False
        self._valid_until = time.monotonic() + ttl_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease:{name}", daemon=True)

    def _renew(self) -> bool:
        started = time.monotonic()
        renewed = self.db.write(lambda conn: conn.execute(
            update(leases_table)
            .where(leases_table.c.name == self.name, leases_table.c.owner == self.owner)
            .values(expires_at=utcnow() + timedelta(seconds=self.ttl))
        ).rowcount)
        if renewed:
            self._valid_until = started + self.ttl
        else:
            self.lost = True
        return bool(renewed)

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                if not self._renew():
                    log.error("lease %s was taken from %s", self.name, self.owner)
                    return
            except Exception:  # a database hiccup: the next beat retries
                log.warning("could not renew lease %s", self.name, exc_info=True)

    def check(self) -> None:
        """Renew now and raise :class:`LeaseLost` unless the lease is still ours and
        will stay ours for a while: call right before every lake commit."""
        try:
            ok = not self.lost and self._renew()
        except Exception as exc:
            if time.monotonic() + self.ttl / 3 < self._valid_until:
                return  # a failed renewal, but the lease still has ample time left
            raise LeaseLost(f"could not renew lease {self.name}") from exc
        if not ok:
            raise LeaseLost(f"lease {self.name} is no longer held by {self.owner}")


@contextmanager
def writer_lease(db: Database, *, wait_seconds: float = 0,
                 ttl_seconds: float = WRITER_LEASE_TTL,
                 name: str = LAKE_LEASE) -> Iterator[WriterLease]:
    """Hold the lake's writer lease for the block, or raise ``LeaseUnavailable``."""
    owner = writer_owner()
    deadline = time.monotonic() + wait_seconds
    while not leases.try_acquire(db, name, owner, ttl_seconds):
        if _expire_dead_holder(db, name):
            continue
        if time.monotonic() >= deadline:
            raise leases.LeaseUnavailable(f"{name} is held by another process")
        time.sleep(0.2)
    lease = WriterLease(db, name, owner, ttl_seconds)
    lease._thread.start()
    try:
        yield lease
    finally:
        lease._stop.set()
        lease._thread.join(timeout=5)
        leases.release(db, name, owner)
