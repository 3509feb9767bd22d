"""Named crash points for fault-injection tests.

``PROPEL_FAULTS="flush.after_lake_commit=0.2,ingest.after_commit=0.01"`` makes the
process kill itself (SIGKILL: no cleanup, no flush, like a power cut to the process)
with that probability each time it passes the point. Unset, a crash point costs one
dict lookup. Before dying it writes ``propel: crash point NAME: SIGKILL`` to stderr,
so a test harness can tell which point fired.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal

POINTS = (
    "ingest.after_commit",
    "flush.after_claim",
    "flush.after_lake_commit",
    "flush.before_mark",
    "import.after_lake_commit",
    "dispatch.before_store",
    "deliver.after_claim",
    "deliver.after_send",
    "journeys.after_read",
    "journeys.before_commit",
    "journeys.after_commit",
)

_armed: dict[str, float] = {}


def arm(spec: str) -> None:
    """Parse ``name=probability,...``; unknown names are an error, not a silent no-op."""
    _armed.clear()
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, prob = part.partition("=")
        if name not in POINTS and not name.startswith("test."):
            raise ValueError(f"unknown crash point {name!r}; known: {', '.join(POINTS)}")
        _armed[name] = float(prob or 1.0)


def crash_point(name: str) -> None:
    prob = _armed.get(name)
    if prob is not None and random.random() < prob:
        with contextlib.suppress(OSError):  # no stderr: die all the same
            os.write(2, f"propel: crash point {name}: SIGKILL\n".encode())
        os.kill(os.getpid(), signal.SIGKILL)


arm(os.environ.get("PROPEL_FAULTS", ""))
