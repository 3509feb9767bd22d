"""Open and click tracking, and unsubscribe links (RFC 8058 one-click).

Every link carries a signed token (:mod:`propel.signing`, keyed by the settings' secret
key) holding the outbox message key; a click token also holds the destination URL, so
``/t/c/{token}`` redirects only where Propel itself pointed it: there is no open
redirect, and a token cannot be edited to point at another message or URL.

Routes (``router``; no credentials, the token is the capability):

* ``GET /t/o/{token}.gif``: a 1×1 GIF; the first fetch sets ``messages.opened_at``. It
  never answers an error: a bad token still gets the GIF and records nothing.
* ``GET /t/c/{token}``: sets ``clicked_at`` (and ``opened_at`` if missing) once and
  answers 302 to the signed URL; a bad token answers 400, never a redirect.
* ``GET /u/{token}``: a small page with a button that POSTs; a GET alone changes
  nothing (mail scanners and link previews fetch URLs).
* ``POST /u/{token}``: unsubscribes (RFC 8058 one-click, body
  ``List-Unsubscribe=One-Click``; also the page's button).
"""

from __future__ import annotations

import base64
import html as html_lib
import logging
import re
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from sqlalchemy import Connection, select, update

from propel.api.auth import propel_of
from propel.api.body import read_bytes
from propel.campaigns.tables import campaigns, messages
from propel.db.meta import utcnow
from propel.ingest.records import IngestItem, ProfileUpdate, key_hash
from propel.ingest.service import store_items
from propel.profiles import CHANNELS, resolve
from propel.signing import BadToken, sign, unsign

log = logging.getLogger("propel.tracking")

OPEN, CLICK, UNSUBSCRIBE = "propel.track.open", "propel.track.click", "propel.unsubscribe"
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
NO_STORE = {"Cache-Control": "no-store, no-cache, must-revalidate, private, max-age=0",
            "Pragma": "no-cache", "Expires": "0"}
UNSUBSCRIBE_SOURCE = "unsubscribe"  # ingest source of the consent change
_HTTP = re.compile(r"(?i)^https?://[^\s/?#]+")
_MAX_TOKEN_CHARS = 8192

router = APIRouter(tags=["Tracking"])


# ---------------------------------------------------------------------------- tokens

def _base(base_url: str) -> str:
    return base_url.rstrip("/")


def read_token(secret: str, token: str, purpose: str) -> dict[str, Any]:
    """The payload of a token made for ``purpose``; raises BadToken otherwise."""
    if not token or len(token) > _MAX_TOKEN_CHARS:
        raise BadToken("token is malformed")
    payload = unsign(secret, token, purpose)
    if not isinstance(payload, dict) or not isinstance(payload.get("k"), str) \
            or not payload["k"]:
        raise BadToken("token is malformed")
    return payload


def tracking_pixel_url(base_url: str, key: str, secret: str) -> str:
    """URL of the open-tracking pixel for message ``key``."""
    return f"{_base(base_url)}/t/o/{sign(secret, {'k': key}, OPEN)}.gif"


def click_url(base_url: str, key: str, url: str, secret: str) -> str:
    """A tracked link to ``url`` (http or https) for message ``key``."""
    if not _HTTP.match(url):
        raise ValueError("only http(s) links are tracked")
    return f"{_base(base_url)}/t/c/{sign(secret, {'k': key, 'u': url}, CLICK)}"


def unsubscribe_url(base_url: str, key: str, secret: str) -> str:
    """The unsubscribe page (GET) and one-click endpoint (POST) for message ``key``."""
    return f"{_base(base_url)}/u/{sign(secret, {'k': key}, UNSUBSCRIBE)}"


