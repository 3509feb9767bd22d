"""Jinja2 templates for the dashboard, autoescaped, with the session in every page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from propel import __version__


def signed_points(x: float | None, digits: int = 1) -> str:
    """A proportion difference as signed percentage points: +2.3, −1.1 (a true minus)."""
    if x is None:
        return "–"
    value = round(x * 100, digits)
    if value == 0:
        return f"{0:.{digits}f}"
    return f"{'+' if value > 0 else '−'}{abs(value):.{digits}f}"


def lift_text(lift: dict[str, Any], *, no_holdout: str = "this campaign has no holdout group",
              nobody_treated: str = "no one has been messaged") -> str:
    """'+2.3 points (95 % CI −1.1 to +5.6)', or why there is no estimate yet."""
    if lift.get("diff") is None:
        if not lift.get("holdout_n"):
            return f"No lift estimate yet: {no_holdout}"
        return f"No lift estimate yet: {nobody_treated}"
    return (f"{signed_points(lift['diff'])} points (95 % CI {signed_points(lift['low'])} "
            f"to {signed_points(lift['high'])})")


TEMPLATES = Jinja2Templates(directory=Path(__file__).parent / "templates")
TEMPLATES.env.globals["version"] = __version__
TEMPLATES.env.filters["thousands"] = lambda n: f"{n:,}" if isinstance(n, int | float) else n
TEMPLATES.env.filters["points"] = signed_points
TEMPLATES.env.filters["lift_text"] = lift_text
TEMPLATES.env.filters["pct"] = (
    lambda x, digits=1: "–" if x is None else f"{x * 100:.{digits}f}%")


def render(request: Request, template: str, status_code: int = 200,
           **context: Any) -> HTMLResponse:
    """Render a page; htmx partials are the same templates, asked for by name."""
    session = getattr(request.state, "session", None)
    context.setdefault("user", session.user if session else None)
    context.setdefault("csrf_token", session.csrf_token if session else "")
    return TEMPLATES.TemplateResponse(request, template, context, status_code=status_code)
