"""Jinja2 templates for the dashboard, autoescaped, with the session in every page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from propel import __version__

TEMPLATES = Jinja2Templates(directory=Path(__file__).parent / "templates")
TEMPLATES.env.globals["version"] = __version__
TEMPLATES.env.filters["thousands"] = lambda n: f"{n:,}" if isinstance(n, int | float) else n
TEMPLATES.env.filters["pct"] = (
    lambda x, digits=1: "–" if x is None else f"{x * 100:.{digits}f}%")


def render(request: Request, template: str, status_code: int = 200,
           **context: Any) -> HTMLResponse:
    """Render a page; htmx partials are the same templates, asked for by name."""
    session = getattr(request.state, "session", None)
    context.setdefault("user", session.user if session else None)
    context.setdefault("csrf_token", session.csrf_token if session else "")
    return TEMPLATES.TemplateResponse(request, template, context, status_code=status_code)
