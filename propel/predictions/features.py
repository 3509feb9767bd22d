"""Per-user features as of a date, in one SQL definition.

Everything here renders plain SQL over one view, ``events`` (a pinned lake snapshot,
see ``propel.lake.reader``), plus a small ``aliases`` table. The SQL sticks to
constructs that sqlglot transpiles from DuckDB to Spark SQL, so a distributed engine
can run the very same definitions over the lake's Parquet files.

Point in time: every feature reads only events with ``ts < as_of`` and each alias as it
pointed before ``as_of`` (``aliases`` holds every re-pointing); system events (message
sends, ``Likelihood Changed``, names starting with ``$``) are left out unless the
prediction names them (its goal). Labels read
``as_of <= ts < as_of + window``.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from propel.predictions.spec import Audience, Condition, PredictionSpec

SYSTEM_EVENTS = ("Likelihood Changed", "Message Sent", "Message Delivered", "Message Opened",
                 "Message Clicked", "Message Failed", "Message Suppressed", "Unsubscribed")
WINDOWS = (7, 30, 90)
MAX_EVENT_FEATURES = 12
MAX_PROFILE_FEATURES = 8
MONETARY_KEYS = ("amount", "revenue", "value", "price", "total")
TYPED_PROFILE = ("email", "phone", "timezone", "push_tokens", "consent")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MONEY = "DECIMAL(38, 6)"


@dataclass(frozen=True)
class FeatureSpec:
    """The feature list a model was trained with; stored in the registry so scoring
    computes exactly the same columns."""

    events: tuple[tuple[str, str], ...]  # (event name, column slug)
    goal_event: str
    goal_where: tuple[Condition, ...] = ()
    monetary_event: str | None = None
    monetary_property: str | None = None
    categorical: tuple[tuple[str, tuple[str, ...]], ...] = ()  # profile prop, categories
    numeric_profile: tuple[str, ...] = ()
    windows: tuple[int, ...] = WINDOWS

    def columns(self) -> list[str]:
        cols = ["events_7d", "events_30d", "events_90d", "events_all", "days_since_last",
                "tenure_days", "active_days_30d", "active_days_90d", "trend_7_30",
                "trend_30_90", "share_night", "share_morning", "share_afternoon",
                "share_weekend", "goal_days", "days_since_goal"]
        for _, slug in self.events:
            cols += [f"n_{slug}_{w}d" for w in self.windows] + [f"days_since_{slug}"]
        if self.monetary_event:
            cols += ["monetary_90d", "monetary_all", "monetary_mean"]
        cols += ["has_email", "has_phone", "consent_email", "consent_push", "consent_sms"]
        cols += [f"p_{_slug(p)}" for p, _ in self.categorical]
        cols += [f"p_{_slug(p)}" for p in self.numeric_profile]
        return cols + ["bgnbd_expected", "bgnbd_p_alive"]

    def categorical_columns(self) -> dict[str, tuple[str, ...]]:
        return {f"p_{_slug(p)}": cats for p, cats in self.categorical}

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FeatureSpec:
        return cls(
            events=tuple(tuple(e) for e in data["events"]),
            goal_event=data["goal_event"],
            goal_where=tuple(Condition(**c) for c in data.get("goal_where", ())),
            monetary_event=data.get("monetary_event"),
            monetary_property=data.get("monetary_property"),
            categorical=tuple((p, tuple(c)) for p, c in data.get("categorical", ())),
            numeric_profile=tuple(data.get("numeric_profile", ())),
            windows=tuple(data.get("windows", WINDOWS)),
        )


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")[:40] or "x"


def lit(value: Any) -> str:
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def ts_lit(moment: datetime) -> str:
    """A UTC instant, explicit about its zone so no engine reads it in a session zone."""
    text = moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    return f"CAST('{text}+00:00' AS TIMESTAMPTZ)"


def json_text(prop: str, column: str = "properties") -> str:
    path = '$."' + prop.replace('"', '\\"') + '"'
    return f"json_extract_string({column}, {lit(path)})"


def condition_sql(cond: Condition) -> str:
    text = json_text(cond.property)
    if cond.op == "exists":
        return f"{text} IS NOT NULL"
    if cond.op == "in":
        values = cond.value if isinstance(cond.value, list | tuple) else [cond.value]
        return f"{text} IN ({', '.join(lit(str(v)) for v in values)})"
    if cond.op == "contains":
        return f"instr(lower({text}), {lit(str(cond.value).lower())}) > 0"
    op = "<>" if cond.op == "!=" else cond.op
    if isinstance(cond.value, int | float) and not isinstance(cond.value, bool):
        return f"TRY_CAST({text} AS DOUBLE) {op} {lit(float(cond.value))}"
    value = str(cond.value).lower() if isinstance(cond.value, bool) else str(cond.value)
    return f"{text} {op} {lit(value)}"


def goal_match_sql(event: str, where: tuple[Condition, ...]) -> str:
    parts = [f"name = {lit(event)}"] + [condition_sql(c) for c in where]
    return "(" + " AND ".join(parts) + ")"


def _system_filter(named: tuple[str, ...] = ()) -> str:
    """Leave out system events, except those the prediction names (its goal, a tracked
    event): a goal of ``Message Clicked`` must see message clicks."""
    names = ", ".join(lit(n) for n in SYSTEM_EVENTS if n not in named)
    keep = " OR ".join(f"name = {lit(n)}" for n in named if n.startswith("$"))
    system = f"(name NOT IN ({names}) AND substr(name, 1, 1) <> '$')"
    return f"({system} OR {keep})" if keep else system


def resolved_sql(kind: str, start: datetime | None, end: datetime) -> str:
    """Events of ``kind`` in [start, end) with identities resolved through the aliases
    as they pointed at ``end`` (an alias re-pointed later still means what it meant)."""
    lower = f"AND e.ts >= {ts_lit(start)}" if start is not None else ""
    return f"""
      SELECT COALESCE(a.identity, e.identity) AS uid, e.name AS name, e.ts AS ts,
             e.properties AS properties
      FROM events e
      LEFT JOIN (SELECT alias, arg_max(identity, created_at) AS identity FROM aliases
                 WHERE created_at < {ts_lit(end)} GROUP BY alias) a ON a.alias = e.identity
      WHERE e.kind = {lit(kind)} AND e.ts < {ts_lit(end)} {lower}"""


def audience_having(aud: Audience, as_of: datetime) -> str:
    clauses = ["count(*) > 0"]
    if aud.active_within_days:
        clauses.append(f"max(ts) >= {ts_lit(as_of - timedelta(days=aud.active_within_days))}")
    if aud.new_within_days:
        clauses.append(f"min(ts) >= {ts_lit(as_of - timedelta(days=aud.new_within_days))}")
    if aud.exclude_events:
        names = ", ".join(lit(n) for n in aud.exclude_events)
        clauses.append(f"count(CASE WHEN name IN ({names}) THEN 1 END) = 0")
    return " AND ".join(clauses)


def _days(expr: str, as_of: datetime) -> str:
    """Fractional days from ``expr`` (a timestamp) to ``as_of``."""
    return f"(epoch({ts_lit(as_of)}) - epoch({expr})) / 86400"


def day_number(moment: datetime) -> int:
    """Whole UTC days since 1970-01-01: the value ``ev_day`` has for ``moment``."""
    return (moment.astimezone(UTC) - _EPOCH) // timedelta(days=1)


def _count_if(cond: str) -> str:
    """How many of a user's events meet ``cond``. count() keeps an 8-byte state per
    user where sum(CASE ... 1 ELSE 0) keeps a 128-bit sum and avg() a sum and a count:
    with ~40 such columns that halves the per-user hash table, so at a million users
    the query spills half as much to disk under the 2 GB query memory limit (the main
    cost there). DOUBLE is the type the sum had (a HUGEINT reaches pandas as float64)."""
    return f"CAST(count(CASE WHEN {cond} THEN 1 END) AS DOUBLE)"


def _share_if(cond: str) -> str:
    """The share of a user's events that meet ``cond``: avg(CASE ...), narrower."""
    return f"{_count_if(cond)} / count(*)"


