"""Segment-compatible tracking API: ``POST /v1/batch|track|identify|page|screen|alias|group``.

Segment clients drop a whole batch on any 4xx and never read a 2xx body. So a batch
whose envelope is valid answers 200, stores its valid messages, and keeps every
invalid one with its reason in the rejections store (``GET /api/v1/rejections``).
Envelope problems answer as Segment does: 400 for a body that is too large or not
JSON, 415 for a body that is not declared JSON, 401 for a missing or unknown write key.
A single-message endpoint answers 400 naming the field, and records the rejection.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Request

from propel.api.auth import propel_of, segment_account
from propel.api.body import read_json
from propel.api.errors import ApiError
from propel.ingest import limits, segment
from propel.ingest.records import IngestItem, Invalid, Rejection
from propel.ingest.service import ingest

router = APIRouter(prefix="/v1", tags=["Segment-compatible"])


async def _read(request: Request) -> Any:
    """The JSON body, at most 500 KB decompressed; too large is a 400, as Segment says."""
    try:
        return await read_json(request, max_bytes=limits.MAX_BATCH_BYTES)
    except ApiError as exc:
        if exc.status == 413:
            exc.status = 400
        raise


def _rejection(index: int, exc: Invalid, record: Any) -> Rejection:
    # A field or reason can quote client text; PostgreSQL text cannot hold NUL.
    return Rejection(index, exc.field.replace("\x00", "\\u0000"),
                     exc.reason.replace("\x00", "\\u0000"), record, exc.code)


async def _store(request: Request, account_id: str, items: list[IngestItem],
                 rejected: list[Rejection]) -> None:
    result = await ingest(propel_of(request).db, account_id, items, rejected, "segment")
    request.app.state.metrics.count_ingest("segment", result)


@router.post("/batch")
async def batch(request: Request, account_id: str = Depends(segment_account)) -> dict:
    """A batch of messages (≤ 500 KB, each ≤ 32 KB), gzip allowed."""
    received_us = time.time_ns() // 1000
    body = await _read(request)
    if not isinstance(body, dict) or not isinstance(body.get("batch"), list):
        raise ApiError(400, "invalid", 'body must be an object with a "batch" list',
                       field="batch")
    # A batch-level context applies to every message in it; a message's own keys win.
    shared = body.get("context") if isinstance(body.get("context"), dict) else None
    items: list[IngestItem] = []
    rejected: list[Rejection] = []
    for index, msg in enumerate(body["batch"]):
        if shared and isinstance(msg, dict) and isinstance(msg.get("context") or {}, dict):
            msg = {**msg, "context": {**shared, **(msg.get("context") or {})}}
        try:
            items.append(segment.parse_message(msg, account_id, None, body.get("sentAt"),
                                               received_us))
        except Invalid as exc:
            rejected.append(_rejection(index, exc, msg))
    await _store(request, account_id, items, rejected)
    return {"success": True}


def _single(kind: str):  # noqa: ANN202 - a route factory
    async def route(request: Request, account_id: str = Depends(segment_account)) -> dict:
        received_us = time.time_ns() // 1000
        body = await _read(request)
        try:
            item = segment.parse_message(body, account_id, kind, None, received_us)
        except Invalid as exc:
            rejection = _rejection(0, exc, body)
            await _store(request, account_id, [], [rejection])
            raise ApiError(400, "invalid", f"{rejection.field} {rejection.reason}",
                           field=rejection.field) from None
        await _store(request, account_id, [item], [])
        return {"success": True}

    route.__name__ = kind
    route.__doc__ = f"One {kind} message (≤ 32 KB)."
    return route


for _kind in segment.TYPES:
    router.add_api_route(f"/{_kind}", _single(_kind), methods=["POST"], name=f"segment_{_kind}")
