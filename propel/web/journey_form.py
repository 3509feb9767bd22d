"""The journey editor's form: a journey definition (``docs/journeys.md``) to the values
the form shows, the posted form back to a definition, and the definition's problems
(path + reason, from ``propel.journeys.validate``) on the controls they are about.

Each step is one card whose fields are named ``s{i}.{key}``; the fields of every step
type are in the card and the page shows those of the chosen type. What the form does
not edit (caps, quiet hours, more variants, event conditions) rides along in a hidden
``s{i}.extra`` field, so editing a journey made through the API loses nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from propel.journeys.spec import GROUPS, STEP_TYPES, successors
from propel.predictions.spec import SpecError, parse_where
from propel.web.builder_form import CHANNEL_FIELDS, WEBHOOK_KEYS, webhook_payload

STEP_NAMES = {"send": "Send a message", "wait": "Wait", "wait_until": "Wait until an event",
              "branch": "Branch (yes / no)", "split": "Split (random paths)",
              "update_property": "Update a profile property", "exit": "Exit"}
ENTRY_NAMES = {"prediction_groups": "Users in prediction groups",
               "likelihood": "Users moving into a likelihood group",
               "event": "Users who do an event",
               "audience": "Users matching an audience rule (JSON)"}
COND_KINDS = {"property": "Profile property", "prediction": "Prediction group",
              "event": "Event done", "json": "Advanced (JSON)"}
COND_OPS = ("=", "!=", "in", "not in", ">", ">=", "<", "<=", "contains", "is set",
            "is not set")
MAX_STEPS = 200
MAX_PATHS = 10
TARGETS = ("next", "on_event", "on_timeout", "yes", "no")
# Every step's text fields and their defaults (a card holds the fields of every type).
STEP_DEFAULTS: dict[str, str] = {
    "orig": "", "id": "", "type": "wait", "next": "", "channel": "inbox",
    **{f"{ch}_{key}": "" for ch, fields in CHANNEL_FIELDS.items() for key, _, _ in fields},
    "wait_days": "1", "wait_hours": "", "wait_minutes": "", "event": "",
    "timeout_days": "2", "timeout_hours": "", "on_event": "", "on_timeout": "",
    "cond_kind": "property", "cond_property": "", "cond_op": "=", "cond_value": "",
    "cond_prediction": "", "cond_event": "", "cond_did": "yes", "cond_within_days": "",
    "cond_json": "", "yes": "", "no": "", "property": "", "value": "", "extra": "",
}
STEP_LISTS = ("cond_groups",)


@dataclass
class JourneyState:
    """Everything the editor shows, as text."""

    values: dict[str, Any]
    steps: list[dict[str, Any]]
    errors: dict[str, list[str]] = field(default_factory=dict)
    problems: list[dict[str, str]] = field(default_factory=list)  # path, reason, anchor
    focus: str | None = None

    def error(self, key: str) -> str:
        return "; ".join(self.errors.get(key, []))


# ------------------------------------------------------------------ small conversions

def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list):
        return ", ".join(_text(v) for v in value)
    return str(value)


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()


def where_text(where: list[dict[str, Any]]) -> str:
    lines = []
    for c in where or []:
        if c.get("op") == "exists":
            lines.append(f"{c['property']} exists")
        elif isinstance(c.get("value"), list):
            lines.append(f"{c['property']} {c['op']} [{_text(c['value'])}]")
        else:
            lines.append(f"{c['property']} {c['op']} {_text(c.get('value'))}")
    return "\n".join(lines)


def _number(text: str) -> Any:
    """A whole number or a decimal when the text is one; otherwise the text itself, which
    the definition's checks then refuse with their path and reason."""
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return text
    return value if value == value and value not in (float("inf"), float("-inf")) else text


def _scalar(text: str) -> Any:
    """A property value: JSON true / false / null / numbers / "quoted" as such, other
    text as text."""
    stripped = text.strip()
    if not stripped:
        return None
    try:
        return orjson.loads(stripped)
    except orjson.JSONDecodeError:
        return text


