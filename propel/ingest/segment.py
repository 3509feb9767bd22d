"""Segment tracking-spec messages → ingest items.

track → event ``event``; page → ``Page Viewed``; screen → ``Screen Viewed`` (their
``name`` and ``category`` become properties); identify → profile update of ``traits``
(merged over ``context.traits``, where RudderStack's SDKs put them) and an alias when
both ids are given; alias → identity merge of ``previousId`` into ``userId``; group →
profile properties ``group_id`` and ``group_traits``. The identity is ``userId`` when
present, else ``anonymousId``.

Times follow Segment: an explicit ``timestamp`` wins; else ``originalTimestamp`` is
corrected for the device clock's skew (``sentAt`` versus when we received it); else
the time we received the message.
"""

from __future__ import annotations

import contextlib
import math
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from propel.ingest import limits
from propel.ingest.records import (
    EventRecord,
    IngestItem,
    Invalid,
    ProfileUpdate,
    check_identity,
    check_message_id,
    check_name,
    check_properties,
    check_size,
    content_id,
    dumps,
    key_hash,
    no_nul,
)
from propel.profiles import build_update

TYPES = ("track", "identify", "page", "screen", "alias", "group")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _id(value: Any, field: str) -> str:
    return no_nul(check_identity(value, field), field)


def _identity(msg: dict[str, Any]) -> str:
    if msg.get("userId") not in (None, ""):
        return _id(msg["userId"], "userId")
    if msg.get("anonymousId") not in (None, ""):
        return _id(msg["anonymousId"], "anonymousId")
    raise Invalid("userId", "is required when anonymousId is absent", 523)


def _parse_time(value: Any, field: str) -> int:
    """ISO 8601 text (offset or Z; naive means UTC) or epoch seconds → epoch
    microseconds, exactly and without range checks (a skewed device clock may be far
    off before correction)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise Invalid(field, "must be a finite number of epoch seconds", 525)
        return round(value * 1_000_000)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise Invalid(field, f"{value[:40]!r} is not an ISO 8601 time", 525) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return (parsed - _EPOCH) // _MICROSECOND
    raise Invalid(field, "must be an ISO 8601 time or epoch seconds", 525)


def _in_range(us: int, field: str) -> int:
    latest = (time.time() + limits.FUTURE_TOLERANCE_SECONDS) * 1_000_000
    if not limits.MIN_TS_SECONDS * 1_000_000 <= us <= latest:
        raise Invalid(field, "is before 1970 or more than a day in the future", 525)
    return us


def _timestamp(msg: dict[str, Any], sent_at: Any, received_us: int) -> int:
    """Segment's rule: trust ``timestamp``; else correct ``originalTimestamp`` for the
    device clock's skew, measured as sentAt versus when we received the message."""
    if msg.get("timestamp") not in (None, ""):
        return _in_range(_parse_time(msg["timestamp"], "timestamp"), "timestamp")
    if msg.get("originalTimestamp") not in (None, ""):
        original = _parse_time(msg["originalTimestamp"], "originalTimestamp")
        sent = msg.get("sentAt") or sent_at
        if sent:
            # an unreadable sentAt means no correction rather than no event
            with contextlib.suppress(Invalid):
                original += received_us - _parse_time(sent, "sentAt")
        return _in_range(original, "originalTimestamp")
    return received_us


def _profile(identity: str, fields: dict[str, Any], rename: tuple[str, str]) -> ProfileUpdate:
    """build_update, with its field names said the way the client sent them: a field
    starting with ``rename[0]`` is reported as starting with ``rename[1]``."""
    try:
        update = build_update(identity, fields)
    except Invalid as exc:
        name = exc.field.removeprefix("properties.")
        if name.startswith(rename[0]):
            name = rename[1] + name.removeprefix(rename[0])
        raise Invalid(name, exc.reason, exc.code) from None
    for name in ("email", "phone", "timezone"):
        if getattr(update, name) is not None:
            no_nul(getattr(update, name), f"{rename[1]}{name}")
    return update


def _traits(msg: dict[str, Any]) -> dict[str, Any]:
    """Top-level ``traits`` over ``context.traits`` (RudderStack sends only the latter)."""
    traits = dict(check_properties(msg.get("traits"), "traits"))
    context = msg.get("context")
    if isinstance(context, dict) and isinstance(context.get("traits"), dict):
        return {**check_properties(context["traits"], "context.traits"), **traits}
    return traits


def parse_message(msg: Any, account_id: str, kind: str | None, sent_at: Any = None,
                  received_us: int | None = None) -> IngestItem:
    """One message. ``kind`` is the single-message endpoint's type, which wins over
    the message's own ``type``; ``None`` (batch) means use ``type``."""
    if not isinstance(msg, dict):
        raise Invalid("message", "must be a JSON object")
    check_size(msg)
    if kind is None:
        kind = msg.get("type")
        kind = kind.strip().lower() if isinstance(kind, str) else kind
    if kind not in TYPES:
        raise Invalid("type", f"must be one of {', '.join(TYPES)}")
    raw_id = msg.get("messageId")
    if raw_id is not None:
        message_id = no_nul(check_message_id(raw_id, "messageId"), "messageId")
    else:
        message_id = content_id(msg)
    item = IngestItem(key_hash=key_hash(account_id, message_id))
    if kind == "alias":
        previous = _id(msg.get("previousId"), "previousId")
        item.alias = (previous, _id(msg.get("userId"), "userId"))
        return item
    identity = _identity(msg)
    if kind == "identify":
        item.profile = _profile(identity, _traits(msg), ("", "traits."))
        if msg.get("userId") not in (None, "") and msg.get("anonymousId") not in (None, ""):
            item.alias = (_id(msg["anonymousId"], "anonymousId"), identity)
        return item
    if kind == "group":
        group_id = _id(msg.get("groupId"), "groupId")
        traits = check_properties(msg.get("traits"), "traits")
        item.profile = _profile(identity, {"group_id": group_id, "group_traits": traits},
                                ("group_traits", "traits"))
        return item
    properties = dict(check_properties(msg.get("properties")))
    if kind == "track":
        name = no_nul(check_name(msg.get("event"), "event"), "event")
    else:
        name = "Page Viewed" if kind == "page" else "Screen Viewed"
        for key in ("name", "category"):
            if msg.get(key) not in (None, ""):
                properties.setdefault(key, check_name(msg[key], key))
    context = msg.get("context")
    if isinstance(context, dict) and context:
        properties.setdefault("context", context)
    if received_us is None:
        received_us = time.time_ns() // 1000
    item.event = EventRecord(
        message_id=message_id,
        identity=identity,
        name=name,
        ts=_timestamp(msg, sent_at, received_us),
        properties=dumps(properties),
    )
    return item


def iso_now() -> str:
    return datetime.now(UTC).isoformat()
