"""The campaign builder's form: campaign fields (``propel.campaigns.service``) to the
values the form shows, and the posted form back to campaign fields with an error per
field. The form keeps exactly what was typed, so a rejected form is shown as sent."""

from __future__ import annotations

import math
import re
import zoneinfo
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from functools import lru_cache
from typing import Any

import orjson

from propel.campaigns.content_validation import MAX_VARIANTS
from propel.predictions.spec import SpecError, parse_where
from propel.web import audience_form

CHANNEL_NAMES = {"inbox": "App Inbox", "email": "Email", "webhook": "Webhook",
                 "push": "Push", "sms": "SMS"}
# (content key, label, control) per channel, in form order.
CHANNEL_FIELDS: dict[str, list[tuple[str, str, str]]] = {
    "inbox": [("title", "Title", "input"), ("body", "Message", "textarea"),
              ("url", "Link (optional)", "input")],
    "email": [("subject", "Subject", "input"), ("html", "HTML body", "textarea"),
              ("text", "Text body", "textarea")],
    "webhook": [("payload", "Payload (JSON)", "textarea")],
    "push": [("title", "Title", "input"), ("body", "Body", "textarea"),
             ("url", "Link (optional)", "input")],
    "sms": [("body", "Message", "textarea")],
}
WEBHOOK_KEYS = ("title", "body", "url", "data")
CONTENT_KEYS = ("title", "body", "url", "subject", "html", "text", "payload", "data")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
DEFAULT_GOAL_EVENT = "Charged"


@lru_cache(maxsize=1)
def timezones() -> list[str]:
    return ["UTC", *sorted(z for z in zoneinfo.available_timezones()
                           if "/" in z and not z.startswith(("Etc/", "SystemV/")))]


@dataclass
class BuilderState:
    """Everything the builder form shows, as text, plus the audience tree."""

    values: dict[str, str]
    audience: audience_form.Node | None  # None: edited as JSON
    variants: list[dict[str, str]]
    errors: dict[str, str] = field(default_factory=dict)
    focus: str | None = None  # the id of the control to focus after a re-render

    @property
    def channel(self) -> str:
        return self.values["channel"]


# ------------------------------------------------------------------ campaign -> form

def _variant_values(channel: str, variant: dict[str, Any]) -> dict[str, str]:
    out = {"name": str(variant.get("name", "")), "split": audience_form._text(
        variant.get("split"))}
    if channel == "webhook":
        payload = {k: variant[k] for k in WEBHOOK_KEYS if variant.get(k) not in (None, "")}
        out["payload"] = orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode()
    else:
        for key in ("title", "body", "url", "subject", "html", "text"):
            if isinstance(variant.get(key), str):
                out[key] = variant[key]
        if variant.get("data"):  # not editable here, but kept
            out["data"] = orjson.dumps(variant["data"]).decode()
    return out


def _schedule_values(schedule: dict[str, Any]) -> dict[str, str]:
    out = {"when": {"at": "at", "recurring": "recurring"}.get(schedule.get("type"), "now"),
           "timezone": "UTC", "user_timezone": "on" if schedule.get("user_timezone") else "",
           "at": "", "every": schedule.get("every", "daily"),
           "weekday": str(schedule.get("weekday", 0)), "time": schedule.get("time", "10:00")}
    if schedule.get("at"):
        at = datetime.fromisoformat(schedule["at"])
        if at.tzinfo is not None:
            at = at.astimezone(UTC)
        out["at"] = at.strftime("%Y-%m-%dT%H:%M")
    return out


def _goal_values(goal: dict[str, Any] | None) -> dict[str, str]:
    if not goal:
        return {"goal_event": "", "goal_where": "", "goal_window": "", "goal_revenue": ""}
    where = []
    for c in goal.get("where", []):
        if c["op"] == "exists":
            where.append(f"{c['property']} exists")
        else:
            value = c.get("value")
            shown = (f"[{audience_form._text(value)}]" if isinstance(value, list)
                     else audience_form._text(value))
            where.append(f"{c['property']} {c['op']} {shown}")
    hours = goal.get("window_hours", 24)
    return {"goal_event": goal.get("event", ""), "goal_where": " and ".join(where),
            "goal_window": audience_form._text(round(hours / 24, 3)),
            "goal_revenue": goal.get("revenue_property") or ""}