def feature_sql(spec: FeatureSpec, audience: Audience, as_of: datetime) -> str:
    """One SELECT: a row per audience user, the columns of ``spec.columns()`` (less the
    BG/NBD ones, added in Python) plus ``_bg_x``, ``_bg_tx``, ``_bg_T`` in days.

    Calendar arithmetic is integer arithmetic on ``ev_day`` (whole UTC days since
    1970-01-01) and ``ev_hour`` (UTC hour), both derived from ``epoch(ts)``: the same in
    every engine and independent of the session time zone (DuckDB's ``dayofweek`` counts
    from 0 and Spark's from 1, and ``CAST(ts AS DATE)`` follows the session zone).

    BG/NBD inputs count whole days up to the last full day before ``as_of``
    (``last_day``): ``x`` = days with the goal - 1, ``t_x`` = last - first goal day,
    ``T`` = ``last_day`` - first goal day (first active day for users without the goal).
    """
    goal = goal_match_sql(spec.goal_event, spec.goal_where)
    last_day = day_number(as_of) - 1
    aggs: list[tuple[str, str]] = [
        ("count(*)", "events_all"),
        (_days("max(ts)", as_of), "days_since_last"),
        (_days("min(ts)", as_of), "tenure_days"),
        (_share_if("ev_hour < 6"), "share_night"),
        (_share_if("ev_hour >= 6 AND ev_hour < 12"), "share_morning"),
        (_share_if("ev_hour >= 12 AND ev_hour < 18"), "share_afternoon"),
        # day 0 (1970-01-01) was a Thursday: (ev_day + 3) % 7 is 0 on Mondays, 5 and 6 on
        # Saturdays and Sundays
        (_share_if("(ev_day + 3) % 7 >= 5"), "share_weekend"),
        (_days("max(CASE WHEN is_goal = 1 THEN ts END)", as_of), "days_since_goal"),
    ]
    for w in (7, 30, 90):
        since = ts_lit(as_of - timedelta(days=w))
        aggs.append((_count_if(f"ts >= {since}"), f"events_{w}d"))
    for name, slug in spec.events:
        for w in spec.windows:
            since = ts_lit(as_of - timedelta(days=w))
            aggs.append((_count_if(f"name = {lit(name)} AND ts >= {since}"), f"n_{slug}_{w}d"))
        aggs.append((_days(f"max(CASE WHEN name = {lit(name)} THEN ts END)", as_of),
                     f"days_since_{slug}"))
    if spec.monetary_event:
        since = ts_lit(as_of - timedelta(days=90))
        # Money is summed as DECIMAL: exact, so the result does not depend on the order
        # a parallel engine adds the rows in (summing DOUBLEs does, in the last bits).
        aggs += [(f"CAST(sum(CASE WHEN ts >= {since} THEN amount END) AS DOUBLE)",
                  "monetary_90d"),
                 ("CAST(sum(amount) AS DOUBLE)", "monetary_all"),
                 ("CAST(sum(amount) AS DOUBLE) / count(amount)", "monetary_mean")]
        amount = (f"CASE WHEN name = {lit(spec.monetary_event)} THEN "
                  f"TRY_CAST({json_text(spec.monetary_property or 'amount')} AS {MONEY}) END")
    else:
        amount = f"CAST(NULL AS {MONEY})"
    # Counts of distinct days come from a (user, day) roll-up: a COUNT(DISTINCT) per
    # column would build its own (user, day) hash table over every event.
    full_goal = f"day_goal = 1 AND ev_day <= {last_day}"
    daily: list[tuple[str, str]] = [
        ("sum(day_goal)", "goal_days"),
        *[(f"sum(CASE WHEN day_last >= {ts_lit(as_of - timedelta(days=w))} THEN 1 ELSE 0 "
           "END)", f"active_days_{w}d") for w in (30, 90)],
        (f"sum(CASE WHEN {full_goal} THEN 1 ELSE 0 END)", "_bg_days"),
        (f"min(CASE WHEN {full_goal} THEN ev_day END)", "_bg_first"),
        (f"max(CASE WHEN {full_goal} THEN ev_day END)", "_bg_last"),
        (f"min(CASE WHEN ev_day <= {last_day} THEN ev_day END)", "_first_day"),
    ]
    selected = ", ".join(f"agg.{alias}" for _, alias in aggs)
    selected += ", " + ", ".join(f"d.{alias}" for alias in ("goal_days", "active_days_30d",
                                                             "active_days_90d"))
    return f"""
    WITH ev AS (
      SELECT uid, name, ts, {amount} AS amount,
             CASE WHEN {goal} THEN 1 ELSE 0 END AS is_goal,
             CAST(floor(epoch(ts) / 86400) AS BIGINT) AS ev_day,
             CAST(floor(epoch(ts) / 3600) AS BIGINT) % 24 AS ev_hour
      FROM ({resolved_sql('event', None, as_of)}) r
      WHERE {_system_filter((spec.goal_event, *(name for name, _ in spec.events)))}
    ),
    agg AS (
      SELECT uid, {', '.join(f'{expr} AS {alias}' for expr, alias in aggs)}
      FROM ev GROUP BY uid
      HAVING {audience_having(audience, as_of)}
    ),
    days AS (
      SELECT uid, ev_day, max(ts) AS day_last, max(is_goal) AS day_goal
      FROM ev GROUP BY uid, ev_day
    ),
    d AS (
      SELECT uid, {', '.join(f'{expr} AS {alias}' for expr, alias in daily)}
      FROM days GROUP BY uid
    ),
    prof AS ({profile_sql(spec, as_of)})
    SELECT agg.uid AS identity, {selected},
      (CAST(agg.events_7d AS DOUBLE) * 30 / 7 + 1) / (agg.events_30d + 1) AS trend_7_30,
      (CAST(agg.events_30d AS DOUBLE) * 3 + 1) / (agg.events_90d + 1) AS trend_30_90,
      {_profile_select(spec)},
      CASE WHEN d._bg_first IS NULL THEN 0 ELSE d._bg_days - 1 END AS _bg_x,
      CASE WHEN d._bg_first IS NULL THEN 0 ELSE d._bg_last - d._bg_first END AS _bg_tx,
      CASE WHEN COALESCE(d._bg_first, d._first_day) IS NULL THEN 0
           ELSE {last_day} - COALESCE(d._bg_first, d._first_day) END AS _bg_T
    FROM agg JOIN d ON d.uid = agg.uid LEFT JOIN prof ON prof.uid = agg.uid
    ORDER BY agg.uid"""


