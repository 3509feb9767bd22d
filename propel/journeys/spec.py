"""Journey definitions: the JSON shape, and the checks made when one is saved.

Every problem found is reported with the path of the offending part and the reason
(``steps[2].next: no step 'thank'``), all of them at once, so an editor can mark each.
The graph checks: every ``next`` names a step, every step can be reached from the
first (no orphans), every cycle passes through a wait (``wait`` or ``wait_until``), and
from every step some path ends (an ``exit`` or a step without a ``next``).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

STEP_TYPES = ("send", "wait", "wait_until", "branch", "split", "update_property", "exit")
WAITS = ("wait", "wait_until")
ENTRY_TYPES = ("event", "likelihood", "audience", "prediction_groups")
GROUPS = ("High", "Medium", "Low")
LIKELIHOOD_CHANGED = "Likelihood Changed"
PROPERTY_OPS = ("=", "!=", "in", "not in", ">", ">=", "<", "<=", "contains", "is set",
                "is not set")
MAX_STEPS = 200
MAX_ID = 64
UNITS = {"days": 86400, "hours": 3600, "minutes": 60, "seconds": 1}
MAX_SECONDS = 366 * 86400


class JourneyError(ValueError):
    """A definition or an action that is not valid; ``problems`` lists every
    ``{"path", "reason"}`` found."""

    def __init__(self, problems: list[dict[str, str]] | str) -> None:
        if isinstance(problems, str):
            problems = [{"path": "", "reason": problems}]
        self.problems = problems
        first = problems[0]
        text = f"{first['path']}: {first['reason']}" if first["path"] else first["reason"]
        more = len(problems) - 1
        super().__init__(text + (f" (and {more} more)" if more else ""))


class _Problems(list):
    def add(self, path: str, reason: str) -> None:
        self.append({"path": path, "reason": reason})


def seconds_of(duration: Any) -> int:
    """A validated ``{"days", "hours", "minutes", "seconds"}`` object in seconds."""
    return int(sum(duration.get(unit, 0) * factor for unit, factor in UNITS.items()))


def successors(step: dict[str, Any]) -> dict[str, str | None]:
    """The step's outgoing edges, by the field that holds each; None ends the path."""
    kind = step.get("type")
    if kind == "exit":
        return {}
    if kind == "wait_until":
        return {"on_event": step.get("on_event"), "on_timeout": step.get("on_timeout")}
    if kind == "branch":
        return {"yes": step.get("yes"), "no": step.get("no")}
    if kind == "split":
        paths = step.get("paths") if isinstance(step.get("paths"), list) else []
        return {f"paths[{i}].next": p.get("next") if isinstance(p, dict) else None
                for i, p in enumerate(paths)}
    return {"next": step.get("next")}


# ------------------------------------------------------------------------ small parts

def _duration(value: Any, path: str, problems: _Problems) -> dict[str, int] | None:
    if not isinstance(value, dict) or not value or set(value) - set(UNITS):
        problems.add(path, "must be an object of days, hours, minutes and/or seconds")
        return None
    for unit, amount in value.items():
        if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
            problems.add(f"{path}.{unit}", "must be a whole number, 0 or more")
            return None
    total = seconds_of(value)
    if not 0 < total <= MAX_SECONDS:
        problems.add(path, "must be more than 0 and at most a year")
        return None
    return dict(value)


def _where(value: Any, path: str, problems: _Problems) -> list[dict[str, Any]]:
    from propel.predictions.spec import Condition, SpecError

    if value is None:
        return []
    if not isinstance(value, list):
        problems.add(path, "must be a list of conditions")
        return []
    out = []
    for i, c in enumerate(value):
        try:
            out.append(asdict(Condition(**c)))
        except (SpecError, TypeError) as exc:
            problems.add(f"{path}[{i}]", str(exc))
    return out


def _name(value: Any, path: str, problems: _Problems, what: str = "an event name") -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 256:
        problems.add(path, f"must be {what} (1 to 256 characters)")
        return ""
    return value


def _groups(value: Any, path: str, problems: _Problems) -> list[str]:
    groups = [value] if isinstance(value, str) else value
    if not isinstance(groups, list) or not groups or any(g not in GROUPS for g in groups):
        problems.add(path, "must be one or more of High, Medium, Low")
        return []
    return list(groups)