def state_from_fields(fields: dict[str, Any], campaign_id: str = "") -> BuilderState:
    """The form for a saved campaign or a draft that is not saved yet."""
    channel = fields["channel"]
    dnd = fields.get("dnd") or {}
    caps = fields.get("caps") or {}
    values = {
        "campaign_id": campaign_id, "name": fields.get("name", ""), "channel": channel,
        "prev_channel": channel, "prediction_id": fields.get("prediction_id") or "",
        "strategy": fields.get("strategy") or "",
        "dnd_on": "on" if dnd else "", "dnd_start": dnd.get("start", "21:00"),
        "dnd_end": dnd.get("end", "08:00"), "dnd_action": dnd.get("action", "delay"),
        "cap_per_day": audience_form._text(caps.get("per_day")),
        "cap_per_campaign": audience_form._text(caps.get("per_campaign")),
        "rate": audience_form._text(fields.get("rate_per_second")),
        "holdout": audience_form._text(round(fields.get("holdout_pct", 0.1) * 100, 4)),
        **_schedule_values(fields.get("schedule") or {"type": "now"}),
        **_goal_values(fields.get("goal")),
        "audience_json": orjson.dumps(fields["audience"], option=orjson.OPT_INDENT_2).decode(),
    }
    try:
        tree: audience_form.Node | None = audience_form.from_rule(fields["audience"])
    except audience_form.Unrepresentable:
        tree = None
    variants = [_variant_values(channel, v) for v in fields["content"].get("variants", [])]
    return BuilderState(values, tree, variants or [{"name": "A", "split": "100"}])


def new_fields(channel: str) -> dict[str, Any]:
    """A blank campaign (no prediction chosen)."""
    from propel.campaigns.engage import default_content

    return {"name": "", "channel": channel, "audience": {"and": []},
            "content": default_content(channel, "", ""), "holdout_pct": 0.10,
            "goal": {"event": DEFAULT_GOAL_EVENT, "where": [], "window_hours": 7 * 24}}


# ------------------------------------------------------------------ posted form -> state

_SIMPLE = ("campaign_id", "name", "channel", "prev_channel", "prediction_id", "strategy",
           "when", "at", "timezone", "every", "weekday", "time", "user_timezone", "dnd_on",
           "dnd_start", "dnd_end", "dnd_action", "cap_per_day", "cap_per_campaign", "rate",
           "holdout", "goal_event", "goal_where", "goal_window", "goal_revenue",
           "audience_json", "preview_identity")


def _convert_variant(variant: dict[str, str], old: str, new: str) -> dict[str, str]:
    """Carry a variant's text over when the channel changes."""
    if old == new:
        return variant
    text = dict(variant)
    if old == "webhook":
        try:
            payload = orjson.loads(variant.get("payload") or "{}")
        except orjson.JSONDecodeError:
            payload = {}
        if isinstance(payload, dict):
            text.update({k: str(v) for k, v in payload.items() if isinstance(v, str)})
    title = text.get("title") or text.get("subject", "")
    body = text.get("body") or text.get("text", "")
    out = {"name": variant.get("name", ""), "split": variant.get("split", "")}
    if new == "email":
        out.update(subject=title, text=body, html=text.get("html") or (
            f"<p>{body}</p>" if body else ""))
    elif new == "webhook":
        payload = {k: v for k, v in (("title", title), ("body", body),
                                     ("url", text.get("url", ""))) if v}
        out["payload"] = orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode()
    elif new == "sms":
        out["body"] = body
    else:
        out.update(title=title, body=body, url=text.get("url", ""))
    return out


class _Clean:
    """The posted form without NUL characters, which no database text column holds."""

    def __init__(self, form: Any) -> None:
        self.form = form

    def __iter__(self) -> Any:
        return iter(self.form)

    def get(self, key: str, default: str = "") -> str:
        value = self.form.get(key, default)
        return (value if isinstance(value, str) else default).replace("\x00", "")


