"""Segment tracking-spec messages → ingest items.

track → event ``event``; page → ``Page Viewed``; screen → ``Screen Viewed``;
identify → profile update of ``traits`` (and an alias when both ids are given);
alias → identity merge of ``previousId`` into ``userId``; group → profile
properties ``group_id`` and ``group_traits``. The identity is ``userId`` when
present, else ``anonymousId``.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from propel.ingest.records import (
    EventRecord,
    IngestItem,
    Invalid,
    check_identity,
    check_message_id,
    check_name,
    check_properties,
    check_size,
    check_ts_iso_or_epoch,
    content_id,
    dumps,
    key_hash,
)
from propel.profiles import build_update

TYPES = ("track", "identify", "page", "screen", "alias", "group")


def _identity(msg: dict[str, Any]) -> str:
    if msg.get("userId") not in (None, ""):
        return check_identity(msg["userId"], "userId")
    if msg.get("anonymousId") not in (None, ""):
        return check_identity(msg["anonymousId"], "anonymousId")
    raise Invalid("userId", "userId or anonymousId is required")


def _timestamp(msg: dict[str, Any], sent_at: Any, received_us: int) -> int:
    """Segment's rule: trust ``timestamp``; else correct ``originalTimestamp`` for the
    device clock's skew, measured as sentAt versus when we received the batch."""
    if msg.get("timestamp"):
        return check_ts_iso_or_epoch(msg["timestamp"], "timestamp")
    if msg.get("originalTimestamp"):
        original = check_ts_iso_or_epoch(msg["originalTimestamp"], "originalTimestamp")
        sent = msg.get("sentAt") or sent_at
        if sent:
            try:
                skew = received_us - check_ts_iso_or_epoch(sent, "sentAt")
            except Invalid:
                skew = 0
            return original + skew
        return original
    return received_us


def parse_message(msg: Any, account_id: str, kind: str | None, sent_at: Any = None
                  ) -> IngestItem:
    if not isinstance(msg, dict):
        raise Invalid("", "must be a JSON object")
    check_size(msg)
    kind = msg.get("type", kind)
    if kind not in TYPES:
        raise Invalid("type", f"must be one of {', '.join(TYPES)}")
    raw_id = msg.get("messageId")
    message_id = check_message_id(raw_id, "messageId") if raw_id is not None else content_id(msg)
    item = IngestItem(key_hash=key_hash(account_id, message_id))
    if kind == "alias":
        previous = check_identity(msg.get("previousId"), "previousId")
        item.alias = (previous, check_identity(msg.get("userId"), "userId"))
        return item
    identity = _identity(msg)
    now_us = time.time_ns() // 1000
    if kind == "identify":
        item.profile = build_update(identity, dict(check_properties(msg.get("traits"), "traits")))
        if msg.get("userId") and msg.get("anonymousId"):
            item.alias = (check_identity(msg["anonymousId"], "anonymousId"), identity)
        return item
    if kind == "group":
        group_id = check_identity(msg.get("groupId"), "groupId")
        traits = check_properties(msg.get("traits"), "traits")
        item.profile = build_update(identity, {"group_id": group_id, "group_traits": traits})
        return item
    properties = dict(check_properties(msg.get("properties")))
    if kind == "track":
        name = check_name(msg.get("event"), "event")
    else:
        name = "Page Viewed" if kind == "page" else "Screen Viewed"
        if msg.get("name"):
            properties.setdefault("name", check_name(msg["name"], "name"))
    context = msg.get("context")
    if isinstance(context, dict) and context:
        properties.setdefault("context", context)
    item.event = EventRecord(
        message_id=message_id,
        identity=identity,
        name=name,
        ts=_timestamp(msg, sent_at, now_us),
        properties=dumps(properties),
    )
    return item


def iso_now() -> str:
    return datetime.now(UTC).isoformat()
