"""CleverTap-compatible campaign API: ``POST /1/targets/{create,estimate,list,result,stop}.json``.

Requests are translated into Propel campaigns: ``where`` (an event with a date range
and/or ``common_profile_properties.profile_fields``, which include prediction groups
such as ``Predict Conversions`` = ``High``) or ``segment: "all"`` becomes the audience;
``target_mode`` the channel; ``content`` the variant; ``when`` the schedule;
``conversion_goal`` the goal. Ids are Propel campaign ids.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool

from propel.api.auth import clevertap_account, propel_of
from propel.api.body import read_bytes
from propel.api.errors import ApiError
from propel.campaigns import service

router = APIRouter(prefix="/1/targets", tags=["CleverTap-compatible"])
MODES = {"push": "push", "email": "email", "sms": "sms", "webhook": "webhook",
         "inbox": "inbox", "app_inbox": "inbox", "app inbox": "inbox"}
OPERATORS = {"equals": "=", "not_equals": "!=", "contains": "contains",
             "greater_than": ">", "less_than": "<", "greater_than_equals": ">=",
             "less_than_equals": "<=", "exists": "is_set", "in": "in"}


def _day(value: Any, field: str) -> str:
    text = str(value)
    if len(text) != 8 or not text.isdigit():
        raise ApiError(400, "invalid", f"{field} must be a date as YYYYMMDD")
    return f"{text[:4]}-{text[4:6]}-{text[6:]}"


def audience_from(body: dict[str, Any]) -> dict[str, Any]:
    where, segment = body.get("where"), body.get("segment")
    if segment is not None and where is not None:
        raise ApiError(400, "invalid", "give where or segment, not both")
    if segment is not None:
        if segment != "all":
            raise ApiError(400, "invalid", 'segment must be "all" (or give where)')
        return {"and": []}
    if not isinstance(where, dict):
        raise ApiError(400, "invalid", "give where (an object) or segment")
    parts: list[dict[str, Any]] = []
    if where.get("event_name"):
        cond: dict[str, Any] = {"event": where["event_name"]}
        if where.get("from") or where.get("to"):
            if not (where.get("from") and where.get("to")):
                raise ApiError(400, "invalid", "where needs both from and to (YYYYMMDD)")
            cond["between"] = [_day(where["from"], "where.from"), _day(where["to"], "where.to")]
        parts.append(cond)
    common = where.get("common_profile_properties") or {}
    if not isinstance(common, dict):
        raise ApiError(400, "invalid", "where.common_profile_properties must be an object")
    fields = common.get("profile_fields") or []
    if not isinstance(fields, list):
        raise ApiError(400, "invalid",
                       "where.common_profile_properties.profile_fields must be a list")
    for i, f in enumerate(fields):
        op = OPERATORS.get(str(f.get("operator", "equals")).lower()) \
            if isinstance(f, dict) else None
        if op is None or not f.get("name"):
            raise ApiError(400, "invalid", f"where.common_profile_properties.profile_fields[{i}]"
                           f": needs name and an operator ({', '.join(OPERATORS)})")
        parts.append({"property": f["name"], "op": op, "value": f.get("value")})
    if not parts:
        raise ApiError(400, "invalid", "where has no event_name or profile_fields")
    return parts[0] if len(parts) == 1 else {"and": parts}


def content_from(channel: str, content: Any) -> dict[str, Any]:
    if not isinstance(content, dict) or not content.get("body"):
        raise ApiError(400, "invalid", "content needs a body")
    title = content.get("title") or content.get("subject") or ""
    if channel == "email":
        variant = {"subject": content.get("subject") or title, "html": content["body"]}
    elif channel == "sms":
        variant = {"body": content["body"]}
    else:
        variant = {"title": title, "body": content["body"], "url": content.get("url")}
    return {"variants": [{"name": "A", "split": 100, **variant}]}


def schedule_from(when: Any) -> dict[str, Any]:
    if when in (None, "now"):
        return {"type": "now"}
    if isinstance(when, dict) and when.get("delivery_date_time"):
        try:
            at = datetime.strptime(str(when["delivery_date_time"]), "%Y%m%d %H:%M")
        except ValueError:
            raise ApiError(400, "invalid", "when.delivery_date_time must be "
                           "'YYYYMMDD HH:MM'") from None
        user_tz = when.get("type") == "user_timezone"
        return {"type": "at", "at": (at if user_tz else at.replace(tzinfo=UTC)).isoformat(),
                "user_timezone": user_tz}
    raise ApiError(400, "invalid", 'when must be "now" or {"delivery_date_time": ...}')


def goal_from(goal: Any) -> dict[str, Any] | None:
    if not goal:
        return None
    if not isinstance(goal, dict) or not goal.get("event_name"):
        raise ApiError(400, "invalid", "conversion_goal needs event_name")
    minutes = goal.get("conversion_time", 24 * 60)
    try:
        if isinstance(minutes, bool):
            raise ValueError
        minutes = int(float(minutes))
    except (TypeError, ValueError, OverflowError):
        raise ApiError(400, "invalid", "conversion_goal.conversion_time must be a number "
                       "of minutes") from None
    revenue = goal.get("revenue_property")
    if revenue is not None and not isinstance(revenue, str):
        raise ApiError(400, "invalid", "conversion_goal.revenue_property must be a "
                       "property name")
    return {"event": goal["event_name"], "window_hours": minutes // 60 or 24,
            "revenue_property": revenue}


async def _body(request: Request) -> dict[str, Any]:
    """The JSON object sent (size-capped, gzip-aware); no body at all is ``{}``, as the
    client sends for ``list`` without a payload."""
    raw = await read_bytes(request)  # the cap applies before anything is buffered whole
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "malformed_json", f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid", "body must be a JSON object")
    return body


def _campaign(request: Request, account_id: str, body: dict[str, Any]) -> service.Campaign:
    if body.get("id") in (None, ""):
        raise ApiError(400, "invalid", "id is required")
    try:
        return service.get_campaign(propel_of(request), account_id, str(body["id"]))
    except LookupError:
        raise ApiError(404, "not_found", f"no campaign {body['id']!r}") from None


def _count(propel: Any, account_id: str, audience: dict[str, Any]) -> int:
    from propel import audiences

    try:
        return audiences.count(propel, account_id, audience)
    except audiences.AudienceError as exc:
        raise ApiError(400, "invalid", f"where: {exc}") from None


def _create(propel: Any, account_id: str, body: dict[str, Any]) -> dict[str, Any]:
    channel = MODES.get(str(body.get("target_mode", "push")).lower())
    if channel is None:
        raise ApiError(400, "invalid", f"target_mode must be one of {', '.join(MODES)}")
    audience = audience_from(body)
    estimate = _count(propel, account_id, audience)
    if body.get("estimate_only"):
        return {"status": "success", "estimates": {"total": estimate}}
    caps = {"per_day": 3} if body.get("respect_frequency_caps", True) else None
    fields = {"name": str(body.get("name") or "CleverTap campaign"), "channel": channel,
              "audience": audience, "content": content_from(channel, body.get("content")),
              "schedule": schedule_from(body.get("when")), "caps": caps,
              "goal": goal_from(body.get("conversion_goal"))}
    try:
        c = service.create_campaign(propel, account_id, **fields)
        c = service.publish(propel, account_id, c.id)
    except (service.CampaignError, ValueError) as exc:
        raise ApiError(400, "invalid", str(exc)) from None
    return {"status": "success", "id": c.id, "estimates": {"total": estimate}}


# The routes read the body on the event loop and do the database work in a worker
# thread, so a slow write (the SQLite writer, a big audience) never stalls the server.

@router.post("/create.json")
async def create(request: Request, account_id: str = Depends(clevertap_account)) -> dict:
    body = await _body(request)
    return await run_in_threadpool(_create, propel_of(request), account_id, body)


@router.post("/estimate.json")
async def estimate(request: Request, account_id: str = Depends(clevertap_account)) -> dict:
    body = await _body(request)
    audience = audience_from(body)
    total = await run_in_threadpool(_count, propel_of(request), account_id, audience)
    return {"status": "success", "estimates": {"total": total}}


def _scheduled_on(c: service.Campaign) -> datetime | None:
    """When the target was (or is to be) sent: CleverTap's ``scheduled_on``."""
    return c.started_at or c.next_run_at or c.created_at


