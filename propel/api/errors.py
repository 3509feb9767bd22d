"""JSON errors for every failure a client can cause; never a bare 500."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from propel.db.engine import DatabaseBusy
from propel.jobs.leases import LeaseUnavailable

log = logging.getLogger("propel.api")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, **self.extra}}


def _busy(retry_after: int = 1) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": "busy", "message": "the database is busy; retry shortly"}},
        status_code=503,
        headers={"Retry-After": str(retry_after)},
    )


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        if request.url.path.startswith("/1/"):  # CleverTap's own error shape
            return JSONResponse(
                {"status": "fail", "error": exc.message, "code": exc.status},
                status_code=exc.status,
            )
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if request.url.path.startswith("/1/"):  # CleverTap's own error shape
            return JSONResponse({"status": "fail", "error": str(exc.detail),
                                 "code": exc.status_code}, status_code=exc.status_code)
        code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}.get(
            exc.status_code, "http_error")
        return JSONResponse({"error": {"code": code, "message": str(exc.detail)}},
                              status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"field": ".".join(str(p) for p in e.get("loc", ())), "reason": e.get("msg", "")}
            for e in exc.errors()
        ]
        return JSONResponse(
            {"error": {"code": "invalid", "message": "request is not valid",
                       "problems": problems}},
            status_code=422,
        )

    @app.exception_handler(DatabaseBusy)
    async def _db_busy(request: Request, exc: DatabaseBusy) -> JSONResponse:
        return _busy(exc.retry_after)

    @app.exception_handler(LeaseUnavailable)
    async def _lease_busy(request: Request, exc: LeaseUnavailable) -> JSONResponse:
        return _busy(5)

    @app.exception_handler(OperationalError)
    async def _db_down(request: Request, exc: OperationalError) -> JSONResponse:
        log.warning("database unavailable: %s", exc)
        return _busy(2)