def state_from_form(form: Any) -> BuilderState:
    form = _Clean(form)
    values = {key: str(form.get(key, "")) for key in _SIMPLE}
    if values["channel"] not in CHANNEL_FIELDS:
        values["channel"] = "inbox"
    old = values["prev_channel"] if values["prev_channel"] in CHANNEL_FIELDS else \
        values["channel"]
    count = min(int(n) if (n := str(form.get("variant_count", "1"))).isdigit() else 1,
                MAX_VARIANTS + 1)
    variants = []
    for i in range(count):
        variant = {key: str(form.get(f"v{i}:{key}", "")) for key in ("name", "split",
                                                                      *CONTENT_KEYS)}
        variants.append(_convert_variant({k: v for k, v in variant.items()
                                          if v or k in ("name", "split")}, old,
                                         values["channel"]))
    values["prev_channel"] = values["channel"]
    tree = None if form.get("audience_mode") == "json" else audience_form.from_form(form)
    return BuilderState(values, tree, variants or [{"name": "A", "split": "100"}])


def _even_splits(variants: list[dict[str, str]]) -> None:
    share = 100 // len(variants)
    for i, v in enumerate(variants):
        v["split"] = str(share + (100 - share * len(variants) if i == 0 else 0))


def apply_op(state: BuilderState, op: str) -> None:
    """The form's own buttons: add/remove variant, audience rows, channel refresh."""
    if op == "add-variant" and len(state.variants) < MAX_VARIANTS:
        taken = {v.get("name") for v in state.variants}
        name = next(c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if c not in taken)
        state.variants.append(_convert_variant(
            {**{k: v for k, v in state.variants[-1].items() if k not in ("name", "split")},
             "name": name}, state.channel, state.channel))
        _even_splits(state.variants)
        state.focus = f"v{len(state.variants) - 1}-name"
    elif op.startswith("remove-variant:") and len(state.variants) > 1:
        index = op.partition(":")[2]
        if index.isdigit() and int(index) < len(state.variants):
            state.variants.pop(int(index))
            _even_splits(state.variants)
            state.focus = "add-variant"
    elif state.audience is not None and (op.startswith(("add-", "remove:"))):
        target = audience_form.apply_op(state.audience, op)
        if target is not None:
            state.focus = f"a-{target}-first" if op.startswith("add-") else f"a-{target}-add"


# ------------------------------------------------------------------ state -> fields

class _Errors(dict[str, str]):
    def add(self, key: str, message: str) -> None:
        self.setdefault(key, message)


def _number(text: str, key: str, errors: _Errors, what: str, low: float, high: float,
            whole: bool = False) -> float | None:
    text = text.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        errors.add(key, f"{what} must be a number")
        return None
    if not math.isfinite(value) or not low <= value <= high or (whole and not
                                                                value.is_integer()):
        kind = "a whole number" if whole else "a number"
        errors.add(key, f"{what} must be {kind} from {low:g} to {high:g}")
        return None
    return int(value) if whole else value



def webhook_payload(text: str, field: str, errors: Any) -> dict[str, Any]:
    """The webhook's JSON payload field as an object; a problem is recorded on ``field``."""
    try:
        payload = orjson.loads(text.strip() or "{}")
    except orjson.JSONDecodeError as exc:
        errors.add(field, f"Payload (JSON) is not valid JSON: {exc}")
        return {}
    if not isinstance(payload, dict):
        errors.add(field, 'Payload (JSON) must be an object, e.g. {"title": "…", "body": "…"}')
        return {}
    return payload

def _content(state: BuilderState, errors: _Errors) -> dict[str, Any]:
    out = []
    for i, v in enumerate(state.variants):
        variant: dict[str, Any] = {"name": v.get("name", "").strip()}
        split = _number(v.get("split", ""), f"v{i}-split", errors, "Split %", 0, 100)
        if split is not None or v.get("split", "").strip():
            variant["split"] = split if split is not None else 0
        if state.channel == "webhook":
            variant.update(webhook_payload(v.get("payload", ""), f"v{i}-payload", errors))
        else:
            for key, _, _ in CHANNEL_FIELDS[state.channel]:
                if v.get(key, "").strip():
                    variant[key] = v[key]
            if v.get("data") and state.channel in ("inbox", "push"):
                try:
                    variant["data"] = orjson.loads(v["data"])
                except orjson.JSONDecodeError:
                    errors.add(f"v{i}-name", "the variant's data is not valid JSON")
        out.append(variant)
    return {"variants": out}


