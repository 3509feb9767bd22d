"""Tests for the BG/NBD model in ``propel.predictions.btyd``.

The checks are chosen so that a plausible-but-wrong implementation fails: the published CDNOW
estimates pin down the likelihood, simulation with known parameters pins down estimation,
and a Monte-Carlo continuation of the generative process pins down the conditional
predictions (which have no published values to compare against at this precision).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import integrate, special, stats

from propel.predictions.btyd import BetaGeoModel, NotFittedError
from propel.predictions.btyd_data import rfm_from_transactions, simulate_bgnbd

DATA = Path(__file__).parent / "data" / "CDNOW_sample.txt"

# Fader, Hardie & Lee (2005), Marketing Science 24(2), BG/NBD on the CDNOW 1/10 sample.
PUBLISHED = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
PUBLISHED_LL = -9582.4
# "true" parameters for simulations: realistic, with heavy churn and sparse buying
CDNOW_LIKE = dict(PUBLISHED)


# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cdnow_rfm() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    raw = np.loadtxt(DATA, dtype=str)
    ids = raw[:, 1].astype(int)
    dates = np.array([f"{d[:4]}-{d[4:6]}-{d[6:]}" for d in raw[:, 2]], dtype="datetime64[D]")
    return rfm_from_transactions(ids, dates, np.datetime64("1997-09-30"), freq_unit_days=7.0)


@pytest.fixture(scope="module")
def cdnow_model(cdnow_rfm) -> BetaGeoModel:
    _, x, t_x, T = cdnow_rfm
    return BetaGeoModel().fit(x, t_x, T)


def _simulate_with_holdout(
    n: int, r: float, alpha: float, a: float, b: float, T: np.ndarray, t: float, seed: int
) -> dict[str, np.ndarray]:
    """Run the BG/NBD story past T to T + t, recording calibration summary and outcome.

    Written independently of ``simulate_bgnbd`` on purpose: the prediction checks should not
    share code (and therefore bugs) with the module under test.
    """
    rng = np.random.default_rng(seed)
    lam = rng.gamma(r, 1.0 / alpha, n)
    p = rng.beta(a, b, n)
    x = np.zeros(n)
    t_x = np.zeros(n)
    holdout = np.zeros(n)
    death = np.full(n, np.inf)
    now = np.zeros(n)
    end = T + t
    todo = np.arange(n)
    while todo.size:
        with np.errstate(divide="ignore"):
            now[todo] += rng.exponential(1.0, todo.size) / lam[todo]
        todo = todo[now[todo] <= end[todo]]
        in_cal = now[todo] <= T[todo]
        cal, hold = todo[in_cal], todo[~in_cal]
        x[cal] += 1
        t_x[cal] = now[cal]
        holdout[hold] += 1
        dies = rng.random(todo.size) < p[todo]
        death[todo[dies]] = now[todo[dies]]
        todo = todo[~dies]
    return {"x": x, "t_x": t_x, "T": T, "holdout": holdout, "alive_at_T": death > T}


@pytest.fixture(scope="module")
def continuation() -> dict[str, np.ndarray]:
    n = 100_000
    T = np.random.default_rng(7).uniform(13.0, 52.0, n)
    return _simulate_with_holdout(n, **CDNOW_LIKE, T=T, t=39.0, seed=11)


def _binned_z_scores(
    predicted: np.ndarray, observed: np.ndarray, var: np.ndarray, bins: np.ndarray
) -> np.ndarray:
    """z-score of sum(observed - predicted) per bin, given per-customer outcome variances."""
    z = []
    for label in np.unique(bins):
        m = bins == label
        z.append((observed[m] - predicted[m]).sum() / np.sqrt(var[m].sum()))
    return np.array(z)


# --------------------------------------------------------------------------------------------
# 1. CDNOW: data preparation and the published estimates
# --------------------------------------------------------------------------------------------


def test_cdnow_summary_matches_published_preparation(cdnow_rfm) -> None:
    ids, x, t_x, T = cdnow_rfm
    assert len(ids) == 2357
    assert x.sum() == 2457
    # customer 0001: purchases 1997-01-01, 01-18, 08-02 (calibration) and 12-12 (holdout)
    i = int(np.nonzero(ids == 1)[0][0])
    assert x[i] == 2
    assert t_x[i] == pytest.approx(213 / 7)
    assert T[i] == pytest.approx(272 / 7)
    # cohort joined in Q1 1997, so T spans 27..38.86 weeks
    assert T.min() == pytest.approx(27.0)
    assert T.max() == pytest.approx(272 / 7)
    assert np.all(t_x <= T)


def test_cdnow_reproduces_published_estimates(cdnow_model) -> None:
    m = cdnow_model
    assert m.converged_
    for name, value in PUBLISHED.items():
        assert getattr(m, f"{name}_") == pytest.approx(value, abs=1e-3), name
    assert m.log_likelihood_ == pytest.approx(PUBLISHED_LL, abs=0.1)
    assert m.n_iter_ > 0


def test_cdnow_predictions_match_closed_forms(cdnow_model, cdnow_rfm) -> None:
    """Model outputs for real histories agree with the paper's formulas written out directly."""
    _, x, t_x, T = cdnow_rfm
    m = cdnow_model
    r, alpha, a, b = m.r_, m.alpha_, m.a_, m.b_
    # FHL eq. 13
    odds_dead = a / (b + np.maximum(x, 1) - 1) * ((alpha + T) / (alpha + t_x)) ** (r + x)
    odds_dead = np.where(x > 0, odds_dead, 0.0)
    np.testing.assert_allclose(m.probability_alive(x, t_x, T), 1 / (1 + odds_dead), rtol=1e-12)
    # FHL eq. 10 (fine with scipy's hyp2f1 for CDNOW's small x)
    t = 39.0
    hyp = special.hyp2f1(r + x, b + x, a + b + x - 1, t / (alpha + T + t))
    bracket = 1 - ((alpha + T) / (alpha + T + t)) ** (r + x) * hyp
    eq10 = (a + b + x - 1) / (a - 1) * bracket / (1 + odds_dead)
    np.testing.assert_allclose(m.expected_transactions(t, x, t_x, T), eq10, rtol=1e-8)
    # aggregate: the model's forecast of week 40-78 repeat purchases for the 2,357 customers
    assert m.expected_transactions(t, x, t_x, T).sum() == pytest.approx(eq10.sum(), rel=1e-10)


