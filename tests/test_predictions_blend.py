"""The blend candidate (``propel.predictions.blend``) on simulated feature frames: its
raw score ranks like its probability, its contributions add up as documented, chunked
and whole-frame answers agree, it pickles, the promotion rule takes it only when it
beats the best baseline, and artifacts from before it still load."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pytest

from propel.predictions import quality, training
from propel.predictions.blend import BGNBD_COLUMN, BlendModel, blend_members
from propel.predictions.features import FeatureSpec
from propel.predictions.model import BgNbdFeatures, LikelihoodModel
from propel.predictions.spec import from_template

WINDOW = 14
SPEC = FeatureSpec(events=(("Charged", "charged"), ("App Launched", "app_launched")),
                   goal_event="Charged", monetary_event="Charged",
                   monetary_property="amount",
                   categorical=(("platform", ("ios", "android", "web")),))
PLATFORMS = np.array(["ios", "android", "web", None], dtype=object)


def simulated(n: int, seed: int, prefix: str) -> tuple[pd.DataFrame, np.ndarray]:
    """Users with a purchase rate and a lifetime; features that reflect them with noise
    and the BG/NBD inputs; the label is a purchase in the next ``WINDOW`` days."""
    rng = np.random.default_rng(seed)
    rate = rng.gamma(0.7, 0.04, n)  # purchases a day while alive
    alive = rng.random(n) < 0.7
    T = rng.uniform(30, 240, n)
    x = rng.poisson(rate * T * np.where(alive, 1.0, 0.4))
    tx = np.where(x > 0, T * np.sqrt(rng.random(n)) * np.where(alive, 1.0, 0.5), 0.0)
    platform = PLATFORMS[rng.integers(0, 4, n)]
    cols: dict[str, Any] = {}
    for name in SPEC.columns():
        cols[name] = rng.normal(size=n)
    launches = rng.poisson(2 + 40 * rate * alive)
    cols.update({
        "events_7d": rng.poisson(7 * (rate + 0.2) * alive),
        "events_30d": rng.poisson(30 * (rate + 0.2) * alive),
        "events_90d": rng.poisson(90 * (rate + 0.2)),
        "events_all": x + launches, "days_since_last": T - tx, "tenure_days": T,
        "n_charged_30d": rng.poisson(30 * rate * alive), "n_app_launched_30d": launches,
        "days_since_charged": np.where(x > 0, T - tx, np.nan),
        "monetary_all": x * rng.gamma(2.0, 20.0, n), "goal_days": x,
        "p_platform": pd.Categorical(platform, categories=["ios", "android", "web"]),
    })
    for name in ("bgnbd_expected", "bgnbd_p_alive"):
        cols.pop(name)
    cols.update({"_bg_x": x.astype(float), "_bg_tx": tx, "_bg_T": T})
    frame = pd.DataFrame(cols, index=pd.Index([f"{prefix}{i}" for i in range(n)]))
    p = 1 - np.exp(-WINDOW * rate * alive * np.where(platform == "ios", 1.6, 1.0)) + 0.02
    return frame, (rng.random(n) < p).astype(int)


@pytest.fixture(scope="module")
def fitted() -> dict[str, Any]:
    train, y_train = simulated(4000, 1, "t")
    stop, y_stop = simulated(1200, 2, "s")
    cal, y_cal = simulated(1000, 3, "c")
    ev, y_ev = simulated(1000, 4, "e")
    bg = BgNbdFeatures(WINDOW).fit(stop)
    members = {kind: LikelihoodModel(kind, SPEC, WINDOW, seed=7).fit(
        train, y_train, stop, y_stop, cal, y_cal, bg=bg)
        for kind in ("lightgbm", "logistic", "bgnbd")}
    blend = BlendModel(members).fit(cal, y_cal)
    return {"blend": blend, "members": members, "eval": (ev, y_ev), "cal": (cal, y_cal)}


def test_the_blend_averages_its_members_log_odds_and_ranks_by_them(fitted: dict) -> None:
    blend, members = fitted["blend"], fitted["members"]
    ev, y = fitted["eval"]
    assert blend.kind == "blend" and blend.feature_spec == SPEC and blend.seed == 7
    assert blend.weights_ == pytest.approx({k: 1 / 3 for k in members})
    raw = blend.raw_score(ev)
    expected = sum(m.log_odds(ev) for m in members.values()) / 3
    np.testing.assert_allclose(raw, expected, rtol=1e-9, atol=1e-9)
    p = blend.predict_proba(ev)
    assert np.all((p > 0) & (p < 1))
    # ranking by the raw score is ranking by the probability
    order = np.argsort(raw, kind="stable")
    assert np.all(np.diff(p[order]) >= -1e-12)
    assert quality.auc(y, p) > 0.65
    # no worse than the average member: averaging log-odds does not lose skill here
    member_ll = [quality.log_loss(y, m.predict_proba(ev)) for m in members.values()]
    assert quality.log_loss(y, p) < float(np.mean(member_ll))


def test_a_member_log_odds_is_its_calibrated_probability(fitted: dict) -> None:
    ev, _ = fitted["eval"]
    for member in fitted["members"].values():
        p = member.predict_proba(ev)
        np.testing.assert_allclose(1 / (1 + np.exp(-member.log_odds(ev))), p, atol=1e-9)


def test_contributions_sum_to_the_raw_score_less_the_base_value(fitted: dict) -> None:
    blend = fitted["blend"]
    ev, _ = fitted["eval"]
    contrib = blend.contributions(ev)
    assert list(contrib.index) == list(ev.index)
    assert set(fitted["members"]["lightgbm"].feature_names_) <= set(contrib.columns)
    assert BGNBD_COLUMN in contrib.columns and contrib.columns.is_unique
    np.testing.assert_allclose(contrib.to_numpy(float).sum(axis=1) + blend.base_value_,
                               blend.raw_score(ev), atol=2e-3)
    drivers = blend.drivers(ev)
    assert drivers and sum(d["importance"] for d in drivers) <= 1.0001
    assert {d["feature"] for d in drivers} <= set(contrib.columns)


def test_chunked_answers_equal_whole_frame_answers(fitted: dict) -> None:
    blend = fitted["blend"]
    ev, _ = fitted["eval"]
    whole = (blend.raw_score(ev), blend.predict_proba(ev), blend.contributions(ev))
    chunked = pickle.loads(pickle.dumps(blend))
    chunked.chunk_rows = 97  # 11 chunks: raw score and contributions in one pass
    raw = chunked.raw_score(ev)
    contrib = chunked.contributions(ev)
    np.testing.assert_allclose(raw, whole[0], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(chunked.predict_proba(ev), whole[1], atol=1e-12)
    np.testing.assert_allclose(contrib.to_numpy(), whole[2].to_numpy(), atol=1e-5)
    # asked again (the kept copy was handed over): computed again, the same
    np.testing.assert_allclose(chunked.contributions(ev).to_numpy(), contrib.to_numpy(),
                               atol=1e-6)


def test_the_blend_pickles_and_its_members_keep_sharing_bgnbd(fitted: dict) -> None:
    blend = fitted["blend"]
    ev, _ = fitted["eval"]
    blend.raw_score(ev)  # a memo must not travel
    blob = pickle.dumps(blend, protocol=pickle.HIGHEST_PROTOCOL)
    back = pickle.loads(blob)
    assert "_last" not in back.__dict__
    assert all("_last" not in m.__dict__ for m in back.members.values())
    assert len({id(m.bg_) for m in back.members.values()}) == 1
    assert "_last" not in back.members["lightgbm"].bg_.__dict__
    np.testing.assert_array_equal(back.predict_proba(ev), blend.predict_proba(ev))
    np.testing.assert_allclose(back.contributions(ev).to_numpy(),
                               blend.contributions(ev).to_numpy(), atol=1e-6)


def test_an_artifact_from_before_the_blend_still_loads(fitted: dict) -> None:
    ev, _ = fitted["eval"]
    logistic = fitted["members"]["logistic"]
    expected = logistic.predict_proba(ev)
    state = pickle.loads(pickle.dumps(logistic)).__dict__
    # a plain logistic model as pickled before boosting from a linear model existed:
    # none of the later attributes, and a BG/NBD object without a memo
    for name in ("linear_base", "form_", "categories_", "numeric_", "linear_features"):
        state.pop(name, None)
    bg = BgNbdFeatures.__new__(BgNbdFeatures)
    bg.__dict__.update({k: v for k, v in logistic.bg_.__dict__.items() if k != "_last"})
    state["bg_"] = bg
    loaded = pickle.loads(pickle.dumps(_Reduced(state)))
    np.testing.assert_allclose(loaded.predict_proba(ev), expected, atol=1e-12)
    np.testing.assert_allclose(loaded.log_odds(ev), logistic.log_odds(ev), atol=1e-9)


class _Reduced:
    """Pickles as ``LikelihoodModel`` with exactly ``state``: what an old artifact
    holds, restored through ``LikelihoodModel.__setstate__``."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state

    def __reduce__(self) -> tuple:
        return (LikelihoodModel.__new__, (LikelihoodModel,), self.state)


