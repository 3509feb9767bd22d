"""Dashboard pages: the campaigns list and a campaign's stats (funnel, groups, variants,
lift over the holdout, time series), with Stop and Duplicate.

Numbers come from ``propel.campaigns.stats`` exactly as the JSON API serves them
(``/api/v1/campaigns/{id}/stats``); this module only arranges them for reading.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response
from starlette.exceptions import HTTPException

from propel import audiences
from propel.accounts.users import Session
from propel.api.auth import propel_of
from propel.campaigns import service
from propel.campaigns.attribution import attribute_conversions
from propel.campaigns.stats import campaign_stats
from propel.core import Propel
from propel.predictions import registry
from propel.web.auth import signed_in
from propel.web.templating import render

router = APIRouter(include_in_schema=False)

# Campaign ids are "cmp_" + hex; anything else cannot exist, so it is a 404 before
# it reaches the database (PostgreSQL refuses some characters outright).
_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
SERIES = ("daily", "hourly")
CHANNEL_NAMES = {"email": "Email", "inbox": "App Inbox", "webhook": "Webhook",
                 "push": "Push", "sms": "SMS"}
FUNNEL = ("Targeted", "Sent", "Delivered", "Opened", "Clicked", "Converted")
# A scheduled campaign this close to its run is polled too, so the page sees it start.
POLL_AHEAD = timedelta(minutes=10)
# The time-series table lists at most this many of the latest non-empty buckets.
SERIES_TABLE_ROWS = 200
MAX_NAME = 200  # campaigns.name
HOURLY_UP_TO = timedelta(days=3)


# --- formatting ---------------------------------------------------------------------



def _value_text(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def _describe(rule: dict[str, Any], top: bool = True) -> str:
    if "and" in rule or "or" in rule:
        key = "and" if "and" in rule else "or"
        if not rule[key]:
            return "everyone"
        text = f" {key} ".join(_describe(item, False) for item in rule[key])
        return text if top or len(rule[key]) == 1 else f"({text})"
    if "not" in rule:
        return f"not {_describe(rule['not'], False)}"
    if "reachable" in rule:
        return f"reachable by {rule['reachable']}"
    if "event" in rule:
        text = ("did " if rule.get("did", True) else "did not do ") + rule["event"]
        if rule.get("min_count", 1) != 1:
            text += f" at least {rule['min_count']} times"
        if "within_days" in rule:
            text += f" in the last {rule['within_days']} days"
        if "between" in rule:
            text += f" between {rule['between'][0]} and {rule['between'][1]}"
        if rule.get("where"):
            text += " where " + " and ".join(_describe(c, False) for c in rule["where"])
        return text
    value = f" {_value_text(rule['value'])}" if "value" in rule else ""
    return f"{rule['property']} {rule['op']}{value}"


def audience_summary(rule: dict[str, Any], limit: int = 300) -> str:
    """The audience rule as one readable line (cut at ``limit`` characters)."""
    try:
        canonical = audiences.validate(rule).to_json()
    except audiences.AudienceError:
        return "Audience rule not valid any more; edit or duplicate the campaign"
    text = _describe(canonical)
    text = text[:1].upper() + text[1:]
    return text if len(text) <= limit else text[:limit - 1] + "…"


def audience_groups(rule: dict[str, Any], prediction_name: str | None) -> list[str]:
    """The likelihood groups the audience selects by (not counting negated parts)."""
    if not prediction_name:
        return []
    found: list[str] = []

    def visit(node: Any) -> None:
        if isinstance(node, audiences.AllOf | audiences.AnyOf):
            for item in node.items:
                visit(item)
        elif isinstance(node, audiences.PropertyCond) and node.property == prediction_name \
                and node.op in ("=", "in"):
            found.extend(str(v) for v in node.values if str(v) not in found)

    try:
        visit(audiences.validate(rule))
    except audiences.AudienceError:
        return []
    order = {"High": 0, "Medium": 1, "Low": 2}
    return sorted(found, key=lambda g: (order.get(g, 9), g))


def _when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if moment else ""


def schedule_text(c: service.Campaign) -> str:
    s = c.schedule or {"type": "now"}
    local = " in each user's timezone" if s.get("user_timezone") else ""
    if s["type"] == "now":
        text = "Send now"
    elif s["type"] == "at":
        text = f"Once, at {s['at'].replace('T', ' ')}{local}"
    else:
        days = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
        every = "Every day" if s["every"] == "daily" else f"Every {days[s['weekday']]}"
        text = f"{every} at {s['time']}{local}"
        if s.get("until"):
            text += f", until {s['until'].replace('T', ' ')}"
    return text


def goal_text(goal: dict[str, Any] | None) -> str:
    if not goal:
        return "No goal: conversions are not counted"
    hours = goal.get("window_hours") or 24
    if hours % 24 == 0:
        window = "1 day" if hours == 24 else f"{hours / 24:g} days"
    else:
        window = f"{hours:g} hours"
    where = " (with conditions)" if goal.get("where") else ""
    return f"{goal['event']}{where} within {window} of the send"


def next_run_text(c: service.Campaign) -> str:
    if c.status in ("scheduled", "running") and c.next_run_at:
        return _when(c.next_run_at)
    if c.finished_at:
        return f"Finished {_when(c.finished_at)}"
    if c.started_at:
        return f"Started {_when(c.started_at)}"
    return "Not scheduled"


def funnel_rows(totals: dict[str, Any]) -> list[tuple[str, int, float | None, str]]:
    """(step, users, rate, what the rate is of) for the funnel table."""
    assigned = totals["targeted"] - totals["holdout"]

    def rate(n: int, base: int) -> float | None:
        return n / base if base else None

    return [
        ("Targeted", totals["targeted"], None, f"{totals['holdout']:,} of them held out"),
        ("Sent", totals["sent"], rate(totals["sent"], assigned), "of users to message"),
        ("Delivered", totals["delivered"], rate(totals["delivered"], totals["sent"]),
         "of sent"),
        ("Opened", totals["opened"], rate(totals["opened"], totals["delivered"]),
         "of delivered"),
        ("Clicked", totals["clicked"], rate(totals["clicked"], totals["delivered"]),
         "of delivered"),
        ("Converted", totals["converted"], rate(totals["converted"], assigned),
         "of users to message"),
    ]


# --- charts (each with a table or text equivalent in the page) ------------------------

def funnel_chart(totals: dict[str, Any]) -> dict[str, Any]:
    return {"type": "bar", "data": {"labels": list(FUNNEL), "datasets": [{
        "label": "Users", "data": [totals[k.lower()] for k in FUNNEL],
        "backgroundColor": "#1d4ed8"}]},
        "options": {"indexAxis": "y", "plugins": {"legend": {"display": False}}}}


def lift_chart(stats: dict[str, Any]) -> dict[str, Any] | None:
    """Each estimate (all users, then per group) as a point on its 95 % interval, in
    percentage points."""
    rows = [("All", stats["lift"])] + [(g, s["lift"]) for g, s in stats["groups"].items()]
    rows = [(name, lift) for name, lift in rows if lift["diff"] is not None]
    if not rows:
        return None

    def pts(x: float) -> float:
        return round(x * 100, 2)

    return {"type": "bar", "data": {"labels": [name for name, _ in rows], "datasets": [
        {"type": "bar", "label": "95 % interval (points)", "backgroundColor": "#b2ccff",
         "order": 1, "data": [[pts(lift["low"]), pts(lift["high"])] for _, lift in rows]},
        # the estimate as a dot drawn over its interval bar
        {"type": "line", "label": "Lift (points)", "showLine": False, "pointRadius": 7,
         "pointStyle": "rectRot", "indexAxis": "y", "order": 0,
         "backgroundColor": "#1b1f24", "borderColor": "#1b1f24",
         "data": [pts(lift["diff"]) for _, lift in rows]}]},
        "options": {"indexAxis": "y"}}


def series_chart(series: list[dict[str, Any]]) -> dict[str, Any]:
    colours = {"sent": "#1d4ed8", "opened": "#067647", "clicked": "#a15c07",
               "converted_treated": "#b42318"}
    names = {"sent": "Sent", "opened": "Opened", "clicked": "Clicked",
             "converted_treated": "Converted"}
    return {"type": "line", "data": {
        "labels": [b["bucket"][:16].replace("T", " ") for b in series],
        "datasets": [{"label": names[k], "data": [b[k] for b in series],
                      "borderColor": colours[k], "backgroundColor": colours[k]}
                     for k in names]}}


# --- lookups --------------------------------------------------------------------------

def _account(session: Session) -> str:
    return session.user.account_id


def campaign_or_404(propel: Propel, account_id: str, campaign_id: str) -> service.Campaign:
    if not _ID.match(campaign_id):
        raise HTTPException(404, "There is no such campaign.")
    try:
        return service.get_campaign(propel, account_id, campaign_id)
    except LookupError:
        raise HTTPException(404, "There is no such campaign in this account.") from None


def _prediction_names(propel: Propel, account_id: str) -> dict[str, str]:
    return {p.id: p.spec.name for p in registry.list_all(propel.db, account_id)}


def _row(c: service.Campaign, names: dict[str, str], stats: dict[str, Any]
         ) -> dict[str, Any]:
    prediction = names.get(c.prediction_id or "")
    return {"campaign": c, "channel": CHANNEL_NAMES.get(c.channel, c.channel),
            "prediction": prediction, "prediction_id": c.prediction_id,
            "groups": audience_groups(c.audience, prediction),
            "next_run": next_run_text(c), "totals": stats["totals"], "lift": stats["lift"]}


def _is_live(c: service.Campaign, totals: dict[str, Any]) -> bool:
    """Whether the numbers are still moving, so the stats region should poll."""
    if c.status == "running" or totals["pending"] > 0:
        return True
    now = datetime.now(UTC)
    return c.status == "scheduled" and c.next_run_at is not None \
        and c.next_run_at <= now + POLL_AHEAD


def _series(value: str, c: service.Campaign) -> str:
    """The chosen time-series width; by default hourly while a campaign is young or was
    short (days would show one or two points), daily otherwise."""
    if not value:
        now = datetime.now(UTC)
        span = (c.finished_at or now) - (c.started_at or now)
        return "hourly" if span <= HOURLY_UP_TO else "daily"
    if value not in SERIES:
        raise HTTPException(422, "The time series can be daily or hourly.")
    return value


def _stats_context(propel: Propel, c: service.Campaign, series: str) -> dict[str, Any]:
    # as the API's stats route: conversions are brought up to date first
    attribute_conversions(propel, c.id)
    stats = campaign_stats(propel.db, c.id, series=series)
    filled = [b for b in stats["series"] if b["sent"] or b["opened"] or b["clicked"]
              or b["converted_treated"] or b["converted_holdout"]]
    return {"c": c, "stats": stats, "totals": stats["totals"], "series": series,
            "live": _is_live(c, stats["totals"]), "funnel": funnel_rows(stats["totals"]),
            "funnel_chart": funnel_chart(stats["totals"]), "lift_chart": lift_chart(stats),
            "series_chart": series_chart(stats["series"]) if stats["series"] else None,
            "series_rows": filled[-SERIES_TABLE_ROWS:],
            "series_cut": max(0, len(filled) - SERIES_TABLE_ROWS),
            "refreshed": _when(datetime.now(UTC))}


# --- routes ---------------------------------------------------------------------------

@router.get("/campaigns")
def campaigns_page(request: Request, status: str = "",
                   session: Session = Depends(signed_in())) -> Response:
    propel = propel_of(request)
    account_id = _account(session)
    if status and status not in service.STATUSES:
        return render(request, "campaigns/list.html", status_code=422, section="campaigns",
                      rows=[], status=status, statuses=service.STATUSES, any_campaign=True,
                      error=f"Unknown status {status!r}; choose one from the list.")
    # a journey's send steps are campaigns of its own: they show on the journey's page
    campaigns = [c for c in service.list_campaigns(propel, account_id)
                 if c.strategy != "journey"]
    names = _prediction_names(propel, account_id)
    shown = [c for c in reversed(campaigns) if not status or c.status == status]  # newest first
    rows = [_row(c, names, campaign_stats(propel.db, c.id)) for c in shown]
    return render(request, "campaigns/list.html", section="campaigns", rows=rows,
                  status=status, statuses=service.STATUSES, any_campaign=bool(campaigns))


@router.get("/campaigns/{campaign_id}")
def campaign_page(request: Request, campaign_id: str, series: str = "",
                  session: Session = Depends(signed_in())) -> Response:
    propel = propel_of(request)
    account_id = _account(session)
    c = campaign_or_404(propel, account_id, campaign_id)
    context = _stats_context(propel, c, _series(series, c))
    prediction = _prediction_names(propel, account_id).get(c.prediction_id or "")
    journey = journey_of(propel, c)
    audience = (f"Users reaching step {journey['step']} of version {journey['version']}"
                if journey else audience_summary(c.audience))
    return render(request, "campaigns/stats.html", section="campaigns", title=c.name,
                  prediction=prediction, groups=audience_groups(c.audience, prediction),
                  channel=CHANNEL_NAMES.get(c.channel, c.channel),
                  audience=audience, schedule=schedule_text(c),
                  goal=goal_text(c.goal), journey=journey,
                  next_run=next_run_text(c), editable=service.is_editable(propel, c),
                  can_act=session.user.can("marketer") and journey is None, **context)


@router.get("/campaigns/{campaign_id}/stats-panel")
def stats_panel(request: Request, campaign_id: str, series: str = "",
                session: Session = Depends(signed_in())) -> Response:
    """The stats region alone, for htmx to refresh while the campaign is sending."""
    propel = propel_of(request)
    c = campaign_or_404(propel, _account(session), campaign_id)
    return render(request, "campaigns/_stats_panel.html",
                  **_stats_context(propel, c, _series(series, c)))


def journey_of(propel: Propel, c: service.Campaign) -> dict[str, Any] | None:
    """For a journey's send step: the journey (id, name), version and step."""
    if c.strategy != "journey" or not isinstance(c.audience, dict):
        return None
    from propel import journeys

    try:
        j = journeys.get(propel, c.account_id, str(c.audience.get("journey", "")))
    except LookupError:
        return None
    return {"id": j.id, "name": j.name, "version": c.audience.get("version"),
            "step": c.audience.get("step")}