# --------------------------------------------------------------------------------------------
# fitting mechanics: grouping, weights, scale
# --------------------------------------------------------------------------------------------


def test_weights_equal_repeated_rows(cdnow_rfm) -> None:
    _, x, t_x, T = cdnow_rfm
    rows, counts = np.unique(np.column_stack([x, t_x, T]), axis=0, return_counts=True)
    assert len(rows) < len(x)  # there are duplicates to group
    raw = BetaGeoModel().fit(x, t_x, T)
    weighted = BetaGeoModel().fit(rows[:, 0], rows[:, 1], rows[:, 2], weights=counts)
    for name in ("r_", "alpha_", "a_", "b_", "log_likelihood_"):
        assert getattr(weighted, name) == pytest.approx(getattr(raw, name), rel=1e-7), name


def test_million_customers_fit_quickly_via_grouping(cdnow_rfm) -> None:
    """425 copies of CDNOW (~1M rows): same estimates, 425x the log-likelihood."""
    _, x, t_x, T = cdnow_rfm
    copies = 425
    big = BetaGeoModel().fit(np.tile(x, copies), np.tile(t_x, copies), np.tile(T, copies))
    assert big.n_customers_ == copies * len(x) > 1_000_000
    for name, value in PUBLISHED.items():
        assert getattr(big, f"{name}_") == pytest.approx(value, abs=1e-3), name
    assert big.log_likelihood_ == pytest.approx(copies * PUBLISHED_LL, rel=2e-5)


def test_penalizer_shrinks_parameters(cdnow_rfm) -> None:
    _, x, t_x, T = cdnow_rfm
    plain = BetaGeoModel().fit(x, t_x, T)
    penalized = BetaGeoModel(penalizer=0.1).fit(x, t_x, T)
    norm = lambda m: m.r_**2 + m.alpha_**2 + m.a_**2 + m.b_**2  # noqa: E731
    assert norm(penalized) < norm(plain)
    assert penalized.log_likelihood_ < plain.log_likelihood_  # reported LL is unpenalised


# --------------------------------------------------------------------------------------------
# 2. parameter recovery
# --------------------------------------------------------------------------------------------


