"""Propel's own payloads: ``{"events": [...]}`` and ``{"profiles": [...]}``."""

from __future__ import annotations

from typing import Any

from propel.ingest import limits
from propel.ingest.records import (
    EventRecord,
    IngestItem,
    Invalid,
    Rejection,
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

EVENT_FIELDS = {"identity", "name", "ts", "properties", "message_id"}


def parse_batch(body: Any, key: str) -> list[Any]:
    if not isinstance(body, dict) or not isinstance(body.get(key), list):
        raise Invalid(key, f'body must be a JSON object with a "{key}" list')
    batch = body[key]
    if len(batch) > limits.MAX_BATCH_EVENTS:
        raise Invalid(key, f"holds {len(batch)} items; the limit is {limits.MAX_BATCH_EVENTS}")
    return batch


def parse_event(raw: Any, account_id: str) -> IngestItem:
    if not isinstance(raw, dict):
        raise Invalid("", "must be a JSON object")
    unknown = set(raw) - EVENT_FIELDS
    if unknown:
        allowed = ", ".join(sorted(EVENT_FIELDS))
        raise Invalid(sorted(unknown)[0], f"unknown field; allowed: {allowed}")
    check_size(raw)
    message_id = raw.get("message_id")
    message_id = check_message_id(message_id) if message_id is not None else content_id(raw)
    event = EventRecord(
        message_id=message_id,
        identity=check_identity(raw.get("identity")),
        name=check_name(raw.get("name")),
        ts=check_ts_iso_or_epoch(raw["ts"]) if "ts" in raw else _now_us(),
        properties=dumps(check_properties(raw.get("properties"))),
    )
    return IngestItem(key_hash=key_hash(account_id, message_id), event=event)


def parse_profile(raw: Any, account_id: str) -> IngestItem:
    if not isinstance(raw, dict):
        raise Invalid("", "must be a JSON object")
    check_size(raw)
    fields = {k: v for k, v in raw.items() if k not in ("identity", "message_id")}
    update = build_update(raw.get("identity"), fields)
    message_id = raw.get("message_id")
    message_id = check_message_id(message_id) if message_id is not None else content_id(raw)
    return IngestItem(key_hash=key_hash(account_id, message_id), profile=update)


def _now_us() -> int:
    import time

    return time.time_ns() // 1000


def parse_all(batch: list[Any], account_id: str, parser: Any
              ) -> tuple[list[IngestItem], list[Rejection]]:
    items: list[IngestItem] = []
    rejected: list[Rejection] = []
    for index, raw in enumerate(batch):
        try:
            items.append(parser(raw, account_id))
        except Invalid as exc:
            rejected.append(Rejection(index, exc.field, exc.reason, raw, exc.code))
    return items, rejected