def condition(value: Any, path: str, problems: _Problems) -> dict[str, Any] | None:
    """A branch condition: and / or / not over property, prediction and event tests."""
    if not isinstance(value, dict) or len(value) == 0:
        problems.add(path, "must be a condition object")
        return None
    if "and" in value or "or" in value:
        key = "and" if "and" in value else "or"
        parts = value[key]
        if not isinstance(parts, list) or not parts:
            problems.add(f"{path}.{key}", "must be a non-empty list of conditions")
            return None
        return {key: [condition(p, f"{path}.{key}[{i}]", problems) for i, p in enumerate(parts)]}
    if "not" in value:
        return {"not": condition(value["not"], f"{path}.not", problems)}
    if "prediction" in value:
        return {"property": _name(value["prediction"], f"{path}.prediction", problems,
                                  "a prediction name"),
                "op": "in", "value": _groups(value.get("group"), f"{path}.group", problems)}
    if "property" in value:
        return _property_condition(value, path, problems)
    if "event" in value:
        return _event_condition(value, path, problems)
    problems.add(path, "must have property, prediction, event, and, or, or not")
    return None


def _property_condition(value: dict[str, Any], path: str, problems: _Problems
                        ) -> dict[str, Any]:
    op = value.get("op", "=")
    if op not in PROPERTY_OPS:
        problems.add(f"{path}.op", f"unknown operator {op!r}; one of {', '.join(PROPERTY_OPS)}")
    if op in ("in", "not in") and not isinstance(value.get("value"), list):
        problems.add(f"{path}.value", "must be a list for in / not in")
    if op in (">", ">=", "<", "<=") and (isinstance(value.get("value"), bool)
                                         or not isinstance(value.get("value"), int | float)):
        problems.add(f"{path}.value", f"must be a number for {op}")
    return {"property": _name(value["property"], f"{path}.property", problems,
                              "a property name"), "op": op, "value": value.get("value")}


def _event_condition(value: dict[str, Any], path: str, problems: _Problems) -> dict[str, Any]:
    out: dict[str, Any] = {"event": _name(value["event"], f"{path}.event", problems),
                           "did": value.get("did", True),
                           "where": _where(value.get("where"), f"{path}.where", problems)}
    if not isinstance(out["did"], bool):
        problems.add(f"{path}.did", "must be true or false")
    if "within" in value:
        out["within"] = _duration(value["within"], f"{path}.within", problems)
    return out


# ------------------------------------------------------------------------ entry, goal

def _entry(value: Any, problems: _Problems) -> dict[str, Any]:
    if not isinstance(value, dict) or value.get("type") not in ENTRY_TYPES:
        problems.add("entry.type", f"must be one of {', '.join(ENTRY_TYPES)}")
        return {}
    kind = value["type"]
    if kind == "event":
        return {"type": kind, "event": _name(value.get("event"), "entry.event", problems),
                "where": _where(value.get("where"), "entry.where", problems)}
    if kind == "likelihood":
        out = {"type": kind, "prediction": _name(value.get("prediction"), "entry.prediction",
                                                 problems, "a prediction name"),
               "to": _groups(value.get("to", "High"), "entry.to", problems)}
        if value.get("from") is not None:
            out["from"] = _groups(value["from"], "entry.from", problems)
        return out
    every = value.get("every_hours", 24)
    if isinstance(every, bool) or not isinstance(every, int | float) or not 0 < every <= 8760:
        problems.add("entry.every_hours", "must be more than 0 and at most 8760")
    if kind == "audience":
        from propel import audiences

        try:
            audiences.validate(value.get("audience"))
        except audiences.AudienceError as exc:
            problems.add("entry.audience", str(exc))
        return {"type": kind, "audience": value.get("audience"), "every_hours": every}
    return {"type": kind, "prediction": _name(value.get("prediction"), "entry.prediction",
                                              problems, "a prediction name"),
            "groups": _groups(value.get("groups"), "entry.groups", problems),
            "every_hours": every}


def entry_event(entry: dict[str, Any]) -> tuple[str, list[dict[str, Any]]] | None:
    """The event (name, where) that lets users in, for event and likelihood entries."""
    if entry["type"] == "event":
        return entry["event"], entry["where"]
    if entry["type"] == "likelihood":
        where = [{"property": "prediction", "op": "=", "value": entry["prediction"]},
                 {"property": "to", "op": "in", "value": entry["to"]}]
        if entry.get("from"):
            where.append({"property": "from", "op": "in", "value": entry["from"]})
        return LIKELIHOOD_CHANGED, where
    return None