def profile_sql(spec: FeatureSpec, as_of: datetime) -> str:
    """Each user's profile as it was at ``as_of``, from the profile-change records."""
    cols = [
        f"max(CASE WHEN {json_text('email')} IS NOT NULL THEN 1 ELSE 0 END) AS has_email",
        f"max(CASE WHEN {json_text('phone')} IS NOT NULL THEN 1 ELSE 0 END) AS has_phone",
    ]
    for channel in ("email", "push", "sms"):
        value = f"json_extract_string(properties, '$.consent.{channel}')"
        cols.append(f"arg_max(CASE WHEN {value} = 'true' THEN 1 ELSE 0 END, "
                    f"CASE WHEN {value} IS NOT NULL THEN ts END) AS consent_{channel}")
    for prop, _ in spec.categorical:
        value = json_text(prop)
        cols.append(f"arg_max({value}, CASE WHEN {value} IS NOT NULL THEN ts END) "
                    f"AS p_{_slug(prop)}")
    for prop in spec.numeric_profile:
        value = f"TRY_CAST({json_text(prop)} AS DOUBLE)"
        cols.append(f"arg_max({value}, CASE WHEN {value} IS NOT NULL THEN ts END) "
                    f"AS p_{_slug(prop)}")
    return (f"SELECT uid, {', '.join(cols)} FROM ({resolved_sql('profile', None, as_of)}) p "
            "GROUP BY uid")


