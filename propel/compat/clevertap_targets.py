"""CleverTap-compatible campaign API: ``POST /1/targets/{create,estimate,list,result,stop}.json``.

Requests are translated into Propel campaigns: ``where`` (an event with a date range
and ``event_properties`` filters, and/or ``common_profile_properties.profile_fields``,
which include prediction groups such as ``Predict Conversions`` = ``High``) or
``segment: "all"`` becomes the audience; a ``where`` key that cannot be translated is
rejected, never skipped; ``target_mode`` the channel; ``content`` the variant;
``when`` the schedule; ``conversion_goal`` the goal. A request without ``where`` (or
with ``{}``) targets everyone, as CleverTap's does. Ids are Propel campaign ids.
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
# CleverTap's query-language operators -> the audience grammar's. The grammar has its
# own negations, so does_not_contain / does_not_exist, like not_equals, need no "not"
# node, and inside an event they filter that event rather than the profile.
OPERATORS = {"equals": "=", "not_equals": "!=", "contains": "contains",
             "does_not_contain": "not contains", "greater_than": ">", "less_than": "<",
             "greater_than_equals": ">=", "less_than_equals": "<=", "between": "between",
             "exists": "is set", "does_not_exist": "is not set", "in": "in"}
_NO_VALUE = ("is set", "is not set")
# CleverTap reads a list value as "any of".
_ANY_OF = {"=": "in", "!=": "not in"}
WHERE_KEYS = ("event_name", "from", "to", "event_properties", "common_profile_properties")
COMMON_KEYS = ("profile_fields",)
FILTER_KEYS = ("name", "operator", "value")
# The audience grammar's names for a condition's parts -> the keys the client sent.
_FILTER_PART = {"property": "name", "op": "operator", "value": "value"}


def _day(value: Any, field: str) -> str:
    text = str(value)
    if len(text) != 8 or not text.isdigit():
        raise ApiError(400, "invalid", f"{field} must be a date as YYYYMMDD")
    return f"{text[:4]}-{text[4:6]}-{text[6:]}"


def _invalid(message: str) -> ApiError:
    return ApiError(400, "invalid", message)


def _known_keys(node: dict[str, Any], allowed: tuple[str, ...], field: str) -> None:
    """A key we skipped would silently widen the audience, so none is skipped."""
    for key in node:
        if key not in allowed:
            raise _invalid(f"{field}: unknown key {key!r}; supported: {', '.join(allowed)}")


def _checked(cond: dict[str, Any], field: str) -> dict[str, Any]:
    """Validate one property condition now, so the error names the client's field
    (``...[0].value``) rather than a path in the translated rule."""
    from propel.audiences import AudienceError, validate

    try:
        validate(cond)
    except AudienceError as exc:
        part, _, reason = str(exc).partition(": ")
        head = part.split("[")[0]
        at = f"{field}.{_FILTER_PART[head]}{part[len(head):]}" if head in _FILTER_PART \
            else field
        raise _invalid(f"{at}: {reason}") from None
    return cond


def _name_and_op(node: Any, keys: tuple[str, str, str], operators: dict[str, str],
                 field: str) -> tuple[str, str]:
    """A filter's property name and operator, from its ``keys`` (name, operator, value
    as the request spells them); the operator defaults to ``equals``."""
    name_key, operator_key, value_key = keys
    if not isinstance(node, dict):
        raise _invalid(f"{field} must be an object with {name_key}, {operator_key} and "
                       f"{value_key}")
    _known_keys(node, keys, field)
    name, word = node.get(name_key), node.get(operator_key) or "equals"
    if not isinstance(name, str) or not name.strip():
        raise _invalid(f"{field}.{name_key} must be a non-empty string")
    op = operators.get(word.lower()) if isinstance(word, str) else None
    if op is None:
        raise _invalid(f"{field}.{operator_key}: unknown operator {word!r}; one of "
                       f"{', '.join(operators)}")
    return name, op


def _filter(node: Any, field: str) -> dict[str, Any]:
    """One ``{name, operator, value}`` filter as an audience property condition."""
    name, op = _name_and_op(node, FILTER_KEYS, OPERATORS, field)
    if op in _NO_VALUE:  # a value sent along has nothing to compare with
        return _checked({"property": name, "op": op}, field)
    value = node.get("value")
    if isinstance(value, list):
        op = _ANY_OF.get(op, op)
    return _checked({"property": name, "op": op, "value": value}, field)


def _filters(node: dict[str, Any], key: str, field: str) -> list[dict[str, Any]]:
    items = node.get(key)
    if items is None:
        return []
    if not isinstance(items, list):
        raise _invalid(f"{field} must be a list")
    return [_filter(item, f"{field}[{i}]") for i, item in enumerate(items)]


def _event_part(where: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``event_name`` base query with its window and event property filters."""
    name = where.get("event_name")
    if name is None:
        for key in ("from", "to", "event_properties"):
            if where.get(key) is not None:
                raise _invalid(f"where.{key} needs where.event_name (the event it "
                               "applies to)")
        return []
    if not isinstance(name, str) or not name.strip():
        raise _invalid("where.event_name must be a non-empty string")
    cond: dict[str, Any] = {"event": name}
    start, end = where.get("from"), where.get("to")
    if start is not None or end is not None:
        if start is None or end is None:
            raise _invalid("where needs both from and to (YYYYMMDD)")
        cond["between"] = [_day(start, "where.from"), _day(end, "where.to")]
    filters = _filters(where, "event_properties", "where.event_properties")
    if filters:
        cond["where"] = filters
    return [cond]