def entry_audience(entry: dict[str, Any]) -> dict[str, Any] | None:
    """The audience rule evaluated on a schedule, for audience and group entries."""
    if entry["type"] == "audience":
        return entry["audience"]
    if entry["type"] == "prediction_groups":
        return {"property": entry["prediction"], "op": "in", "value": entry["groups"]}
    return None


def _reentry(value: Any, problems: _Problems) -> dict[str, Any]:
    value = value or {"policy": "once"}
    policy = value.get("policy") if isinstance(value, dict) else None
    if policy == "once":
        return {"policy": "once"}
    if policy == "after_days":
        days = value.get("days")
        if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 3650:
            problems.add("reentry.days", "must be a whole number of days from 1 to 3650")
        return {"policy": policy, "days": days}
    problems.add("reentry.policy", "must be once or after_days")
    return {"policy": "once"}


def _goal(value: Any, problems: _Problems) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        problems.add("goal", "must be an object with an event")
        return None
    days = value.get("within_days", 7)
    if isinstance(days, bool) or not isinstance(days, int | float) or not 0 < days <= 365:
        problems.add("goal.within_days", "must be more than 0 and at most 365")
    return {"event": _name(value.get("event"), "goal.event", problems),
            "where": _where(value.get("where"), "goal.where", problems), "within_days": days}


# ------------------------------------------------------------------------ steps

def _send(step: dict[str, Any], path: str, problems: _Problems, check_content: bool) -> None:
    from propel.campaigns.content_validation import TemplateError, validate_content
    from propel.campaigns.service import CHANNELS, CampaignError, validate_caps, validate_dnd

    if step.get("channel") not in CHANNELS:
        problems.add(f"{path}.channel", f"must be one of {', '.join(CHANNELS)}")
        return
    if check_content:
        try:
            validate_content(step["channel"], step.get("content"))
        except TemplateError as exc:
            for p in exc.problems:
                where = ".".join(str(x) for x in (p.get("variant"), p.get("field")) if x)
                line = f" (line {p['line']})" if p.get("line") else ""
                problems.add(f"{path}.content" + (f".{where}" if where else ""),
                             p["reason"] + line)
    try:
        step["caps"] = validate_caps(step.get("caps"))
        step["dnd"] = validate_dnd(step.get("dnd"))
    except CampaignError as exc:
        problems.add(path, str(exc))


def _split(step: dict[str, Any], path: str, problems: _Problems) -> None:
    paths = step.get("paths")
    if not isinstance(paths, list) or len(paths) < 2 or not all(
            isinstance(p, dict) for p in paths):
        problems.add(f"{path}.paths", "must be a list of two or more {percent, next}")
        return
    total = 0.0
    for i, p in enumerate(paths):
        pct = p.get("percent")
        if isinstance(pct, bool) or not isinstance(pct, int | float) or not 0 < pct <= 100:
            problems.add(f"{path}.paths[{i}].percent", "must be more than 0 and at most 100")
            return
        total += pct
    if abs(total - 100) > 1e-6:
        problems.add(f"{path}.paths", f"percentages must add up to 100, not {total:g}")


def _step(step: Any, path: str, problems: _Problems, check_content: bool) -> dict[str, Any]:
    if not isinstance(step, dict):
        problems.add(path, "must be an object")
        return {"id": "", "type": "exit"}
    step = dict(step)
    sid = step.get("id")
    if not isinstance(sid, str) or not sid.strip() or len(sid) > MAX_ID:
        problems.add(f"{path}.id", f"must be 1 to {MAX_ID} characters")
    kind = step.get("type")
    if kind not in STEP_TYPES:
        problems.add(f"{path}.type", f"must be one of {', '.join(STEP_TYPES)}")
        return {**step, "type": "exit"}
    if kind == "send":
        _send(step, path, problems, check_content)
    elif kind == "wait":
        step["duration"] = _duration(step.get("duration"), f"{path}.duration", problems)
    elif kind == "wait_until":
        step["event"] = _name(step.get("event"), f"{path}.event", problems)
        step["where"] = _where(step.get("where"), f"{path}.where", problems)
        step["timeout"] = _duration(step.get("timeout"), f"{path}.timeout", problems)
    elif kind == "branch":
        step["condition"] = condition(step.get("condition"), f"{path}.condition", problems)
    elif kind == "split":
        _split(step, path, problems)
    elif kind == "update_property":
        _name(step.get("property"), f"{path}.property", problems, "a property name")
        if "value" not in step:
            problems.add(f"{path}.value", "is required (null removes the property)")
    return step