def _profile_select(spec: FeatureSpec) -> str:
    cols = ["COALESCE(prof.has_email, 0) AS has_email", "COALESCE(prof.has_phone, 0) AS has_phone",
            "prof.consent_email", "prof.consent_push", "prof.consent_sms"]
    cols += [f"prof.p_{_slug(p)}" for p, _ in spec.categorical]
    cols += [f"prof.p_{_slug(p)}" for p in spec.numeric_profile]
    return ", ".join(cols)


def label_sql(spec: PredictionSpec, as_of: datetime) -> str:
    """Users who reached the goal in [as_of, as_of + window): did (or, for an absent
    goal, did) the goal event; the caller turns membership into 0/1."""
    end = as_of + timedelta(days=spec.window_days)
    goal = goal_match_sql(spec.goal_event, spec.goal_where)
    return (f"SELECT DISTINCT uid FROM ({resolved_sql('event', as_of, end)}) r "
            f"WHERE {goal}")


def register_aliases(con: duckdb.DuckDBPyConnection, rows: list[tuple[str, str, datetime]]
                     ) -> None:
    frame = pd.DataFrame(rows, columns=["alias", "identity", "created_at"])
    if frame.empty:
        frame = pd.DataFrame({"alias": pd.Series([], dtype=str),
                              "identity": pd.Series([], dtype=str),
                              "created_at": pd.Series([], dtype="datetime64[us, UTC]")})
    con.register("aliases", frame)