def test_parameter_recovery_from_simulation() -> None:
    true = {"r": 0.5, "alpha": 6.0, "a": 0.7, "b": 3.5}
    n = 20_000
    T = np.random.default_rng(3).uniform(26.0, 78.0, n)
    x, t_x, T = simulate_bgnbd(n, **true, T=T, seed=4)
    m = BetaGeoModel().fit(x, t_x, T)
    assert m.converged_
    # Across 30 seeds the relative sampling s.d. was ~1.2% (r), 1.8% (alpha), 5% (a), 6% (b);
    # allow ~4 s.d.
    tolerance = {"r": 0.05, "alpha": 0.08, "a": 0.2, "b": 0.25}
    for name, value in true.items():
        assert getattr(m, f"{name}_") == pytest.approx(value, rel=tolerance[name]), name
    # likelihood-ratio check: the truth must be inside the 99.9% confidence region
    ll_true = BetaGeoModel.from_params(**true).log_likelihood(x, t_x, T).sum()
    lr = 2.0 * (m.log_likelihood_ - ll_true)
    assert 0.0 <= lr < stats.chi2(df=4).ppf(0.999)


def test_simulator_matches_model_moments() -> None:
    """Mean of x from ``simulate_bgnbd`` equals the model's E[X(T)] (FHL eq. 9)."""
    r, alpha, a, b = 0.8, 5.0, 1.5, 4.0
    T = 30.0
    x, t_x, T_arr = simulate_bgnbd(100_000, r, alpha, a, b, T=T, seed=5)
    z = T / (alpha + T)
    eq9 = (
        (a + b - 1)
        / (a - 1)
        * (1 - (alpha / (alpha + T)) ** r * special.hyp2f1(r, b, a + b - 1, z))
    )
    se = x.std() / np.sqrt(len(x))
    assert abs(x.mean() - eq9) < 4 * se
    assert np.all(T_arr == T)
    assert np.all((t_x <= T) & ((x > 0) | (t_x == 0)))


# --------------------------------------------------------------------------------------------
# 3. conditional predictions vs. Monte-Carlo continuation
# --------------------------------------------------------------------------------------------


def test_probability_alive_matches_simulation(continuation) -> None:
    sim = continuation
    m = BetaGeoModel.from_params(**CDNOW_LIKE)
    pa = m.probability_alive(sim["x"], sim["t_x"], sim["T"])
    observed = sim["alive_at_T"].astype(float)
    bins = np.digitize(pa, [0.2, 0.4, 0.6, 0.8, 0.95, 0.999999])
    z = _binned_z_scores(pa, observed, pa * (1 - pa) + 1e-12, bins)
    assert np.all(np.abs(z) < 4.5), z


def test_probability_at_least_one_matches_simulation(continuation) -> None:
    sim = continuation
    m = BetaGeoModel.from_params(**CDNOW_LIKE)
    prob = m.probability_at_least_one(39.0, sim["x"], sim["t_x"], sim["T"])
    assert np.all((prob >= 0) & (prob <= 1))
    observed = (sim["holdout"] >= 1).astype(float)
    var = prob * (1 - prob)
    # Given the history, each outcome is Bernoulli(prob) independently, so the z-scores are
    # exact under a correct formula. Bin by predicted probability and by frequency.
    by_prob = np.digitize(prob, np.quantile(prob, np.linspace(0, 1, 11)[1:-1]))
    by_freq = np.minimum(sim["x"], 6)
    for bins in (by_prob, by_freq):
        z = _binned_z_scores(prob, observed, var, bins)
        assert np.all(np.abs(z) < 4.5), z

    # The same check has the power to reject the tempting shortcut that ignores dropout
    # (P_alive = 1): it over-predicts massively for lapsed frequent buyers.
    r, alpha = CDNOW_LIKE["r"], CDNOW_LIKE["alpha"]
    naive = 1 - ((alpha + sim["T"]) / (alpha + sim["T"] + 39.0)) ** (r + sim["x"])
    z_naive = _binned_z_scores(naive, observed, naive * (1 - naive), by_freq)
    assert np.max(np.abs(z_naive)) > 10