def _schedule(values: dict[str, str], errors: _Errors, now: datetime) -> dict[str, Any]:
    when, tz_name = values["when"], values["timezone"] or "UTC"
    local = values["user_timezone"] == "on"
    try:
        tz = zoneinfo.ZoneInfo(tz_name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        errors.add("timezone", "Choose a timezone from the list")
        tz = zoneinfo.ZoneInfo("UTC")
    if when == "at":
        try:
            at = datetime.fromisoformat(values["at"])
        except ValueError:
            errors.add("at", "Enter the date and time to send")
            return {"type": "at"}
        if local:
            return {"type": "at", "at": at.replace(tzinfo=None).isoformat(),
                    "user_timezone": True}
        aware = at.replace(tzinfo=tz)
        if aware < now:
            errors.add("at", "The send time is in the past; choose a later time or "
                             "Send now")
        return {"type": "at", "at": aware.astimezone(UTC).isoformat()}
    if when == "recurring":
        if values["every"] not in ("daily", "weekly"):
            errors.add("every", "Choose daily or weekly")
            return {"type": "recurring"}
        try:
            at = time.fromisoformat(values["time"])
        except ValueError:
            errors.add("time", "Enter a time as HH:MM")
            return {"type": "recurring"}
        weekday = int(values["weekday"]) if values["weekday"] in "0123456" and \
            values["weekday"] else 0
        if not local and tz_name != "UTC":
            # stored in UTC: convert with today's offset in the chosen zone
            moment = datetime.combine(date.today(), at, tzinfo=tz).astimezone(UTC)
            shift = (moment.date() - date.today()).days
            at, weekday = moment.time(), (weekday + shift) % 7
        out = {"type": "recurring", "every": values["every"],
               "time": at.strftime("%H:%M"), "user_timezone": local}
        return out | ({"weekday": weekday} if values["every"] == "weekly" else {})
    if when != "now":
        errors.add("when", "Choose Send now, Schedule or Recurring")
    return {"type": "now"}


def _goal(values: dict[str, str], errors: _Errors) -> dict[str, Any] | None:
    event = values["goal_event"].strip()
    days = _number(values["goal_window"], "goal_window", errors,
                   "Attribution window (days)", 1, 365)
    if not event:
        if values["goal_where"].strip() or values["goal_revenue"].strip():
            errors.add("goal_event", "Enter the goal event, or clear the goal fields")
        return None
    if days is None and not values["goal_window"].strip():
        errors.add("goal_window", "Enter the attribution window in days (1 to 365)")
    where = []
    for part in re.split(r"\s+and\s+", values["goal_where"].strip()) \
            if values["goal_where"].strip() else []:
        try:
            c = parse_where(part)
        except SpecError as exc:
            errors.add("goal_where", str(exc).removeprefix("where: "))
            break
        where.append({"property": c.property, "op": c.op, "value": c.value})
    revenue = values["goal_revenue"].strip() or None
    return {"event": event, "where": where, "window_hours": round((days or 1) * 24, 3),
            "revenue_property": revenue}


def to_fields(state: BuilderState, types: dict[str, str], now: datetime | None = None
              ) -> tuple[dict[str, Any], dict[str, str]]:
    """Campaign fields for the service, and errors per form field (checked here: the
    form's own format; the service checks the rest again)."""
    now = now or datetime.now(UTC)
    errors = _Errors()
    values = state.values
    if not values["name"].strip():
        errors.add("name", "Enter a campaign name")
    if state.audience is not None:
        audience, row_errors = audience_form.to_rule(state.audience, types)
        for path, message in row_errors.items():
            errors.add(f"a-{path}", message)
    else:
        try:
            audience = orjson.loads(values["audience_json"] or "{}")
        except orjson.JSONDecodeError as exc:
            errors.add("audience_json", f"Not valid JSON: {exc}")
            audience = {}
    holdout = _number(values["holdout"], "holdout", errors, "Holdout %", 0, 90)
    if holdout is None and not values["holdout"].strip():
        errors.add("holdout", "Enter the holdout % (0 to 90)")
    caps = {key: _number(values[f"cap_{key}"], f"cap_{key}", errors, label, 1, 1000, True)
            for key, label in (("per_day", "Daily cap per user"),
                               ("per_campaign", "Cap per user for this campaign"))}
    dnd = None
    if values["dnd_on"] == "on":
        dnd = {"start": values["dnd_start"], "end": values["dnd_end"],
               "action": values["dnd_action"]}
        for key in ("start", "end"):
            try:
                time.fromisoformat(values[f"dnd_{key}"])
            except ValueError:
                errors.add(f"dnd_{key}", "Enter a time as HH:MM")
    fields = {
        "name": values["name"].strip(), "channel": values["channel"], "audience": audience,
        "content": _content(state, errors), "schedule": _schedule(values, errors, now),
        "dnd": dnd, "caps": {k: v for k, v in caps.items() if v is not None} or None,
        "rate_per_second": _number(values["rate"], "rate", errors,
                                   "Send rate limit", 0.001, 100_000),
        "holdout_pct": round((holdout or 0) / 100, 6), "goal": _goal(values, errors),
        "prediction_id": values["prediction_id"] or None,
        "strategy": values["strategy"] or None,
    }
    return fields, dict(errors)


# ------------------------------------------------------------------ service errors -> form

_SERVICE_FIELDS = (("name", "name"), ("channel", "channel"), ("holdout_pct", "holdout"),
                   ("rate_per_second", "rate"), ("schedule.at", "at"),
                   ("schedule.time", "time"), ("schedule.every", "every"),
                   ("schedule", "when"), ("dnd.start", "dnd_start"), ("dnd.end", "dnd_end"),
                   ("dnd", "dnd_action"), ("caps.per_day", "cap_per_day"),
                   ("caps.per_campaign", "cap_per_campaign"),
                   ("goal.window_hours", "goal_window"), ("goal.where", "goal_where"),
                   ("goal.revenue_property", "goal_revenue"), ("goal", "goal_event"),
                   ("prediction_id", "name"))


def problem_text(p: dict[str, Any]) -> str:
    """A template problem as one sentence: variant, field, line and reason."""
    where = [f"variant {p['variant']}" if p.get("variant") else "",
             str(p.get("field") or ""), f"line {p['line']}" if p.get("line") else ""]
    return f"{', '.join(w for w in where if w)}: {p.get('reason')}".lstrip(": ")


def _variant_index(state: BuilderState, label: str | None) -> int:
    for i, v in enumerate(state.variants):
        if label in (v.get("name", "").strip(), f"#{i + 1}"):
            return i
    return 0


def service_errors(state: BuilderState, message: str, problems: list[dict[str, Any]]
                   ) -> dict[str, str]:
    """A service refusal on the field it is about: template problems (variant, field,
    line, reason) on the variant's control, other messages by their field prefix."""
    errors = _Errors()
    for p in problems:
        index = _variant_index(state, p.get("variant"))
        key = str(p.get("field") or "name").split(".")[0]
        if key == "split" and p.get("variant") is None:
            key, index = "split", len(state.variants) - 1
        if state.channel == "webhook" and key in WEBHOOK_KEYS:
            key = "payload"
        if key not in ("name", "split", *(k for k, _, _ in CHANNEL_FIELDS[state.channel])):
            key = "name"
        line = f"Line {p['line']}: " if p.get("line") else ""
        errors.add(f"v{index}-{key}", f"{line}{p.get('reason')}")
    if errors:
        return dict(errors)
    if message.startswith("audience:"):
        key = "audience_json" if state.audience is None else f"a-{audience_form.ROOT}"
        return {key: message.removeprefix("audience:").strip()}
    for prefix, key in _SERVICE_FIELDS:
        if message.startswith(prefix):
            return {key: message}
    return {"form": message}