def _graph(steps: list[dict[str, Any]], problems: _Problems) -> None:
    index = {s["id"]: i for i, s in enumerate(steps) if isinstance(s.get("id"), str)}
    if len(index) < len([s for s in steps if isinstance(s.get("id"), str)]):
        seen: set[str] = set()
        for i, s in enumerate(steps):
            if s.get("id") in seen:
                problems.add(f"steps[{i}].id", f"step id {s['id']!r} is used twice")
            seen.add(s.get("id"))
    edges: dict[str, list[str]] = {}
    for i, s in enumerate(steps):
        targets = []
        for field, target in successors(s).items():
            if target is None:
                continue
            if target not in index:
                problems.add(f"steps[{i}].{field}", f"no step {target!r}")
            else:
                targets.append(target)
        edges[s.get("id")] = targets
    if problems or not steps:
        return
    _orphans(steps, edges, problems)
    _instant_cycles(steps, edges, index, problems)
    _endless(steps, edges, problems)


def _orphans(steps: list[dict[str, Any]], edges: dict[str, list[str]], problems: _Problems
             ) -> None:
    reached, todo = {steps[0]["id"]}, [steps[0]["id"]]
    while todo:
        for t in edges[todo.pop()]:
            if t not in reached:
                reached.add(t)
                todo.append(t)
    for i, s in enumerate(steps):
        if s["id"] not in reached:
            problems.add(f"steps[{i}]", f"orphan step {s['id']!r}: no path from the first "
                                        "step leads to it")


def _instant_cycles(steps: list[dict[str, Any]], edges: dict[str, list[str]],
                    index: dict[str, int], problems: _Problems) -> None:
    """A cycle of steps that take no time would run forever in one instant."""
    kinds = {s["id"]: s["type"] for s in steps}
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for t in edges[node] if kinds[node] not in WAITS else []:
            if kinds[t] in WAITS:
                continue
            if state.get(t) == 1:
                loop = stack[stack.index(t):] + [t]
                problems.add(f"steps[{index[t]}]", "cycle without a wait: "
                             + " → ".join(loop))
            elif t not in state:
                visit(t, stack)
        stack.pop()
        state[node] = 2

    for s in steps:
        if s["id"] not in state and s["type"] not in WAITS:
            visit(s["id"], [])


def _endless(steps: list[dict[str, Any]], edges: dict[str, list[str]], problems: _Problems
             ) -> None:
    """Every branch ends: from every step, some path reaches an exit."""
    ends = {s["id"] for s in steps
            if s["type"] == "exit" or any(t is None for t in successors(s).values())}
    changed = True
    while changed:
        changed = False
        for s in steps:
            if s["id"] not in ends and any(t in ends for t in edges[s["id"]]):
                ends.add(s["id"])
                changed = True
    for i, s in enumerate(steps):
        if s["id"] not in ends:
            problems.add(f"steps[{i}]", f"never ends: no path from {s['id']!r} reaches an "
                                        "exit")


def validate(definition: Any, *, check_content: bool = True) -> dict[str, Any]:
    """The normalised definition, or :class:`JourneyError` with every problem."""
    problems = _Problems()
    if not isinstance(definition, dict):
        raise JourneyError("a journey definition must be a JSON object")
    known = {"name", "entry", "reentry", "holdout_pct", "goal", "steps"}
    for key in definition:
        if key not in known:
            problems.add(str(key), f"unknown field; known: {', '.join(sorted(known))}")
    name = definition.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        problems.add("name", "must be 1 to 200 characters")
    holdout = definition.get("holdout_pct", 0.0)
    if isinstance(holdout, bool) or not isinstance(holdout, int | float) \
            or not 0 <= holdout <= 0.9:
        problems.add("holdout_pct", "must be between 0 and 0.9")
    out = {"name": name, "entry": _entry(definition.get("entry"), problems),
           "reentry": _reentry(definition.get("reentry"), problems),
           "holdout_pct": holdout, "goal": _goal(definition.get("goal"), problems)}
    if holdout and out["goal"] is None:
        problems.add("holdout_pct", "a holdout needs a goal to measure lift against")
    raw = definition.get("steps")
    if not isinstance(raw, list) or not raw or len(raw) > MAX_STEPS:
        problems.add("steps", f"must be a list of 1 to {MAX_STEPS} steps")
        raw = []
    out["steps"] = [_step(s, f"steps[{i}]", problems, check_content) for i, s in enumerate(raw)]
    if not problems:
        _graph(out["steps"], problems)
    if problems:
        raise JourneyError(list(problems))
    return out