def _reports(**log_loss: float) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    return ({k: object() for k in log_loss},
            {k: {"log_loss": v, "auc": 0.7} for k, v in log_loss.items()})


@pytest.mark.parametrize("losses, chosen", [
    ({"lightgbm": 0.50, "blend": 0.48, "logistic": 0.49, "bgnbd": 0.52}, "blend"),
    ({"lightgbm": 0.47, "blend": 0.48, "logistic": 0.49, "bgnbd": 0.52}, "lightgbm"),
    # LightGBM first: where it beats the baselines the blend is not needed
    ({"lightgbm": 0.485, "blend": 0.48, "logistic": 0.49, "bgnbd": 0.52}, "lightgbm"),
    ({"lightgbm": 0.51, "blend": 0.495, "logistic": 0.49, "bgnbd": 0.52}, "logistic"),
    ({"lightgbm": 0.51, "blend": 0.50, "logistic": 0.53, "bgnbd": 0.505}, "blend"),
    ({"lightgbm": 0.51, "blend": 0.51, "logistic": 0.53, "bgnbd": 0.505}, "bgnbd"),
])
def test_the_blend_is_promoted_only_when_it_beats_the_best_baseline(
        losses: dict[str, float], chosen: str) -> None:
    models, reports = _reports(**losses)
    got, promoted, reason, current = training._decide(models, reports, None, (None, None))
    assert got == chosen and promoted and current is None
    if chosen == "blend":
        assert "the blend" in reason and "beats the best baseline" in reason
    elif chosen in ("logistic", "bgnbd"):
        assert "did not beat" in reason and chosen in reason and "blend" in reason


