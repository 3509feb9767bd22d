"""Journeys: users move through a graph of steps over time (``docs/journeys.md``).

The Python API the HTTP routes, the CLI and the tasks call: ``create``, ``update``,
``publish``, ``pause``, ``resume``, ``stop``, ``get``, ``list_journeys``, ``validate``,
``advance`` (the engine), ``journey_stats`` and ``user_path``.
"""

from __future__ import annotations

from propel.journeys.engine import advance
from propel.journeys.service import (
    Journey,
    create,
    get,
    get_version,
    list_journeys,
    pause,
    publish,
    resume,
    stop,
    update,
)
from propel.journeys.spec import JourneyError, validate
from propel.journeys.stats import journey_stats, user_path

__all__ = ["Journey", "JourneyError", "advance", "create", "get", "get_version",
           "journey_stats", "list_journeys", "pause", "publish", "resume", "stop", "update",
           "user_path", "validate"]
