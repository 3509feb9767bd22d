"""Audiences: "who" for campaigns and journeys, a boolean rule over profiles, their
prediction groups and scores, their events and their reachability.

Rule JSON
---------
A rule is one JSON object, one of::

    {"and": [RULE, ...]}        all must hold ({"and": []} is everyone)
    {"or":  [RULE, ...]}        at least one must hold (one rule or more)
    {"not": RULE}               the complement (among the account's profiles)

    {"property": NAME, "op": OP, "value": VALUE}
    {"event": NAME, "did": true, "min_count": 1,
     "within_days": D | "between": [FROM, TO],
     "where": [{"property": NAME, "op": OP, "value": VALUE}, ...]}
    {"reachable": "email" | "sms" | "push" | "whatsapp" | "inbox" | "webhook"}

for example::

    {"and": [{"property": "Predict Conversions", "op": "=", "value": "Low"},
             {"not": {"event": "Charged", "within_days": 30}},
             {"event": "Added To Cart", "min_count": 2, "within_days": 7,
              "where": [{"property": "price", "op": ">", "value": 20}]},
             {"or": [{"property": "country", "op": "in", "value": ["FR", "DE"]},
                     {"reachable": "email"}]}]}

Properties. ``NAME`` is, in this order of precedence: a prediction's name (its current
group, ``High`` / ``Medium`` / ``Low``), a prediction's name + ``" score"`` (0-100), a
system field (``email``, ``phone``, ``timezone``, ``identity``, ``created_at``), or a
key of the profile's free ``properties``. A property no profile has is simply "not
set" everywhere.

Operators (``OP``; words such as ``equals``, ``gt``, ``is_set`` are accepted too):

- ``=`` / ``!=``: exact equality. A number value compares numerically (``"42"`` and
  ``42.0`` equal 42), a string value compares the text, ``true``/``false`` a boolean.
  ``!=`` means "is set and differs": a profile without the property is not matched
  (``{"not": {... "=" ...}}`` matches it).
- ``in`` / ``not in``: a list of values, each compared as ``=`` does.
- ``contains`` / ``not contains``: case-insensitive substring of the text (a list or
  object value is searched in its JSON text).
- ``>``, ``>=``, ``<``, ``<=``, ``between`` ``[low, high]`` (inclusive): numbers; a
  value that is not a number never matches.
- ``before``, ``after``, ``between`` ``[from, to]`` with ISO dates (``2026-05-01``)
  or timestamps: dates; a date means its whole UTC day (``after 2026-05-01`` starts
  on May 2, ``between`` includes both days). Stored values count as dates when they
  are ISO dates or timestamps (``signup_date``).
- ``is set`` / ``is not set``: no value.

Events. ``did`` (default true) with ``min_count`` (default 1): did the event at least
that many times, in the window; ``did: false`` is the complement (did it fewer times,
e.g. never). Windows: ``within_days: D`` is the last D UTC calendar days, today
included (whole days: ``within_days: 1`` is today); ``between: [FROM, TO]`` is
inclusive (dates cover whole UTC days, timestamps are exact); no window = ever.
``where`` filters the events by their properties with the operators above. Events of
an anonymous id count for the profile it was merged into.

Reachability: ``email`` = has an e-mail address and ``consent.email`` is not false;
``sms`` and ``whatsapp`` need a phone, ``push`` a push token, each with its consent not
false; ``inbox`` and ``webhook`` are always reachable.

Errors name the path of the offending part: ``and[2].op: unknown operator 'like'``.

Evaluation
----------
Everything is evaluated over an in-memory per-account index (``propel.audiences.index``):
typed, dictionary-encoded profile columns, prediction columns and a per-(user, event,
day) rollup of one lake snapshot; no result is ever cached. A new scoring run and
events not yet in the lake are seen at once. Profile changes and new lake versions are
picked up by a re-check that, by default, runs in the background once
``index.RECHECK_SECONDS`` have passed (longer for accounts whose check is slow), so a
count may lag a profile change by that much; ``fresh=True`` checks first.
``materialize`` and ``export_csv``, which act on people, always check first.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from sqlalchemy import select

from propel.core import Propel
from propel.predictions.tables import predictions, user_predictions
from propel.profiles.tables import profiles

from .index import SYSTEM_PROPERTIES, View, index_for, utc_now
from .rules import (
    CANONICAL,
    AllOf,
    AnyOf,
    AudienceError,
    EventCond,
    Not,
    PropertyCond,
    Reachable,
    Rule,
    walk,
)
from .rules import validate as _validate

__all__ = [
    "CANONICAL",
    "AllOf",
    "AnyOf",
    "AudienceError",
    "EventCond",
    "Member",
    "Not",
    "PropertyCond",
    "Reachable",
    "Rule",
    "available_properties",
    "count",
    "export_csv",
    "materialize",
    "members",
    "preview",
    "validate",
]

_IN_CHUNK = 500
PREVIEW_PROPERTIES = 6


@dataclass(frozen=True)
class Member:
    """One recipient as the SQL tables hold it at materialisation time: what a send
    needs (addresses, consent, time zone) and the prediction state it was targeted with
    (group, score, model version), recorded with each message."""

    identity: str
    email: str | None
    phone: str | None
    timezone: str | None
    push_tokens: list[str] = field(default_factory=list)
    consent: dict[str, bool] = field(default_factory=dict)
    properties: dict[str, Any] = field(default_factory=dict)
    predictions: dict[str, tuple[str, float, int]] = field(default_factory=dict)


def validate(rule: Any) -> Rule:
    """Parse and check a rule (see the module docstring); raises :class:`AudienceError`
    with the path of the first problem. Call it when a rule is saved, so a campaign
    never fails at send time on a typo."""
    return _validate(rule)


def _evaluate(propel: Propel, account_id: str, rule: Any, now: datetime | None,
              fresh: bool) -> tuple[View, np.ndarray, Rule]:
    parsed = _validate(rule)
    has_events = any(isinstance(n, EventCond) for n in walk(parsed))
    view = index_for(propel, account_id).view(fresh=fresh, events=has_events)
    return view, view.mask(parsed, utc_now(now)), parsed


def _sorted_identities(view: View, rows: np.ndarray) -> list[str]:
    ids = view.profiles.identities.take(rows).to_pylist() if len(rows) else []
    return ids if view.profiles.in_order else sorted(ids)


def count(propel: Propel, account_id: str, rule: Any, *, now: datetime | None = None,
          fresh: bool = False) -> int:
    """How many profiles match: the dashboard's live estimate while a rule is edited.
    ``now`` anchors ``within_days`` (default: the current time)."""
    _, mask, _ = _evaluate(propel, account_id, rule, now, fresh)
    return int(np.count_nonzero(mask))


def members(propel: Propel, account_id: str, rule: Any, *, now: datetime | None = None,
            fresh: bool = False) -> list[str]:
    """The matching identities, sorted."""
    view, mask, _ = _evaluate(propel, account_id, rule, now, fresh)
    return _sorted_identities(view, np.flatnonzero(mask))


def named_properties(rule: Any) -> list[str]:
    """The profile properties a rule tests, at any depth, each once in order."""
    return list(dict.fromkeys(n.property for n in walk(validate(rule))
                              if isinstance(n, PropertyCond)))


def preview(propel: Propel, account_id: str, rule: Any, limit: int = 20, *,
            now: datetime | None = None) -> list[dict[str, Any]]:
    """A random sample of matching users (in identity order) so whoever writes the
    rule can see who it catches: e-mail, the properties the rule names plus a few
    others, and every prediction group."""
    view, mask, parsed = _evaluate(propel, account_id, rule, now, False)
    rows = np.flatnonzero(mask)
    if len(rows) > limit:
        rows = np.sort(np.random.default_rng().choice(rows, size=max(limit, 0),
                                                      replace=False))
    state = view.profiles
    wanted = [n for n in named_properties(parsed) if n in state.keys]
    emails = state.system["email"].decode(rows)
    out = []
    for i, row in enumerate(rows.tolist()):
        props = orjson.loads(state.raw[row].as_py() or "{}")
        shown = {k: props[k] for k in wanted if k in props}
        for k in sorted(props):
            if len(shown) >= max(PREVIEW_PROPERTIES, len(wanted)):
                break
            shown.setdefault(k, props[k])
        groups = {name: _group_at(col, row) for name, col in view.predictions.items()}
        scores = {name: (None if np.isnan(col.score[row]) else float(col.score[row]))
                  for name, col in view.predictions.items()}
        out.append({"identity": state.identities[row].as_py(), "email": emails[i],
                    "properties": shown, "predictions": groups, "scores": scores})
    out.sort(key=lambda u: u["identity"])
    return out


def _score_text(score: float) -> str:
    return "" if np.isnan(score) else f"{score:.1f}"


def _group_at(col: Any, row: int) -> str | None:
    code = int(col.group.codes[row])
    return col.group.dictionary[code - 1].as_py() if code else None


def export_csv(propel: Propel, account_id: str, rule: Any, path: str | Path, *,
               now: datetime | None = None) -> int:
    """Write the members as CSV (identity, email, phone, then per prediction its group
    and ``<name> score`` columns) for ad-platform retargeting; returns the number of
    members written."""
    view, mask, _ = _evaluate(propel, account_id, rule, now, True)
    rows = np.flatnonzero(mask)
    state = view.profiles
    order = np.argsort(state.identities.take(rows).to_numpy(zero_copy_only=False),
                       kind="stable") if not state.in_order else np.arange(len(rows))
    rows = rows[order]
    names = sorted(view.predictions)
    ids = state.identities.take(rows).to_pylist() if len(rows) else []
    emails = state.system["email"].decode(rows)
    phones = state.system["phone"].decode(rows)
    groups = {n: view.predictions[n].group.decode(rows) for n in names}
    scores = {n: view.predictions[n].score[rows] for n in names}
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["identity", "email", "phone",
                         *[c for n in names for c in (n, f"{n} score")]])
        for i, ident in enumerate(ids):
            writer.writerow([ident, emails[i] or "", phones[i] or "",
                             *[c for n in names for c in (groups[n][i] or "",
                                                          _score_text(scores[n][i]))]])
    return len(ids)


def materialize(propel: Propel, account_id: str, rule: Any, *, now: datetime | None = None
                ) -> list[Member]:
    """The members with everything a send needs, read from the SQL tables right now:
    membership is evaluated on a freshly checked index, then each member's profile and
    current prediction groups, scores and model versions are read, so a message records
    the state it was sent on."""
    identities = members(propel, account_id, rule, now=now, fresh=True)
    found: dict[str, Member] = {}
    with propel.db.read() as conn:
        for start in range(0, len(identities), _IN_CHUNK):
            chunk = identities[start:start + _IN_CHUNK]
            preds: dict[str, dict[str, tuple[str, float, int]]] = {}
            for ident, name, grp, score, version in conn.execute(
                    select(user_predictions.c.identity, predictions.c.name,
                           user_predictions.c.grp, user_predictions.c.score,
                           user_predictions.c.model_version)
                    .join(predictions, predictions.c.id == user_predictions.c.prediction_id)
                    .where(user_predictions.c.account_id == account_id,
                           user_predictions.c.identity.in_(chunk))).all():
                preds.setdefault(ident, {})[name] = (grp, float(score), int(version))
            for row in conn.execute(select(profiles).where(
                    profiles.c.account_id == account_id, profiles.c.identity.in_(chunk))):
                found[row.identity] = Member(
                    identity=row.identity, email=row.email, phone=row.phone,
                    timezone=row.timezone, push_tokens=orjson.loads(row.push_tokens),
                    consent=orjson.loads(row.consent), properties=orjson.loads(row.properties),
                    predictions=preds.get(row.identity, {}))
    # A profile merged away between evaluation and this read is no longer a recipient.
    return [found[i] for i in identities if i in found]


def available_properties(propel: Propel, account_id: str) -> list[dict[str, Any]]:
    """The "User property" list of the rule editor: every prediction's group (with its
    values) and score first, then the profile properties seen in the account with the
    type their values have, then the system fields."""
    view = index_for(propel, account_id).view()
    out: list[dict[str, Any]] = []
    for name in sorted(view.predictions):
        col = view.predictions[name]
        out.append({"name": name, "type": "string", "kind": "prediction",
                    "values": list(col.groups)})
        out.append({"name": f"{name} score", "type": "number", "kind": "prediction"})
    taken = {p["name"] for p in out} | set(SYSTEM_PROPERTIES)
    state = view.profiles
    for key in sorted(state.keys):
        if key in taken:
            continue
        prop = state.prop(key)
        out.append({"name": key, "type": prop.kind() if prop else "string",
                    "kind": "profile"})
    for name, kind in SYSTEM_PROPERTIES.items():
        out.append({"name": name, "type": kind, "kind": "system"})
    return out