def test_without_a_blend_the_rule_is_unchanged() -> None:
    models, reports = _reports(lightgbm=0.50, logistic=0.49, bgnbd=0.52)
    got, _, reason, _ = training._decide(models, reports, None, (None, None))
    assert got == "logistic" and "blend" not in reason and "did not beat" in reason


def test_fit_candidates_fits_and_reports_the_blend() -> None:
    spec = from_template("conversions")
    start = datetime(2025, 1, 1, tzinfo=UTC)
    dates = tuple(start + timedelta(days=7 * i) for i in range(5))
    plan = training.Plan(dates, dates[-1] + timedelta(days=WINDOW), WINDOW)
    snaps = [training.Snap(d, *simulated(1500, 10 + i, f"u{i}-"))
             for i, d in enumerate(plan.dates)]
    cands = training.fit_candidates(spec, SPEC, plan, snaps, seed=7)
    assert set(cands.models) == {"lightgbm", "logistic", "bgnbd", "blend"}
    blend = cands.models["blend"]
    assert isinstance(blend, BlendModel) and set(blend.members) == {
        "lightgbm", "logistic", "bgnbd"}
    assert all(blend.members[k] is cands.models[k] for k in blend.members)
    assert set(cands.reports["blend"]) >= {"auc", "log_loss", "calibration"}
    assert cands.training["blend"]["weights"] == pytest.approx(
        {"lightgbm": 1 / 3, "logistic": 1 / 3, "bgnbd": 1 / 3})
    chosen, _, reason, _ = training._decide(cands.models, cands.reports, None,
                                            cands.evaluation)
    assert chosen in cands.models and reason


def test_only_informative_candidates_are_blended_and_lightgbm_must_be_one(
        fitted: dict) -> None:
    members = fitted["members"]
    cal, _ = fitted["cal"]
    assert set(blend_members(members, cal)) == {"lightgbm", "logistic", "bgnbd"}

    class Constant(LikelihoodModel):
        def raw_score(self, frame: pd.DataFrame) -> np.ndarray:
            return np.zeros(len(frame))

    def flat(kind: str) -> LikelihoodModel:
        model = Constant.__new__(Constant)
        model.__dict__.update(members[kind].__dict__)
        return model

    assert set(blend_members({**members, "bgnbd": flat("bgnbd")}, cal)) == {
        "lightgbm", "logistic"}
    # without an informative LightGBM there is no blend: the best baseline stays the
    # fallback when LightGBM loses
    assert blend_members({**members, "lightgbm": flat("lightgbm")}, cal) == {}
    assert blend_members({"lightgbm": members["lightgbm"], "bgnbd": flat("bgnbd")},
                         cal) == {}