def compute_features(con: duckdb.DuckDBPyConnection, spec: FeatureSpec, audience: Audience,
                     as_of: datetime) -> pd.DataFrame:
    """Run the feature SQL (the caller provides ``events`` and ``aliases``); returns a
    frame indexed by identity with the raw BG/NBD inputs ``_bg_*`` still attached."""
    con.execute("SET TimeZone = 'UTC'")
    frame = con.execute(feature_sql(spec, audience, as_of)).df().set_index("identity")
    for col, cats in spec.categorical_columns().items():
        # a value the model never saw (a new country) is missing, not an error: pandas
        # deprecates building a Categorical from values outside its categories
        known = frame[col].where(frame[col].isin(cats))
        frame[col] = pd.Categorical(known, categories=list(cats))
    return frame


def labels(con: duckdb.DuckDBPyConnection, spec: PredictionSpec, as_of: datetime,
           identities: pd.Index) -> np.ndarray:
    con.execute("SET TimeZone = 'UTC'")
    did = {r[0] for r in con.execute(label_sql(spec, as_of)).fetchall()}
    hit = identities.isin(list(did))
    return (~hit if spec.goal_absent else hit).astype(np.int8)


def choose_feature_spec(con: duckdb.DuckDBPyConnection, spec: PredictionSpec, as_of: datetime
                        ) -> FeatureSpec:
    """Pick the tracked events and profile properties from data before ``as_of``."""
    con.execute("SET TimeZone = 'UTC'")
    since = ts_lit(as_of - timedelta(days=90))
    rows = con.execute(
        f"SELECT name, count(*) AS n FROM events WHERE kind = 'event' AND ts < {ts_lit(as_of)} "
        f"AND ts >= {since} AND {_system_filter()} GROUP BY name ORDER BY n DESC, name "
        f"LIMIT {MAX_EVENT_FEATURES}").fetchall()
    names = [r[0] for r in rows]
    if spec.goal_event not in names:
        names = names[: MAX_EVENT_FEATURES - 1] + [spec.goal_event]
    slugs: dict[str, str] = {}
    for name in names:
        slug = _slug(name)
        while slug in slugs.values():
            slug += "_"
        slugs[name] = slug
    monetary = _monetary(con, spec, as_of)
    categorical, numeric = _profile_properties(con, as_of)
    return FeatureSpec(
        events=tuple(slugs.items()), goal_event=spec.goal_event, goal_where=spec.goal_where,
        monetary_event=monetary[0] if monetary else None,
        monetary_property=monetary[1] if monetary else None,
        categorical=categorical, numeric_profile=numeric,
    )


