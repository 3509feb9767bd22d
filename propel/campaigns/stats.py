"""Campaign metrics and the incremental lift over the holdout.

Lift is measured intent-to-treat: the conversion rate of everyone *assigned* to be
messaged (every non-holdout row, including users later suppressed by caps, quiet
hours or reachability, and failed sends) minus the holdout's rate. Suppression after
assignment cannot then bias the comparison. The 95 % interval for the difference of
two proportions is Newcombe's hybrid score interval (his method 10), built from the
two Wilson score intervals: it behaves well for small counts and rates near 0.

Slices compare like with like. A likelihood group (recorded on the message at send
time) is compared with the holdout users of the same group. A variant is compared
with the holdout users that drew the same variant: dispatch draws the variant for
holdout rows too, from the same hash, so they are exactly the users who would have
got it (and a variant added in a later run of a recurring campaign is compared only
with that run's holdout). The time series carries the cumulative lift at the end of
each bucket: denominators are the users of dispatches started by then, numerators
the conversions recorded by then, on the same clock for both sides.
"""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import String, case, func, select

from propel.campaigns.tables import dispatches, messages
from propel.db.engine import Database

METHOD = "Newcombe hybrid score (Wilson), intent-to-treat"
Z95 = 1.959963984540054
STATES = ("queued", "holdout", "suppressed", "sending", "sent", "failed", "pending_retry",
          "in_doubt")
PENDING = ("queued", "pending_retry", "sending")
GROUP_ORDER = {"High": 0, "Medium": 1, "Low": 2}
# Empty buckets between the first and the last are filled in up to this many buckets.
MAX_FILLED_BUCKETS = 5000


def _z(level: float) -> float:
    if not 0 < level < 1:
        raise ValueError(f"confidence level must be between 0 and 1, not {level}")
    if level == 0.95:
        return Z95
    from scipy.stats import norm

    return float(norm.ppf(0.5 + level / 2))


def _check(x: int, n: int) -> None:
    if x < 0 or x > n:
        raise ValueError(f"count {x} is not within 0..{n}")


def wilson_ci(x: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson's score interval for x successes in n trials; None when n is 0."""
    if n <= 0:
        return None
    _check(x, n)
    p = x / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # the bounds at the edges are exact (0 and 1), not a rounding error away from them
    low = 0.0 if x == 0 else max(0.0, centre - half)
    high = 1.0 if x == n else min(1.0, centre + half)
    return low, high


def newcombe_diff_ci(x1: int, n1: int, x0: int, n0: int, level: float = 0.95
                     ) -> tuple[float, float, float] | None:
    """(p1 - p0, low, high) by Newcombe's hybrid score method; None if a group is empty."""
    if n1 <= 0 or n0 <= 0:
        return None
    _check(x1, n1)
    _check(x0, n0)
    z = _z(level)
    p1, p0 = x1 / n1, x0 / n0
    l1, u1 = wilson_ci(x1, n1, z)  # type: ignore[misc]
    l0, u0 = wilson_ci(x0, n0, z)  # type: ignore[misc]
    d = p1 - p0
    low = d - math.sqrt((p1 - l1) ** 2 + (u0 - p0) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p0 - l0) ** 2)
    return d, max(-1.0, low), min(1.0, high)


def lift(treated_n: int, treated_conv: int, holdout_n: int, holdout_conv: int
         ) -> dict[str, Any]:
    out: dict[str, Any] = {
        "method": METHOD, "treated_n": treated_n, "treated_conversions": treated_conv,
        "holdout_n": holdout_n, "holdout_conversions": holdout_conv,
        "treated_rate": treated_conv / treated_n if treated_n else None,
        "holdout_rate": holdout_conv / holdout_n if holdout_n else None,
        "diff": None, "low": None, "high": None, "relative": None,
    }
    ci = newcombe_diff_ci(treated_conv, treated_n, holdout_conv, holdout_n)
    if ci is not None:
        out["diff"], out["low"], out["high"] = ci
        if out["holdout_rate"]:
            out["relative"] = out["diff"] / out["holdout_rate"]
    return out


