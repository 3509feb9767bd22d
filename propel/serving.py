"""``propel serve --workers N``: N server processes sharing one port.

One Python process serves requests under one interpreter lock, so ingest tops out at
about one core however many the machine has. With ``--workers N`` the supervisor
(uvicorn's) starts N processes that accept on the same socket; each is a whole Propel
app with its own database connections and, on SQLite, its own writer thread (SQLite's
file lock serialises writers across processes; each process still groups its own
commits).

Background work — the lake flusher, delivery, journeys, the task consumer — runs in
exactly one of them: the worker holding an exclusive lock on
``PROPEL_DATA_DIR/serve-background.lock``. The lock goes with its process, so when
that worker dies the supervisor's replacement takes it over.
"""

from __future__ import annotations

import asyncio
import fcntl
import gc
import os
import shutil
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI

from propel.settings import Settings

BACKGROUND_ENV = "PROPEL_SERVE_BACKGROUND"
T = TypeVar("T")
_held: list[int] = []  # the lock's file descriptor, open for the process's lifetime


def take_background_lock(settings: Settings) -> bool:
    """True when this process is (now) the one that runs background work."""
    if _held:
        return True
    path = settings.data_dir / "serve-background.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    _held.append(fd)
    return True


# Young objects between collections of the cyclic garbage collector (CPython's default
# is 700). A 100-event batch allocates a few thousand short-lived dicts and lists, so the
# default collected several times per request.
GC_YOUNG_THRESHOLD = 50_000


def settle_heap() -> None:
    """Call once a long-running process (``serve``, ``worker``) has started: move
    everything alive now (the imported libraries, the app) out of the collector's sight
    and collect young objects less often. Before this, a collection that walked the
    whole startup heap ran inside request handling often enough to cost about a quarter
    of the server's CPU under ingest load, and a sixth of a delivery process's."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 20)


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """The event loop ``PROPEL_EVENT_LOOP`` names: "auto" is uvloop when installed."""
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise RuntimeError("PROPEL_EVENT_LOOP=uvloop, but uvloop is not installed "
                                   "(pip install uvloop)") from None
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


def run_event_loop(main: Coroutine[Any, Any, T], settings: Settings) -> T:
    """``asyncio.run(main)`` on the loop the settings choose."""
    with asyncio.Runner(loop_factory=loop_factory(settings.event_loop)) as runner:
        return runner.run(main)


def worker_app() -> FastAPI:
    """The app of one worker process (uvicorn calls it in each)."""
    from propel.app import create_app
    from propel.observability import configure_logging

    settings = Settings()
    configure_logging(settings.log_format)
    background = os.environ.get(BACKGROUND_ENV, "1") == "1" and take_background_lock(settings)
    app = create_app(settings, background=background)
    settle_heap()
    return app


def shared_metrics_dir(settings: Settings) -> Path:
    """An empty folder for the workers' metrics files (``PROPEL_DATA_DIR/metrics``):
    counts start from zero with the server, as they do in one process."""
    path = settings.data_dir / "metrics"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def serve_workers(host: str, port: int, workers: int, *, background: bool = True) -> None:
    import uvicorn

    from propel.observability import MULTIPROCESS_ENV

    os.environ[BACKGROUND_ENV] = "1" if background else "0"
    # Set before the workers start: prometheus_client picks its storage at import.
    if not os.environ.get(MULTIPROCESS_ENV):
        os.environ[MULTIPROCESS_ENV] = str(shared_metrics_dir(Settings()))
    uvicorn.run("propel.serving:worker_app", factory=True, host=host, port=port,
                workers=workers, log_config=None, access_log=False,
                # a worker imports all of Propel before it answers the supervisor
                timeout_worker_healthcheck=60)
