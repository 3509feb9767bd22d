"""Propel's own API, ``/api/v1``: thin adapters over ingest, profiles and the lake."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from propel import profiles
from propel.api.auth import api_account, propel_of
from propel.api.body import read_json
from propel.api.errors import ApiError
from propel.ingest import native
from propel.ingest.records import Invalid
from propel.ingest.service import ingest, list_rejections
from propel.lake.events import recent_events_of
from propel.predictions.properties import score_properties
from propel.predictions.scoring import current_scores

router = APIRouter(prefix="/api/v1", tags=["Propel API"])


class RejectionOut(BaseModel):
    index: int
    field: str
    reason: str


class IngestOut(BaseModel):
    accepted: int = Field(description="New items stored (durable when this answer is sent).")
    duplicates: int = Field(description="Items whose message id was seen before; not stored.")
    rejected: list[RejectionOut] = Field(description="Items refused, by index, field and why.")


async def _ingest_batch(request: Request, account_id: str, key: str, parser: Any) -> dict:
    body = await read_json(request)
    try:
        batch = native.parse_batch(body, key)
    except Invalid as exc:
        raise ApiError(400, "invalid", exc.reason, field=exc.field) from None
    items, rejected = native.parse_all(batch, account_id, parser)
    result = await ingest(propel_of(request).db, account_id, items, rejected, "api")
    request.app.state.metrics.count_ingest("api", result)
    return result.as_dict()


@router.post("/events", response_model=IngestOut, openapi_extra={"requestBody": {
    "content": {"application/json": {"example": {"events": [{
        "identity": "u123", "name": "Charged", "ts": "2026-11-01T10:00:00Z",
        "properties": {"amount": 12.5}, "message_id": "m-1"}]}}}}})
async def post_events(request: Request, account_id: str = Depends(api_account)) -> dict:
    """Store a batch of up to 1000 events. Each needs ``identity`` and ``name``; ``ts``
    (ISO 8601 or epoch seconds) defaults to now; ``message_id`` makes retries safe."""
    return await _ingest_batch(request, account_id, "events", native.parse_event)


@router.post("/profiles", response_model=IngestOut, openapi_extra={"requestBody": {
    "content": {"application/json": {"example": {"profiles": [{
        "identity": "u123", "email": "ada@example.com", "timezone": "Europe/London",
        "consent": {"email": True}, "properties": {"plan": "pro"}}]}}}}})
async def post_profiles(request: Request, account_id: str = Depends(api_account)) -> dict:
    """Upsert up to 1000 profiles: typed fields (email, phone, timezone, push_tokens,
    consent) plus free properties."""
    return await _ingest_batch(request, account_id, "profiles", native.parse_profile)


@router.get("/users/{identity}")
def get_user(request: Request, identity: str, events: int = Query(20, ge=0, le=500),
             account_id: str = Depends(api_account)) -> dict:
    """A user's profile and last events (newest first)."""
    propel = propel_of(request)
    profile = profiles.get_profile(propel.db, account_id, identity)
    identities = [identity] if profile is None else [profile.identity, *profile.aliases]
    last = recent_events_of(propel.db, propel.lake, account_id, identities, events)
    if profile is None and not last and not current_scores(propel, account_id, identity):
        raise ApiError(404, "not_found", f"no user {identity!r} in this account")
    canonical = profile.identity if profile else identity
    scores = current_scores(propel, account_id, canonical)
    shown = profile.as_dict() if profile else None
    if shown is not None:
        # prediction groups and scores read like any other profile property
        shown["properties"].update(score_properties(propel.db, account_id, [canonical])
                                   .get(canonical, {}))
    return {"identity": canonical, "profile": shown, "predictions": scores, "events": last}


@router.get("/rejections")
def get_rejections(request: Request, source: str | None = None,
                   before_id: int | None = None, limit: int = Query(100, ge=1, le=1000),
                   account_id: str = Depends(api_account)) -> dict:
    """Rejected records with the field and reason, newest first."""
    rows = list_rejections(propel_of(request).db, account_id, source=source,
                           before_id=before_id, limit=limit)
    return {"rejections": rows, "next_before_id": rows[-1]["id"] if len(rows) == limit else None}