def _action_failed(request: Request, c: service.Campaign, exc: Exception) -> Response:
    """An action the campaign's state does not allow: a 409 page saying why."""
    return render(request, "error.html", status_code=409, title="Not possible",
                  message=f"{c.name}: {exc}.")


@router.post("/campaigns/{campaign_id}/stop")
def stop_campaign(request: Request, campaign_id: str,
                  session: Session = Depends(signed_in("marketer"))) -> Response:
    propel = propel_of(request)
    c = campaign_or_404(propel, _account(session), campaign_id)
    try:
        service.stop(propel, c.account_id, c.id)
    except service.CampaignError as exc:
        return _action_failed(request, c, exc)
    return RedirectResponse(f"/campaigns/{c.id}", status_code=303)


@router.post("/campaigns/{campaign_id}/duplicate")
def duplicate_campaign(request: Request, campaign_id: str,
                       session: Session = Depends(signed_in("marketer"))) -> Response:
    propel = propel_of(request)
    c = campaign_or_404(propel, _account(session), campaign_id)
    # the service names the copy "NAME (copy)"; a long name is cut to leave room for it
    name = None if len(c.name) <= MAX_NAME - len(" (copy)") else \
        c.name[:MAX_NAME - len("… (copy)")] + "… (copy)"
    try:
        copy = service.duplicate(propel, c.account_id, c.id, name=name)
    except service.CampaignError as exc:  # e.g. the name is too long for " (copy)"
        return _action_failed(request, c, exc)
    return RedirectResponse(f"/campaigns/{copy.id}/edit", status_code=303)