def _monetary(con: duckdb.DuckDBPyConnection, spec: PredictionSpec, as_of: datetime
              ) -> tuple[str, str] | None:
    """The goal event's money property if it has one, else Charged's."""
    for event in dict.fromkeys([spec.goal_event, "Charged"]):
        for key in MONETARY_KEYS:
            share = con.execute(
                f"SELECT avg(CASE WHEN TRY_CAST({json_text(key)} AS DOUBLE) IS NOT NULL "
                f"THEN 1.0 ELSE 0.0 END) FROM (SELECT properties FROM events WHERE kind = "
                f"'event' AND name = {lit(event)} AND ts < {ts_lit(as_of)} LIMIT 10000)"
            ).fetchone()[0]
            if share and share > 0.5:
                return event, key
    return None


def _profile_properties(con: duckdb.DuckDBPyConnection, as_of: datetime
                        ) -> tuple[tuple[tuple[str, tuple[str, ...]], ...], tuple[str, ...]]:
    """Profile properties worth a feature: numeric ones, and text ones with 2 to 50
    values. The profile-change records before ``as_of`` are copied once into a small
    temporary table: every question below would otherwise scan all events again."""
    changes = f"_profile_changes_{secrets.token_hex(4)}"
    con.execute(f"CREATE TEMP TABLE {changes} AS SELECT properties FROM events "
                f"WHERE kind = 'profile' AND ts < {ts_lit(as_of)}")
    try:
        return _profile_properties_in(con, changes)
    finally:
        con.execute(f"DROP TABLE IF EXISTS {changes}")


def _profile_properties_in(con: duckdb.DuckDBPyConnection, changes: str
                           ) -> tuple[tuple[tuple[str, tuple[str, ...]], ...], tuple[str, ...]]:
    keys = [r[0] for r in con.execute(
        f"SELECT k, count(*) AS n FROM (SELECT unnest(json_keys(properties)) AS k "
        f"FROM {changes} LIMIT 200000) GROUP BY k ORDER BY n DESC, k LIMIT 40").fetchall()
        if r[0] not in TYPED_PROFILE]
    categorical, numeric = [], []
    for key in keys:
        distinct, numeric_share = con.execute(
            f"SELECT count(DISTINCT {json_text(key)}), "
            f"avg(CASE WHEN TRY_CAST({json_text(key)} AS DOUBLE) IS NOT NULL THEN 1.0 "
            f"ELSE 0.0 END) FROM {changes} WHERE {json_text(key)} IS NOT NULL").fetchone()
        if numeric_share and numeric_share > 0.95:
            numeric.append(key)
        elif distinct and 1 < distinct <= 50:
            cats = [r[0] for r in con.execute(
                f"SELECT DISTINCT {json_text(key)} AS v FROM {changes} "
                f"WHERE {json_text(key)} IS NOT NULL ORDER BY v").fetchall()]
            categorical.append((key, tuple(cats)))
        if len(categorical) + len(numeric) >= MAX_PROFILE_FEATURES:
            break
    return tuple(categorical), tuple(numeric)


@dataclass
class Snapshot:
    as_of: datetime
    features: pd.DataFrame
    labels: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)
