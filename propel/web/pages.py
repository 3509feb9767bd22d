"""Sign-in, sign-out and the home page."""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response

from propel.accounts.users import Session, SignInError, count_users, sign_in, sign_out
from propel.api.auth import propel_of
from propel.web.auth import COOKIE, cookie_is_secure, signed_in
from propel.web.templating import render

router = APIRouter(include_in_schema=False)
LOGIN_CSRF = "propel_login_csrf"


def _safe_next(target: str) -> str:
    """Only same-site paths, so the sign-in form cannot redirect elsewhere."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/predictions"
    return target


@router.get("/")
def home(session: Session = Depends(signed_in())) -> Response:
    return RedirectResponse("/predictions", status_code=303)


@router.get("/login")
def login_page(request: Request, next: str = "/predictions") -> Response:
    token = request.cookies.get(LOGIN_CSRF) or secrets.token_urlsafe(24)
    response = render(request, "login.html", next=_safe_next(next), login_csrf=token,
                      first_run=count_users(propel_of(request).db) == 0)
    response.set_cookie(LOGIN_CSRF, token, httponly=True, samesite="strict",
                        secure=cookie_is_secure(request))
    return response


@router.post("/login")
def login(request: Request, email: str = Form(""), password: str = Form(""),
          csrf_token: str = Form(""), next: str = Form("/predictions")) -> Response:
    expected = request.cookies.get(LOGIN_CSRF, "")
    if not expected or not hmac.compare_digest(expected, csrf_token):
        return render(request, "login.html", status_code=403, next=_safe_next(next),
                      login_csrf=expected, email=email,
                      error="The sign-in form expired. Please try again.")
    client = request.client.host if request.client else "unknown"
    try:
        session = sign_in(propel_of(request).db, email, password, client)
    except SignInError as exc:
        return render(request, "login.html", status_code=401, next=_safe_next(next),
                      login_csrf=expected, email=email, error=str(exc))
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(COOKIE, session.token, httponly=True, samesite="lax",
                        secure=cookie_is_secure(request), max_age=7 * 86400)
    response.delete_cookie(LOGIN_CSRF)
    return response


@router.post("/logout")
def logout(request: Request, session: Session = Depends(signed_in())) -> Response:
    sign_out(propel_of(request).db, session.token)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE)
    return response


def login_redirect(request: Request) -> Response:
    target = "/login?next=" + quote(request.url.path + (
        "?" + request.url.query if request.url.query else ""), safe="/")
    if request.headers.get("hx-request"):
        return Response(status_code=401, headers={"HX-Redirect": target})
    return RedirectResponse(target, status_code=303)