def _profile_parts(where: dict[str, Any]) -> list[dict[str, Any]]:
    common = where.get("common_profile_properties")
    if common is None:
        return []
    if not isinstance(common, dict):
        raise _invalid("where.common_profile_properties must be an object")
    _known_keys(common, COMMON_KEYS, "where.common_profile_properties")
    return _filters(common, "profile_fields", "where.common_profile_properties.profile_fields")


def audience_from(body: dict[str, Any]) -> dict[str, Any]:
    """The audience rule for a request's ``where`` (or ``segment: "all"``); raises a
    400 :class:`ApiError` naming the field for anything it cannot translate."""
    where, segment = body.get("where"), body.get("segment")
    if segment is not None and where is not None:
        raise _invalid("give where or segment, not both")
    if segment is not None:
        if segment != "all":
            raise _invalid('segment must be "all" (or give where)')
        return {"and": []}
    if where is None or where == {}:  # CleverTap: omitted or empty targets everyone
        return {"and": []}
    if not isinstance(where, dict):
        raise _invalid("where must be an object (omit it, or send {}, for everyone)")
    _known_keys(where, WHERE_KEYS, "where")
    parts = [*_event_part(where), *_profile_parts(where)]
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
        variant = {"title": title, "body": content["body"], "url": _link(content)}
    return {"variants": [{"name": "A", "split": 100, **variant}]}


def _link(content: dict[str, Any]) -> str | None:
    """``url``, else the first ``platform_specific.<platform>.deep_link`` (one link per
    message here, where CleverTap keeps one per platform)."""
    if content.get("url"):
        return content["url"]
    platforms = content.get("platform_specific")
    for options in (platforms.values() if isinstance(platforms, dict) else ()):
        if isinstance(options, dict) and isinstance(options.get("deep_link"), str):
            return options["deep_link"]
    return None


WHEN_KEYS = ("type", "delivery_date_time", "delivery_timezone")
_DELIVERY_TIMEZONES = {"user": True, "account": False, "utc": False}


def _send_time(value: Any, field: str) -> datetime:
    """``"YYYYMMDD HH:MM"``, or CleverTap's list of them with one entry."""
    if isinstance(value, list):
        if len(value) != 1:
            raise _invalid(f"{field} must hold one time; Propel sends a campaign at one "
                           "time (create a campaign per time)")
        value = value[0]
    try:
        return datetime.strptime(str(value), "%Y%m%d %H:%M")
    except ValueError:
        raise _invalid(f"{field} must be 'YYYYMMDD HH:MM'") from None


def schedule_from(when: Any) -> dict[str, Any]:
    """``when``: ``"now"``, ``"YYYYMMDD HH:MM"`` (UTC), or ``{"type": "now" | "later",
    "delivery_date_time": [...], "delivery_timezone": "user" | "account"}``; ``user``
    sends at that wall-clock time in each user's timezone."""
    if when in (None, "now"):
        return {"type": "now"}
    if isinstance(when, str):
        return {"type": "at", "at": _send_time(when, "when").replace(tzinfo=UTC).isoformat(),
                "user_timezone": False}
    if not isinstance(when, dict):
        raise _invalid('when must be "now", "YYYYMMDD HH:MM" or an object with '
                       "delivery_date_time")
    _known_keys(when, WHEN_KEYS, "when")
    kind = when.get("type")
    if kind == "now" and when.get("delivery_date_time") is None:
        return {"type": "now"}
    if kind not in (None, "now", "later", "user_timezone"):
        raise _invalid('when.type must be "now" or "later"')
    if when.get("delivery_date_time") is None:
        raise _invalid("when.delivery_date_time is required (or send when: \"now\")")
    at = _send_time(when["delivery_date_time"], "when.delivery_date_time")
    zone = str(when.get("delivery_timezone", "account")).lower()
    if zone not in _DELIVERY_TIMEZONES:
        raise _invalid('when.delivery_timezone must be "user" or "account"')
    # "user_timezone" as the type is accepted from earlier Propel versions
    user_tz = _DELIVERY_TIMEZONES[zone] or kind == "user_timezone"
    return {"type": "at", "at": (at if user_tz else at.replace(tzinfo=UTC)).isoformat(),
            "user_timezone": user_tz}


