"""create_app(settings): the HTTP API. No import-time globals: everything hangs off
``app.state.propel`` (settings, database, lake) and ``app.state.metrics``."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text

from propel import __version__, web
from propel.api import campaigns, errors, inbox, journeys, predictions, v1
from propel.api.auth import propel_of
from propel.campaigns import tracking
from propel.compat import clevertap, clevertap_targets, segment
from propel.core import Propel
from propel.lake.flush import pending_stats
from propel.observability import Metrics
from propel.settings import Settings

log = logging.getLogger("propel.http")
STATIC = Path(__file__).parent / "web" / "static"
JOURNEY_INTERVAL = 5.0  # seconds between journey engine passes (new events, due steps)


def create_app(settings: Settings | None = None, *, propel: Propel | None = None,
               background: bool = True) -> FastAPI:
    """``background``: run the flusher and (without Redis) the task consumer in-process."""
    owned = propel is None
    propel = propel or Propel(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        workers = start_background(propel, app.state.metrics) if background else None
        try:
            yield
        finally:
            if workers:
                workers.stop()
            if owned:
                propel.close()

    app = FastAPI(title="Propel", version=__version__, lifespan=lifespan, docs_url=None,
                  redoc_url=None,
                  description="Collect events and profiles, predict likelihood groups, "
                  "engage them. Authentication: `/api/v1` takes `Authorization: Bearer "
                  "<API key>`; `/v1` (Segment) takes the write key as HTTP Basic user; "
                  "`/1` (CleverTap) takes `X-CleverTap-Account-Id` and "
                  "`X-CleverTap-Passcode`.")
    app.state.propel = propel
    app.state.metrics = Metrics()
    app.state.write_keys = {}  # write key -> (account id, until), see api.auth
    errors.install(app)
    app.include_router(v1.router)
    app.include_router(predictions.router)
    app.include_router(campaigns.router)
    app.include_router(journeys.router)
    app.include_router(inbox.router)
    app.include_router(tracking.router)
    app.include_router(segment.router)
    app.include_router(clevertap.router)
    app.include_router(clevertap_targets.router)
    web.install(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _ops_routes(app)
    _access_log(app)
    return app


def _ops_routes(app: FastAPI) -> None:
    @app.get("/healthz", tags=["Operations"])
    def healthz() -> dict:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["Operations"])
    def readyz(request: Request) -> Response:
        """The database answers and the lake is reachable."""
        propel = propel_of(request)
        checks = {}
        try:
            with propel.db.read() as conn:
                conn.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:  # a readiness probe reports, it does not raise
            checks["database"] = f"failed: {exc.__class__.__name__}"
        try:
            propel.lake.table()
            checks["lake"] = "ok"
        except Exception as exc:  # same
            checks["lake"] = f"failed: {exc.__class__.__name__}"
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse({"status": "ok" if ready else "unavailable", "checks": checks},
                              status_code=200 if ready else 503)

    @app.get("/metrics", tags=["Operations"], include_in_schema=False)
    def metrics(request: Request) -> Response:
        m = request.app.state.metrics
        try:
            m.pending.set(pending_stats(propel_of(request).db)[0])
        except Exception:  # metrics must render even when the database is struggling
            log.warning("could not read pending rows for /metrics")
        return Response(m.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/docs", include_in_schema=False)
    def docs() -> Response:
        return get_swagger_ui_html(
            openapi_url="/openapi.json", title="Propel API",
            swagger_js_url="/static/vendor/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url="/static/vendor/swagger-ui/swagger-ui.css",
            swagger_favicon_url="/static/vendor/swagger-ui/favicon.png",
        )


def _access_log(app: FastAPI) -> None:
    app.add_middleware(AccessLog, metrics=app.state.metrics)


class AccessLog:
    """Request metrics and logs for every 4xx/5xx or slow request, and a logged JSON
    500 for an unexpected exception. Plain ASGI: Starlette's ``BaseHTTPMiddleware``
    costs a task and memory streams per request on the ingest hot path."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [0]

        async def send_and_note(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except Exception:
            log.exception("unhandled error", extra={"method": scope["method"],
                                                    "path": scope["path"]})
            if status[0]:  # the response had started: nothing more can be said
                raise
            response = JSONResponse(
                {"error": {"code": "internal", "message": "internal error; it was logged"}},
                status_code=500)
            await response(scope, receive, send_and_note)
        self._observe(scope, status[0], time.perf_counter() - start)

    def _observe(self, scope: dict, status: int, duration: float) -> None:
        route = scope.get("route")
        self.metrics.requests.labels(
            scope["method"], getattr(route, "path", "unmatched"), str(status)).observe(duration)
        if status >= 400 or duration > 1:
            log.info("request", extra={"method": scope["method"], "path": scope["path"],
                                       "status": status,
                                       "duration_ms": round(duration * 1000, 1)})


class Background:
    def __init__(self, *threads: object, consumer: object | None = None) -> None:
        self.threads = threads
        self.consumer = consumer

    def stop(self) -> None:
        if self.consumer is not None:
            self.consumer.stop(graceful=True)
        for thread in self.threads:
            thread.stop()


def start_background(propel: Propel, metrics: Metrics) -> Background:
    from propel.campaigns.delivery import DeliveryThread
    from propel.jobs.tasks import (
        FlusherThread,
        create_huey,
        ensure_default_schedules,
        start_consumer,
    )
    from propel.journeys.worker import JourneyThread

    ensure_default_schedules(propel)
    flusher = FlusherThread(propel, on_lag=metrics.flush_lag.set)
    flusher.start()
    delivery = DeliveryThread(propel)
    delivery.start()
    journeys = JourneyThread(propel, interval=JOURNEY_INTERVAL)
    journeys.start()
    consumer = None
    if not propel.settings.redis_url:
        huey = create_huey(propel.settings)
        huey.propel_bind(propel)
        consumer = start_consumer(huey, propel.settings.consumer_workers)
    return Background(flusher, delivery, journeys, consumer=consumer)
