"""The plain records ingest passes around: validated events, profile updates and
rejections, plus the checks every API shares (names, identities, times, properties)."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from propel.ingest import limits


class Invalid(Exception):
    """A record failed a check; ``field`` names where, the message says why."""

    def __init__(self, field: str, reason: str, code: int = 512) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason
        self.code = code  # the CleverTap record code that matches this failure


@dataclass(slots=True)
class EventRecord:
    message_id: str
    identity: str
    name: str
    ts: int  # epoch microseconds
    properties: str  # JSON object
    kind: str = "event"


@dataclass(slots=True)
class ProfileUpdate:
    identity: str
    email: str | None = None
    phone: str | None = None
    timezone: str | None = None
    push_tokens: list[str] | None = None
    consent: dict[str, bool] | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    ts: int | None = None  # when the change happened (epoch us); default: when received


@dataclass(slots=True)
class IngestItem:
    """One accepted message: deduplicated by key_hash, then applied as a whole."""

    key_hash: int
    event: EventRecord | None = None
    profile: ProfileUpdate | None = None
    alias: tuple[str, str] | None = None  # (alias, identity)


@dataclass(slots=True)
class Rejection:
    index: int
    field: str
    reason: str
    record: Any
    code: int = 512

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "field": self.field, "reason": self.reason}


def key_hash(account_scope: str, message_id: str) -> int:
    """Signed 64-bit hash of a message id (fits BIGINT on both databases)."""
    digest = hashlib.blake2b(f"{account_scope}\x00{message_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def content_id(record: Any) -> str:
    """A message id for a record sent without one: a hash of exactly what the client
    sent, so a retry of the same record hashes the same."""
    return "h:" + hashlib.blake2b(
        orjson.dumps(record, option=orjson.OPT_SORT_KEYS), digest_size=16
    ).hexdigest()


def no_nul(value: str, field: str, code: int = 512) -> str:
    """PostgreSQL text cannot hold NUL; refuse it here rather than fail the whole batch."""
    if "\x00" in value:
        raise Invalid(field, "must not contain NUL characters", code)
    return value


def check_name(value: Any, field: str = "name", code: int = 509) -> str:
    if value is None or value == "":
        raise Invalid(field, "is required", code)
    if not isinstance(value, str):
        raise Invalid(field, "must be a string", 512)
    value = value.strip()
    if not value:
        raise Invalid(field, "must not be blank", code)
    if len(value) > limits.MAX_NAME_CHARS:
        raise Invalid(field, f"is longer than {limits.MAX_NAME_CHARS} characters", 512)
    return no_nul(value, field)


def check_identity(value: Any, field: str = "identity") -> str:
    if value is None or value == "":
        raise Invalid(field, "is required", 523)
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(int(value)) if float(value).is_integer() else str(value)
    if not isinstance(value, str):
        raise Invalid(field, "must be a string", 523)
    value = value.strip()
    if not value:
        raise Invalid(field, "must not be blank", 523)
    if len(value) > limits.MAX_IDENTITY_CHARS:
        raise Invalid(field, f"is longer than {limits.MAX_IDENTITY_CHARS} characters", 523)
    return no_nul(value, field, 523)


def check_message_id(value: Any, field: str = "message_id") -> str:
    if not isinstance(value, str) or not value:
        raise Invalid(field, "must be a non-empty string")
    if len(value) > limits.MAX_MESSAGE_ID_CHARS:
        raise Invalid(field, f"is longer than {limits.MAX_MESSAGE_ID_CHARS} characters")
    return no_nul(value, field)


def _bounds_ok(seconds: float) -> bool:
    return limits.MIN_TS_SECONDS <= seconds <= time.time() + limits.FUTURE_TOLERANCE_SECONDS


def check_ts_iso_or_epoch(value: Any, field: str = "ts") -> int:
    """ISO 8601 text (offset or Z; naive means UTC) or epoch seconds -> epoch microseconds."""
    if isinstance(value, bool):
        raise Invalid(field, "must be an ISO 8601 time or epoch seconds", 525)
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise Invalid(field, f"{value[:40]!r} is not an ISO 8601 time", 525) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        seconds = parsed.timestamp()
    else:
        raise Invalid(field, "must be an ISO 8601 time or epoch seconds", 525)
    if not _bounds_ok(seconds):
        raise Invalid(field, "is before 1970 or more than a day in the future", 525)
    return int(seconds * 1_000_000)


def check_epoch_seconds(value: Any, field: str = "ts") -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
            value = int(value.strip())
        else:
            raise Invalid(field, "must be epoch seconds", 525)
    if value > 1e11:  # milliseconds sent by mistake: say so rather than store year 5000
        raise Invalid(field, "looks like milliseconds; send epoch seconds", 525)
    if not _bounds_ok(float(value)):
        raise Invalid(field, "is before 1970 or more than a day in the future", 525)
    return int(float(value) * 1_000_000)


def _check_value(value: Any, path: str, depth: int) -> None:
    if isinstance(value, str):
        if len(value) > limits.MAX_STRING_CHARS:
            raise Invalid(path, f"string longer than {limits.MAX_STRING_CHARS} characters")
    elif isinstance(value, dict):
        if depth >= limits.MAX_DEPTH:
            raise Invalid(path, f"nested deeper than {limits.MAX_DEPTH} levels")
        for key, item in value.items():
            _check_value(item, f"{path}.{key}", depth + 1)
    elif isinstance(value, list):
        if depth >= limits.MAX_DEPTH:
            raise Invalid(path, f"nested deeper than {limits.MAX_DEPTH} levels")
        for i, item in enumerate(value):
            _check_value(item, f"{path}[{i}]", depth + 1)
    elif isinstance(value, float) and value != value:  # NaN cannot be stored as JSON
        raise Invalid(path, "is not a number (NaN)")


def check_properties(value: Any, field: str = "properties") -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Invalid(field, "must be a JSON object")
    if len(value) > limits.MAX_PROPERTIES:
        raise Invalid(field, f"has more than {limits.MAX_PROPERTIES} keys")
    for key, item in value.items():
        if not key or len(key) > limits.MAX_KEY_CHARS:
            raise Invalid(f"{field}.{key[:40]}", f"key must be 1 to {limits.MAX_KEY_CHARS} chars")
        _check_value(item, f"{field}.{key}", 1)
    return value


def check_size(record: Any, field: str = "") -> None:
    size = len(orjson.dumps(record))
    if size > limits.MAX_EVENT_BYTES:
        raise Invalid(field or "record", f"is {size} bytes; the limit is {limits.MAX_EVENT_BYTES}")


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()
