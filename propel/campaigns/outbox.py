"""Read-only views of the outbox for people: what one user received, and which
messages failed or may not have arrived. Delivery itself lives in ``delivery``."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import select

from propel.campaigns.tables import campaigns, inbox_messages, messages
from propel.db.engine import Database

# States that need a person's attention: the channel refused the message, it is
# waiting for another try, or the answer was lost and it may or may not have arrived.
PROBLEM_STATES = ("failed", "in_doubt", "pending_retry")


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _message(row: Any) -> dict[str, Any]:
    return {"key": row.key, "campaign_id": row.campaign_id, "campaign": row.name,
            "channel": row.channel, "identity": row.identity, "state": row.state,
            "reason": row.reason, "variant": row.variant, "group": row.grp,
            "attempts": row.attempts, "created_at": _iso(row.created_at),
            "sent_at": _iso(row.sent_at), "opened_at": _iso(row.opened_at),
            "clicked_at": _iso(row.clicked_at), "converted_at": _iso(row.converted_at)}


def _with_campaign() -> Any:
    return (select(messages, campaigns.c.name, campaigns.c.channel)
            .join(campaigns, campaigns.c.id == messages.c.campaign_id))


def messages_of(db: Database, account_id: str, identities: list[str], limit: int = 50
                ) -> list[dict[str, Any]]:
    """The outbox rows of one user (under any of their identities), newest first."""
    query = _with_campaign().where(messages.c.account_id == account_id,
                                   messages.c.identity.in_(identities))
    with db.read() as conn:
        rows = conn.execute(query.order_by(messages.c.created_at.desc(),
                                           messages.c.id.desc()).limit(limit)).all()
    return [_message(r) for r in rows]


def delivery_problems(db: Database, account_id: str, limit: int = 50
                      ) -> list[dict[str, Any]]:
    """Failed, retrying and in-doubt messages with their reasons, newest first."""
    query = _with_campaign().where(messages.c.account_id == account_id,
                                   messages.c.state.in_(PROBLEM_STATES))
    with db.read() as conn:
        rows = conn.execute(query.order_by(messages.c.id.desc()).limit(limit)).all()
    return [_message(r) for r in rows]


def inbox_of(db: Database, account_id: str, identities: list[str], limit: int = 50
             ) -> list[dict[str, Any]]:
    """App-inbox messages stored for one user, newest first."""
    query = (select(inbox_messages, campaigns.c.name)
             .join(campaigns, campaigns.c.id == inbox_messages.c.campaign_id, isouter=True)
             .where(inbox_messages.c.account_id == account_id,
                    inbox_messages.c.identity.in_(identities)))
    with db.read() as conn:
        rows = conn.execute(query.order_by(inbox_messages.c.created_at.desc(),
                                           inbox_messages.c.key.desc()).limit(limit)).all()
    out = []
    for r in rows:
        try:
            data = orjson.loads(r.data or "{}")
        except orjson.JSONDecodeError:
            data = {}
        out.append({"key": r.key, "campaign_id": r.campaign_id, "campaign": r.name,
                    "title": r.title, "body": r.body, "url": r.url,
                    "data": data if isinstance(data, dict) else {},
                    "created_at": _iso(r.created_at), "viewed_at": _iso(r.viewed_at),
                    "clicked_at": _iso(r.clicked_at)})
    return out
