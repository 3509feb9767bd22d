"""Campaign metrics and the incremental lift over the holdout.

Lift is measured intent-to-treat: the conversion rate of everyone *assigned* to be
messaged (every non-holdout row, including users later suppressed by caps, quiet
hours or reachability, and failed sends) minus the holdout's rate. Suppression after
assignment cannot then bias the comparison. The 95 % interval for the difference of
two proportions is Newcombe's hybrid score interval (his method 10), built from the
two Wilson score intervals: it behaves well for small counts and rates near 0.
"""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import case, func, select

from propel.campaigns.tables import messages
from propel.db.engine import Database

METHOD = "Newcombe hybrid score (Wilson), intent-to-treat"
Z95 = 1.959963984540054
STATES = ("queued", "holdout", "suppressed", "sending", "sent", "failed", "pending_retry",
          "in_doubt")


def wilson_ci(x: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    if n <= 0:
        return None
    p = x / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_diff_ci(x1: int, n1: int, x0: int, n0: int, level: float = 0.95
                     ) -> tuple[float, float, float] | None:
    """(p1 - p0, low, high) by Newcombe's hybrid score method; None if a group is empty."""
    if n1 <= 0 or n0 <= 0:
        return None
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + level / 2))
    p1, p0 = x1 / n1, x0 / n0
    l1, u1 = wilson_ci(x1, n1, z)  # type: ignore[misc]
    l0, u0 = wilson_ci(x0, n0, z)  # type: ignore[misc]
    d = p1 - p0
    low = d - math.sqrt((p1 - l1) ** 2 + (u0 - p0) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p0 - l0) ** 2)
    return d, low, high


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
            "_treated_conv": 0, "_holdout_conv": 0}


def _add(acc: dict[str, Any], state: str, reason: str | None, n: int, opened: int,
         clicked: int, converted: int, revenue: float) -> None:
    acc["targeted"] += n
    if state == "holdout":
        acc["holdout"] += n
        acc["_holdout_conv"] += converted
    else:
        acc["_treated_conv"] += converted
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
    elif state in ("queued", "pending_retry", "sending"):
        acc["pending"] += n


def _finish(acc: dict[str, Any]) -> dict[str, Any]:
    treated_conv = acc.pop("_treated_conv")
    holdout_conv = acc.pop("_holdout_conv")
    acc["revenue"] = round(acc["revenue"], 2)
    acc["lift"] = lift(acc["targeted"] - acc["holdout"], treated_conv, acc["holdout"],
                       holdout_conv)
    return acc


def _rows(db: Database, campaign_id: str) -> list[Any]:
    m = messages.c
    query = select(
        m.grp, m.variant, m.state, m.reason, func.count().label("n"),
        func.sum(case((m.opened_at.is_not(None), 1), else_=0)).label("opened"),
        func.sum(case((m.clicked_at.is_not(None), 1), else_=0)).label("clicked"),
        func.sum(case((m.converted_at.is_not(None), 1), else_=0)).label("converted"),
        func.coalesce(func.sum(m.revenue), 0.0).label("revenue"),
    ).where(m.campaign_id == campaign_id).group_by(m.grp, m.variant, m.state, m.reason)
    with db.read() as conn:
        return conn.execute(query).all()


def campaign_stats(db: Database, campaign_id: str, *, series: str = "daily"
                   ) -> dict[str, Any]:
    totals = _empty()
    groups: dict[str, dict[str, Any]] = defaultdict(_empty)
    variants: dict[str, dict[str, Any]] = defaultdict(_empty)
    for r in _rows(db, campaign_id):
        args = (r.state, r.reason, r.n, int(r.opened or 0), int(r.clicked or 0),
                int(r.converted or 0), float(r.revenue or 0))
        _add(totals, *args)
        if r.grp:
            _add(groups[r.grp], *args)
        if r.variant and r.state != "holdout":
            _add(variants[r.variant], *args)
    order = {"High": 0, "Medium": 1, "Low": 2}
    totals = _finish(totals)
    return {
        "campaign_id": campaign_id, "method": METHOD,
        "totals": {k: v for k, v in totals.items() if k != "lift"},
        "lift": totals["lift"],
        "groups": {g: _finish(groups[g]) for g in sorted(groups, key=lambda g: order.get(g, 9))},
        "variants": {v: _variant(variants[v]) for v in sorted(variants)},
        "series": time_series(db, campaign_id, series),
    }


def _variant(acc: dict[str, Any]) -> dict[str, Any]:
    out = _finish(acc)
    # variants have no holdout of their own: compare their conversion rates directly
    treated = out["targeted"]
    out["lift"] = None
    out["conversion_rate"] = out["converted"] / treated if treated else None
    return out


def time_series(db: Database, campaign_id: str, series: str = "daily") -> list[dict[str, Any]]:
    """Sent, opened, clicked and converted per hour or day (conversions for the messaged
    and the holdout side, on the same clock)."""
    width = 3600 if series == "hourly" else 86400
    buckets: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    m = messages.c
    with db.read() as conn:
        rows = conn.execute(select(m.state, m.sent_at, m.opened_at, m.clicked_at,
                                   m.converted_at).where(m.campaign_id == campaign_id)).all()
    for state, *stamps in rows:
        for name, stamp in zip(("sent", "opened", "clicked", "converted"), stamps,
                               strict=True):
            if stamp is None:
                continue
            if name == "converted":
                name = "converted_holdout" if state == "holdout" else "converted_treated"
            bucket = int(stamp.timestamp() // width * width)
            buckets[bucket][name] += 1
    keys = ("sent", "opened", "clicked", "converted_treated", "converted_holdout")
    return [{"bucket": datetime.fromtimestamp(b, tz=UTC).isoformat(),
             **{k: buckets[b].get(k, 0) for k in keys}} for b in sorted(buckets)]


def headline(db: Database, campaign_id: str) -> dict[str, int]:
    """The few numbers a list shows: targeted, sent, opened, clicked, converted."""
    m = messages.c
    with db.read() as conn:
        row = conn.execute(select(
            func.count(),
            func.sum(case((m.state == "sent", 1), else_=0)),
            func.sum(case((m.opened_at.is_not(None), 1), else_=0)),
            func.sum(case((m.clicked_at.is_not(None), 1), else_=0)),
            func.sum(case(((m.converted_at.is_not(None)) & (m.state != "holdout"), 1),
                          else_=0)),
        ).where(m.campaign_id == campaign_id)).one()
    return {k: int(v or 0) for k, v in zip(
        ("targeted", "sent", "opened", "clicked", "converted"), row, strict=True)}
