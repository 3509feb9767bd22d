"""Structured logs and Prometheus metrics (a registry per app, no globals)."""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in ("method", "path", "status", "duration_ms", "account_id"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(fmt: str = "json", level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "huey"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)  # we log requests ourselves
    logging.getLogger("huey").setLevel(logging.WARNING)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.ingested = Counter("propel_ingest_accepted", "Items stored by ingest",
                                ["source"], registry=self.registry)
        self.duplicates = Counter("propel_ingest_duplicates", "Items skipped as duplicates",
                                  ["source"], registry=self.registry)
        self.rejected = Counter("propel_ingest_rejected", "Items rejected by validation",
                                ["source"], registry=self.registry)
        self.requests = Histogram("propel_http_request_seconds", "HTTP request duration",
                                  ["method", "route", "status"], registry=self.registry)
        # Set, never added to: across worker processes the last value set is the one.
        self.pending = Gauge("propel_lake_pending_rows", "Rows waiting for the flusher",
                             registry=self.registry, multiprocess_mode="mostrecent")
        self.flush_lag = Gauge("propel_lake_flush_lag_seconds",
                               "Age of the oldest row in the last flush",
                               registry=self.registry, multiprocess_mode="mostrecent")

    def exposition(self) -> bytes:
        """The text a scrape gets. Under ``propel serve --workers N`` every worker keeps
        its metrics in the shared ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's
        multiprocess mode), so whichever worker answers reports all of them."""
        if os.environ.get(MULTIPROCESS_ENV):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)

    def count_ingest(self, source: str, result: Any) -> None:
        self.ingested.labels(source).inc(result.accepted)
        self.duplicates.labels(source).inc(result.duplicates)
        self.rejected.labels(source).inc(len(result.rejected))