@router.post("/list.json")
async def list_(request: Request, account_id: str = Depends(clevertap_account)) -> dict:
    body = await _body(request)
    start = _day(body["from"], "from") if body.get("from") else None
    end = _day(body["to"], "to") if body.get("to") else None
    found = await run_in_threadpool(service.list_campaigns, propel_of(request), account_id)
    out = []
    for c in found:
        when = _scheduled_on(c)
        day = when.astimezone(UTC).date().isoformat() if when else ""
        if (start and day < start) or (end and day > end):
            continue
        out.append({"id": c.id, "name": c.name, "status": c.status,
                    "target_mode": c.channel,
                    "scheduled_on": int(when.astimezone(UTC).strftime("%Y%m%d%H%M"))
                    if when else None})
    return {"status": "success", "targets": out}


def _result(request: Request, account_id: str, body: dict[str, Any]) -> dict[str, Any]:
    from propel.campaigns.attribution import attribute_conversions
    from propel.campaigns.stats import campaign_stats

    c = _campaign(request, account_id, body)
    propel = propel_of(request)
    attribute_conversions(propel, c.id)
    stats = campaign_stats(propel.db, c.id)
    total = stats["totals"]
    return {"status": "success", "result": {
        "status": c.status, "sent": total["sent"], "errors": total["failed"],
        "clicked": total["clicked"], "viewed": total["opened"],
        "converted": total["converted"], "lift": stats.get("lift")}}


@router.post("/result.json")
async def result(request: Request, account_id: str = Depends(clevertap_account)) -> dict:
    body = await _body(request)
    return await run_in_threadpool(_result, request, account_id, body)


def _stop(request: Request, account_id: str, body: dict[str, Any]) -> dict[str, Any]:
    c = _campaign(request, account_id, body)
    try:
        service.stop(propel_of(request), account_id, c.id)
    except service.CampaignError as exc:
        raise ApiError(400, "invalid", str(exc)) from None
    return {"status": "success"}


@router.post("/stop.json")
async def stop(request: Request, account_id: str = Depends(clevertap_account)) -> dict:
    body = await _body(request)
    return await run_in_threadpool(_stop, request, account_id, body)
