"""Structured logs and Prometheus metrics (a registry per app, no globals)."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


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
        self.pending = Gauge("propel_lake_pending_rows", "Rows waiting for the flusher",
                             registry=self.registry)
        self.flush_lag = Gauge("propel_lake_flush_lag_seconds",
                               "Age of the oldest row in the last flush",
                               registry=self.registry)

    def count_ingest(self, source: str, result: Any) -> None:
        self.ingested.labels(source).inc(result.accepted)
        self.duplicates.labels(source).inc(result.duplicates)
        self.rejected.labels(source).inc(len(result.rejected))
