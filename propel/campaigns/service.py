"""Campaigns: Who × What × When, and their lifecycle.

draft → scheduled → running → completed, or stopped at any point; scheduled and
recurring campaigns can be edited (audience, content, timing) until they run.
"""

from __future__ import annotations

import secrets
import zoneinfo
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Any

import orjson
from sqlalchemy import Connection, insert, select, update

from propel.campaigns.tables import campaigns
from propel.core import Propel
from propel.db.meta import utcnow

CHANNELS = ("email", "webhook", "inbox", "push", "sms")
STATUSES = ("draft", "scheduled", "running", "completed", "stopped")
EDITABLE = ("draft", "scheduled")
# What a recurring campaign may change between runs: not what defines its experiment
# (channel, holdout, goal), so its results stay one comparison.
BETWEEN_RUNS = ("name", "audience", "content", "schedule", "dnd", "caps", "rate_per_second")
# A user-timezone schedule starts where the local time comes first (UTC+14).
EARLIEST_OFFSET = timedelta(hours=14)


class CampaignError(ValueError):
    """A campaign definition or action is not valid; the message names the field."""


@dataclass
class Campaign:
    id: str
    account_id: str
    name: str
    status: str
    channel: str
    audience: dict[str, Any]
    content: dict[str, Any]
    schedule: dict[str, Any] = field(default_factory=lambda: {"type": "now"})
    dnd: dict[str, Any] | None = None
    caps: dict[str, Any] | None = None
    rate_per_second: float | None = None
    holdout_pct: float = 0.10
    goal: dict[str, Any] | None = None
    prediction_id: str | None = None
    strategy: str | None = None
    next_run_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("next_run_at", "created_at", "updated_at", "started_at", "finished_at"):
            out[key] = out[key].isoformat() if out[key] else None
        return out


_JSON = ("audience", "content", "schedule", "dnd", "caps", "goal")


def _from_row(row: Any) -> Campaign:
    data = dict(row._mapping)
    for key in _JSON:
        data[key] = orjson.loads(data[key])
    return Campaign(**data)


def _hhmm(value: Any, path: str) -> time:
    try:
        return time.fromisoformat(str(value))
    except ValueError:
        raise CampaignError(f"{path} must be a time as HH:MM") from None


def validate_schedule(schedule: dict[str, Any]) -> dict[str, Any]:
    kind = schedule.get("type", "now")
    if kind == "now":
        return {"type": "now"}
    tz = bool(schedule.get("user_timezone", False))
    if kind == "at":
        try:
            at = datetime.fromisoformat(str(schedule.get("at")))
        except ValueError:
            raise CampaignError("schedule.at must be an ISO date-time") from None
        if not 1970 <= at.year <= 9998:  # a day's margin for every time zone's shift
            raise CampaignError("schedule.at must be between the years 1970 and 9998")
        if at.tzinfo is None and not tz:
            at = at.replace(tzinfo=UTC)
        return {"type": "at", "at": at.isoformat(), "user_timezone": tz}
    if kind == "recurring":
        every = schedule.get("every")
        if every not in ("daily", "weekly"):
            raise CampaignError("schedule.every must be daily or weekly")
        out = {"type": "recurring", "every": every, "user_timezone": tz,
               "time": _hhmm(schedule.get("time", "10:00"), "schedule.time").strftime("%H:%M")}
        if every == "weekly":
            weekday = schedule.get("weekday", 0)
            if isinstance(weekday, bool) or weekday not in range(7):
                raise CampaignError("schedule.weekday must be 0 (Monday) to 6 (Sunday)")
            out["weekday"] = weekday
        if schedule.get("until"):
            try:
                until = datetime.fromisoformat(str(schedule["until"]))
            except ValueError:
                raise CampaignError("schedule.until must be an ISO date-time") from None
            if not 1970 <= until.year <= 9998:
                raise CampaignError("schedule.until must be between the years 1970 and 9998")
            out["until"] = (until if until.tzinfo else until.replace(tzinfo=UTC)).isoformat()
        return out
    raise CampaignError("schedule.type must be now, at or recurring")


