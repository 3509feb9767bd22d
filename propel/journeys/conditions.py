"""Branch conditions, evaluated for one user at the moment the branch is reached.

Properties are the profile's (its free properties and the system fields ``email``,
``phone``, ``timezone``, ``identity``) plus every prediction's current group (named
after the prediction) and score (``NAME score``). Event tests ask whether the user did
an event since entering the journey (or within a duration before now), with property
filters; their events are looked up once per batch (``propel.journeys.events``).
"""

from __future__ import annotations

from typing import Any

import orjson

SYSTEM = ("email", "phone", "timezone", "identity")


def event_key(cond: dict[str, Any]) -> str:
    return orjson.dumps([cond["event"], cond.get("where") or []],
                        option=orjson.OPT_SORT_KEYS).decode()


def event_tests(definition: dict[str, Any]) -> list[dict[str, Any]]:
    """Every event test in the definition's branch conditions."""
    out: list[dict[str, Any]] = []

    def walk(cond: Any) -> None:
        if not isinstance(cond, dict):
            return
        if "event" in cond:
            out.append(cond)
        for key in ("and", "or"):
            for part in cond.get(key, []):
                walk(part)
        walk(cond.get("not"))

    for step in definition["steps"]:
        if step["type"] == "branch":
            walk(step["condition"])
    return out


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _equal(have: Any, want: Any) -> bool:
    if isinstance(want, bool) or isinstance(have, bool):
        return have is want or str(have).lower() == str(want).lower()
    if isinstance(want, int | float):
        number = _number(have)
        return number is not None and number == float(want)
    return str(have) == str(want)


def property_test(cond: dict[str, Any], props: dict[str, Any]) -> bool:
    op, want = cond["op"], cond.get("value")
    have = props.get(cond["property"])
    if op == "is set":
        return have is not None
    if op == "is not set":
        return have is None
    if have is None:
        return False
    if op == "=":
        return _equal(have, want)
    if op == "!=":
        return not _equal(have, want)
    if op == "in":
        return any(_equal(have, w) for w in want)
    if op == "not in":
        return not any(_equal(have, w) for w in want)
    if op == "contains":
        text = have if isinstance(have, str) else orjson.dumps(have).decode()
        return str(want).lower() in text.lower()
    number = _number(have)
    if number is None:
        return False
    return {">": number > want, ">=": number >= want, "<": number < want,
            "<=": number <= want}[op]


def holds(cond: dict[str, Any], props: dict[str, Any], hits: dict[str, list[int]],
          since_us: int, now_us: int) -> bool:
    """``hits``: event key -> the user's matching event times (epoch µs)."""
    if "and" in cond:
        return all(holds(c, props, hits, since_us, now_us) for c in cond["and"])
    if "or" in cond:
        return any(holds(c, props, hits, since_us, now_us) for c in cond["or"])
    if "not" in cond:
        return not holds(cond["not"], props, hits, since_us, now_us)
    if "event" in cond:
        start = since_us
        if cond.get("within"):
            from propel.journeys.spec import seconds_of

            start = now_us - seconds_of(cond["within"]) * 1_000_000
        did = any(start <= t <= now_us for t in hits.get(event_key(cond), ()))
        return did == cond.get("did", True)
    return property_test(cond, props)