# ------------------------------------------------------------------ definition -> form

def new_step(step_id: str, kind: str = "wait") -> dict[str, Any]:
    return {**STEP_DEFAULTS, "id": step_id, "orig": step_id, "type": kind,
            "cond_groups": ["High"], "paths": [{"percent": "50", "next": ""},
                                               {"percent": "50", "next": ""}]}


def _send_values(step: dict[str, Any], out: dict[str, Any], extra: dict[str, Any]) -> None:
    channel = step.get("channel") if step.get("channel") in CHANNEL_FIELDS else "inbox"
    out["channel"] = channel
    variants = (step.get("content") or {}).get("variants") or [{}]
    first = dict(variants[0]) if isinstance(variants[0], dict) else {}
    if channel == "webhook":
        payload = {k: first.pop(k) for k in WEBHOOK_KEYS if k in first}
        out["webhook_payload"] = _json(payload) if payload else ""
    else:
        for key, _, _ in CHANNEL_FIELDS[channel]:
            if isinstance(first.get(key), str):
                out[f"{channel}_{key}"] = first.pop(key)
    kept = {k: v for k, v in first.items() if k not in ("name", "split")}
    if kept or len(variants) > 1:
        extra["variant"] = {"name": first.get("name", "A"), "split": first.get("split", 100),
                            **kept}
    if len(variants) > 1:
        extra["more_variants"] = variants[1:]


def _condition_values(cond: Any, out: dict[str, Any]) -> None:
    simple = isinstance(cond, dict) and len(cond) <= 4
    if simple and "prediction" in cond and set(cond) <= {"prediction", "group"}:
        group = cond.get("group")
        out.update(cond_kind="prediction", cond_prediction=str(cond["prediction"]),
                   cond_groups=[group] if isinstance(group, str) else list(group or []))
    elif simple and "property" in cond and set(cond) <= {"property", "op", "value"}:
        out.update(cond_kind="property", cond_property=str(cond["property"]),
                   cond_op=str(cond.get("op", "=")), cond_value=_text(cond.get("value")))
    elif simple and "event" in cond and set(cond) <= {"event", "did", "where", "within"} \
            and not cond.get("where") and set(cond.get("within") or {"days": 1}) == {"days"}:
        out.update(cond_kind="event", cond_event=str(cond["event"]),
                   cond_did="no" if cond.get("did") is False else "yes",
                   cond_within_days=_text((cond.get("within") or {}).get("days")))
    elif cond is not None:
        out.update(cond_kind="json", cond_json=_json(cond))


def step_values(step: dict[str, Any]) -> dict[str, Any]:
    """One step of a definition as its card's values."""
    out = new_step(str(step.get("id", "")), str(step.get("type", "exit")))
    extra: dict[str, Any] = {}
    kind = out["type"]
    if kind == "send":
        _send_values(step, out, extra)
        extra.update({k: step[k] for k in ("caps", "dnd") if step.get(k)})
    elif kind == "wait":
        duration = step.get("duration") or {}
        out.update(wait_days=_text(duration.get("days")), wait_hours=_text(duration.get("hours")),
                   wait_minutes=_text(duration.get("minutes")))
        if duration.get("seconds"):
            extra["seconds"] = duration["seconds"]
    elif kind == "wait_until":
        timeout = step.get("timeout") or {}
        out.update(event=str(step.get("event") or ""),
                   timeout_days=_text(timeout.get("days")),
                   timeout_hours=_text(timeout.get("hours")))
        extra.update({k: v for k, v in (("where", step.get("where")),
                                        ("timeout_more", {u: n for u, n in timeout.items()
                                                          if u in ("minutes", "seconds")}))
                      if v})
    elif kind == "branch":
        _condition_values(step.get("condition"), out)
    elif kind == "split":
        out["paths"] = [{"percent": _text(p.get("percent")), "next": p.get("next") or ""}
                        for p in step.get("paths") or [] if isinstance(p, dict)] or out["paths"]
    elif kind == "update_property":
        out.update(property=str(step.get("property") or ""),
                   value="null" if step.get("value") is None else
                   (step["value"] if isinstance(step["value"], str)
                    else orjson.dumps(step["value"]).decode()))
    for name, target in successors(step).items():
        if name in TARGETS:
            out[name] = target or ""
    out["extra"] = orjson.dumps(extra).decode() if extra else ""
    return out