def validate_dnd(dnd: dict[str, Any] | None) -> dict[str, Any] | None:
    if not dnd:
        return None
    start = _hhmm(dnd.get("start", "21:00"), "dnd.start")
    end = _hhmm(dnd.get("end", "08:00"), "dnd.end")
    action = dnd.get("action", "delay")
    if action not in ("drop", "delay"):
        raise CampaignError("dnd.action must be drop or delay")
    return {"start": start.strftime("%H:%M"), "end": end.strftime("%H:%M"), "action": action}


def validate_caps(caps: dict[str, Any] | None) -> dict[str, Any] | None:
    if not caps:
        return None
    out = {}
    for key in ("per_day", "per_campaign"):
        if caps.get(key) is not None:
            value = caps[key]
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1000:
                raise CampaignError(f"caps.{key} must be a whole number from 1 to 1000")
            out[key] = value
    return out or None


def validate_goal(goal: dict[str, Any] | None) -> dict[str, Any] | None:
    if not goal:
        return None
    if not isinstance(goal.get("event"), str) or not goal["event"]:
        raise CampaignError("goal.event is required")
    hours = goal.get("window_hours", 24)
    if isinstance(hours, bool) or not isinstance(hours, int | float) or not 1 <= hours <= 8760:
        raise CampaignError("goal.window_hours must be 1 to 8760 (a year)")
    from propel.predictions.spec import Condition, SpecError

    raw_where = goal.get("where", [])
    if not isinstance(raw_where, list):
        raise CampaignError("goal.where must be a list of conditions")
    where = []
    for i, c in enumerate(raw_where):
        if not isinstance(c, dict):
            raise CampaignError(f"goal.where[{i}] must be an object")
        try:
            where.append(asdict(Condition(**c)))
        except (SpecError, TypeError) as exc:
            raise CampaignError(f"goal.where[{i}]: {exc}") from None
    revenue = goal.get("revenue_property")
    if revenue is not None and (not isinstance(revenue, str) or not revenue):
        raise CampaignError("goal.revenue_property must be a property name")
    return {"event": goal["event"], "where": where, "window_hours": hours,
            "revenue_property": revenue}


def _validate(propel: Propel, account_id: str, c: Campaign) -> None:
    if not isinstance(c.name, str) or not c.name.strip() or len(c.name) > 200:
        raise CampaignError("name must be 1 to 200 characters")
    if c.channel not in CHANNELS:
        raise CampaignError(f"channel must be one of {', '.join(CHANNELS)}")
    if isinstance(c.holdout_pct, bool) or not isinstance(c.holdout_pct, int | float) \
            or not 0 <= c.holdout_pct <= 0.9:
        raise CampaignError("holdout_pct must be between 0 and 0.9")
    if c.rate_per_second is not None and not 0 < c.rate_per_second <= 100_000:
        raise CampaignError("rate_per_second must be above 0")
    from propel import audiences
    from propel.campaigns.content_validation import TemplateError, validate_content

    try:
        audiences.validate(c.audience)
    except audiences.AudienceError as exc:
        raise CampaignError(f"audience: {exc}") from None
    try:
        validate_content(c.channel, c.content)
    except TemplateError as exc:
        raise CampaignError(f"content: {exc}") from None
    c.schedule = validate_schedule(c.schedule or {"type": "now"})
    c.dnd = validate_dnd(c.dnd)
    c.caps = validate_caps(c.caps)
    c.goal = validate_goal(c.goal)


def _values(c: Campaign) -> dict[str, Any]:
    values = {k: getattr(c, k) for k in (
        "name", "status", "channel", "rate_per_second", "holdout_pct", "prediction_id",
        "strategy", "next_run_at")}
    for key in _JSON:
        values[key] = orjson.dumps(getattr(c, key)).decode()
    return values


