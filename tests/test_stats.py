"""Campaign statistics: the Wilson and Newcombe intervals against published values and an
independent implementation, their coverage in simulated A/A and A/B campaigns, and the
aggregation of real message rows (totals, groups, variants, series, headline) on both
databases."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import orjson
import pytest
from scipy.optimize import brentq
from scipy.stats import norm
from sqlalchemy import insert

from propel.campaigns.stats import (
    campaign_stats,
    headline,
    lift,
    newcombe_diff_ci,
    time_series,
    wilson_ci,
)
from propel.campaigns.tables import campaigns, dispatches, messages

# --------------------------------------------------------------------------------------------
# Wilson and Newcombe: known values
# --------------------------------------------------------------------------------------------

# Newcombe RG (1998). Interval estimation for the difference between independent
# proportions: comparison of eleven methods. Stat Med 17:873-890, Table II, method 10.
NEWCOMBE_TABLE_II = [
    ((56, 70, 48, 80), (0.0524, 0.3339)),
    ((9, 10, 3, 10), (0.1705, 0.8090)),
    ((5, 56, 0, 29), (-0.0381, 0.1926)),
    ((0, 10, 0, 20), (-0.1611, 0.2775)),
    ((0, 10, 0, 10), (-0.2775, 0.2775)),
    ((10, 10, 0, 20), (0.6791, 1.0000)),
    ((10, 10, 0, 10), (0.6075, 1.0000)),
]

# Newcombe RG (1998). Two-sided confidence intervals for the single proportion:
# comparison of seven methods. Stat Med 17:857-872, Table I, method 3 (Wilson score).
WILSON_TABLE_I = [
    ((81, 263), (0.2553, 0.3662)),
    ((15, 148), (0.0624, 0.1605)),
    ((0, 20), (0.0, 0.1611)),
    ((1, 29), (0.0061, 0.1718)),
]


def test_newcombe_worked_example() -> None:
    d, low, high = newcombe_diff_ci(56, 70, 48, 80)
    assert d == pytest.approx(0.2, abs=1e-12)
    assert round(low, 4) == 0.0524
    assert round(high, 4) == 0.3339


@pytest.mark.parametrize(("counts", "expected"), NEWCOMBE_TABLE_II)
def test_newcombe_published_table(counts: tuple[int, int, int, int],
                                  expected: tuple[float, float]) -> None:
    x1, n1, x0, n0 = counts
    d, low, high = newcombe_diff_ci(x1, n1, x0, n0)
    assert d == pytest.approx(x1 / n1 - x0 / n0)
    assert (round(low, 4), round(high, 4)) == expected


@pytest.mark.parametrize(("counts", "expected"), WILSON_TABLE_I)
def test_wilson_published_table(counts: tuple[int, int], expected: tuple[float, float]) -> None:
    low, high = wilson_ci(*counts)
    assert (round(low, 4), round(high, 4)) == expected


def test_wilson_closed_forms_at_the_edges() -> None:
    z = norm.ppf(0.975)
    for n in (1, 7, 20, 1000):
        low, high = wilson_ci(0, n)
        assert low == 0.0  # exactly, not a rounding error above or below
        assert high == pytest.approx(z * z / (n + z * z), rel=1e-12)
        low, high = wilson_ci(n, n)
        assert high == 1.0
        assert low == pytest.approx(n / (n + z * z), rel=1e-12)
    # 1/2: symmetric around one half
    low, high = wilson_ci(1, 2)
    assert low + high == pytest.approx(1.0)
    # a wider z gives a wider interval
    assert wilson_ci(3, 40, z=2.5758)[0] < wilson_ci(3, 40)[0]


def _wilson_by_inversion(x: int, n: int, z: float) -> tuple[float, float]:
    """Independent reference: the p whose score statistic |x/n - p| / sqrt(p(1-p)/n) is z."""
    phat = x / n

    def f(p: float) -> float:
        return (phat - p) ** 2 - z * z * p * (1 - p) / n

    # f(phat) < 0 inside (0, 1); at phat = 0 or 1 it is a trivial root, so step off it
    inner = min(max(phat, 1e-9), 1 - 1e-9)
    low = 0.0 if x == 0 else brentq(f, 1e-15, inner, xtol=1e-15, rtol=1e-14)
    high = 1.0 if x == n else brentq(f, inner, 1 - 1e-15, xtol=1e-15, rtol=1e-14)
    return low, high


def _newcombe_reference(x1: int, n1: int, x0: int, n0: int, level: float = 0.95
                        ) -> tuple[float, float, float]:
    z = norm.ppf(0.5 + level / 2)
    p1, p0 = x1 / n1, x0 / n0
    l1, u1 = _wilson_by_inversion(x1, n1, z)
    l0, u0 = _wilson_by_inversion(x0, n0, z)
    d = p1 - p0
    return (d, d - math.hypot(p1 - l1, u0 - p0), d + math.hypot(u1 - p1, p0 - l0))


def test_newcombe_agrees_with_an_independent_implementation() -> None:
    rng = np.random.default_rng(7)
    cases = [(6, 7, 2, 7), (1, 1, 0, 1), (0, 1, 1, 1), (3, 3000, 1, 200), (999, 1000, 1, 1000)]
    for _ in range(300):
        n1, n0 = (int(v) for v in rng.integers(1, 5000, size=2))
        cases.append((int(rng.integers(0, n1 + 1)), n1, int(rng.integers(0, n0 + 1)), n0))
    for case in cases:
        for level in (0.95, 0.9, 0.99):
            got = newcombe_diff_ci(*case, level=level)
            want = _newcombe_reference(*case, level=level)
            assert got == pytest.approx(want, abs=1e-9), (case, level)
            wl, wh = wilson_ci(case[0], case[1], z=norm.ppf(0.5 + level / 2))
            assert (wl, wh) == pytest.approx(_wilson_by_inversion(
                case[0], case[1], norm.ppf(0.5 + level / 2)), abs=1e-9)


def test_newcombe_properties() -> None:
    # antisymmetric: swapping the arms negates and swaps the bounds
    for a in [(7, 40, 2, 35), (0, 12, 5, 9), (30, 30, 0, 4)]:
        d, low, high = newcombe_diff_ci(*a)
        d2, low2, high2 = newcombe_diff_ci(a[2], a[3], a[0], a[1])
        assert (d2, low2, high2) == pytest.approx((-d, -high, -low))
        assert -1.0 <= low <= d <= high <= 1.0
    # 0/n vs 0/n: symmetric around zero; n/n vs n/n too
    d, low, high = newcombe_diff_ci(0, 50, 0, 50)
    assert d == 0 and low == pytest.approx(-high) and high > 0
    d, low, high = newcombe_diff_ci(50, 50, 50, 50)
    assert d == 0 and low == pytest.approx(-high) and high > 0
    # 0/n vs n/n: the extreme difference is reachable exactly
    d, low, high = newcombe_diff_ci(0, 10, 10, 10)
    assert d == -1.0 and low == -1.0 and high < -0.6
    # more confidence, wider interval; more data, narrower
    assert newcombe_diff_ci(5, 50, 2, 50, level=0.99)[1] < newcombe_diff_ci(5, 50, 2, 50)[1]
    narrow = newcombe_diff_ci(500, 5000, 200, 5000)
    wide = newcombe_diff_ci(5, 50, 2, 50)
    assert narrow[2] - narrow[1] < wide[2] - wide[1]


def test_empty_and_invalid_counts() -> None:
    assert wilson_ci(0, 0) is None
    assert newcombe_diff_ci(0, 0, 1, 10) is None
    assert newcombe_diff_ci(1, 10, 0, 0) is None
    with pytest.raises(ValueError):
        wilson_ci(5, 4)
    with pytest.raises(ValueError):
        newcombe_diff_ci(1, 10, -1, 10)
    with pytest.raises(ValueError):
        newcombe_diff_ci(1, 10, 1, 10, level=1.0)


def test_lift_fields() -> None:
    out = lift(70, 56, 80, 48)
    assert out["treated_rate"] == pytest.approx(0.8) and out["holdout_rate"] == 0.6
    assert round(out["low"], 4) == 0.0524 and round(out["high"], 4) == 0.3339
    assert out["relative"] == pytest.approx(0.2 / 0.6)
    assert "Newcombe" in out["method"]
    # no holdout: rates where defined, no interval
    out = lift(100, 5, 0, 0)
    assert out["treated_rate"] == 0.05 and out["holdout_rate"] is None
    assert out["diff"] is None and out["low"] is None and out["relative"] is None
    # nobody converted anywhere: a zero difference with an interval around it, and no
    # relative lift (it would divide by zero)
    out = lift(100, 0, 20, 0)
    assert out["diff"] == 0 and out["low"] < 0 < out["high"] and out["relative"] is None
    out = lift(0, 0, 0, 0)
    assert out["treated_rate"] is None and out["diff"] is None


# --------------------------------------------------------------------------------------------
# simulated campaigns: coverage and bias
# --------------------------------------------------------------------------------------------

RUNS = 4000


def _simulate(seed: int, uplift: float) -> dict[str, np.ndarray]:
    """RUNS campaigns of 2,000-6,000 users, holdout drawn per user at 10-20 %, base rate
    2-10 %, treated users converting at base + uplift."""
    rng = np.random.default_rng(seed)
    users = rng.integers(2000, 6001, size=RUNS)
    pct = rng.uniform(0.10, 0.20, size=RUNS)
    base = rng.uniform(0.02, 0.10, size=RUNS)
    n_h = rng.binomial(users, pct)
    n_t = users - n_h
    x_t = rng.binomial(n_t, base + uplift)
    x_h = rng.binomial(n_h, base)
    out: dict[str, list[float]] = {"diff": [], "low": [], "high": []}
    for a, b, c, d in zip(n_t, x_t, n_h, x_h, strict=True):
        res = lift(int(a), int(b), int(c), int(d))
        for k in out:
            out[k].append(res[k])
    p_t, p_h = x_t / n_t, x_h / n_h
    wald = 2 * 1.96 * np.sqrt(p_t * (1 - p_t) / n_t + p_h * (1 - p_h) / n_h)
    return {"wald_width": wald, **{k: np.array(v) for k, v in out.items()}}


def test_aa_interval_covers_zero_about_95_percent() -> None:
    sim = _simulate(seed=20240601, uplift=0.0)
    covered = (sim["low"] <= 0) & (sim["high"] >= 0)
    assert 0.935 <= covered.mean() <= 0.965, covered.mean()
    # misses fall on both sides about equally (no one-sided bias in the bounds)
    above, below = (sim["low"] > 0).mean(), (sim["high"] < 0).mean()
    assert 0.01 <= above <= 0.04 and 0.01 <= below <= 0.04, (above, below)
    assert abs(sim["diff"].mean()) < 0.001


def test_injected_uplift_is_covered_and_unbiased() -> None:
    true = 0.03
    sim = _simulate(seed=99, uplift=true)
    covered = (sim["low"] <= true) & (true <= sim["high"])
    assert 0.935 <= covered.mean() <= 0.965, covered.mean()
    # the mean estimate: standard error about 0.01 / sqrt(4000) = 0.00016
    assert sim["diff"].mean() == pytest.approx(true, abs=0.0008)
    # the interval is not bought by width: about as wide as the large-sample (Wald) one,
    # so +3 pp is detected in most runs
    width = sim["high"] - sim["low"]
    assert 0.97 <= (width / sim["wald_width"]).mean() <= 1.05
    assert (sim["low"] > 0).mean() > 0.6


def test_intent_to_treat_stays_unbiased_when_suppression_depends_on_the_user() -> None:
    """Users least likely to convert are most often unreachable (suppressed). The
    message adds +3 pp only for users actually messaged, so the true intent-to-treat
    effect is 3 pp times the messaged share; comparing only the messaged users with the
    holdout would overstate it."""
    rng = np.random.default_rng(5)
    uplift, runs = 0.03, 2000
    covered, itt, naive = 0, [], []
    for _ in range(runs):
        n = int(rng.integers(2000, 5001))
        base = rng.uniform(0.02, 0.10)
        low_segment = rng.random(n) < 0.5
        p = np.where(low_segment, base * 0.4, base * 1.6)
        holdout = rng.random(n) < rng.uniform(0.10, 0.20)
        suppressed = ~holdout & (rng.random(n) < np.where(low_segment, 0.5, 0.1))
        messaged = ~holdout & ~suppressed
        converted = rng.random(n) < p + uplift * messaged
        true_itt = uplift * (1 - (0.5 * 0.5 + 0.5 * 0.1))
        res = lift(int((~holdout).sum()), int(converted[~holdout].sum()),
                   int(holdout.sum()), int(converted[holdout].sum()))
        covered += res["low"] <= true_itt <= res["high"]
        itt.append(res["diff"])
        naive.append(converted[messaged].mean() - converted[holdout].mean())
    assert 0.935 <= covered / runs <= 0.965
    assert np.mean(itt) == pytest.approx(true_itt, abs=0.001)
    assert np.mean(naive) > true_itt + 0.01  # the per-protocol comparison is biased


# --------------------------------------------------------------------------------------------
# aggregation of real rows
# --------------------------------------------------------------------------------------------

T0 = datetime(2024, 3, 4, 10, 15, tzinfo=UTC)


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2024, 3, day, hour, minute, tzinfo=UTC)


def add_campaign(propel, account_id: str, goal: dict | None = None) -> str:
    cid = uuid.uuid4().hex
    now = datetime.now(UTC)
    propel.db.write(lambda conn: conn.execute(insert(campaigns).values(
        id=cid, account_id=account_id, name="Stats", status="running", channel="email",
        audience="{}", content='{"variants": []}', schedule='{"type": "now"}', dnd="null",
        caps="null", holdout_pct=0.2, goal=orjson.dumps(goal).decode(), created_at=now,
        updated_at=now)))
    return cid


def add_dispatch(propel, account_id: str, cid: str, started: datetime) -> int:
    return propel.db.write(lambda conn: conn.execute(insert(dispatches).values(
        campaign_id=cid, account_id=account_id, started_at=started, status="done",
        targeted=0).returning(dispatches.c.id)).scalar())


def add_messages(propel, account_id: str, cid: str, dispatch_id: int, rows: list[dict]) -> None:
    full = []
    for r in rows:
        full.append({"account_id": account_id, "campaign_id": cid, "dispatch_id": dispatch_id,
                     "key": f"k-{dispatch_id}-{r['identity']}", "attempts": 0,
                     "created_at": r.get("created_at", T0), "variant": None, "grp": None,
                     "reason": None, "sent_at": None, "opened_at": None, "clicked_at": None,
                     "converted_at": None, "revenue": None, **r})
    for i in range(0, len(full), 5000):
        propel.db.write(lambda conn, c=full[i:i + 5000]: conn.execute(insert(messages), c))


def _m(identity: str, grp: str | None, variant: str, state: str, **kw) -> dict:
    return {"identity": identity, "grp": grp, "variant": variant, "state": state, **kw}


SENT = at(4, 10, 20)
ROWS = [
    _m("h1", "High", "A", "sent", sent_at=SENT, opened_at=at(4, 10, 40),
       clicked_at=at(4, 10, 45), converted_at=at(4, 11, 30), revenue=50.0),
    _m("h2", "High", "B", "sent", sent_at=SENT, opened_at=at(4, 11), converted_at=at(4, 12, 10),
       revenue=20.0),
    _m("h3", "High", "A", "sent", sent_at=SENT),
    # suppressed after assignment but converted: counts for the treated side (ITT)
    _m("h4", "High", "B", "suppressed", reason="cap", converted_at=at(4, 13), revenue=5.0),
    _m("h5", "High", "A", "failed", reason="bounced: mailbox full"),
    _m("h6", "High", "A", "holdout", converted_at=at(4, 11, 45), revenue=30.0),
    # a holdout row with (impossible) send stamps must still never count as sent/opened
    _m("h7", "High", "B", "holdout", sent_at=SENT, opened_at=at(4, 10, 50)),
    _m("l1", "Low", "A", "sent", sent_at=SENT, opened_at=at(4, 11, 10)),
    _m("l2", "Low", "B", "suppressed", reason="unsubscribed"),
    _m("l3", "Low", "A", "suppressed", reason="cap"),
    _m("l4", "Low", "B", "in_doubt"),
    _m("l5", "Low", "A", "queued"),
    _m("l6", "Low", "B", "pending_retry", reason="timeout"),
    _m("l7", "Low", "A", "holdout"),
    _m("l8", "Low", "B", "holdout", converted_at=at(5, 9), revenue=12.5),
    _m("l9", "Low", "A", "sending"),
    # revenue without a conversion is not revenue
    _m("l10", "Low", "A", "sent", sent_at=SENT, revenue=99.0),
    _m("n1", None, "A", "sent", sent_at=SENT, opened_at=at(4, 23, 30),
       converted_at=at(5, 2), revenue=7.25),
]


def _assert_lift(got: dict, tn: int, tc: int, hn: int, hc: int) -> None:
    want = lift(tn, tc, hn, hc)
    assert (got["treated_n"], got["treated_conversions"], got["holdout_n"],
            got["holdout_conversions"]) == (tn, tc, hn, hc)
    for k in ("treated_rate", "holdout_rate", "diff", "low", "high", "relative"):
        assert got[k] == pytest.approx(want[k]) if want[k] is not None else got[k] is None, k


@pytest.fixture
def seeded(propel, tenant):
    cid = add_campaign(propel, tenant.id, {"event": "Order Completed", "window_hours": 24})
    did = add_dispatch(propel, tenant.id, cid, T0)
    add_messages(propel, tenant.id, cid, did, ROWS)
    return cid


def test_totals_count_every_state_once(propel, seeded) -> None:
    stats = campaign_stats(propel.db, seeded)
    t = stats["totals"]
    assert t["targeted"] == 18
    assert t["holdout"] == 4
    assert t["suppressed"] == 3
    assert t["suppressed_by_reason"] == {"cap": 2, "unsubscribed": 1}
    assert t["sent"] == t["delivered"] == 6  # h1 h2 h3 l1 l10 n1; not the holdout h7
    assert t["failed"] == 1 and t["in_doubt"] == 1 and t["pending"] == 3
    assert t["opened"] == 4  # h1 h2 l1 n1; not h7
    assert t["clicked"] == 1
    assert t["converted"] == 4  # h1 h2 h4 n1: the holdout's conversions are not "converted"
    assert t["revenue"] == 82.25
    assert t["holdout_converted"] == 2 and t["holdout_revenue"] == 42.5
    every_state = (t["holdout"] + t["suppressed"] + t["sent"] + t["failed"] + t["in_doubt"]
                   + t["pending"])
    assert every_state == t["targeted"]
    # intent-to-treat: all 14 assigned (suppressed, failed, pending included) vs 4 held out
    _assert_lift(stats["lift"], 14, 4, 4, 2)
    assert stats["lift"]["diff"] == pytest.approx(4 / 14 - 2 / 4)


def test_groups_compare_with_their_own_holdout(propel, seeded) -> None:
    stats = campaign_stats(propel.db, seeded)
    assert list(stats["groups"]) == ["High", "Low"]  # n1 had no group
    high, low = stats["groups"]["High"], stats["groups"]["Low"]
    assert (high["targeted"], high["holdout"], high["sent"], high["suppressed"]) == (7, 2, 3, 1)
    assert high["suppressed_by_reason"] == {"cap": 1}
    assert high["opened"] == 2 and high["revenue"] == 75.0
    _assert_lift(high["lift"], 5, 3, 2, 1)
    assert (low["targeted"], low["holdout"], low["sent"], low["suppressed"]) == (10, 2, 2, 2)
    assert low["suppressed_by_reason"] == {"cap": 1, "unsubscribed": 1}
    assert low["pending"] == 3 and low["in_doubt"] == 1 and low["revenue"] == 0
    _assert_lift(low["lift"], 8, 0, 2, 1)


def test_variants_compare_with_the_holdout_that_drew_them(propel, seeded) -> None:
    stats = campaign_stats(propel.db, seeded)
    assert list(stats["variants"]) == ["A", "B"]
    a, b = stats["variants"]["A"], stats["variants"]["B"]
    assert (a["targeted"], a["holdout"], a["sent"], a["converted"]) == (11, 2, 5, 2)
    assert a["conversion_rate"] == pytest.approx(2 / 9)
    assert a["revenue"] == 57.25
    _assert_lift(a["lift"], 9, 2, 2, 1)
    assert (b["targeted"], b["holdout"], b["sent"], b["converted"]) == (7, 2, 1, 2)
    assert b["conversion_rate"] == pytest.approx(2 / 5)
    _assert_lift(b["lift"], 5, 2, 2, 1)
    assert b["opened"] == 1  # h2 only; h7 is in the holdout


def test_daily_series(propel, seeded) -> None:
    series = campaign_stats(propel.db, seeded)["series"]
    assert [s["bucket"] for s in series] == ["2024-03-04T00:00:00+00:00",
                                             "2024-03-05T00:00:00+00:00"]
    d1, d2 = series
    assert (d1["sent"], d1["opened"], d1["clicked"]) == (6, 4, 1)
    assert (d1["converted_treated"], d1["converted_holdout"]) == (3, 1)
    assert (d2["sent"], d2["opened"], d2["converted_treated"], d2["converted_holdout"]) == (
        0, 0, 1, 1)
    _assert_lift(d1["lift"], 14, 3, 4, 1)  # cumulative at the end of each day
    _assert_lift(d2["lift"], 14, 4, 4, 2)


def test_hourly_series(propel, seeded) -> None:
    series = time_series(propel.db, seeded, "hourly")
    hours = [datetime.fromisoformat(s["bucket"]) for s in series]
    # every hour from the dispatch (10:00) to the last conversion (09:00 next day)
    assert hours[0] == at(4, 10) and hours[-1] == at(5, 9) and len(hours) == 24
    by = {h: s for h, s in zip(hours, series, strict=True)}
    assert (by[at(4, 10)]["sent"], by[at(4, 10)]["opened"], by[at(4, 10)]["clicked"]) == (6, 1, 1)
    assert by[at(4, 11)]["opened"] == 2
    assert (by[at(4, 11)]["converted_treated"], by[at(4, 11)]["converted_holdout"]) == (1, 1)
    assert by[at(4, 12)]["converted_treated"] == 1 and by[at(4, 13)]["converted_treated"] == 1
    assert by[at(4, 23)]["opened"] == 1
    assert by[at(5, 2)]["converted_treated"] == 1 and by[at(5, 9)]["converted_holdout"] == 1
    quiet = by[at(4, 16)]
    assert all(quiet[k] == 0 for k in ("sent", "opened", "clicked", "converted_treated",
                                       "converted_holdout"))
    _assert_lift(by[at(4, 10)]["lift"], 14, 0, 4, 0)
    _assert_lift(quiet["lift"], 14, 3, 4, 1)
    _assert_lift(by[at(5, 9)]["lift"], 14, 4, 4, 2)
    assert sum(s["sent"] for s in series) == 6
    assert sum(s["converted_treated"] for s in series) == 4
    with pytest.raises(ValueError):
        time_series(propel.db, seeded, "weekly")


def test_series_denominators_grow_with_each_dispatch(propel, tenant) -> None:
    cid = add_campaign(propel, tenant.id, {"event": "Buy"})
    d1 = add_dispatch(propel, tenant.id, cid, at(4, 10))
    d2 = add_dispatch(propel, tenant.id, cid, at(6, 10))
    add_messages(propel, tenant.id, cid, d1, [
        _m("a", None, "A", "sent", sent_at=at(4, 10), converted_at=at(4, 12)),
        _m("b", None, "A", "sent", sent_at=at(4, 10)),
        _m("c", None, "A", "holdout")])
    add_messages(propel, tenant.id, cid, d2, [
        _m("a", None, "A", "sent", sent_at=at(6, 10)),
        _m("b", None, "A", "holdout", converted_at=at(6, 11)),
        _m("d", None, "A", "suppressed", reason="dnd", converted_at=at(6, 12))])
    series = time_series(propel.db, cid, "daily")
    assert [s["bucket"][:10] for s in series] == ["2024-03-04", "2024-03-05", "2024-03-06"]
    _assert_lift(series[0]["lift"], 2, 1, 1, 0)
    _assert_lift(series[1]["lift"], 2, 1, 1, 0)  # an empty day carries the totals forward
    _assert_lift(series[2]["lift"], 4, 2, 2, 1)
    stats = campaign_stats(propel.db, cid)
    _assert_lift(stats["lift"], 4, 2, 2, 1)  # one unit per (dispatch, user)
    assert stats["totals"]["suppressed_by_reason"] == {"dnd": 1}


def test_headline(propel, seeded) -> None:
    assert headline(propel.db, seeded) == {"targeted": 18, "sent": 6, "opened": 4,
                                           "clicked": 1, "converted": 4}


def test_empty_campaign(propel, tenant) -> None:
    cid = add_campaign(propel, tenant.id, None)
    stats = campaign_stats(propel.db, cid)
    assert stats["totals"]["targeted"] == 0 and stats["totals"]["suppressed_by_reason"] == {}
    assert stats["lift"]["diff"] is None and stats["lift"]["treated_rate"] is None
    assert stats["groups"] == {} and stats["variants"] == {} and stats["series"] == []
    assert headline(propel.db, cid) == {"targeted": 0, "sent": 0, "opened": 0, "clicked": 0,
                                        "converted": 0}


def test_random_rows_match_an_independent_count(propel, tenant) -> None:
    """3,000 random rows: every slice's counts and lift equal a plain Python count."""
    rng = np.random.default_rng(11)
    cid = add_campaign(propel, tenant.id, {"event": "Buy"})
    did = add_dispatch(propel, tenant.id, cid, T0)
    states = ["holdout", "suppressed", "sent", "failed", "in_doubt", "queued", "pending_retry"]
    rows = []
    for i in range(3000):
        state = states[int(rng.choice(7, p=[.15, .15, .5, .05, .05, .05, .05]))]
        conv = rng.random() < (0.08 if state == "holdout" else 0.12)
        rows.append(_m(
            f"u{i}", [None, "High", "Medium", "Low"][int(rng.integers(0, 4))],
            ["A", "B", "C"][int(rng.integers(0, 3))], state,
            reason=["cap", "dnd", "no email"][int(rng.integers(0, 3))]
            if state == "suppressed" else None,
            sent_at=T0 if state == "sent" else None,
            opened_at=T0 + timedelta(hours=1) if state == "sent" and rng.random() < .3 else None,
            converted_at=T0 + timedelta(hours=float(rng.uniform(0, 24))) if conv else None,
            revenue=float(round(rng.uniform(1, 100), 2)) if conv else None))
    add_messages(propel, tenant.id, cid, did, rows)
    stats = campaign_stats(propel.db, cid, series="hourly")

    def check(got: dict, subset: list[dict]) -> None:
        held = [r for r in subset if r["state"] == "holdout"]
        treated = [r for r in subset if r["state"] != "holdout"]
        assert got["targeted"] == len(subset) and got["holdout"] == len(held)
        assert got["sent"] == sum(r["state"] == "sent" for r in subset)
        assert got["suppressed"] == sum(r["state"] == "suppressed" for r in subset)
        assert got["opened"] == sum(r["opened_at"] is not None for r in treated)
        assert got["converted"] == sum(r["converted_at"] is not None for r in treated)
        assert got["revenue"] == pytest.approx(sum(r["revenue"] or 0 for r in treated), abs=0.01)
        reasons: dict[str, int] = {}
        for r in subset:
            if r["state"] == "suppressed":
                reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
        assert got["suppressed_by_reason"] == reasons
        lift_ = got["lift"] if "lift" in got else stats["lift"]
        _assert_lift(lift_, len(treated), sum(r["converted_at"] is not None for r in treated),
                     len(held), sum(r["converted_at"] is not None for r in held))

    check({**stats["totals"], "lift": stats["lift"]}, rows)
    assert list(stats["groups"]) == ["High", "Medium", "Low"]
    for g, got in stats["groups"].items():
        check(got, [r for r in rows if r["grp"] == g])
    assert list(stats["variants"]) == ["A", "B", "C"]
    for v, got in stats["variants"].items():
        check(got, [r for r in rows if r["variant"] == v])
    assert sum(s["converted_treated"] + s["converted_holdout"] for s in stats["series"]) == sum(
        r["converted_at"] is not None for r in rows)
    last = stats["series"][-1]["lift"]
    assert last["diff"] == pytest.approx(stats["lift"]["diff"])
