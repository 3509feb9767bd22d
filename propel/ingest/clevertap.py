"""CleverTap upload records → ingest items, with CleverTap's record error codes.

A record without an id is deduplicated on a hash of exactly the fields the client
sent, so a retried upload hashes the same. Send ``ts`` so that two identical events
at different times count twice.
"""

from __future__ import annotations

import time
from typing import Any

from propel.ingest.records import (
    EventRecord,
    IngestItem,
    Invalid,
    check_epoch_seconds,
    check_identity,
    check_name,
    check_properties,
    check_size,
    content_id,
    dumps,
    key_hash,
    no_nul,
)
from propel.profiles import build_update

# CleverTap's documented record codes, as used in "unprocessed" entries.
CODE_EVENT_NAME_MISSING = 509
CODE_INVALID_STRUCTURE = 512
CODE_IDENTITY_MISSING = 523
CODE_NOT_EVENT_OR_PROFILE = 524
CODE_TS_NOT_EPOCH = 525

# CleverTap profile keys that map onto Propel's typed system fields.
PROFILE_KEYS = {"Email": "email", "Phone": "phone", "Timezone": "timezone", "Tz": "timezone"}
CONSENT_KEYS = {"MSG-email": "email", "MSG-sms": "sms", "MSG-push": "push",
                "MSG-whatsapp": "whatsapp"}


def record_identity(record: dict[str, Any]) -> str:
    for key in ("identity", "objectId", "FBID", "GPID"):
        if record.get(key) not in (None, ""):
            return no_nul(check_identity(record[key], key), key, CODE_IDENTITY_MISSING)
    raise Invalid("identity", "identity or objectId is required", CODE_IDENTITY_MISSING)


def record_ts(record: dict[str, Any]) -> int:
    """``ts`` in epoch seconds -> epoch microseconds; now when the record has none."""
    if "ts" not in record:
        return time.time_ns() // 1000
    try:
        return check_epoch_seconds(record["ts"])
    except (ValueError, OverflowError):  # e.g. "²" passes str.isdigit() but not int()
        raise Invalid("ts", "must be epoch seconds", CODE_TS_NOT_EPOCH) from None


def _profile_fields(data: dict[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    consent: dict[str, bool] = {}
    for key, value in data.items():
        if key in PROFILE_KEYS:
            fields[PROFILE_KEYS[key]] = value
        elif key in CONSENT_KEYS and isinstance(value, bool):
            consent[CONSENT_KEYS[key]] = value
        else:
            fields.setdefault("properties", {})[key] = value
    if consent:
        fields["consent"] = consent
    return fields


def parse_record(record: Any, account_id: str) -> IngestItem:
    if not isinstance(record, dict):
        raise Invalid("", "record must be a JSON object", CODE_INVALID_STRUCTURE)
    check_size(record)
    kind = record.get("type")
    if kind not in ("event", "profile"):
        raise Invalid("type", 'must be "event" or "profile"', CODE_NOT_EVENT_OR_PROFILE)
    identity = record_identity(record)
    ts = record_ts(record)
    message_id = content_id({"ct": record})
    item = IngestItem(key_hash=key_hash(account_id, message_id))
    if kind == "event":
        name = check_name(record.get("evtName"), "evtName", CODE_EVENT_NAME_MISSING)
        no_nul(name, "evtName", CODE_INVALID_STRUCTURE)
        data = record.get("evtData")
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise Invalid("evtData", "must be a JSON object", CODE_INVALID_STRUCTURE)
        try:
            properties = check_properties(data, "evtData")
        except Invalid as exc:
            raise Invalid(exc.field, exc.reason, CODE_INVALID_STRUCTURE) from None
        item.event = EventRecord(
            message_id=message_id, identity=identity, name=name, ts=ts,
            properties=dumps(properties),
        )
        return item
    data = record.get("profileData")
    if not isinstance(data, dict) or not data:
        raise Invalid("profileData", "must be a non-empty JSON object", CODE_INVALID_STRUCTURE)
    try:
        item.profile = build_update(identity, _profile_fields(data))
    except Invalid as exc:
        raise Invalid(f"profileData.{exc.field}", exc.reason, CODE_INVALID_STRUCTURE) from None
    for name in ("email", "phone", "timezone"):
        value = getattr(item.profile, name)
        if value is not None:
            no_nul(value, f"profileData.{name}", CODE_INVALID_STRUCTURE)
    return item
