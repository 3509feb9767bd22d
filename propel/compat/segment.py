"""Segment-compatible tracking API: ``POST /v1/batch|track|identify|page|screen|alias|group``.

Segment clients drop a whole batch on any 4xx and never read a 2xx body. So a batch
whose envelope is valid answers 200, stores its valid messages, and keeps every
invalid one with its reason in the rejections store (``GET /api/v1/rejections``).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from propel.api.auth import propel_of, segment_account
from propel.api.body import read_json
from propel.api.errors import ApiError
from propel.ingest import limits, segment
from propel.ingest.records import IngestItem, Invalid, Rejection
from propel.ingest.service import ingest

router = APIRouter(prefix="/v1", tags=["Segment-compatible"])


async def _store(request: Request, account_id: str, items: list[IngestItem],
                 rejected: list[Rejection]) -> None:
    result = await ingest(propel_of(request).db, account_id, items, rejected, "segment")
    request.app.state.metrics.count_ingest("segment", result)


@router.post("/batch")
async def batch(request: Request, account_id: str = Depends(segment_account)) -> dict:
    """A batch of messages (≤ 500 KB, each ≤ 32 KB), gzip allowed."""
    body = await read_json(request, max_bytes=limits.MAX_BATCH_BYTES)
    if not isinstance(body, dict) or not isinstance(body.get("batch"), list):
        raise ApiError(400, "invalid", 'body must be an object with a "batch" list')
    items: list[IngestItem] = []
    rejected: list[Rejection] = []
    for index, msg in enumerate(body["batch"]):
        try:
            items.append(segment.parse_message(msg, account_id, None, body.get("sentAt")))
        except Invalid as exc:
            rejected.append(Rejection(index, exc.field, exc.reason, msg))
    await _store(request, account_id, items, rejected)
    return {"success": True}


def _single(kind: str):  # noqa: ANN202 - a route factory
    async def route(request: Request, account_id: str = Depends(segment_account)) -> dict:
        body = await read_json(request, max_bytes=limits.MAX_EVENT_BYTES)
        try:
            item = segment.parse_message(body, account_id, kind, None)
        except Invalid as exc:
            await _store(request, account_id, [], [Rejection(0, exc.field, exc.reason, body)])
            raise ApiError(400, "invalid", exc.reason, field=exc.field) from None
        await _store(request, account_id, [item], [])
        return {"success": True}

    route.__name__ = kind
    route.__doc__ = f"One {kind} message (≤ 32 KB)."
    return route


for _kind in segment.TYPES:
    router.add_api_route(f"/{_kind}", _single(_kind), methods=["POST"], name=f"segment_{_kind}")