def _empty() -> dict[str, Any]:
    return {"targeted": 0, "holdout": 0, "suppressed": 0, "suppressed_by_reason": {},
            "sent": 0, "delivered": 0, "failed": 0, "in_doubt": 0, "pending": 0,
            "opened": 0, "clicked": 0, "converted": 0, "revenue": 0.0,
            "holdout_converted": 0, "holdout_revenue": 0.0}


def _add(acc: dict[str, Any], state: str, reason: str | None, n: int, opened: int,
         clicked: int, converted: int, revenue: float) -> None:
    acc["targeted"] += n
    if state == "holdout":
        # never messaged: counted only for the comparison, never as sent/opened/clicked
        acc["holdout"] += n
        acc["holdout_converted"] += converted
        acc["holdout_revenue"] += revenue
        return
    acc["opened"] += opened
    acc["clicked"] += clicked
    acc["converted"] += converted
    acc["revenue"] += revenue
    if state == "suppressed":
        acc["suppressed"] += n
        key = reason or "other"
        acc["suppressed_by_reason"][key] = acc["suppressed_by_reason"].get(key, 0) + n
    elif state == "sent":
        acc["sent"] += n
        acc["delivered"] += n
    elif state == "failed":
        acc["failed"] += n
    elif state == "in_doubt":
        acc["in_doubt"] += n
    elif state in PENDING:
        acc["pending"] += n


def _finish(acc: dict[str, Any]) -> dict[str, Any]:
    acc["revenue"] = round(acc["revenue"], 2)
    acc["holdout_revenue"] = round(acc["holdout_revenue"], 2)
    # intent-to-treat: every assigned non-holdout row is in the treated denominator
    acc["lift"] = lift(acc["targeted"] - acc["holdout"], acc["converted"], acc["holdout"],
                       acc["holdout_converted"])
    return acc


def _rows(db: Database, campaign_id: str) -> list[Any]:
    m = messages.c
    query = select(
        m.grp, m.variant, m.state, m.reason, func.count().label("n"),
        func.sum(case((m.opened_at.is_not(None), 1), else_=0)).label("opened"),
        func.sum(case((m.clicked_at.is_not(None), 1), else_=0)).label("clicked"),
        func.sum(case((m.converted_at.is_not(None), 1), else_=0)).label("converted"),
        func.coalesce(func.sum(case((m.converted_at.is_not(None), m.revenue))), 0.0)
        .label("revenue"),
    ).where(m.campaign_id == campaign_id).group_by(m.grp, m.variant, m.state, m.reason)
    with db.read() as conn:
        return conn.execute(query).all()


def campaign_stats(db: Database, campaign_id: str, *, series: str = "daily"
                   ) -> dict[str, Any]:
    totals = _empty()
    groups: dict[str, dict[str, Any]] = defaultdict(_empty)
    variants: dict[str, dict[str, Any]] = defaultdict(_empty)
    for r in _rows(db, campaign_id):
        args = (r.state, r.reason, int(r.n), int(r.opened or 0), int(r.clicked or 0),
                int(r.converted or 0), float(r.revenue or 0))
        _add(totals, *args)
        if r.grp:
            _add(groups[r.grp], *args)
        if r.variant:
            _add(variants[r.variant], *args)
    totals = _finish(totals)
    return {
        "campaign_id": campaign_id, "method": METHOD,
        "totals": {k: v for k, v in totals.items() if k != "lift"},
        "lift": totals["lift"],
        "groups": {g: _finish(groups[g])
                   for g in sorted(groups, key=lambda g: (GROUP_ORDER.get(g, 9), g))},
        "variants": {v: _variant(variants[v]) for v in sorted(variants)},
        "series": time_series(db, campaign_id, series),
    }


def _variant(acc: dict[str, Any]) -> dict[str, Any]:
    out = _finish(acc)
    treated = out["targeted"] - out["holdout"]
    out["conversion_rate"] = out["converted"] / treated if treated else None
    return out


def _bucket_expr(dialect: str, column: Any, hourly: bool) -> Any:
    """The UTC hour ('YYYY-MM-DD HH') or day ('YYYY-MM-DD') of a timestamp, as text,
    computed by the database (SQLite stores UTC text; PostgreSQL a timestamptz)."""
    if dialect == "sqlite":
        return func.substr(column, 1, 13 if hourly else 10, type_=String)
    fmt = "YYYY-MM-DD HH24" if hourly else "YYYY-MM-DD"
    return func.to_char(func.timezone("UTC", column), fmt, type_=String)


