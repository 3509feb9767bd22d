"""Rule JSON -> a typed, immutable rule tree, with errors that name the path.

Validation is static (it needs no database): a rule stored with a campaign is checked
when the campaign is saved, long before it is evaluated. Property and event names are
not checked against the data, because a property nobody has yet is legal ("is not
set" then matches everyone).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

MAX_DEPTH = 24
MAX_NODES = 500
MAX_IN_VALUES = 1000
MAX_NAME = 256
MAX_DAYS = 3650
MAX_COUNT = 1_000_000
DAY_US = 86_400_000_000
CHANNELS = ("email", "sms", "push", "whatsapp", "inbox", "webhook")

# Every accepted spelling -> the canonical operator.
OPERATORS: dict[str, str] = {
    "=": "=", "==": "=", "eq": "=", "equals": "=", "is": "=",
    "!=": "!=", "<>": "!=", "ne": "!=", "not equals": "!=", "is not": "!=",
    "in": "in", "not in": "not in",
    "contains": "contains", "not contains": "not contains",
    ">": ">", "gt": ">", "greater than": ">",
    ">=": ">=", "gte": ">=", "greater than equals": ">=",
    "<": "<", "lt": "<", "less than": "<",
    "<=": "<=", "lte": "<=", "less than equals": "<=",
    "between": "between", "before": "before", "after": "after",
    "is set": "is set", "exists": "is set", "set": "is set",
    "is not set": "is not set", "not exists": "is not set", "not set": "is not set",
}
CANONICAL = tuple(dict.fromkeys(OPERATORS.values()))
_NUMERIC_OPS = (">", ">=", "<", "<=")
_DATE_OPS = ("before", "after")
_NO_VALUE = ("is set", "is not set")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class AudienceError(ValueError):
    """A rule is not valid; the message starts with the path of the offending part,
    e.g. ``and[2].op: unknown operator 'like'``."""


@dataclass(frozen=True)
class Instant:
    """An ISO date or timestamp from a rule. A date stands for its whole UTC day, so
    ``before`` a date means before its midnight and ``after`` it means from the next
    midnight on; a timestamp is exact."""

    text: str
    start_us: int  # the first microsecond it covers
    end_us: int  # one past the last microsecond it covers
    is_date: bool


@dataclass(frozen=True)
class PropertyCond:
    property: str
    op: str
    value: Any = None  # as given (for to_json); the typed forms below
    values: tuple[Any, ...] = ()  # for in / not in / = / !=
    low: float | None = None  # numeric bounds, inclusive
    high: float | None = None
    low_strict: bool = False
    high_strict: bool = False
    from_us: int | None = None  # date bounds: from_us <= t < until_us
    until_us: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"property": self.property, "op": self.op}
        if self.op not in _NO_VALUE:
            out["value"] = self.value
        return out


@dataclass(frozen=True)
class EventCond:
    event: str
    did: bool = True
    min_count: int = 1
    within_days: int | None = None
    between: tuple[Instant, Instant] | None = None
    where: tuple[PropertyCond, ...] = ()

    def window(self, now: datetime) -> tuple[int | None, int | None]:
        """[from, until) in epoch microseconds; None = unbounded. ``within_days: D``
        means the D UTC calendar days ending with the day of ``now`` (whole days)."""
        if self.within_days is not None:
            today = _day_start_us(now)
            return today - (self.within_days - 1) * DAY_US, today + DAY_US
        if self.between is not None:
            return self.between[0].start_us, self.between[1].end_us
        return None, None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"event": self.event}
        if not self.did:
            out["did"] = False
        if self.min_count != 1:
            out["min_count"] = self.min_count
        if self.within_days is not None:
            out["within_days"] = self.within_days
        if self.between is not None:
            out["between"] = [self.between[0].text, self.between[1].text]
        if self.where:
            out["where"] = [c.to_json() for c in self.where]
        return out


@dataclass(frozen=True)
class Reachable:
    channel: str

    def to_json(self) -> dict[str, Any]:
        return {"reachable": self.channel}


@dataclass(frozen=True)
class AllOf:
    items: tuple[Rule, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        return {"and": [i.to_json() for i in self.items]}


@dataclass(frozen=True)
class AnyOf:
    items: tuple[Rule, ...]

    def to_json(self) -> dict[str, Any]:
        return {"or": [i.to_json() for i in self.items]}


@dataclass(frozen=True)
class Not:
    item: Rule

    def to_json(self) -> dict[str, Any]:
        return {"not": self.item.to_json()}


Rule = AllOf | AnyOf | Not | PropertyCond | EventCond | Reachable


def _day_start_us(moment: datetime) -> int:
    us = (moment.astimezone(UTC) - _EPOCH) // timedelta(microseconds=1)
    return us - us % DAY_US


def _fail(path: str, reason: str) -> AudienceError:
    return AudienceError(f"{path or 'rule'}: {reason}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _name(value: Any, path: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(path, f"{what} must be a non-empty string")
    if len(value) > MAX_NAME or "\x00" in value:
        raise _fail(path, f"{what} must be at most {MAX_NAME} characters, without NUL")
    return value


def _number(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _fail(path, f"must be a number, got {value!r}")
    return float(value)


def _scalar(value: Any, path: str) -> Any:
    if isinstance(value, bool | str) or (isinstance(value, int | float)
                                         and math.isfinite(value)):
        return value
    raise _fail(path, f"must be a string, number or boolean, got {value!r}")


def parse_instant(value: Any, path: str) -> Instant:
    """An ISO date (``2026-05-01``) or timestamp (``2026-05-01T10:00:00Z``; no zone =
    UTC)."""
    if isinstance(value, str) and _DATE.match(value):
        try:
            day = date.fromisoformat(value)
        except ValueError:
            raise _fail(path, f"{value!r} is not a valid date") from None
        start = (datetime(day.year, day.month, day.day, tzinfo=UTC) - _EPOCH
                 ) // timedelta(microseconds=1)
        return Instant(value, start, start + DAY_US, True)
    if isinstance(value, str) and _DATETIME.match(value):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise _fail(path, f"{value!r} is not a valid ISO timestamp") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        us = (moment - _EPOCH) // timedelta(microseconds=1)
        return Instant(value, us, us + 1, False)
    raise _fail(path, f"must be an ISO date (YYYY-MM-DD) or timestamp, got {value!r}")


def _check_keys(node: dict[str, Any], allowed: tuple[str, ...], path: str) -> None:
    for key in node:
        if key not in allowed:
            raise _fail(path, f"unknown key {key!r}; allowed: {', '.join(allowed)}")


_PROPERTY_KEYS = ("property", "op", "value")
_EVENT_KEYS = ("event", "did", "min_count", "within_days", "between", "where")


def parse_property(node: Any, path: str) -> PropertyCond:
    if not isinstance(node, dict):
        raise _fail(path, "must be an object such as {\"property\": \"country\", \"op\": \"=\", "
                          "\"value\": \"FR\"}")
    _check_keys(node, _PROPERTY_KEYS, path)
    prop = _name(node.get("property"), _join(path, "property"), "property")
    raw_op = node.get("op")
    if not isinstance(raw_op, str):
        raise _fail(_join(path, "op"), f"must be one of {', '.join(CANONICAL)}")
    op = OPERATORS.get(" ".join(raw_op.strip().lower().replace("_", " ").split()))
    if op is None:
        raise _fail(_join(path, "op"), f"unknown operator {raw_op!r}; one of "
                                       f"{', '.join(CANONICAL)}")
    vpath = _join(path, "value")
    value = node.get("value")
    if op in _NO_VALUE:
        if value not in (None, True):
            raise _fail(vpath, f"operator {op!r} takes no value")
        return PropertyCond(prop, op)
    if "value" not in node or value is None:
        raise _fail(vpath, f"operator {op!r} needs a value")
    if op in ("=", "!="):
        return PropertyCond(prop, op, value, values=(_scalar(value, vpath),))
    if op in ("in", "not in"):
        if not isinstance(value, list) or not value:
            raise _fail(vpath, f"operator {op!r} needs a non-empty list of values")
        if len(value) > MAX_IN_VALUES:
            raise _fail(vpath, f"holds {len(value)} values; the limit is {MAX_IN_VALUES}")
        items = tuple(_scalar(v, f"{vpath}[{i}]") for i, v in enumerate(value))
        return PropertyCond(prop, op, value, values=items)
    if op in ("contains", "not contains"):
        if not isinstance(value, str) or not value:
            raise _fail(vpath, f"operator {op!r} needs a non-empty string")
        return PropertyCond(prop, op, value, values=(value,))
    if op in _NUMERIC_OPS:
        number = _number(value, vpath)
        if op in (">", ">="):
            return PropertyCond(prop, op, value, low=number, low_strict=op == ">")
        return PropertyCond(prop, op, value, high=number, high_strict=op == "<")
    if op in _DATE_OPS:
        moment = parse_instant(value, vpath)
        if op == "before":
            return PropertyCond(prop, op, value, until_us=moment.start_us)
        return PropertyCond(prop, op, value, from_us=moment.end_us)
    # between: two numbers (inclusive) or two dates/timestamps (inclusive)
    if not isinstance(value, list) or len(value) != 2:
        raise _fail(vpath, "operator 'between' needs [low, high]")
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        low, high = (_number(v, f"{vpath}[{i}]") for i, v in enumerate(value))
        if low > high:
            raise _fail(vpath, f"low {value[0]!r} is above high {value[1]!r}")
        return PropertyCond(prop, op, value, low=low, high=high)
    first, last = (parse_instant(v, f"{vpath}[{i}]") for i, v in enumerate(value))
    if first.start_us >= last.end_us:
        raise _fail(vpath, f"{value[0]!r} is after {value[1]!r}")
    return PropertyCond(prop, op, value, from_us=first.start_us, until_us=last.end_us)


def _parse_event(node: dict[str, Any], path: str) -> EventCond:
    _check_keys(node, _EVENT_KEYS, path)
    event = _name(node["event"], _join(path, "event"), "event")
    did = node.get("did", True)
    if not isinstance(did, bool):
        raise _fail(_join(path, "did"), "must be true or false")
    min_count = node.get("min_count", 1)
    if isinstance(min_count, bool) or not isinstance(min_count, int) or not (
            1 <= min_count <= MAX_COUNT):
        raise _fail(_join(path, "min_count"), f"must be a whole number from 1 to {MAX_COUNT}")
    within = node.get("within_days")
    between = node.get("between")
    if within is not None and between is not None:
        raise _fail(path, "give within_days or between, not both")
    if within is not None and (isinstance(within, bool) or not isinstance(within, int)
                               or not 1 <= within <= MAX_DAYS):
        raise _fail(_join(path, "within_days"), f"must be a whole number from 1 to {MAX_DAYS}")
    window = None
    if between is not None:
        bpath = _join(path, "between")
        if not isinstance(between, list) or len(between) != 2:
            raise _fail(bpath, "must be [from, to] (ISO dates or timestamps, inclusive)")
        first = parse_instant(between[0], f"{bpath}[0]")
        last = parse_instant(between[1], f"{bpath}[1]")
        if first.start_us >= last.end_us:
            raise _fail(bpath, f"{between[0]!r} is after {between[1]!r}")
        window = (first, last)
    where = node.get("where", [])
    wpath = _join(path, "where")
    if not isinstance(where, list):
        raise _fail(wpath, "must be a list of property conditions")
    conds = tuple(parse_property(c, f"{wpath}[{i}]") for i, c in enumerate(where))
    return EventCond(event, did, min_count, within, window, conds)


class _Budget:
    def __init__(self) -> None:
        self.nodes = 0


def _parse(node: Any, path: str, depth: int, budget: _Budget) -> Rule:
    budget.nodes += 1
    if budget.nodes > MAX_NODES:
        raise _fail(path, f"the rule has more than {MAX_NODES} parts")
    if depth > MAX_DEPTH:
        raise _fail(path, f"nested deeper than {MAX_DEPTH} levels")
    if not isinstance(node, dict):
        raise _fail(path, "must be a JSON object (and / or / not / property / event / "
                          "reachable)")
    for key in ("and", "or"):
        if key in node:
            if len(node) != 1:
                raise _fail(path, f"{key!r} must be the only key of its object")
            items = node[key]
            if not isinstance(items, list):
                raise _fail(_join(path, key), "must be a list of rules")
            if key == "or" and not items:
                raise _fail(_join(path, key), "needs at least one rule")
            parsed = tuple(_parse(item, f"{_join(path, key)}[{i}]", depth + 1, budget)
                           for i, item in enumerate(items))
            return AllOf(parsed) if key == "and" else AnyOf(parsed)
    if "not" in node:
        if len(node) != 1:
            raise _fail(path, "'not' must be the only key of its object")
        return Not(_parse(node["not"], _join(path, "not"), depth + 1, budget))
    if "property" in node:
        return parse_property(node, path)
    if "event" in node:
        return _parse_event(node, path)
    if "reachable" in node:
        _check_keys(node, ("reachable",), path)
        channel = node["reachable"]
        if channel not in CHANNELS:
            raise _fail(_join(path, "reachable"), f"unknown channel {channel!r}; one of "
                                                  f"{', '.join(CHANNELS)}")
        return Reachable(channel)
    keys = ", ".join(repr(k) for k in node) or "none"
    raise _fail(path, f"expected one of and, or, not, property, event, reachable; got {keys}")


def validate(rule: Any) -> Rule:
    """Parse a rule (JSON-shaped dict, or an already parsed rule) or raise
    :class:`AudienceError` naming the path."""
    if isinstance(rule, AllOf | AnyOf | Not | PropertyCond | EventCond | Reachable):
        return rule
    return _parse(rule, "", 0, _Budget())


def walk(rule: Rule) -> list[Rule]:
    """Every node of the tree, parents first."""
    out: list[Rule] = [rule]
    if isinstance(rule, AllOf | AnyOf):
        for item in rule.items:
            out.extend(walk(item))
    elif isinstance(rule, Not):
        out.extend(walk(rule.item))
    return out