def create_campaign(propel: Propel, account_id: str, **fields: Any) -> Campaign:
    c = Campaign(id="cmp_" + secrets.token_hex(6), account_id=account_id, status="draft",
                 **fields)
    _validate(propel, account_id, c)
    now = utcnow()
    propel.db.write(lambda conn: conn.execute(insert(campaigns).values(
        id=c.id, account_id=account_id, created_at=now, updated_at=now, **_values(c))))
    return get_campaign(propel, account_id, c.id)


def get_campaign(propel: Propel, account_id: str, campaign_id: str) -> Campaign:
    with propel.db.read() as conn:
        row = conn.execute(select(campaigns).where(campaigns.c.account_id == account_id,
                                                   campaigns.c.id == campaign_id)).first()
    if row is None:
        raise LookupError(f"no campaign {campaign_id!r} in this account")
    return _from_row(row)


def list_campaigns(propel: Propel, account_id: str, *, prediction_id: str | None = None
                   ) -> list[Campaign]:
    query = select(campaigns).where(campaigns.c.account_id == account_id)
    if prediction_id:
        query = query.where(campaigns.c.prediction_id == prediction_id)
    with propel.db.read() as conn:
        return [_from_row(r) for r in conn.execute(query.order_by(campaigns.c.created_at))]


def update_campaign(propel: Propel, account_id: str, campaign_id: str, **changes: Any
                    ) -> Campaign:
    c = get_campaign(propel, account_id, campaign_id)
    between_runs, next_run = is_between_runs(propel, c), c.next_run_at
    if c.status not in EDITABLE and not between_runs:
        raise CampaignError(f"a {c.status} campaign cannot be edited; duplicate it instead")
    for key, value in changes.items():
        if key not in Campaign.__dataclass_fields__ or key in ("id", "account_id", "status"):
            raise CampaignError(f"{key} cannot be changed")
        if between_runs and key not in BETWEEN_RUNS:
            if value == getattr(c, key):  # a full record sent back unchanged
                continue
            raise CampaignError(f"{key} cannot be changed once a recurring campaign has run "
                                f"(its results would mix two set-ups); duplicate it instead")
        setattr(c, key, value)
    _validate(propel, account_id, c)
    if between_runs and c.schedule["type"] != "recurring":
        raise CampaignError("schedule: a recurring campaign that has run stays recurring; "
                            "stop it and duplicate it to send once")
    if c.status == "scheduled" or between_runs:
        c.next_run_at = first_run_at(c.schedule, utcnow())
    # the row must be as it was read: not started (or, between runs, not dispatched)
    unchanged = (campaigns.c.status.in_(EDITABLE) if not between_runs else
                 (campaigns.c.status == "running") & (campaigns.c.next_run_at == next_run))

    def _update(conn: Connection) -> None:
        done = conn.execute(update(campaigns).where(
            campaigns.c.id == campaign_id, unchanged).values(
            updated_at=utcnow(), **_values(c))).rowcount
        if not done:  # it started running meanwhile
            raise CampaignError("the campaign started running before the edit was saved")

    propel.db.write(_update)
    return get_campaign(propel, account_id, campaign_id)


def is_between_runs(propel: Propel, c: Campaign) -> bool:
    """A recurring campaign that has run, with a next run ahead and no run sending:
    its timing, content and audience may change before the next run."""
    if c.status != "running" or c.schedule.get("type") != "recurring" or not c.next_run_at:
        return False
    from propel.campaigns.tables import dispatches

    with propel.db.read() as conn:
        return conn.execute(select(dispatches.c.id).where(
            dispatches.c.campaign_id == c.id, dispatches.c.status == "sending")
            .limit(1)).first() is None


def is_editable(propel: Propel, c: Campaign) -> bool:
    """Draft and scheduled campaigns, and recurring ones between runs (some fields)."""
    return c.status in EDITABLE or is_between_runs(propel, c)