def list_unsubscribe_headers(unsubscribe: str, mailto: str | None = None) -> dict[str, str]:
    """RFC 2369 / RFC 8058 headers: the HTTPS one-click URI (``unsubscribe_url``'s)
    first, then an optional ``mailto:`` address."""
    uris = [f"<{unsubscribe}>"]
    if mailto:
        uris.append(f"<{mailto if mailto.lower().startswith('mailto:') else 'mailto:' + mailto}>")
    return {"List-Unsubscribe": ", ".join(uris),
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}


_TAG = re.compile(r"""<(?:a|area)\b(?:[^>"']|"[^"]*"|'[^']*')*>""", re.IGNORECASE)
_HREF = re.compile(r"""(\shref\s*=\s*)(?:"([^"]*)"|'([^']*)'|([^\s"'=<>`]+))""",
                   re.IGNORECASE)


def rewrite_links(html: str, base_url: str, key: str, secret: str) -> str:
    """Every http(s) ``href`` of ``<a>`` and ``<area>`` becomes a tracked link; other
    schemes (mailto:, tel:), relative links, Propel's own tracking and unsubscribe
    links, and tags marked ``data-propel-notrack`` are left alone."""
    base = _base(base_url)
    own = (f"{base}/u/", f"{base}/t/")

    def one_href(match: re.Match[str]) -> str:
        raw = next(g for g in match.groups()[1:] if g is not None)
        url = html_lib.unescape(raw).strip()
        if not _HTTP.match(url) or url.startswith(own):
            return match.group(0)
        return f'{match.group(1)}"{click_url(base, key, url, secret)}"'

    def one_tag(match: re.Match[str]) -> str:
        tag = match.group(0)
        if "data-propel-notrack" in tag.lower():
            return tag
        return _HREF.sub(one_href, tag, count=1)

    return _TAG.sub(one_tag, html)


# ---------------------------------------------------------------------------- recording

def mark_opened(conn: Connection, key: str, account_id: str | None = None) -> bool:
    """Set ``opened_at`` on the outbox message once; True if this call set it."""
    query = update(messages).where(messages.c.key == key, messages.c.opened_at.is_(None))
    if account_id is not None:
        query = query.where(messages.c.account_id == account_id)
    return conn.execute(query.values(opened_at=utcnow())).rowcount == 1


def mark_clicked(conn: Connection, key: str, account_id: str | None = None) -> bool:
    """Set ``clicked_at`` once (and ``opened_at`` if missing: a click is an open)."""
    query = update(messages).where(messages.c.key == key, messages.c.clicked_at.is_(None))
    if account_id is not None:
        query = query.where(messages.c.account_id == account_id)
    clicked = conn.execute(query.values(clicked_at=utcnow())).rowcount == 1
    mark_opened(conn, key, account_id)
    return clicked


@dataclass(frozen=True)
class Unsubscribed:
    account_id: str
    identity: str
    channel: str


def unsubscribe(conn: Connection, key: str) -> Unsubscribed | None:
    """Revoke the recipient's consent for the message's channel, through ingest (a
    profile update whose message id derives from the message key, so a repeat is a
    no-op and the change reaches the lake), and mark the message ``unsubscribed``.
    None when there is no such message. Call inside :meth:`Database.write`."""
    row = conn.execute(
        select(messages.c.account_id, messages.c.identity, campaigns.c.channel)
        .select_from(messages.outerjoin(campaigns, campaigns.c.id == messages.c.campaign_id))
        .where(messages.c.key == key)).first()
    if row is None:
        return None
    channel = row.channel if row.channel in CHANNELS else "email"
    identity = resolve(conn, row.account_id, row.identity)
    item = IngestItem(key_hash(row.account_id, f"unsubscribe:{key}"),
                      profile=ProfileUpdate(identity=identity, consent={channel: False}))
    store_items(conn, row.account_id, [item], [], UNSUBSCRIBE_SOURCE)
    conn.execute(update(messages).where(messages.c.key == key)
                 .values(reason="unsubscribed"))
    return Unsubscribed(row.account_id, identity, channel)


# ---------------------------------------------------------------------------- routes