def state_from_definition(spec: dict[str, Any], journey_id: str = "") -> JourneyState:
    """The form for a saved definition (or a draft that is not saved yet)."""
    entry = spec.get("entry") or {}
    goal = spec.get("goal") or {}
    reentry = spec.get("reentry") or {"policy": "once"}
    values = {
        "journey_id": journey_id, "name": spec.get("name") or "",
        "entry_type": entry.get("type", "prediction_groups"),
        "entry_prediction": entry.get("prediction", ""),
        "entry_groups": list(entry.get("groups") or []),
        "entry_to": list(entry.get("to") or ["High"]),
        "entry_from": list(entry.get("from") or []),
        "entry_every_hours": _text(entry.get("every_hours", 24)),
        "entry_event": entry.get("event", ""), "entry_where": where_text(entry.get("where")),
        "entry_audience": _json(entry["audience"]) if entry.get("audience") is not None
        else "",
        "reentry": reentry.get("policy", "once"), "reentry_days": _text(reentry.get("days")),
        "holdout": _text(round(float(spec.get("holdout_pct") or 0) * 100, 4)),
        "goal_event": goal.get("event", ""), "goal_window": _text(goal.get("within_days", 7)),
        "goal_where": where_text(goal.get("where")),
    }
    steps = [step_values(s) for s in spec.get("steps") or [] if isinstance(s, dict)]
    return JourneyState(values, steps or [new_step("start", "send")])


# ------------------------------------------------------------------ posted form -> state

_VALUES = ("journey_id", "name", "entry_type", "entry_prediction", "entry_every_hours",
           "entry_event", "entry_where", "entry_audience", "reentry", "reentry_days",
           "holdout", "goal_event", "goal_window", "goal_where")
_VALUE_LISTS = ("entry_groups", "entry_to", "entry_from")


def _get(form: Any, key: str) -> str:
    value = form.get(key, "")
    return (value if isinstance(value, str) else "").replace("\x00", "")


def _list(form: Any, key: str) -> list[str]:
    return [v.replace("\x00", "") for v in form.getlist(key) if isinstance(v, str)]


def _count(form: Any, key: str, default: int, most: int) -> int:
    raw = _get(form, key)
    return min(int(raw), most) if raw.isdigit() else default


def state_from_form(form: Any) -> JourneyState:
    values: dict[str, Any] = {key: _get(form, key) for key in _VALUES}
    values.update({key: _list(form, key) for key in _VALUE_LISTS})
    steps = []
    for i in range(_count(form, "step_count", 0, MAX_STEPS)):
        step: dict[str, Any] = {key: _get(form, f"s{i}.{key}") for key in STEP_DEFAULTS}
        step["cond_groups"] = _list(form, f"s{i}.cond_groups")
        step["paths"] = [{"percent": _get(form, f"s{i}.p{k}.percent"),
                          "next": _get(form, f"s{i}.p{k}.next")}
                         for k in range(_count(form, f"s{i}.path_count", 2, MAX_PATHS))]
        if step["type"] not in STEP_TYPES:
            step["type"] = "exit"
        steps.append(step)
    _follow_renames(steps)
    return JourneyState(values, steps)


def _follow_renames(steps: list[dict[str, Any]]) -> None:
    """A step renamed in the form keeps its incoming connections."""
    renamed = {s["orig"]: s["id"] for s in steps if s["orig"] and s["orig"] != s["id"]}
    ids = {s["id"] for s in steps}
    for s in steps:
        for key in TARGETS:
            if s[key] not in ids and s[key] in renamed:
                s[key] = renamed[s[key]]
        for p in s["paths"]:
            if p["next"] not in ids and p["next"] in renamed:
                p["next"] = renamed[p["next"]]
        s["orig"] = s["id"]


