"""What a prediction is: goal, polarity, window, audience, cadence, group boundaries.

"High likelihood" always means likely to do what the prediction names: for *Predict
Churn* the label is "did not launch the app within the window", so High = likely to
churn, and the polarity (undesired) tells Engage to retain them.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

OPS = ("=", "!=", ">", ">=", "<", "<=", "in", "contains", "exists")
_WHERE = re.compile(r"^\s*([A-Za-z_][\w .-]*?)\s*(>=|<=|!=|=|>|<|\bin\b|\bcontains\b)\s*(.+?)\s*$")
_EXISTS = re.compile(r"^\s*([A-Za-z_][\w .-]*?)\s+exists\s*$")


class SpecError(ValueError):
    """A prediction definition is not valid; the message names the field."""


@dataclass(frozen=True)
class Condition:
    property: str
    op: str
    value: Any = None

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise SpecError(f"where: operator {self.op!r} is not one of {', '.join(OPS)}")
        if not self.property:
            raise SpecError("where: property name is required")


def parse_where(text: str) -> Condition:
    """``amount > 0``, ``currency = USD``, ``category in [books, music]``,
    ``coupon exists``. A quoted value stays text: ``code = '10'``."""
    exists = _EXISTS.match(text)
    if exists:
        return Condition(exists.group(1).strip(), "exists")
    match = _WHERE.match(text)
    if not match:
        raise SpecError(f"where: cannot read {text!r}; write e.g. 'amount > 0'")
    prop, op, raw = match.group(1).strip(), match.group(2).strip(), match.group(3).strip()
    if op == "in":
        items = raw.strip("[]()").split(",")
        return Condition(prop, op, [_scalar(i.strip()) for i in items if i.strip()])
    return Condition(prop, op, _scalar(raw))


def _scalar(raw: str) -> Any:
    raw = raw.strip()
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        return raw[1:-1]
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(raw.lower(), raw)


@dataclass(frozen=True)
class Groups:
    """Percentiles of the ranked audience (default) or probability thresholds."""

    mode: str = "percentile"
    high: float = 0.20
    medium: float = 0.30

    def __post_init__(self) -> None:
        if self.mode not in ("percentile", "probability"):
            raise SpecError("groups.mode must be 'percentile' or 'probability'")
        if self.mode == "percentile":
            if not (0 < self.high < 1 and 0 <= self.medium < 1 and self.high + self.medium <= 1):
                raise SpecError("groups: high and medium are shares of users, "
                                "0 < high, high + medium <= 1")
        elif not (0 < self.medium <= self.high < 1):
            raise SpecError("groups: probability thresholds need 0 < medium <= high < 1")


@dataclass(frozen=True)
class Audience:
    """Who gets scored: everyone with an event before the as-of date, narrowed by
    recent activity, newness, or events that rule a user out (an uninstall)."""

    active_within_days: int | None = None
    new_within_days: int | None = None
    exclude_events: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("active_within_days", "new_within_days"):
            value = getattr(self, name)
            if value is not None and not (1 <= value <= 3650):
                raise SpecError(f"audience.{name} must be 1 to 3650 days")


@dataclass(frozen=True)
class PredictionSpec:
    name: str
    goal_event: str
    window_days: int
    polarity: str = "desired"
    goal_where: tuple[Condition, ...] = ()
    goal_absent: bool = False  # the goal is NOT doing goal_event in the window (churn)
    audience: Audience = field(default_factory=Audience)
    score_every_days: int = 1
    retrain_every_days: int = 15
    groups: Groups = field(default_factory=Groups)
    template: str | None = None

    def __post_init__(self) -> None:
        if not self.name.strip() or len(self.name) > 200:
            raise SpecError("name must be 1 to 200 characters")
        if not self.goal_event.strip():
            raise SpecError("goal_event is required")
        if not 1 <= self.window_days <= 365:
            raise SpecError("window_days must be 1 to 365")
        if self.polarity not in ("desired", "undesired"):
            raise SpecError("polarity must be 'desired' or 'undesired'")
        if not 1 <= self.score_every_days <= 90:
            raise SpecError("score_every_days must be 1 to 90")
        if not 1 <= self.retrain_every_days <= 365:
            raise SpecError("retrain_every_days must be 1 to 365")

    @property
    def goal_text(self) -> str:
        where = " and ".join(f"{c.property} exists" if c.op == "exists"
                             else f"{c.property} {c.op} {c.value}" for c in self.goal_where)
        base = f"no {self.goal_event}" if self.goal_absent else self.goal_event
        return f"{base} where {where}" if where else base

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PredictionSpec:
        """From ``as_json()`` output; the nested parts may also be given as the objects
        themselves (``Audience``, ``Groups``, ``Condition``), as template overrides are."""
        data = dict(data)
        data["goal_where"] = tuple(c if isinstance(c, Condition) else Condition(**c)
                                   for c in data.get("goal_where") or ())
        aud = data.get("audience")
        if not isinstance(aud, Audience):
            aud = dict(aud or {})
            aud["exclude_events"] = tuple(aud.get("exclude_events") or ())
            aud = Audience(**aud)
        data["audience"] = aud
        groups = data.get("groups")
        data["groups"] = groups if isinstance(groups, Groups) else Groups(**(groups or {}))
        return cls(**data)


TEMPLATES: dict[str, dict[str, Any]] = {
    "conversions": {"name": "Predict Conversions", "goal_event": "Charged",
                    "polarity": "desired", "window_days": 14,
                    "audience": {"active_within_days": 90,
                                 "exclude_events": ["App Uninstalled"]}},
    "churn": {"name": "Predict Churn", "goal_event": "App Launched", "goal_absent": True,
              "polarity": "undesired", "window_days": 14,
              "audience": {"active_within_days": 30, "exclude_events": ["App Uninstalled"]}},
    "retention": {"name": "Predict Retention", "goal_event": "App Launched",
                  "polarity": "desired", "window_days": 14,
                  "audience": {"new_within_days": 30, "exclude_events": ["App Uninstalled"]}},
    "uninstalls": {"name": "Predict Uninstalls", "goal_event": "App Uninstalled",
                   "polarity": "undesired", "window_days": 30,
                   "audience": {"active_within_days": 90,
                                "exclude_events": ["App Uninstalled"]}},
}


def from_template(template: str, **overrides: Any) -> PredictionSpec:
    if template not in TEMPLATES:
        raise SpecError(f"unknown template {template!r}; one of {', '.join(TEMPLATES)}")
    data = {**TEMPLATES[template], "template": template}
    data.update({k: v for k, v in overrides.items() if v is not None})
    return PredictionSpec.from_json(data)