def test_expected_transactions_matches_simulation(continuation) -> None:
    sim = continuation
    m = BetaGeoModel.from_params(**CDNOW_LIKE)
    expected = m.expected_transactions(39.0, sim["x"], sim["t_x"], sim["T"])
    observed = sim["holdout"]
    by_freq = np.minimum(sim["x"], 6)
    # outcome variance is not available in closed form; use the empirical residual variance
    for label in np.unique(by_freq):
        sel = by_freq == label
        resid = observed[sel] - expected[sel]
        z = resid.sum() / (resid.std() * np.sqrt(sel.sum()))
        assert abs(z) < 4.5, (label, z)
    resid = observed - expected
    assert abs(resid.mean()) < 4.5 * resid.std() / np.sqrt(len(resid))
    # power: dropping the P(alive) factor is rejected by the same statistic
    p_alive = m.probability_alive(sim["x"], sim["t_x"], sim["T"])
    sel = by_freq == 1
    wrong = observed[sel] - (expected / p_alive)[sel]
    assert abs(wrong.sum() / (wrong.std() * np.sqrt(sel.sum()))) > 10
    # expected >= P(at least one): a count's mean exceeds its probability of being positive
    p1 = m.probability_at_least_one(39.0, sim["x"], sim["t_x"], sim["T"])
    assert np.all(expected >= p1 - 1e-12)


@pytest.mark.parametrize(
    ("params", "x", "t_x", "T", "t"),
    [
        ((0.243, 4.414, 0.793, 2.426), 2, 30.43, 38.86, 39.0),
        ((0.243, 4.414, 0.793, 2.426), 0, 0.0, 38.86, 52.0),
        ((2.0, 1.0, 0.2, 5.0), 500, 38.0, 39.0, 39.0),  # 2F1 in eq. 10 overflows here
        ((0.243, 4.414, 0.793, 2.426), 5000, 38.99, 39.0, 4.0),  # roots_jacobi would overflow
        ((0.5, 10.0, 3.0, 0.5), 50, 20.0, 30.0, 1000.0),  # t >> alpha + T
        ((1.0, 5.0, 1.0, 3.0), 5, 10.0, 20.0, 13.0),  # a == 1: eq. 10 divides by zero
        ((0.3, 2.0, 1.5, 0.7), 3, 1.0, 2.0, 0.01),  # tiny horizon
    ],
)
def test_expected_transactions_matches_numerical_integration(params, x, t_x, T, t) -> None:
    """Independent check of the p-integral with adaptive quadrature over the beta density."""
    r, alpha, a, b = params
    m = BetaGeoModel.from_params(*params)
    k, big_b, s = r + x, b + x, t / (alpha + T)

    def integrand(p: float) -> float:
        return -np.expm1(-k * np.log1p(p * s)) / p * stats.beta.pdf(p, a, big_b)

    points = sorted({min(c / s, 0.5) for c in (0.01, 0.1, 1.0)} | {a / (a + big_b)})
    value = integrate.quad(integrand, 0, 1, points=points, limit=500, epsrel=1e-11)[0]
    expected = m.probability_alive(x, t_x, T)[0] * value
    assert m.expected_transactions(t, x, t_x, T)[0] == pytest.approx(expected, rel=1e-7)


def test_probability_at_least_one_limits() -> None:
    m = BetaGeoModel.from_params(**CDNOW_LIKE)
    x, t_x, T = np.array([0.0, 3.0, 3.0]), np.array([0.0, 35.0, 2.0]), np.array([39.0] * 3)
    assert np.all(m.probability_at_least_one(0.0, x, t_x, T) == 0)
    # over an unbounded horizon every alive customer buys again: the limit is P(alive).
    # The approach is slow, like (alpha+T)/t to the power r+x, hence the absurd horizon.
    far = m.probability_at_least_one(1e40, x, t_x, T)
    np.testing.assert_allclose(far, m.probability_alive(x, t_x, T), rtol=1e-6)
    # monotone in the horizon
    horizons = np.array([1.0, 4.0, 13.0, 52.0])
    probs = [m.probability_at_least_one(h, 3.0, 2.0, 39.0)[0] for h in horizons]
    assert np.all(np.diff(probs) > 0)
    # recent buyer beats a lapsed one with the same frequency
    assert m.probability_at_least_one(13.0, 3.0, 35.0, 39.0) > m.probability_at_least_one(
        13.0, 3.0, 2.0, 39.0
    )


# --------------------------------------------------------------------------------------------
# 4. input validation
# --------------------------------------------------------------------------------------------