def _bucket_start(moment: datetime, width: timedelta) -> datetime:
    moment = moment.astimezone(UTC)
    if width == timedelta(hours=1):
        return moment.replace(minute=0, second=0, microsecond=0)
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def time_series(db: Database, campaign_id: str, series: str = "daily") -> list[dict[str, Any]]:
    """Sent, opened, clicked and converted per hour or day (conversions for the messaged
    and the holdout side, on the same clock), each bucket with the cumulative lift at
    its end."""
    if series not in ("hourly", "daily"):
        raise ValueError("series must be 'hourly' or 'daily'")
    hourly = series == "hourly"
    width = timedelta(hours=1) if hourly else timedelta(days=1)
    fmt = "%Y-%m-%d %H" if hourly else "%Y-%m-%d"
    m = messages.c
    is_holdout = case((m.state == "holdout", 1), else_=0)
    counts: dict[datetime, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    with db.read() as conn:
        dialect = conn.dialect.name
        for name, column in (("sent", m.sent_at), ("opened", m.opened_at),
                             ("clicked", m.clicked_at), ("converted", m.converted_at)):
            bucket = _bucket_expr(dialect, column, hourly).label("bucket")
            rows = conn.execute(
                select(bucket, is_holdout.label("h"), func.count())
                .where(m.campaign_id == campaign_id, column.is_not(None))
                .group_by(bucket, is_holdout)).all()
            for text, held, n in rows:
                start = datetime.strptime(text, fmt).replace(tzinfo=UTC)
                if name == "converted":
                    counts[start]["converted_holdout" if held else "converted_treated"] += n
                elif not held:  # holdout users are never messaged
                    counts[start][name] += n
        # denominators: the users of each dispatch, from the dispatch's start
        per_dispatch = conn.execute(
            select(m.dispatch_id, is_holdout.label("h"), func.count(),
                   func.min(m.created_at))
            .where(m.campaign_id == campaign_id).group_by(m.dispatch_id, is_holdout)).all()
        started = dict(conn.execute(select(dispatches.c.id, dispatches.c.started_at).where(
            dispatches.c.campaign_id == campaign_id)).all())
    assigned: dict[datetime, list[int]] = defaultdict(lambda: [0, 0])  # treated, holdout
    for dispatch_id, held, n, created in per_dispatch:
        when = started.get(dispatch_id) or created
        assigned[_bucket_start(when, width)][1 if held else 0] += n
    keys = sorted(set(counts) | set(assigned))
    if not keys:
        return []
    span = int((keys[-1] - keys[0]) / width) + 1
    if span <= MAX_FILLED_BUCKETS:
        keys = [keys[0] + i * width for i in range(span)]
    out = []
    t_n = h_n = t_conv = h_conv = 0
    names = ("sent", "opened", "clicked", "converted_treated", "converted_holdout")
    for key in keys:
        c = counts.get(key, {})
        t_n += assigned.get(key, (0, 0))[0]
        h_n += assigned.get(key, (0, 0))[1]
        t_conv += c.get("converted_treated", 0)
        h_conv += c.get("converted_holdout", 0)
        cumulative = lift(t_n, t_conv, h_n, h_conv)
        cumulative.pop("method")
        out.append({"bucket": key.isoformat(), **{k: c.get(k, 0) for k in names},
                    "lift": cumulative})
    return out


def headline(db: Database, campaign_id: str) -> dict[str, int]:
    """The few numbers a list shows: targeted, sent, opened, clicked, converted (the
    last three for messaged users only, as in ``campaign_stats``)."""
    m = messages.c
    treated = m.state != "holdout"

    def count_if(cond: Any) -> Any:
        return func.sum(case((cond, 1), else_=0))

    with db.read() as conn:
        row = conn.execute(select(
            func.count(),
            count_if(m.state == "sent"),
            count_if(m.opened_at.is_not(None) & treated),
            count_if(m.clicked_at.is_not(None) & treated),
            count_if(m.converted_at.is_not(None) & treated),
        ).where(m.campaign_id == campaign_id)).one()
    return {k: int(v or 0) for k, v in zip(
        ("targeted", "sent", "opened", "clicked", "converted"), row, strict=True)}
