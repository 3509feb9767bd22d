"""The dashboard: server-rendered pages (Jinja2 + htmx + Chart.js, all vendored)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from propel.web import (
    campaign_stats,
    campaigns,
    engage,
    journeys,
    pages,
    predictions,
    settings_pages,
    users,
)
from propel.web.auth import Forbidden, SignInRequired
from propel.web.templating import render

# The builder's /campaigns/new must come before the stats page's /campaigns/{id}.
ROUTERS = [pages.router, predictions.router, engage.router, campaigns.router,
           campaign_stats.router, journeys.router, users.router, settings_pages.router]
# Paths that belong to machine clients keep their JSON errors.
API_PREFIXES = ("/api/", "/v1/", "/1/", "/inbox/", "/t/", "/u/", "/openapi.json")


def install(app: FastAPI) -> None:
    for router in ROUTERS:
        app.include_router(router)

    json_http_error = app.exception_handlers[StarletteHTTPException]

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if is_dashboard_request(request):
            return html_error(request, exc)
        return await json_http_error(request, exc)

    @app.exception_handler(SignInRequired)
    async def _sign_in(request: Request, exc: SignInRequired) -> Response:
        return pages.login_redirect(request)

    @app.exception_handler(Forbidden)
    async def _forbidden(request: Request, exc: Forbidden) -> Response:
        return render(request, "error.html", status_code=403, title="Not allowed",
                      message=exc.message)


def is_dashboard_request(request: Request) -> bool:
    return not request.url.path.startswith(API_PREFIXES) and "text/html" in request.headers.get(
        "accept", "")


def html_error(request: Request, exc: StarletteHTTPException) -> Response:
    title = {404: "Not found", 405: "Not allowed"}.get(exc.status_code, "Error")
    return render(request, "error.html", status_code=exc.status_code, title=title,
                  message=str(exc.detail))
