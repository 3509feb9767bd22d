"""App inbox, ``/inbox/v1``: what an app shows a signed-in user.

The app sends three headers:

* ``X-Propel-Client-Key``: the account's public client key (ships inside the app);
* ``X-Propel-User``: the user's identity;
* ``X-Propel-User-Signature``: hex HMAC-SHA256 of that identity under the account's
  inbox signing secret, computed by the app's *server* (which alone holds the secret).

So a user can read and mark only their own messages: the signature binds exactly that
identity (aliases are not followed, since anyone holding a public write key can create
one). Marking a message viewed or clicked also records ``opened_at`` / ``clicked_at`` on
the outbox message with the same key.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy import Connection, and_, func, or_, select, update

from propel.accounts import account_for_client_key, user_signature
from propel.api.auth import propel_of
from propel.api.errors import ApiError
from propel.campaigns.tables import inbox_messages
from propel.campaigns.tracking import mark_clicked, mark_opened
from propel.db.meta import utcnow
from propel.ingest import limits

router = APIRouter(prefix="/inbox/v1", tags=["App inbox"])

MAX_KEY_CHARS = 80  # inbox_messages.key


@dataclass(frozen=True)
class InboxUser:
    account_id: str
    identity: str


def _header(request: Request, name: str) -> str:
    """A header as text; identities may be UTF-8, which HTTP carries as latin-1."""
    value = request.headers.get(name, "").strip()
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value


def inbox_user(request: Request) -> InboxUser:
    """The signed-in user, from the client key, identity and signature headers."""
    client_key = _header(request, "x-propel-client-key")
    identity = _header(request, "x-propel-user")
    signature = _header(request, "x-propel-user-signature").lower()
    if not client_key or not identity or not signature:
        raise ApiError(401, "unauthorized", "send X-Propel-Client-Key, X-Propel-User and "
                       "X-Propel-User-Signature headers")
    if len(identity) > limits.MAX_IDENTITY_CHARS or "\x00" in identity or \
            len(client_key) > 200 or "\x00" in client_key:
        raise ApiError(401, "unauthorized", "client key or user is not valid")
    found = account_for_client_key(propel_of(request).db, client_key)
    if found is None:
        raise ApiError(401, "unauthorized", "client key is not valid")
    account_id, secret = found
    expected = user_signature(secret, identity)
    if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
        raise ApiError(401, "unauthorized", "user signature does not match")
    return InboxUser(account_id, identity)


class InboxMessageOut(BaseModel):
    key: str
    title: str
    body: str
    url: str | None
    data: dict[str, Any]
    created_at: str
    viewed: bool
    clicked: bool
    viewed_at: str | None
    clicked_at: str | None


class InboxPageOut(BaseModel):
    messages: list[InboxMessageOut]
    unviewed: int = Field(description="Messages this user has not viewed yet.")
    next_before: str | None = Field(
        description="Pass as `before` for the next (older) page; null on the last page.")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _out(row: Any) -> dict[str, Any]:
    try:
        data = orjson.loads(row.data or "{}")
    except orjson.JSONDecodeError:
        data = {}
    return {"key": row.key, "title": row.title, "body": row.body, "url": row.url,
            "data": data if isinstance(data, dict) else {},
            "created_at": row.created_at.isoformat(), "viewed": row.viewed_at is not None,
            "clicked": row.clicked_at is not None, "viewed_at": _iso(row.viewed_at),
            "clicked_at": _iso(row.clicked_at)}


def _mine(user: InboxUser) -> Any:
    return and_(inbox_messages.c.account_id == user.account_id,
                inbox_messages.c.identity == user.identity)


def _valid_key(key: str) -> bool:
    return 0 < len(key) <= MAX_KEY_CHARS and "\x00" not in key


@router.get("/messages", response_model=InboxPageOut)
def list_messages(request: Request, limit: int = Query(20, ge=1, le=100),
                  before: str | None = Query(None, description="A message key from the "
                                             "previous page's `next_before`."),
                  user: InboxUser = Depends(inbox_user)) -> dict[str, Any]:
    """The user's inbox, newest first."""
    query = select(inbox_messages).where(_mine(user))
    with propel_of(request).db.read() as conn:
        if before:
            anchor = conn.execute(select(inbox_messages.c.created_at).where(
                _mine(user), inbox_messages.c.key == before)).scalar() \
                if _valid_key(before) else None
            if anchor is None:
                raise ApiError(400, "invalid", "before is not a message key of this inbox",
                               field="before")
            query = query.where(or_(
                inbox_messages.c.created_at < anchor,
                and_(inbox_messages.c.created_at == anchor, inbox_messages.c.key < before)))
        rows = conn.execute(query.order_by(inbox_messages.c.created_at.desc(),
                                           inbox_messages.c.key.desc()).limit(limit)).all()
        unviewed = conn.execute(select(func.count()).select_from(inbox_messages).where(
            _mine(user), inbox_messages.c.viewed_at.is_(None))).scalar()
    return {"messages": [_out(r) for r in rows], "unviewed": int(unviewed or 0),
            "next_before": rows[-1].key if len(rows) == limit else None}


def _mark(conn: Connection, user: InboxUser, key: str, clicked: bool) -> Any:
    row = conn.execute(select(inbox_messages).where(_mine(user), inbox_messages.c.key == key)
                       ).first()
    if row is None:
        return None
    now = utcnow()
    values: dict[str, Any] = {}
    if row.viewed_at is None:
        values["viewed_at"] = now
    if clicked and row.clicked_at is None:
        values["clicked_at"] = now
    if values:
        conn.execute(update(inbox_messages).where(_mine(user), inbox_messages.c.key == key)
                     .values(**values))
    if clicked:
        mark_clicked(conn, key, user.account_id)
    else:
        mark_opened(conn, key, user.account_id)
    return conn.execute(select(inbox_messages).where(
        _mine(user), inbox_messages.c.key == key)).first()


async def _mark_route(request: Request, user: InboxUser, key: str, clicked: bool
                      ) -> dict[str, Any]:
    if not _valid_key(key):
        raise ApiError(404, "not_found", "no such message in this inbox")
    row = await propel_of(request).db.awrite(lambda conn: _mark(conn, user, key, clicked))
    if row is None:
        raise ApiError(404, "not_found", "no such message in this inbox")
    return _out(row)


@router.post("/messages/{key}/viewed", response_model=InboxMessageOut)
async def viewed(request: Request, key: str, user: InboxUser = Depends(inbox_user)
                 ) -> dict[str, Any]:
    """Mark a message viewed (idempotent; the first time counts as the message's open)."""
    return await _mark_route(request, user, key, clicked=False)


@router.post("/messages/{key}/clicked", response_model=InboxMessageOut)
async def clicked(request: Request, key: str, user: InboxUser = Depends(inbox_user)
                  ) -> dict[str, Any]:
    """Mark a message clicked, and viewed if it was not (idempotent)."""
    return await _mark_route(request, user, key, clicked=True)