_TIME_UNITS = {"M": 1, "H": 60, "D": 24 * 60}
GOAL_KEYS = ("event_name", "conversion_time", "revenue_property", "filter_type")


def _minutes(value: Any) -> float:
    """``conversion_time``: minutes (a number or digits), or ``"<n>M"``, ``"<n>H"``,
    ``"<n>D"`` as CleverTap writes it ("1D")."""
    text = str(value).strip().upper() if isinstance(value, str | int | float) else ""
    if isinstance(value, bool) or not text:
        raise ValueError
    unit = _TIME_UNITS.get(text[-1])
    number = float(text[:-1] if unit else text)
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError
    return number * (unit or 1)


# The operators a goal's event filter takes (the goal grammar's, fewer than audiences').
GOAL_FILTER_KEYS = ("property_name", "operator", "property_value")
GOAL_OPERATORS = {"equals": "=", "not_equals": "!=", "contains": "contains",
                  "greater_than": ">", "less_than": "<", "greater_than_equals": ">=",
                  "less_than_equals": "<=", "exists": "exists", "in": "in"}


def _goal_filter(item: Any, field: str) -> dict[str, Any]:
    name, op = _name_and_op(item, GOAL_FILTER_KEYS, GOAL_OPERATORS, field)
    value = item.get("property_value")
    if op == "exists":
        return {"property": name, "op": op, "value": None}
    if op == "=" and isinstance(value, list):  # CleverTap reads a list as "any of"
        op = "in"
    if value is None or isinstance(value, dict) or (op == "in") != isinstance(value, list):
        need = "a list" if op == "in" else "a number or text"
        raise _invalid(f"{field}.property_value must be {need} for {op}")
    return {"property": name, "op": op, "value": value}


def _goal_filters(filter_type: Any) -> list[dict[str, Any]]:
    """``filter_type.event_property``: ``[{property_name, operator, property_value}]``."""
    if filter_type is None:
        return []
    if not isinstance(filter_type, dict):
        raise _invalid("conversion_goal.filter_type must be an object")
    _known_keys(filter_type, ("event_property",), "conversion_goal.filter_type")
    items = filter_type.get("event_property") or []
    if not isinstance(items, list):
        raise _invalid("conversion_goal.filter_type.event_property must be a list")
    return [_goal_filter(item, f"conversion_goal.filter_type.event_property[{i}]")
            for i, item in enumerate(items)]


def goal_from(goal: Any) -> dict[str, Any] | None:
    if not goal:
        return None
    if not isinstance(goal, dict) or not goal.get("event_name"):
        raise _invalid("conversion_goal needs event_name")
    _known_keys(goal, GOAL_KEYS, "conversion_goal")
    try:
        minutes = _minutes(goal.get("conversion_time", 24 * 60))
    except (TypeError, ValueError, OverflowError):
        raise _invalid('conversion_goal.conversion_time must be minutes, or like "12H" or '
                       '"1D"') from None
    if not 60 <= minutes <= 365 * 24 * 60:
        raise _invalid("conversion_goal.conversion_time must be from 1 hour to 365 days "
                       "(the goal's window_hours: 1 to 8760)")
    revenue = goal.get("revenue_property")
    if revenue is not None and not isinstance(revenue, str):
        raise _invalid("conversion_goal.revenue_property must be a property name")
    hours = minutes / 60
    return {"event": goal["event_name"], "where": _goal_filters(goal.get("filter_type")),
            "window_hours": int(hours) if hours.is_integer() else round(hours, 4),
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
    if body.get("target_mode") is None:
        raise _invalid(f"target_mode is required: one of {', '.join(MODES)}")
    channel = MODES.get(str(body["target_mode"]).lower())
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
    if c.status == "stopped":  # as CleverTap answers: success, nothing to do
        return {"status": "success"}
    try:
        service.stop(propel_of(request), account_id, c.id)
    except service.CampaignError as exc:
        raise ApiError(400, "invalid", str(exc)) from None
    return {"status": "success"}


@router.post("/stop.json")
async def stop(request: Request, account_id: str = Depends(clevertap_account)) -> dict:
    body = await _body(request)
    return await run_in_threadpool(_stop, request, account_id, body)
