"""Dashboard sessions, roles and CSRF, as FastAPI dependencies.

Every state-changing dashboard request carries the session's CSRF token, either as the
``csrf_token`` form field or, for htmx requests, the ``X-CSRF-Token`` header (set once
on ``<body hx-headers>``). The RFC 8058 one-click unsubscribe POST lives outside the
dashboard and is the one exemption.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request

from propel.accounts.users import Session, session_for
from propel.api.auth import propel_of

COOKIE = "propel_session"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


class SignInRequired(Exception):
    pass


class Forbidden(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def cookie_is_secure(request: Request) -> bool:
    public = propel_of(request).settings.public_url
    return request.url.scheme == "https" or public.startswith("https://")


async def check_csrf(request: Request, session: Session) -> None:
    sent = request.headers.get("x-csrf-token", "")
    if not sent:
        form = await request.form()
        sent = str(form.get("csrf_token", ""))
    if not sent or not hmac.compare_digest(sent, session.csrf_token):
        raise Forbidden("The form's security token is missing or out of date. "
                        "Reload the page and try again.")


def signed_in(role: str = "viewer") -> Callable[[Request], Coroutine[Any, Any, Session]]:
    """Dependency: the signed-in session holding at least ``role``; unsafe methods must
    also carry the CSRF token."""

    async def dependency(request: Request) -> Session:
        session = session_for(propel_of(request).db, request.cookies.get(COOKIE, ""))
        if session is None:
            raise SignInRequired()
        request.state.session = session
        if request.method not in SAFE_METHODS:
            await check_csrf(request, session)
        if not session.user.can(role):
            raise Forbidden(f"This needs the {role} role; you are signed in as "
                            f"{session.user.role}.")
        return session

    return dependency