def _secret(request: Request) -> str:
    return propel_of(request).settings.resolved_secret_key()


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{title}</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;
color:#222}}button{{font:inherit;padding:.6rem 1.2rem;border:0;border-radius:.4rem;
background:#2d5be3;color:#fff;cursor:pointer}}</style></head>
<body><h1>{title}</h1>{body}</body></html>
"""


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(_PAGE.format(title=html_lib.escape(title), body=body),
                        status_code=status, headers=NO_STORE)


def _problem(request: Request, status: int, code: str, message: str) -> Response:
    if _wants_html(request):
        return _page("Link not valid" if status == 400 else "Not found",
                     f"<p>{html_lib.escape(message)}</p>", status)
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status,
                        headers=NO_STORE)


@router.get("/t/o/{token}.gif", include_in_schema=False)
async def open_pixel(request: Request, token: str) -> Response:
    """The open-tracking pixel. Always a GIF: a bad token or a busy database records
    nothing but never shows a broken image."""
    try:
        key = read_token(_secret(request), token, OPEN)["k"]
        await propel_of(request).db.awrite(lambda conn: mark_opened(conn, key))
    except BadToken:
        pass
    except Exception:  # the pixel must render whatever happens to the bookkeeping
        log.warning("could not record an open", exc_info=True)
    return Response(PIXEL, media_type="image/gif", headers=NO_STORE)


@router.get("/t/c/{token}", include_in_schema=False)
async def click(request: Request, token: str) -> Response:
    """A tracked link: record the click, then 302 to the URL signed into the token."""
    try:
        payload = read_token(_secret(request), token, CLICK)
    except BadToken:
        return _problem(request, 400, "bad_token", "This link is not valid.")
    url = payload.get("u")
    if not isinstance(url, str) or not _HTTP.match(url):
        return _problem(request, 400, "bad_token", "This link is not valid.")
    try:
        await propel_of(request).db.awrite(lambda conn: mark_clicked(conn, payload["k"]))
    except Exception:  # the reader still gets where they were going
        log.warning("could not record a click", exc_info=True)
    return RedirectResponse(url, status_code=302, headers=NO_STORE)


@router.get("/u/{token}", include_in_schema=False)
def unsubscribe_page(request: Request, token: str) -> Response:
    """Asks before unsubscribing: the button POSTs to this same URL."""
    try:
        read_token(_secret(request), token, UNSUBSCRIBE)
    except BadToken:
        return _page("Link not valid", "<p>This unsubscribe link is not valid.</p>", 400)
    return _page("Unsubscribe", (
        "<p>Stop receiving these messages?</p>"
        '<form method="post">'
        '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
        '<button type="submit">Unsubscribe</button></form>'))


@router.post("/u/{token}", include_in_schema=False)
async def unsubscribe_post(request: Request, token: str) -> Response:
    """RFC 8058 one-click unsubscribe (mail providers POST ``List-Unsubscribe=One-Click``
    as a form; the page's button posts the same). The signed token alone authorises it,
    so this route is deliberately exempt from CSRF protection: a mail provider's POST
    carries no cookie or CSRF token, and a forged POST needs the secret token anyway.
    The body is read (size-capped) but not required to match exactly. Answers 200; a
    repeat is a no-op."""
    try:
        key = read_token(_secret(request), token, UNSUBSCRIBE)["k"]
    except BadToken:
        return _problem(request, 400, "bad_token", "This unsubscribe link is not valid.")
    await read_bytes(request, max_bytes=16 * 1024)
    done = await propel_of(request).db.awrite(lambda conn: unsubscribe(conn, key))
    if done is None:
        return _problem(request, 404, "not_found", "This message is no longer known.")
    if _wants_html(request):
        return _page("Unsubscribed", "<p>You will no longer receive these messages.</p>")
    return JSONResponse({"unsubscribed": True, "channel": done.channel}, headers=NO_STORE)