def _free_id(steps: list[dict[str, Any]]) -> str:
    taken = {s["id"] for s in steps}
    n = len(steps) + 1
    while f"step{n}" in taken:
        n += 1
    return f"step{n}"


def apply_op(state: JourneyState, op: str) -> None:
    """The editor's own buttons: add or remove a step, add or remove a split path."""
    steps = state.steps
    name, _, arg = op.partition(":")
    if name == "add" and len(steps) < MAX_STEPS:
        step = new_step(_free_id(steps))
        last = steps[-1] if steps else None
        # the flow grows downwards: a last step that ended the journey now leads on
        if last is not None and last["type"] in ("send", "wait", "update_property") \
                and not last["next"]:
            last["next"] = step["id"]
        steps.append(step)
        state.focus = f"s{len(steps) - 1}-type"
    elif name == "remove" and arg.isdigit() and int(arg) < len(steps) and len(steps) > 1:
        gone = steps.pop(int(arg))["id"]
        for s in steps:
            for key in TARGETS:
                if s[key] == gone:
                    s[key] = ""
            for p in s["paths"]:
                if p["next"] == gone:
                    p["next"] = ""
        state.focus = "add-step"
    elif name in ("add_path", "remove_path"):
        index, _, path = arg.partition(".")
        if not index.isdigit() or int(index) >= len(steps):
            return
        paths = steps[int(index)]["paths"]
        if name == "add_path" and len(paths) < MAX_PATHS:
            paths.append({"percent": "", "next": ""})
            state.focus = f"s{index}-p{len(paths) - 1}-percent"
        elif name == "remove_path" and path.isdigit() and int(path) < len(paths) \
                and len(paths) > 2:
            paths.pop(int(path))
            state.focus = f"s{index}-add-path"


# ------------------------------------------------------------------ state -> definition

class _Errors(dict):
    def add(self, key: str, message: str) -> None:
        self.setdefault(key, []).append(message)


def _where(text: str, key: str, errors: _Errors) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            c = parse_where(line.strip())
        except SpecError as exc:
            errors.add(key, str(exc))
            continue
        out.append({"property": c.property, "op": c.op, "value": c.value})
    return out


def _entry(v: dict[str, Any], errors: _Errors) -> dict[str, Any]:
    kind = v["entry_type"]
    every = _number(v["entry_every_hours"]) if v["entry_every_hours"].strip() else 24
    if kind == "prediction_groups":
        return {"type": kind, "prediction": v["entry_prediction"],
                "groups": v["entry_groups"], "every_hours": every}
    if kind == "likelihood":
        out = {"type": kind, "prediction": v["entry_prediction"], "to": v["entry_to"]}
        return out | ({"from": v["entry_from"]} if v["entry_from"] else {})
    if kind == "event":
        return {"type": kind, "event": v["entry_event"].strip(),
                "where": _where(v["entry_where"], "entry_where", errors)}
    if kind == "audience":
        try:
            audience = orjson.loads(v["entry_audience"] or "null")
        except orjson.JSONDecodeError as exc:
            errors.add("entry_audience", f"Not valid JSON: {exc}")
            audience = {"and": []}
        return {"type": kind, "audience": audience, "every_hours": every}
    return {"type": kind}


def _duration(parts: dict[str, str]) -> dict[str, Any]:
    return {unit: _number(text) for unit, text in parts.items() if text.strip()}


def _content(s: dict[str, Any], key: str, extra: dict[str, Any], errors: _Errors
             ) -> dict[str, Any]:
    channel = s["channel"]
    variant: dict[str, Any] = dict(extra.get("variant") or {"name": "A", "split": 100})
    if channel == "webhook":
        variant.update(webhook_payload(s["webhook_payload"], f"{key}-webhook_payload", errors))
    else:
        for field_key, _, _ in CHANNEL_FIELDS[channel]:
            if s[f"{channel}_{field_key}"].strip():
                variant[field_key] = s[f"{channel}_{field_key}"]
    return {"variants": [variant, *extra.get("more_variants", [])]}