def first_run_at(schedule: dict[str, Any], now: datetime) -> datetime:
    """When the next dispatch starts (for user-timezone schedules: the earliest zone)."""
    kind = schedule["type"]
    if kind == "now":
        return now
    shift = EARLIEST_OFFSET if schedule.get("user_timezone") else timedelta(0)
    if kind == "at":
        at = datetime.fromisoformat(schedule["at"])
        if at.tzinfo is None:  # a wall-clock time in each user's zone
            at = at.replace(tzinfo=UTC)
        return max(now, at - shift)
    hh, mm = (int(x) for x in schedule["time"].split(":"))
    day = now.date()
    for offset in range(0, 9):
        candidate = datetime(day.year, day.month, day.day, hh, mm, tzinfo=UTC) + timedelta(
            days=offset) - shift
        if schedule["every"] == "weekly" and (candidate + shift).weekday() != schedule["weekday"]:
            continue
        if candidate > now:
            return candidate
    raise AssertionError("unreachable: a weekly slot exists within 8 days")


def local_send_time(schedule: dict[str, Any], run_at: datetime, tz_name: str | None
                    ) -> datetime | None:
    """For user-timezone schedules, when this dispatch should reach a user in ``tz_name``."""
    if not schedule.get("user_timezone"):
        return None
    try:
        tz = zoneinfo.ZoneInfo(tz_name or "UTC")
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        tz = zoneinfo.ZoneInfo("UTC")
    wall = (run_at + EARLIEST_OFFSET).replace(tzinfo=None)
    if schedule["type"] == "at":
        wall = datetime.fromisoformat(schedule["at"]).replace(tzinfo=None)
    return wall.replace(tzinfo=tz).astimezone(UTC)


def _set_status(propel: Propel, campaign_id: str, allowed: tuple[str, ...], **values: Any
                ) -> bool:
    return propel.db.write(lambda conn: conn.execute(update(campaigns).where(
        campaigns.c.id == campaign_id, campaigns.c.status.in_(allowed)).values(
        updated_at=utcnow(), **values)).rowcount == 1)


def publish(propel: Propel, account_id: str, campaign_id: str) -> Campaign:
    """Send now, or schedule. Sending happens in the background (delivery workers)."""
    c = get_campaign(propel, account_id, campaign_id)
    if c.status != "draft":
        raise CampaignError(f"only a draft can be published; this one is {c.status}")
    _validate(propel, account_id, c)
    run_at = first_run_at(c.schedule, utcnow())
    until = c.schedule.get("until")
    if until and run_at > datetime.fromisoformat(until):
        raise CampaignError(f"schedule.until ({until}) is before the first run "
                            f"({run_at.isoformat(timespec='minutes')}): it would never run")
    _set_status(propel, campaign_id, ("draft",), status="scheduled", next_run_at=run_at)
    return get_campaign(propel, account_id, campaign_id)


def stop(propel: Propel, account_id: str, campaign_id: str) -> Campaign:
    from propel.campaigns.dispatch import cancel_pending

    c = get_campaign(propel, account_id, campaign_id)
    if c.status in ("completed", "stopped"):
        raise CampaignError(f"the campaign is already {c.status}")
    _set_status(propel, campaign_id, ("draft", "scheduled", "running"), status="stopped",
                next_run_at=None, finished_at=utcnow())
    cancel_pending(propel, campaign_id)
    return get_campaign(propel, account_id, campaign_id)


def duplicate(propel: Propel, account_id: str, campaign_id: str, name: str | None = None
              ) -> Campaign:
    c = get_campaign(propel, account_id, campaign_id)
    return create_campaign(
        propel, account_id, name=name or f"{c.name} (copy)", channel=c.channel,
        audience=c.audience, content=c.content, schedule=c.schedule, dnd=c.dnd, caps=c.caps,
        rate_per_second=c.rate_per_second, holdout_pct=c.holdout_pct, goal=c.goal,
        prediction_id=c.prediction_id, strategy=c.strategy)


def due_campaigns(propel: Propel, now: datetime | None = None) -> list[str]:
    now = now or utcnow()
    with propel.db.read() as conn:
        return list(conn.execute(select(campaigns.c.id).where(
            campaigns.c.status.in_(("scheduled", "running")),
            campaigns.c.next_run_at <= now)).scalars())