def _valid(n: int = 20) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = np.arange(n) % 4.0
    t_x = np.where(x > 0, 5.0, 0.0)
    return x, t_x, np.full(n, 10.0)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda x, tx, T: (x * -1 - 1, tx, T), "negative"),
        (lambda x, tx, T: (x, tx - 6.0, T), "negative"),
        (lambda x, tx, T: (x, tx, T - 20.0), "negative"),
        (lambda x, tx, T: (x, tx + 6.0, T), "recency must not exceed T"),
        (lambda x, tx, T: (x[:-1], tx, T), "lengths differ"),
        (lambda x, tx, T: (x[:5], tx[:5], T[:5]), "at least 10 customers"),
        (lambda x, tx, T: (x + 0.5, tx, T), "whole numbers"),
        (lambda x, tx, T: (x * 0, tx, T), "recency must be 0"),
        (lambda x, tx, T: (x, np.where(x > 0, np.nan, 0.0), T), "NaN"),
        (lambda x, tx, T: (x, tx, np.full((2, 10), 10.0)), "1-d"),
    ],
)
def test_fit_rejects_invalid_input(mutate, message) -> None:
    x, t_x, T = mutate(*_valid())
    with pytest.raises(ValueError, match=message):
        BetaGeoModel().fit(x, t_x, T)


def test_fit_rejects_bad_weights_and_settings() -> None:
    x, t_x, T = _valid()
    with pytest.raises(ValueError, match="negative"):
        BetaGeoModel().fit(x, t_x, T, weights=-np.ones_like(x))
    with pytest.raises(ValueError, match="lengths differ"):
        BetaGeoModel().fit(x, t_x, T, weights=np.ones(3))
    with pytest.raises(ValueError, match="at least 10"):
        BetaGeoModel().fit(x, t_x, T, weights=np.full_like(x, 0.1))
    with pytest.raises(ValueError, match="penalizer"):
        BetaGeoModel(penalizer=-1.0).fit(x, t_x, T)


def test_predictions_validate_and_require_fit() -> None:
    with pytest.raises(NotFittedError):
        BetaGeoModel().probability_alive(1, 1.0, 2.0)
    m = BetaGeoModel.from_params(**CDNOW_LIKE)
    with pytest.raises(ValueError, match="recency must not exceed T"):
        m.probability_alive([1, 2], [3.0, 5.0], [4.0, 4.0])
    with pytest.raises(ValueError, match="negative"):
        m.probability_at_least_one(-1.0, 1, 1.0, 2.0)
    with pytest.raises(ValueError, match="lengths differ"):
        m.expected_transactions([1.0, 2.0, 3.0], [1, 2], [1.0, 1.0], [2.0, 2.0])
    with pytest.raises(ValueError):
        BetaGeoModel.from_params(0.0, 1.0, 1.0, 1.0)
    # scalars broadcast against vectors
    assert m.probability_alive(2, 30.43, [38.86, 40.0]).shape == (2,)


# --------------------------------------------------------------------------------------------
# rfm_from_transactions
# --------------------------------------------------------------------------------------------


def test_rfm_merges_same_day_and_respects_calibration_end() -> None:
    ids = ["a", "a", "a", "a", "b", "b", "c", "d"]
    dates = [
        "2024-01-01",
        "2024-01-01",  # same day: merged
        "2024-01-15",
        "2024-03-01",  # after calibration end: ignored
        "2024-01-08",
        "2024-01-29",
        "2024-02-01",  # only purchase after calibration end: customer excluded
        "2024-01-29",  # first purchase on the calibration end date: T = 0
    ]
    out_ids, x, t_x, T = rfm_from_transactions(ids, dates, "2024-01-29", freq_unit_days=7.0)
    assert list(out_ids) == ["a", "b", "d"]
    np.testing.assert_allclose(x, [1, 1, 0])
    np.testing.assert_allclose(t_x, [2.0, 3.0, 0.0])
    np.testing.assert_allclose(T, [4.0, 3.0, 0.0])


def test_rfm_units_and_datetime_inputs() -> None:
    ids = np.array([1, 1, 2])
    dates = np.array(
        ["2024-01-01T08:00", "2024-01-01T23:59", "2024-01-03T12:00"], dtype="datetime64[s]"
    )
    _, x, t_x, T = rfm_from_transactions(ids, dates, np.datetime64("2024-01-11"), 1.0)
    np.testing.assert_allclose(x, [0, 0])  # two orders on one day are one transaction
    np.testing.assert_allclose(T, [10.0, 8.0])
    with pytest.raises(ValueError, match="different lengths"):
        rfm_from_transactions(ids[:2], dates, "2024-01-11")
    with pytest.raises(ValueError, match="freq_unit_days"):
        rfm_from_transactions(ids, dates, "2024-01-11", freq_unit_days=0)