def _condition(s: dict[str, Any], key: str, errors: _Errors) -> Any:
    kind = s["cond_kind"]
    if kind == "prediction":
        return {"prediction": s["cond_prediction"], "group": s["cond_groups"]}
    if kind == "event":
        out: dict[str, Any] = {"event": s["cond_event"].strip(), "did": s["cond_did"] != "no"}
        if s["cond_within_days"].strip():
            out["within"] = {"days": _number(s["cond_within_days"])}
        return out
    if kind == "json":
        try:
            return orjson.loads(s["cond_json"] or "null")
        except orjson.JSONDecodeError as exc:
            errors.add(f"{key}-cond_json", f"Not valid JSON: {exc}")
            return None
    op = s["cond_op"]
    out = {"property": s["cond_property"].strip(), "op": op}
    if op in ("in", "not in"):
        out["value"] = [_scalar_item(v) for v in s["cond_value"].split(",") if v.strip()]
    elif op not in ("is set", "is not set"):
        value = s["cond_value"]
        out["value"] = _number(value) if op in (">", ">=", "<", "<=") else _scalar_item(value)
    return out


def _scalar_item(text: str) -> Any:
    """A value to compare with: numbers and true / false as such, other text as text."""
    value = _scalar(text)
    return value if isinstance(value, bool | int | float) else text.strip()


def _extra(s: dict[str, Any], key: str, errors: _Errors) -> dict[str, Any]:
    try:
        extra = orjson.loads(s["extra"]) if s["extra"].strip() else {}
    except orjson.JSONDecodeError:
        extra = None
    if not isinstance(extra, dict):
        errors.add(key, "the step's kept settings were damaged; reload the journey")
        return {}
    return extra


def step_definition(s: dict[str, Any], i: int, errors: _Errors) -> dict[str, Any]:
    key = f"s{i}"
    kind = s["type"]
    extra = _extra(s, key, errors)
    step: dict[str, Any] = {"id": s["id"].strip(), "type": kind}
    if kind == "send":
        step.update(channel=s["channel"], content=_content(s, key, extra, errors),
                    **{k: extra[k] for k in ("caps", "dnd") if k in extra})
    elif kind == "wait":
        step["duration"] = _duration({"days": s["wait_days"], "hours": s["wait_hours"],
                                      "minutes": s["wait_minutes"]})
        if extra.get("seconds"):
            step["duration"]["seconds"] = extra["seconds"]
    elif kind == "wait_until":
        timeout = _duration({"days": s["timeout_days"], "hours": s["timeout_hours"]})
        step.update(event=s["event"].strip(),
                    timeout={**timeout, **(extra.get("timeout_more") or {})},
                    on_event=s["on_event"] or None, on_timeout=s["on_timeout"] or None)
        if extra.get("where"):
            step["where"] = extra["where"]
    elif kind == "branch":
        step.update(condition=_condition(s, key, errors), yes=s["yes"] or None,
                    no=s["no"] or None)
    elif kind == "split":
        step["paths"] = [{"percent": _number(p["percent"]) if p["percent"].strip() else None,
                          "next": p["next"] or None} for p in s["paths"]]
    elif kind == "update_property":
        step.update(property=s["property"].strip(), value=_scalar(s["value"]))
    if kind in ("send", "wait", "update_property"):
        step["next"] = s["next"] or None
    return step


