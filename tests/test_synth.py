"""The synthetic app must be reproducible, well-formed, and above all *learnable*: the
demo and the benchmarks are only meaningful if past behaviour predicts future purchases."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from propel.demo import synth

END = datetime(2025, 3, 10, 12, 30, tzinfo=UTC)  # not midnight, so edges are exercised
DAYS = 90
USERS = 4000
END_US = (END - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
START_US = END_US - DAYS * 86_400_000_000


def _events(users: int = USERS, seed: int = 7, **kw: object) -> pa.Table:
    chunks = list(synth.iter_events(users, DAYS, END, seed=seed, **kw))
    return pa.concat_tables(chunks)


@pytest.fixture(scope="module")
def events() -> pa.Table:
    return _events()


@pytest.fixture(scope="module")
def frame(events: pa.Table) -> pd.DataFrame:
    df = events.to_pandas()
    df["uid"] = df["identity"].str[1:].astype(np.int64)
    df["us"] = events.column("ts").cast(pa.int64()).to_numpy()
    return df


@pytest.fixture(scope="module")
def traits() -> pa.Table:
    return synth.generate_traits(USERS)


@pytest.fixture(scope="module")
def profiles() -> pa.Table:
    return synth.generate_profiles(USERS, end=END)


# --------------------------------------------------------------------------- reproducibility


def test_same_seed_same_data_and_different_seed_different(events: pa.Table) -> None:
    assert _events(600).equals(_events(600))
    assert synth.generate_profiles(600, end=END).equals(synth.generate_profiles(600, end=END))
    assert synth.generate_traits(600).equals(synth.generate_traits(600))

    other = _events(600, seed=8)
    assert other.column("message_id")[0].as_py() == "demo-8-0"
    assert not other.equals(_events(600))
    assert not synth.generate_traits(600, seed=8).equals(synth.generate_traits(600))
    p7 = synth.generate_profiles(600, seed=7, end=END).column("email")
    assert p7 != synth.generate_profiles(600, seed=8, end=END).column("email")


def test_output_does_not_depend_on_chunking(events: pa.Table) -> None:
    chunks = list(synth.iter_events(USERS, DAYS, END, chunk_users=777))
    assert len(chunks) == -(-USERS // 777)
    for i, chunk in enumerate(chunks):  # each chunk holds exactly its users
        uid = np.array([int(x[1:]) for x in chunk.column("identity").unique().to_pylist()])
        assert uid.min() >= i * 777 and uid.max() < (i + 1) * 777
    assert pa.concat_tables(chunks).equals(events)


def test_population_does_not_depend_on_its_size(traits: pa.Table, profiles: pa.Table) -> None:
    assert synth.generate_traits(150).equals(traits.slice(0, 150))
    assert synth.generate_profiles(150, end=END).equals(profiles.slice(0, 150))
    big = synth.generate_traits(10_050)  # crosses an internal block
    assert big.slice(0, USERS).equals(traits)
    assert big.column("identity")[10_049].as_py() == "u010049"


def test_bad_arguments_fail_at_the_call() -> None:
    with pytest.raises(ValueError):
        synth.iter_events(10, 0, END)
    with pytest.raises(ValueError):
        synth.iter_events(10, 5, END, chunk_users=0)
    with pytest.raises(ValueError):
        synth.generate_traits(-1)
    with pytest.raises(ValueError):
        synth.generate_traits(5, seed=-3)
    assert synth.generate_traits(0).num_rows == 0
    assert list(synth.iter_events(0, 5, END)) == []


# --------------------------------------------------------------------------- shape and types


def test_schemas(events: pa.Table, traits: pa.Table, profiles: pa.Table) -> None:
    assert events.schema == synth.EVENT_SCHEMA
    assert events.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert profiles.schema == synth.PROFILE_SCHEMA
    assert profiles.schema.field("signup_ts").type == pa.timestamp("us", tz="UTC")
    assert traits.schema == synth.TRAIT_SCHEMA
    assert profiles.num_rows == traits.num_rows == USERS
    assert profiles.column("identity").equals(traits.column("identity"))
    assert profiles.column("identity")[123].as_py() == "u000123"
    for name in ("message_id", "identity", "name", "ts", "properties"):
        assert events.column(name).null_count == 0
    assert set(events.column("name").unique().to_pylist()) == set(synth.EVENT_NAMES)


def test_profiles_look_real(profiles: pa.Table, traits: pa.Table) -> None:
    df = profiles.to_pandas()
    phones = df["phone"].dropna()
    assert 0.5 < len(phones) / len(df) < 0.8  # some missing
    assert phones.str.fullmatch(r"\+[1-9]\d{6,14}").all()  # E.164
    assert phones.is_unique and df["email"].dropna().is_unique
    assert df["email"].dropna().str.fullmatch(r"[a-z]+\.[a-z]+\d+@[a-z]+\.[a-z]+").all()
    assert df["timezone"].nunique() >= 8
    for tz in df["timezone"].unique():
        ZoneInfo(tz)
    assert set(df["platform"]) == {"ios", "android"}
    assert 0.2 < (df["platform"] == "ios").mean() < 0.6
    assert not (df["email_opt_in"] & df["email"].isna()).any()
    assert not (df["sms_opt_in"] & df["phone"].isna()).any()
    for flag in ("email_opt_in", "push_opt_in", "sms_opt_in"):
        assert 0.05 < df[flag].mean() < 0.95
    # signup is placed by the hidden trait, relative to `end`; some sign up in the window
    ago = traits.column("signup_days_ago").to_numpy()
    signup_us = profiles.column("signup_ts").cast(pa.int64()).to_numpy()
    assert np.abs((END_US - signup_us) / 86_400e6 - ago).max() < 1e-6
    assert 0.1 < (ago < DAYS).mean() < 0.3
    # people who cannot get pushes never click one
    push_rate = traits.column("push_click_rate").to_numpy()
    assert (push_rate[~df["push_opt_in"].to_numpy()] == 0).all()


def test_timestamps_within_window_and_ids_unique(frame: pd.DataFrame) -> None:
    assert frame["us"].min() >= START_US
    assert frame["us"].max() < END_US
    assert frame["message_id"].is_unique
    assert (frame["message_id"] == [f"demo-7-{i}" for i in range(len(frame))]).all()
    # rows are ordered by (identity, ts)
    assert (np.diff(frame["uid"].to_numpy()) >= 0).all()
    same_user = np.diff(frame["uid"].to_numpy()) == 0
    assert (np.diff(frame["us"].to_numpy())[same_user] >= 0).all()


def test_message_ids_unique_across_chunks() -> None:
    seen: set[str] = set()
    total = 0
    for chunk in synth.iter_events(900, 14, END, chunk_users=100):
        ids = chunk.column("message_id").to_pylist()
        seen.update(ids)
        total += len(ids)
    assert total == len(seen) > 0


def test_properties_are_json_objects_with_the_right_keys(frame: pd.DataFrame) -> None:
    keys = {
        "App Launched": {"platform", "source"},
        "Product Viewed": {"product_id", "category", "price"},
        "Search": {"query"},
        "Added To Cart": {"product_id", "price"},
        "Charged": {"amount", "items", "currency"},
        "Notification Clicked": {"campaign", "channel"},
        "App Uninstalled": set(),
    }
    parsed = [json.loads(text) for text in frame["properties"]]
    assert all(isinstance(p, dict) for p in parsed)
    for name, props in zip(frame["name"], parsed, strict=True):
        assert set(props) == keys[name], name
    charges = [p for n, p in zip(frame["name"], parsed, strict=True) if n == "Charged"]
    assert len(charges) > 100
    assert all(isinstance(c["amount"], float) and c["amount"] > 0 for c in charges)
    assert all(isinstance(c["items"], int) and c["items"] >= 1 for c in charges)
    assert {c["currency"] for c in charges} == {"USD"}
    prices = [p["price"] for n, p in zip(frame["name"], parsed, strict=True)
              if n == "Product Viewed"]
    assert min(prices) > 0 and 10 < float(np.median(prices)) < 200


def test_a_charge_pays_for_the_session_cart(frame: pd.DataFrame) -> None:
    # amount = sum of the prices added to cart since the session's launch
    df = frame[frame["name"].isin(["App Launched", "Added To Cart", "Charged"])]
    cart_total, checked = 0.0, 0
    for name, props in zip(df["name"].to_numpy()[:20_000], df["properties"].to_numpy(),
                           strict=False):
        if name == "App Launched":
            cart_total = 0.0
        elif name == "Added To Cart":
            cart_total += json.loads(props)["price"]
        else:
            amount = json.loads(props)["amount"]
            checked += abs(amount - cart_total) < 0.005
            cart_total = 0.0
    assert checked > 50


# --------------------------------------------------------------------------- behaviour


def test_nothing_after_uninstall(frame: pd.DataFrame) -> None:
    gone = frame[frame["name"] == "App Uninstalled"]
    assert len(gone) > 20
    assert gone["uid"].is_unique
    last = frame.groupby("uid")["us"].max()
    assert (last.loc[gone["uid"]].to_numpy() == gone["us"].to_numpy()).all()
    last_name = frame.groupby("uid")["name"].last()
    assert (last_name.loc[gone["uid"]] == "App Uninstalled").all()


def test_funnel_narrows(frame: pd.DataFrame) -> None:
    counts = frame["name"].value_counts()
    assert counts["Product Viewed"] > counts["Added To Cart"] > counts["Charged"] > 0
    assert counts["App Launched"] > counts["Charged"]
    assert counts["App Launched"] >= counts["Notification Clicked"]
    per_user = len(frame) / USERS
    assert 30 <= per_user <= 60
    # every click opens the app a few seconds later (the session may overlap another)
    clicks = frame[frame["name"] == "Notification Clicked"].sort_values("us")
    launches = frame[frame["name"] == "App Launched"].sort_values("us")
    opened = pd.merge_asof(clicks[["uid", "us"]], launches[["uid", "us"]].rename(
        columns={"us": "launch_us"}), left_on="us", right_on="launch_us", by="uid",
        direction="forward", allow_exact_matches=False)
    delay = (opened["launch_us"] - opened["us"]) / 1e6
    assert len(clicks) > 100 and delay.between(1, 10).all()


def test_new_users_start_at_signup(frame: pd.DataFrame, profiles: pa.Table) -> None:
    signup = profiles.column("signup_ts").cast(pa.int64()).to_numpy()
    first = frame.groupby("uid").head(1)
    assert (first["us"].to_numpy() >= signup[first["uid"].to_numpy()]).all()
    new = np.flatnonzero((signup >= START_US) & (signup < END_US))
    assert len(new) > 100
    firsts = first.set_index("uid").loc[new]
    assert (firsts["name"] == "App Launched").all()
    assert (firsts["us"].to_numpy() == signup[new]).all()


def test_sessions_follow_local_habits(frame: pd.DataFrame, profiles: pa.Table,
                                      traits: pa.Table) -> None:
    launches = frame[frame["name"] == "App Launched"]
    tz = profiles.column("timezone").to_numpy(zero_copy_only=False)[launches["uid"]]
    hours = np.empty(len(launches))
    for zone in np.unique(tz):
        sel = tz == zone
        local = launches["ts"][sel].dt.tz_convert(zone)
        hours[sel] = local.dt.hour + local.dt.minute / 60
    preferred = traits.column("preferred_hour").to_numpy()[launches["uid"]]
    gap = np.abs((hours - preferred + 12) % 24 - 12)
    assert (gap < 3).mean() > 0.55  # uniform hours would give 0.25
    assert ((hours >= 1) & (hours < 6)).mean() < 0.08  # few sessions at night
    weekday = launches["ts"].dt.tz_convert("America/New_York").dt.day_of_week
    assert weekday.isin([4, 5]).mean() > 2 / 7  # Friday/Saturday busiest


def test_churn_is_announced_by_falling_activity(frame: pd.DataFrame) -> None:
    gone = frame[frame["name"] == "App Uninstalled"].set_index("uid")["us"]
    launches = frame[frame["name"] == "App Launched"]
    launches = launches[launches["uid"].isin(gone.index)]
    before = (gone.loc[launches["uid"]].to_numpy() - launches["us"].to_numpy()) / 86_400e6
    old = gone[gone - 42 * 86_400e6 > START_US].index  # a full 6 weeks observed
    sel = launches["uid"].isin(old).to_numpy()
    recent = ((before < 14) & sel).sum()
    earlier = ((before >= 28) & (before < 42) & sel).sum()
    assert earlier > 1.5 * recent


# --------------------------------------------------------------------------- learnability


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    ranks = pd.Series(score).rank().to_numpy()
    pos = y.astype(bool)
    return float((ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2)
                 / (pos.sum() * (~pos).sum()))


def _fit_predict(x: np.ndarray, y: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError:  # a few Newton steps of ridge logistic regression
        xa = np.column_stack([np.ones(len(x)), x])
        w = np.zeros(xa.shape[1])
        for _ in range(25):
            p = 1 / (1 + np.exp(-xa @ w))
            hess = xa.T @ (xa * (p * (1 - p))[:, None]) + 1e-3 * np.eye(len(w))
            w += np.linalg.solve(hess, xa.T @ (y - p) - 1e-3 * w)
        return np.column_stack([np.ones(len(x_test)), x_test]) @ w
    return LogisticRegression(max_iter=2000).fit(x, y).predict_proba(x_test)[:, 1]


def _split(frame: pd.DataFrame, horizon_days: int = 14) -> tuple[np.ndarray, np.ndarray]:
    split_us = END_US - horizon_days * 86_400_000_000
    past = frame[frame["us"] < split_us]
    future = frame[frame["us"] >= split_us]
    label = np.zeros(USERS)
    label[future.loc[future["name"] == "Charged", "uid"].unique()] = 1
    features = []
    for name in synth.EVENT_NAMES:
        mine = past[past["name"] == name]
        features.append(np.log1p(np.bincount(mine["uid"], minlength=USERS)))
        recent = mine[mine["us"] >= split_us - 28 * 86_400_000_000]
        features.append(np.log1p(np.bincount(recent["uid"], minlength=USERS)))
    last = past.groupby("uid")["us"].max()
    days_since = np.full(USERS, 120.0)
    days_since[last.index] = (split_us - last.to_numpy()) / 86_400e6
    features += [np.log1p(days_since), (days_since < 120).astype(float)]
    return np.column_stack(features), label


def test_future_purchases_are_predictable_from_the_past(frame: pd.DataFrame) -> None:
    x, y = _split(frame)
    assert 0.05 < y.mean() < 0.25
    order = np.random.default_rng(0).permutation(USERS)
    train, test = order[: USERS // 2], order[USERS // 2:]
    score = _fit_predict(x[train], y[train], x[test])
    assert _auc(y[test], score) > 0.75
    # not only by telling the dormant from the active
    active = x[test, -1] > 0
    assert _auc(y[test][active], score[active]) > 0.72


def test_true_purchase_probability_is_calibrated(frame: pd.DataFrame,
                                                 traits: pa.Table) -> None:
    _, y = _split(frame)
    prob = synth.purchase_probability(traits, 14)
    assert prob.shape == (USERS,) and ((prob >= 0) & (prob < 1)).all()
    se = np.sqrt(np.sum(prob * (1 - prob))) / USERS
    assert abs(prob.mean() - y.mean()) < 4 * se
    high, low = prob > np.quantile(prob, 0.8), prob < np.quantile(prob, 0.5)
    assert abs(prob[high].mean() - y[high].mean()) < 0.05
    assert y[low].mean() < 0.05 < y[high].mean()
    assert _auc(y, prob) > 0.85  # the oracle bounds what a model can reach
    # nobody buys after churning or before signing up
    ago = traits.column("signup_days_ago").to_numpy()
    alive = (traits.column("healthy_days").to_numpy()
             + traits.column("decline_days").to_numpy())
    assert (prob[ago - alive > 14] == 0).all()
    later = synth.purchase_probability(traits, 14, start_days_before_end=28)
    assert not np.allclose(later, prob)


def test_default_demo_size_is_fast() -> None:
    started = time.perf_counter()
    rows = sum(t.num_rows for t in synth.iter_events(5000, 90, END))
    synth.generate_profiles(5000, end=END)
    elapsed = time.perf_counter() - started
    assert 30 * 5000 <= rows <= 60 * 5000
    assert elapsed < 5.0


def test_timestamps_respect_dst_and_odd_ends() -> None:
    # a window across the US/EU DST switches, ending at a non-round time
    end = datetime(2025, 4, 2, 7, 13, 5, 123456, tzinfo=UTC)
    table = pa.concat_tables(synth.iter_events(500, 30, end, seed=11))
    ts = table.column("ts").cast(pa.int64()).to_numpy()
    end_us = (end - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    assert ts.max() < end_us and ts.min() >= end_us - 30 * 86_400_000_000
    assert re.fullmatch(r"demo-11-\d+", table.column("message_id")[0].as_py())
    naive = pa.concat_tables(synth.iter_events(500, 30, end.replace(tzinfo=None), seed=11))
    assert naive.equals(table)  # naive `end` means UTC
