"""CleverTap-compatible server API under ``/1``: upload, profile, events, profiles.

Shapes follow CleverTap's server API so that its official clients work unmodified.
Cursors are signed, stateless and URL-safe (the Node client pastes them into URLs
without encoding); paging is by keyset, so no page repeats a record.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, date, datetime
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from propel import profiles
from propel.api.auth import clevertap_account, propel_of
from propel.api.body import read_json
from propel.api.errors import ApiError
from propel.ingest import clevertap, limits
from propel.ingest.records import IngestItem, Invalid, Rejection
from propel.ingest.service import ingest
from propel.lake.events import identities_with_event, query_events
from propel.predictions.properties import score_properties
from propel.signing import BadToken, sign, unsign

router = APIRouter(prefix="/1", tags=["CleverTap-compatible"])
log = logging.getLogger("propel.compat.clevertap")
MAX_PAGE = 5000
DEFAULT_PAGE = 10


def _printable(text: str) -> str:
    """Field names and reasons can quote a client's keys; PostgreSQL text cannot
    hold NUL, and the rejection is stored."""
    return text.replace("\x00", "\\u0000")


def _parse(record: Any, account_id: str) -> IngestItem:
    try:
        return clevertap.parse_record(record, account_id)
    except Invalid:
        raise
    except Exception as exc:  # one odd record must never cost the batch its good ones
        log.exception("unexpected error parsing a CleverTap record")
        raise Invalid("", f"record could not be read ({exc.__class__.__name__})",
                      clevertap.CODE_INVALID_STRUCTURE) from None


@router.post("/upload")
async def upload(request: Request, account_id: str = Depends(clevertap_account)) -> dict:
    """Up to 1000 ``event`` / ``profile`` records in ``{"d": [...]}``."""
    body = await read_json(request, require_content_type=False)
    if not isinstance(body, dict) or not isinstance(body.get("d"), list):
        raise ApiError(400, "invalid", 'body must be an object with a "d" list of records')
    records = body["d"]
    if len(records) > limits.MAX_BATCH_EVENTS:
        raise ApiError(400, "too_many", f"{len(records)} records; at most "
                       f"{limits.MAX_BATCH_EVENTS} per call")
    items, rejected = [], []
    for index, record in enumerate(records):
        try:
            items.append(_parse(record, account_id))
        except Invalid as exc:
            rejected.append(Rejection(index, _printable(exc.field), _printable(exc.reason),
                                      record, exc.code))
    result = await ingest(propel_of(request).db, account_id, items, rejected, "clevertap")
    request.app.state.metrics.count_ingest("clevertap", result)
    processed = len(items)
    status = "success" if not rejected else ("partial" if processed else "fail")
    return {
        "status": status,
        "processed": processed,
        "unprocessed": [
            {"status": "fail", "code": r.code, "error": f"{r.field}: {r.reason}".lstrip(": "),
             "record": r.record}
            for r in rejected
        ],
    }


def _profile_record(profile: profiles.Profile, scores: dict[str, Any] | None = None
                    ) -> dict[str, Any]:
    data = {**profile.properties, **(scores or {})}
    for key, value in (("Email", profile.email), ("Phone", profile.phone),
                       ("Timezone", profile.timezone)):
        if value:
            data[key] = value
    for channel, flag in profile.consent.items():
        data[f"MSG-{channel}"] = flag
    return {
        "identity": profile.identity,
        "objectId": profile.identity,
        "email": profile.email,
        "profileData": data,
        "push_tokens": profile.push_tokens,
        "aliases": list(profile.aliases),
    }


@router.get("/profile.json")
def profile(request: Request, identity: str | None = None, email: str | None = None,
            objectId: str | None = None,  # noqa: N803 - CleverTap's parameter name
            account_id: str = Depends(clevertap_account)) -> dict:
    """One profile by ``identity``, ``email`` or ``objectId``."""
    db = propel_of(request).db
    email, key = (email or "").strip(), (identity or objectId or "").strip()
    if not email and not key:
        raise ApiError(400, "invalid", "give identity, email or objectId")
    if "\x00" in email + key:  # never stored (and PostgreSQL cannot compare it)
        raise ApiError(404, "not_found", "profile not found")
    if email:
        # The Node client does not URL-encode; a "+" in an address arrives as a space.
        found = profiles.find_by_email(db, account_id, email.replace(" ", "+"))
    else:
        found = profiles.get_profile(db, account_id, key)
        if found is None and " " in key:  # same: "a+b" sent unencoded arrives as "a b"
            found = profiles.get_profile(db, account_id, key.replace(" ", "+"))
    if found is None:
        raise ApiError(404, "not_found", "profile not found")
    scores = score_properties(db, account_id, [found.identity]).get(found.identity)
    return {"status": "success", "record": _profile_record(found, scores)}


_YYYYMMDD = re.compile(r"[0-9]{8}")


def _day(value: Any, field: str) -> datetime:
    ok = isinstance(value, int | str) and not isinstance(value, bool)
    text = str(value).strip() if ok else ""
    try:
        if not _YYYYMMDD.fullmatch(text):
            raise ValueError(text)
        return datetime.combine(date(int(text[:4]), int(text[4:6]), int(text[6:8])),
                                datetime.min.time(), UTC)
    except ValueError:
        raise ApiError(400, "invalid", f"query.{field} must be a date as YYYYMMDD") from None


def _batch_size(raw: str | None) -> int:
    if raw is None or not raw.strip():
        return DEFAULT_PAGE
    text = raw.strip()
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise ApiError(400, "invalid", "batch_size must be a whole number from 1")
    return min(int(text), MAX_PAGE)


def _parse_query(raw: Any) -> dict[str, Any]:
    if isinstance(raw, str):
        try:
            raw = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ApiError(400, "invalid", "query must be JSON") from None
    if not isinstance(raw, dict):
        raise ApiError(400, "invalid", "query must be a JSON object")
    name = raw.get("event_name")
    if not isinstance(name, str) or not name:
        raise ApiError(400, "invalid", "query.event_name is required")
    if len(name) > limits.MAX_NAME_CHARS:  # it travels inside every cursor
        raise ApiError(400, "invalid", f"query.event_name is longer than "
                       f"{limits.MAX_NAME_CHARS} characters")
    start = _day(raw.get("from"), "from")
    end = _day(raw.get("to"), "to")
    if end < start:
        raise ApiError(400, "invalid", "query.to is before query.from")
    return {"event_name": name, "from": int(start.timestamp() * 1e6),
            # "to" is inclusive: the whole of that day
            "to": int(end.timestamp() * 1e6) + 86_400_000_000}


async def _start_or_page(request: Request, account_id: str, kind: str,
                         batch_size: int, query: str | None, cursor: str | None) -> dict:
    propel = propel_of(request)
    secret = propel.settings.resolved_secret_key()
    if cursor:
        try:
            state = unsign(secret, cursor, f"ct.{kind}")
        except BadToken:
            raise ApiError(400, "invalid_cursor", "cursor is not valid") from None
        if not isinstance(state, dict) or state.get("a") != account_id:
            raise ApiError(400, "invalid_cursor", "cursor belongs to another account")
        # DuckDB and the database work synchronously: keep them off the event loop.
        return await run_in_threadpool(_page, propel, account_id, kind, state, secret)
    if query is None and request.method == "POST":
        query = await read_json(request, require_content_type=False)
    if query is None:
        raise ApiError(400, "invalid", "give query (JSON) or cursor")
    state = {"a": account_id, "q": _parse_query(query), "n": batch_size, "after": None}
    # CleverTap answers the first call with a cursor only; records come with it.
    return {"status": "success", "cursor": sign(secret, state, f"ct.{kind}")}


def _page(propel: Any, account_id: str, kind: str, state: dict, secret: str) -> dict:
    q, size = state["q"], state["n"]
    if kind == "events":
        after = tuple(state["after"]) if state["after"] else None
        rows = query_events(propel.db, propel.lake, account_id, q["event_name"], q["from"],
                            q["to"], after, size)
        records = [_event_record(propel, account_id, r) for r in rows]
        last = [rows[-1][2], rows[-1][0]] if rows else None
    else:
        ids = identities_with_event(propel.db, propel.lake, account_id, q["event_name"],
                                    q["from"], q["to"], state["after"] or "", size)
        found = profiles.get_profiles(propel.db, account_id, ids)
        scores = score_properties(propel.db, account_id, ids)
        records = [_profile_record(found[ident], scores.get(ident)) if ident in found
                   else _no_profile(ident)
                   for ident in ids]
        last = ids[-1] if ids else None
    answer: dict[str, Any] = {"status": "success", "records": records}
    if len(records) == size:
        answer["next_cursor"] = sign(secret, {**state, "after": last}, f"ct.{kind}")
    return answer


def _no_profile(identity: str) -> dict[str, Any]:
    """An identity with events but no profile data yet: the same shape, empty."""
    return {"identity": identity, "objectId": identity, "email": None, "profileData": {},
            "push_tokens": [], "aliases": []}


def _event_record(propel: Any, account_id: str, row: tuple) -> dict[str, Any]:
    message_id, identity, ts_us, properties = row
    ts = datetime.fromtimestamp(ts_us / 1e6, UTC)
    return {
        "profile": {"identity": identity, "objectId": identity},
        "ts": int(ts.strftime("%Y%m%d%H%M%S")),
        "event_props": orjson.loads(properties),
        "message_id": message_id,
    }


def _paged(kind: str):  # noqa: ANN202 - a route factory
    async def route(request: Request, batch_size: str | None = None,
                    query: str | None = None, cursor: str | None = None,
                    account_id: str = Depends(clevertap_account)) -> dict:
        return await _start_or_page(request, account_id, kind, _batch_size(batch_size), query,
                                    cursor)

    route.__name__ = f"{kind}_json"
    route.__doc__ = (f"Download {kind}: call with ``batch_size`` and ``query`` (event_name, "
                     "from, to as YYYYMMDD) for a cursor, then with ``cursor`` until no "
                     "``next_cursor`` comes back.")
    return route


for _kind in ("events", "profiles"):
    # One route per method, so that each has its own OpenAPI operation id.
    for _method in ("GET", "POST"):
        router.add_api_route(f"/{_kind}.json", _paged(_kind), methods=[_method],
                             name=f"{_kind}_json_{_method.lower()}")
