"""The operational database: one engine, reads on pooled connections, and writes
through a single group-committing writer on SQLite (plain transactions on PostgreSQL).

SQLite allows one writer at a time. Rather than let request threads fight over the
lock (and answer "database is locked"), every write is queued to one thread that
takes all waiting writes, runs each inside a savepoint (so one failure never undoes
the others), and commits them with one fsync: group commit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fcntl
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection, create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

if TYPE_CHECKING:
    from propel.channels.sealing import Sealer

T = TypeVar("T")
log = logging.getLogger("propel.db")


class DatabaseBusy(Exception):
    """The database cannot take the write now; the client should retry shortly."""

    retry_after = 1


def make_engine(url: str, *, synchronous: str = "FULL") -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=8,
            max_overflow=8,
        )
        _configure_sqlite(engine, synchronous)
        return engine
    return create_engine(url, pool_size=10, max_overflow=10, pool_timeout=10, pool_pre_ping=True)


def _configure_sqlite(engine: Engine, synchronous: str) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event decide how a transaction starts (below).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={synchronous}")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA temp_store=MEMORY")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # The writer takes the lock up front so it never has to upgrade a read lock.
        immediate = conn.get_execution_options().get("propel_writer", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class _FileLock:
    """An exclusive ``flock`` held around each group commit. Writer threads of several
    processes on one SQLite file (``serve --workers N``) then take turns as soon as the
    lock is free; without it a loser of ``BEGIN IMMEDIATE`` sleeps in SQLite's busy
    handler for up to 100 ms at a time, and two processes wrote less than one."""

    def __init__(self, path: str | None) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600) if path else None

    def __enter__(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class _SqliteWriter:
    def __init__(self, engine: Engine, queue_limit: int, max_group: int = 512) -> None:
        self._engine = engine
        database = engine.url.database
        on_disk = bool(database) and database != ":memory:" and not database.startswith("file:")
        self._file_lock = _FileLock(f"{database}-writer.lock" if on_disk else None)
        self._queue: queue.Queue[tuple[Callable[[Connection], Any], concurrent.futures.Future]]
        self._queue = queue.Queue()
        self._queue_limit = queue_limit
        self._max_group = max_group
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="propel-sqlite-writer", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[Connection], T]) -> concurrent.futures.Future[T]:
        if self._stopped.is_set():
            raise RuntimeError("database writer is closed")
        if self._queue.qsize() >= self._queue_limit:
            raise DatabaseBusy("too many writes waiting")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._queue.put((fn, future))
        return future

    def close(self) -> None:
        self._stopped.set()
        self._queue.put((None, None))  # type: ignore[arg-type]
        self._thread.join(timeout=30)

    def _take_group(self) -> list[tuple[Callable[[Connection], Any], concurrent.futures.Future]]:
        first = self._queue.get()
        group = [first]
        while len(group) < self._max_group:
            try:
                group.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return group

    def _run(self) -> None:
        conn = self._engine.connect().execution_options(propel_writer=True)
        try:
            while True:
                group = self._take_group()
                live = [(fn, fut) for fn, fut in group if fn is not None]
                if live:
                    with self._file_lock:
                        conn = self._commit_group(conn, live)
                if len(live) < len(group):
                    return
        finally:
            conn.close()
            self._file_lock.close()

    def _commit_group(self, conn: Connection, group: list) -> Connection:
        outcomes: list[tuple[concurrent.futures.Future, bool, Any]] = []
        try:
            with conn.begin():
                for fn, fut in group:
                    if not fut.set_running_or_notify_cancel():
                        continue
                    savepoint = conn.begin_nested()
                    try:
                        result = fn(conn)
                        savepoint.commit()
                        outcomes.append((fut, True, result))
                    except BaseException as exc:  # noqa: BLE001 - handed to the caller
                        savepoint.rollback()
                        outcomes.append((fut, False, exc))
        except Exception as exc:  # the commit itself failed: nothing in the group is durable
            log.exception("group commit failed")
            failure = DatabaseBusy(str(exc)) if isinstance(exc, OperationalError) else exc
            for fut, _ok, _value in outcomes:
                fut.set_exception(failure)
            conn.close()
            return self._engine.connect().execution_options(propel_writer=True)
        for fut, ok, value in outcomes:
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)
        return conn


class Database:
    """Reads on pooled connections; writes through :meth:`write` / :meth:`awrite`.

    ``sealer`` seals secrets kept in rows (channel settings) under the application's
    secret key; :class:`propel.core.Propel` sets it. A Database opened on its own has
    none and refuses to store or open such secrets."""

    def __init__(
        self,
        url: str,
        *,
        synchronous: str = "FULL",
        queue_limit: int = 2000,
        write_timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.engine = make_engine(url, synchronous=synchronous)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        self.write_timeout = write_timeout
        self._writer = _SqliteWriter(self.engine, queue_limit) if self.is_sqlite else None
        self.sealer: Sealer | None = None

    @contextmanager
    def read(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                yield conn
        except PoolTimeout as exc:
            raise DatabaseBusy("no database connection free") from exc

    def write(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in a write transaction and return its result once committed."""
        if self._writer is None:
            return self._write_postgres(fn)
        future = self._writer.submit(fn)
        try:
            return future.result(timeout=self.write_timeout)
        except concurrent.futures.TimeoutError as exc:
            # Too late to cancel if it already ran; it may still commit, which is why
            # every write Propel does is idempotent under retry.
            future.cancel()
            raise DatabaseBusy("write timed out waiting for the database") from exc

    async def awrite(self, fn: Callable[[Connection], T]) -> T:
        if self._writer is None:
            return await asyncio.to_thread(self._write_postgres, fn)
        future = self._writer.submit(fn)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.write_timeout)
        except TimeoutError as exc:
            raise DatabaseBusy("write timed out waiting for the database") from exc

    def _write_postgres(self, fn: Callable[[Connection], T]) -> T:
        try:
            with self.engine.begin() as conn:
                return fn(conn)
        except PoolTimeout as exc:
            raise DatabaseBusy("no database connection free") from exc

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self.engine.dispose()