def to_definition(state: JourneyState) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The definition the form describes, and the form's own errors (JSON that does not
    parse, conditions that do not read); everything else is the definition's checks'."""
    v = state.values
    errors = _Errors()
    holdout_text = v["holdout"].strip() or "0"
    holdout = _number(holdout_text)
    if not isinstance(holdout, int | float) or not 0 <= holdout <= 90:
        errors.add("holdout", "Holdout % must be a number from 0 to 90")
        holdout = 0
    definition: dict[str, Any] = {
        "name": v["name"].strip(), "entry": _entry(v, errors),
        "reentry": {"policy": v["reentry"]} | (
            {"days": _number(v["reentry_days"])} if v["reentry"] == "after_days" else {}),
        "holdout_pct": round(holdout / 100, 6),
        "goal": None,
        "steps": [step_definition(s, i, errors) for i, s in enumerate(state.steps)],
    }
    if v["goal_event"].strip():
        definition["goal"] = {"event": v["goal_event"].strip(),
                              "where": _where(v["goal_where"], "goal_where", errors),
                              "within_days": _number(v["goal_window"] or "7")}
    return definition, dict(errors)


# ------------------------------------------------------------------ problems -> controls

_TOP = (("name", "name"), ("entry.type", "entry_type"), ("entry.prediction", "entry_prediction"),
        ("entry.groups", "entry_groups"), ("entry.to", "entry_to"),
        ("entry.from", "entry_from"), ("entry.event", "entry_event"),
        ("entry.where", "entry_where"), ("entry.audience", "entry_audience"),
        ("entry.every_hours", "entry_every_hours"), ("reentry.days", "reentry_days"),
        ("reentry", "reentry"), ("holdout_pct", "holdout"), ("goal.within_days", "goal_window"),
        ("goal.where", "goal_where"), ("goal", "goal_event"), ("steps", "steps"))
_STEP_FIELDS = (("id", "id"), ("type", "type"), ("channel", "channel"), ("next", "next"),
                ("on_event", "on_event"), ("on_timeout", "on_timeout"), ("yes", "yes"),
                ("no", "no"), ("duration", "wait_days"), ("timeout", "timeout_days"),
                ("event", "event"), ("condition", "cond"), ("property", "property"),
                ("value", "value"))
_STEP_PATH = re.compile(r"^steps\[(\d+)\](?:\.(.*))?$")


def control_for(path: str, state: JourneyState) -> str:
    """The id of the control (or step card) a problem's path is about."""
    found = _STEP_PATH.match(path)
    if not found:
        return next((key for prefix, key in _TOP if path == prefix
                     or path.startswith(prefix + ".") or path.startswith(prefix + "[")),
                    "form")
    i, rest = int(found.group(1)), found.group(2) or ""
    key = f"s{i}"
    if not rest:
        return key
    split = re.match(r"^paths\[(\d+)\]\.(next|percent)", rest)
    if split:
        return f"{key}-p{split.group(1)}-{split.group(2)}"
    if rest.startswith("content") and i < len(state.steps):
        channel = state.steps[i]["channel"]
        if channel == "webhook":
            return f"{key}-webhook_payload"
        parts = rest.split(".")
        names = [k for k, _, _ in CHANNEL_FIELDS.get(channel, [])]
        name = next((p for p in parts[1:] if p in names), None)
        return f"{key}-{channel}_{name}" if name else key
    head = re.split(r"[.\[]", rest)[0]
    return next((f"{key}-{control}" for prefix, control in _STEP_FIELDS if head == prefix), key)


def show_problems(state: JourneyState, problems: list[dict[str, str]],
                  form_errors: dict[str, list[str]] | None = None) -> None:
    """Put each problem by its control (and in the summary, path + reason)."""
    errors = _Errors()
    for key, messages in (form_errors or {}).items():
        for message in messages:
            errors.add(key, message)
            state.problems.append({"path": key, "reason": message, "anchor": key})
    for p in problems:
        anchor = control_for(p["path"], state)
        text = f"{p['path']}: {p['reason']}" if p["path"] else p["reason"]
        errors.add(anchor, text)
        state.problems.append({**p, "anchor": anchor})
    state.errors = dict(errors)


def step_errors(state: JourneyState, i: int) -> list[str]:
    """Every message about step ``i`` (for the card's own list)."""
    prefix = f"s{i}"
    return [m for key, messages in state.errors.items()
            if key == prefix or key.startswith(prefix + "-") for m in messages]


def groups_text(groups: list[str]) -> str:
    return ", ".join(g for g in GROUPS if g in groups)
