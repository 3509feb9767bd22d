"""Predictions end to end on a synthetic shop: training registers versions with their
metrics and checksummed artifacts, the promotion rule (LightGBM, baselines, the current
version), scoring (groups, history, Likelihood Changed), profile properties, schedules,
templates."""

from __future__ import annotations

import hashlib
import math
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from deltalake import DeltaTable
from sqlalchemy import create_engine, delete, insert, select, text, update
from synthetic_shop import load_synthetic

from propel import predictions as preds
from propel.accounts import create_account
from propel.core import Propel
from propel.demo.synth import SyntheticApp
from propel.ingest.records import EventRecord, IngestItem, key_hash
from propel.ingest.service import ingest_sync
from propel.jobs import schedules
from propel.jobs.tables import schedules as schedules_table
from propel.jobs.tasks import TASKS
from propel.lake.reader import snapshot
from propel.predictions import registry, scoring, training
from propel.predictions.features import compute_features, register_aliases
from propel.predictions.model import LikelihoodModel
from propel.predictions.properties import score_properties
from propel.predictions.registry import ArtifactError, Prediction
from propel.predictions.scoring import (
    LIKELIHOOD_CHANGED,
    NotTrained,
    list_runs,
    scores_uri,
)
from propel.predictions.spec import (
    TEMPLATES,
    Audience,
    Condition,
    Groups,
    PredictionSpec,
    SpecError,
    from_template,
    parse_where,
)
from propel.predictions.tables import user_predictions
from propel.settings import Settings

PG_URL = os.environ.get("PROPEL_TEST_POSTGRES_URL")
DATABASES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]

# The data ends today (schedules train and score "now"); the last days go through ingest.
END = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
USERS, DAYS, SEED, RECENT_DAYS = 1200, 63, 21, 4
QUALITY_KEYS = {"auc", "pr_auc", "log_loss", "brier", "calibration", "gains",
                "size_vs_precision"}


# --------------------------------------------------------------------------- data


def _us(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def _ingest(propel: Propel, account_id: str, items: list[IngestItem]) -> None:
    for start in range(0, len(items), 5000):
        ingest_sync(propel.db, account_id, items[start:start + 5000], [], "test")


def _event(account_id: str, mid: str, identity: str, name: str, ts: datetime,
           **props: object) -> IngestItem:
    return IngestItem(key_hash(account_id, mid), event=EventRecord(
        message_id=mid, identity=identity, name=name, ts=_us(ts),
        properties=orjson.dumps(props).decode()))


@pytest.fixture(scope="module", params=DATABASES)
def module_propel(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[Propel]:
    url, schema, admin = None, None, None
    if request.param == "postgres":
        if not PG_URL:
            pytest.skip("PROPEL_TEST_POSTGRES_URL is not set")
        schema = f"t_{uuid.uuid4().hex[:12]}"
        admin = create_engine(PG_URL)
        with admin.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
        url = f"{PG_URL}{'&' if '?' in PG_URL else '?'}options=-csearch_path%3D{schema}"
    settings = Settings(data_dir=tmp_path_factory.mktemp("predictions") / "data",
                        database_url=url, secret_key="test-secret", log_format="text")
    propel = Propel(settings)
    propel.migrate()
    yield propel
    propel.close()
    if admin is not None:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@dataclass
class World:
    propel: Propel
    account_id: str
    state: dict[str, Any] = field(default_factory=dict)


@pytest.fixture(scope="module")
def world(module_propel: Propel) -> World:
    account_id = create_account(module_propel.db, "Synthetic shop").account_id
    load_synthetic(module_propel, account_id, SyntheticApp(seed=SEED), USERS, DAYS, END,
                   RECENT_DAYS)
    return World(module_propel, account_id)


def conversions(world: World) -> Prediction:
    """The shop's "Predict Conversions", trained once (version 1) as of END."""
    if "conversions" not in world.state:
        prediction = preds.create_prediction(world.propel, world.account_id,
                                             from_template("conversions"))
        world.state["v1"] = preds.train(world.propel, world.account_id, prediction.id,
                                        as_of=END, seed=7)
        world.state["conversions"] = prediction.id
    return preds.get(world.propel, world.account_id, world.state["conversions"])


def features_at(world: World, prediction: Prediction, model: LikelihoodModel,
                as_of: datetime) -> pd.DataFrame:
    with snapshot(world.propel.db, world.propel.lake, world.account_id) as (con, _):
        register_aliases(con, training.load_aliases(world.propel, world.account_id))
        return compute_features(con, model.feature_spec, prediction.spec.audience, as_of)


def current_model(world: World, prediction: Prediction) -> LikelihoodModel:
    prediction = preds.get(world.propel, world.account_id, prediction.id)
    version = registry.get_version(world.propel.db, prediction.id, prediction.current_version)
    return registry.load_model(version)


def score_rows(world: World, prediction_id: str) -> list[dict[str, Any]]:
    with world.propel.db.read() as conn:
        return [r._asdict() for r in conn.execute(select(user_predictions).where(
            user_predictions.c.prediction_id == prediction_id)).all()]


def current_scores(world: World, prediction_id: str) -> pd.DataFrame:
    return pd.DataFrame(score_rows(world, prediction_id)).set_index("identity")


def half_up(share: float, n: int) -> int:
    return math.floor(share * n + 0.5 + 1e-9)


class NoSkill(LikelihoodModel):
    """Fits as usual, then predicts the training base rate for everyone when its kind
    is in ``useless``: a candidate that must lose."""

    useless: frozenset[str] = frozenset()

    def fit(self, train: pd.DataFrame, y_train: np.ndarray, *args: Any, **kwargs: Any
            ) -> LikelihoodModel:
        super().fit(train, y_train, *args, **kwargs)
        self.base_rate_ = float(np.mean(y_train))
        self.no_skill_ = self.kind in NoSkill.useless
        return self

    def raw_score(self, frame: pd.DataFrame) -> np.ndarray:
        if getattr(self, "no_skill_", False):
            return np.zeros(len(frame))
        return super().raw_score(frame)

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        if getattr(self, "no_skill_", False):
            return np.full(len(frame), self.base_rate_)
        return super().predict_proba(frame)


@pytest.fixture
def no_skill(monkeypatch: pytest.MonkeyPatch) -> Callable[[set[str]], None]:
    def make(kinds: set[str]) -> None:
        monkeypatch.setattr(NoSkill, "useless", frozenset(kinds))
        monkeypatch.setattr(training, "LikelihoodModel", NoSkill)
    return make


# --------------------------------------------------------------------------- training


def test_training_registers_a_version_with_its_metrics(world: World) -> None:
    prediction = conversions(world)
    result = world.state["v1"]
    assert result.promoted and result.version.version == 1
    assert prediction.current_version == 1 and prediction.status == "trained"
    version = registry.get_version(world.propel.db, prediction.id, 1)
    metrics = version.metrics
    assert version.kind == metrics["chosen"] and version.promoted
    assert version.reason.startswith("promoted: ") and version.seed == 7
    assert set(metrics["quality"]) >= QUALITY_KEYS
    for kind in ("lightgbm", "logistic", "bgnbd"):
        assert set(metrics["candidates"][kind]) >= QUALITY_KEYS, kind
    q = metrics["quality"]
    assert 0.6 < q["auc"] <= 1 and 0 < q["pr_auc"] <= 1 and 0 < q["brier"] < q["log_loss"]
    assert len(q["gains"]) == 10 and q["calibration"] and q["size_vs_precision"]
    backtest = metrics["groups_backtest"]
    assert sum(g["size"] for g in backtest.values()) == metrics["validation"]["users"]
    assert backtest["High"]["realised_rate"] > backtest["Low"]["realised_rate"]
    drivers = metrics["drivers"]
    assert drivers and {"feature", "importance"} <= set(drivers[0])
    assert {d["feature"] for d in drivers} <= set(version.features)
    # the artifact is the registered file
    path = Path(version.artifact_path)
    assert path.is_file() and path.is_relative_to(world.propel.settings.data_dir)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == version.artifact_sha256
    assert registry.load_model(version).kind == version.kind


def test_a_tampered_or_missing_artifact_is_refused_on_load(world: World) -> None:
    prediction = conversions(world)
    version = registry.get_version(world.propel.db, prediction.id, 1)
    path = Path(version.artifact_path)
    blob = path.read_bytes()
    try:
        path.write_bytes(blob[:100] + bytes([blob[100] ^ 1]) + blob[101:])
        with pytest.raises(ArtifactError, match="does not match its recorded checksum"):
            registry.load_model(version)
        path.unlink()
        with pytest.raises(ArtifactError, match="cannot be read"):
            registry.load_model(version)
    finally:
        path.write_bytes(blob)
    assert registry.load_model(version).kind == version.kind


def test_retraining_on_the_same_data_and_seed_reproduces_the_predictions(world: World
                                                                          ) -> None:
    prediction = conversions(world)
    again = preds.train(world.propel, world.account_id, prediction.id, as_of=END, seed=7)
    assert again.version.version == 2 and again.promoted
    assert "not worse than current v1" in again.reason
    v1, v2 = (registry.get_version(world.propel.db, prediction.id, v) for v in (1, 2))
    assert v2.metrics["quality"] == v1.metrics["quality"] and v2.kind == v1.kind
    assert v2.metrics["current"]["log_loss"] == v1.metrics["quality"]["log_loss"]
    m1, m2 = registry.load_model(v1), registry.load_model(v2)
    frame = features_at(world, prediction, m1, END)
    assert len(frame) > 500
    np.testing.assert_array_equal(m2.predict_proba(frame), m1.predict_proba(frame))
    np.testing.assert_array_equal(m2.raw_score(frame), m1.raw_score(frame))
    assert preds.get(world.propel, world.account_id, prediction.id).current_version == 2


def test_a_candidate_worse_than_the_current_version_is_registered_not_promoted(
        world: World, no_skill: Callable[[set[str]], None]) -> None:
    prediction = conversions(world)
    current = prediction.current_version
    no_skill({"lightgbm", "logistic", "bgnbd"})
    result = preds.train(world.propel, world.account_id, prediction.id, as_of=END, seed=7)
    assert not result.promoted
    assert f"not promoted: worse than current v{current}" in result.reason
    version = registry.get_version(world.propel.db, prediction.id, result.version.version)
    assert not version.promoted and version.reason == result.reason
    assert version.metrics["current"]["version"] == current
    assert version.metrics["quality"]["log_loss"] > version.metrics["current"]["log_loss"]
    assert Path(version.artifact_path).is_file()
    after = preds.get(world.propel, world.account_id, prediction.id)
    assert after.current_version == current
    assert [v.version for v in registry.list_versions(world.propel.db, prediction.id)][0] \
        == result.version.version


def test_when_lightgbm_loses_the_best_baseline_is_promoted(
        world: World, no_skill: Callable[[set[str]], None]) -> None:
    prediction = preds.create_prediction(world.propel, world.account_id, from_template(
        "conversions", name="Conversions, baseline wins"))
    no_skill({"lightgbm"})
    result = preds.train(world.propel, world.account_id, prediction.id, as_of=END, seed=7)
    candidates = result.metrics["candidates"]
    baselines = {k: candidates[k]["log_loss"] for k in ("logistic", "bgnbd")}
    best = min(baselines, key=baselines.get)
    assert result.promoted and result.metrics["chosen"] == best
    assert result.version.kind == best
    assert candidates["lightgbm"]["log_loss"] > baselines[best]
    assert "did not beat" in result.reason and best in result.reason
    stored = registry.get_version(world.propel.db, prediction.id, 1)
    assert stored.promoted and stored.reason == result.reason
    assert preds.get(world.propel, world.account_id, prediction.id).current_version == 1


def test_a_current_version_that_cannot_be_read_does_not_stop_retraining(world: World
                                                                         ) -> None:
    prediction = conversions(world)
    current = registry.get_version(world.propel.db, prediction.id, prediction.current_version)
    path = Path(current.artifact_path)
    blob = path.read_bytes()
    path.unlink()
    try:
        result = preds.train(world.propel, world.account_id, prediction.id, as_of=END, seed=7)
    finally:
        path.write_bytes(blob)
    assert result.promoted and result.metrics["current"] is None
    assert result.reason.startswith("promoted: ")
    assert (f"; current version {current.version} could not be read (model artifact "
            in result.reason)
    assert result.reason.endswith("cannot be read: No such file or directory); promoted "
                                  "without comparing")
    after = preds.get(world.propel, world.account_id, prediction.id)
    assert after.current_version == result.version.version > current.version
    assert preds.score(world.propel, world.account_id, prediction.id, as_of=END).rows > 500


def test_dates_without_a_time_zone_are_utc(world: World, berlin_time: None) -> None:
    naive = datetime(2026, 11, 1)
    assert training.start_of_day(naive) == datetime(2026, 11, 1, tzinfo=UTC)
    assert training.start_of_day(datetime(2026, 11, 1, 23, 30)) == datetime(
        2026, 11, 1, tzinfo=UTC)
    prediction = conversions(world)
    result = preds.score(world.propel, world.account_id, prediction.id,
                         as_of=END.replace(tzinfo=None))
    assert result.as_of == END


def test_too_little_data_says_what_is_needed(world: World) -> None:
    rare = preds.create_prediction(world.propel, world.account_id, from_template(
        "conversions", name="Big spenders", goal_where=(parse_where("amount > 1000000000"),)))
    with pytest.raises(preds.NotEnoughData, match=(
            r"needs at least 50 users who did Charged where amount > 1000000000 within "
            r"14 days after a training date \(.+\).*; found 0 and 0")):
        preds.train(world.propel, world.account_id, rare.id, as_of=END)
    long = preds.create_prediction(world.propel, world.account_id, from_template(
        "conversions", name="Quarterly buyers", window_days=60))
    with pytest.raises(preds.NotEnoughData,
                       match=r"needs at least \d+ days of events .*; found \d+ days"):
        preds.train(world.propel, world.account_id, long.id, as_of=END)
    # a date before the first event: no negative count of days, the date it starts
    with snapshot(world.propel.db, world.propel.lake, world.account_id) as (con, _):
        first = training._data_range(con)[0].date()
    with pytest.raises(preds.NotEnoughData) as caught:
        preds.train(world.propel, world.account_id, rare.id,
                    as_of=datetime(2020, 1, 1, tzinfo=UTC))
    assert str(caught.value) == (f"needs at least 49 days of events before 2020-01-01; the "
                                 f"account's events start on {first}")
    for prediction in (rare, long):
        assert registry.list_versions(world.propel.db, prediction.id) == []
        with pytest.raises(NotTrained):
            preds.score(world.propel, world.account_id, prediction.id, as_of=END)
        assert list_runs(world.propel, prediction.id) == []


# --------------------------------------------------------------------------- scoring


def test_scoring_gives_every_audience_user_a_probability_score_and_group(world: World
                                                                          ) -> None:
    prediction = conversions(world)
    model = current_model(world, prediction)
    result = preds.score(world.propel, world.account_id, prediction.id, as_of=END)
    frame = features_at(world, prediction, model, END)
    n = len(frame)
    assert result.rows == n > 500 and result.model_version == prediction.current_version
    scores = current_scores(world, prediction.id)
    assert sorted(scores.index) == sorted(frame.index)
    prob = np.clip(model.predict_proba(frame), 0, 1)
    np.testing.assert_allclose(scores.loc[frame.index, "probability"], prob, rtol=0,
                               atol=1e-12)
    assert all(s == round(100 * p, 1) for s, p in zip(scores["score"], scores["probability"],
                                                        strict=True))
    sizes = scores["grp"].value_counts().to_dict()
    assert sizes == {"High": half_up(0.2, n), "Medium": half_up(0.5, n) - half_up(0.2, n),
                     "Low": n - half_up(0.5, n)} == result.group_sizes
    raw = pd.Series(model.raw_score(frame), index=frame.index)
    grp = scores.loc[frame.index, "grp"]
    assert raw[grp == "High"].min() >= raw[grp == "Medium"].max()
    assert raw[grp == "Medium"].min() >= raw[grp == "Low"].max()
    run = list_runs(world.propel, prediction.id)[0]
    assert (run["id"], run["outcome"], run["rows"], run["error"]) == (result.run_id, "ok", n,
                                                                       None)
    assert run["summary"]["groups"] == sizes
    history = DeltaTable(scores_uri(world.propel)).to_pyarrow_table().to_pandas()
    mine = history[history["prediction_id"] == prediction.id]
    mine = mine[mine["scored_at"] == mine["scored_at"].max()]
    assert len(mine) == n and sorted(mine["identity"]) == sorted(frame.index)
    assert (mine["as_of"] == pd.Timestamp(END)).all()
    assert (mine.set_index("identity").loc[scores.index, "grp"] == scores["grp"]).all()


def test_each_run_appends_history_and_users_who_leave_lose_their_score(world: World) -> None:
    prediction = conversions(world)
    first = preds.score(world.propel, world.account_id, prediction.id, as_of=END)
    before = current_scores(world, prediction.id)
    leaving = list(before.index[:7])
    _ingest(world.propel, world.account_id, [
        _event(world.account_id, f"leave-{u}", u, "App Uninstalled", END - timedelta(hours=1))
        for u in leaving])
    history = DeltaTable(scores_uri(world.propel))
    rows_before = history.to_pyarrow_table().num_rows
    second = preds.score(world.propel, world.account_id, prediction.id, as_of=END)
    assert second.rows == first.rows - len(leaving)
    after = current_scores(world, prediction.id)
    assert set(after.index) == set(before.index) - set(leaving)
    history = DeltaTable(scores_uri(world.propel)).to_pyarrow_table()
    assert history.num_rows == rows_before + second.rows
    runs = list_runs(world.propel, prediction.id)
    assert [r["rows"] for r in runs[:2]] == [second.rows, first.rows]
    assert all(r["outcome"] == "ok" and r["finished_at"] for r in runs)

def test_an_empty_audience_fails_and_keeps_the_current_scores(world: World) -> None:
    """Nobody in the audience is a wrong date or missing data, not everyone leaving:
    replacing the scores with nothing would wipe them all (a scheduled run too)."""
    prediction = conversions(world)
    preds.score(world.propel, world.account_id, prediction.id, as_of=END)
    before = sorted(score_rows(world, prediction.id), key=lambda r: r["identity"])
    assert before
    for as_of in (datetime(2020, 1, 1, tzinfo=UTC), END + timedelta(days=200)):
        day = as_of.date().isoformat()
        with pytest.raises(preds.NotEnoughData, match=(
                rf"nobody is in the audience of 'Predict Conversions' as of {day} \(users "
                rf"with an event before {day}, active within 90 days before it, with no "
                r"App Uninstalled\); the current scores are kept")):
            preds.score(world.propel, world.account_id, prediction.id, as_of=as_of)
        assert sorted(score_rows(world, prediction.id), key=lambda r: r["identity"]) == before
        run = list_runs(world.propel, prediction.id)[0]
        assert run["outcome"] == "failed" and "NotEnoughData" in run["error"]


def _likelihood_events(world: World, prediction_id: str, as_of: datetime) -> list[tuple]:
    with snapshot(world.propel.db, world.propel.lake, world.account_id) as (con, _):
        rows = con.execute("SELECT identity, properties, ts FROM events WHERE name = ?",
                           [LIKELIHOOD_CHANGED]).fetchall()
    out = []
    for identity, props, ts in rows:
        p = orjson.loads(props)
        if p["prediction_id"] == prediction_id and ts == as_of:
            assert p["prediction"] == "Predict Conversions"
            out.append((identity, p["from"], p["to"]))
    return out


def test_a_group_change_emits_likelihood_changed_once(world: World) -> None:
    prediction = conversions(world)
    earlier, later = END - timedelta(days=7), END - timedelta(hours=2)
    preds.score(world.propel, world.account_id, prediction.id, as_of=earlier)
    saved = score_rows(world, prediction.id)
    old = current_scores(world, prediction.id)
    result = preds.score(world.propel, world.account_id, prediction.id, as_of=later)
    new = current_scores(world, prediction.id)
    both = old.index.intersection(new.index)
    expected = sorted((u, old.at[u, "grp"], new.at[u, "grp"]) for u in both
                      if old.at[u, "grp"] != new.at[u, "grp"])
    assert result.changed == len(expected) > 20
    assert sorted(_likelihood_events(world, prediction.id, later)) == expected
    # the same scoring again: nothing changed since, nothing is emitted
    assert preds.score(world.propel, world.account_id, prediction.id, as_of=later).changed == 0
    # ... and re-running it from the earlier state (as after a crash) emits nothing twice

    def restore(conn) -> None:
        conn.execute(delete(user_predictions).where(
            user_predictions.c.prediction_id == prediction.id))
        conn.execute(insert(user_predictions), saved)

    world.propel.db.write(restore)
    rerun = preds.score(world.propel, world.account_id, prediction.id, as_of=later)
    assert rerun.changed == len(expected)
    assert sorted(_likelihood_events(world, prediction.id, later)) == expected
    # message ids fit the column even for the longest identities
    longest = "x" * 256
    items = scoring._change_items(prediction, [(longest, "Low", "High"),
                                               (longest, "High", "Low")], later)
    assert len({i.event.message_id for i in items}) == 2
    assert all(len(i.event.message_id) <= 256 for i in items)
    first = ingest_sync(world.propel.db, world.account_id, items, [], "test")
    again = ingest_sync(world.propel.db, world.account_id, items, [], "test")
    assert (first.accepted, again.duplicates) == (2, 2)


def _set_groups(world: World, prediction: Prediction, **groups: Any) -> None:
    registry.set_state(world.propel.db, prediction.id,
                       groups=orjson.dumps(asdict(Groups(**groups))).decode())


def test_group_sizes_are_exact_when_many_users_tie(world: World) -> None:
    prediction = conversions(world)
    clones = [f"tie-{i:03d}" for i in range(40)]
    items = []
    for u in clones:  # forty users with the very same history
        items += [_event(world.account_id, f"{u}-1", u, "App Launched",
                         END - timedelta(days=2, hours=3)),
                  _event(world.account_id, f"{u}-2", u, "Product Viewed",
                         END - timedelta(days=2, hours=2), product_id="p1"),
                  _event(world.account_id, f"{u}-3", u, "Charged",
                         END - timedelta(days=1, hours=5), amount=20.0)]
    _ingest(world.propel, world.account_id, items)
    model = current_model(world, prediction)
    frame = features_at(world, prediction, model, END)
    raw = pd.Series(model.raw_score(frame), index=frame.index)
    assert raw[clones].nunique() == 1
    n, tie = len(frame), raw[clones].iloc[0]
    above = int((raw > tie).sum())
    # put the High/Medium boundary in the middle of the tied block
    high = (above + 15.5) / n
    try:
        _set_groups(world, prediction, high=high, medium=min(0.3, 1 - high))
        result = preds.score(world.propel, world.account_id, prediction.id, as_of=END)
        scores = current_scores(world, prediction.id)
        assert result.rows == n
        assert result.group_sizes["High"] == half_up(high, n) == above + 16
        assert (scores["grp"] == "High").sum() == above + 16
        # the tie is broken by identity: the first 16 clones are High, the rest Medium
        assert scores.loc[clones, "grp"].tolist() == ["High"] * 16 + ["Medium"] * 24
        again = preds.score(world.propel, world.account_id, prediction.id, as_of=END)
        assert again.changed == 0
    finally:
        _set_groups(world, prediction)


def test_probability_threshold_groups(world: World) -> None:
    prediction = conversions(world)
    try:
        _set_groups(world, prediction, mode="probability", high=0.3, medium=0.1)
        result = preds.score(world.propel, world.account_id, prediction.id, as_of=END)
        scores = current_scores(world, prediction.id)
        p = scores["probability"]
        want = np.where(p >= 0.3, "High", np.where(p >= 0.1, "Medium", "Low"))
        assert (scores["grp"].to_numpy() == want).all()
        assert result.group_sizes == scores["grp"].value_counts().reindex(
            ["High", "Medium", "Low"], fill_value=0).to_dict()
        assert min(result.group_sizes.values()) > 0
    finally:
        _set_groups(world, prediction)


def profile_properties(world: World, identity: str) -> dict:
    return score_properties(world.propel.db, world.account_id, [identity]).get(identity, {})


def test_the_group_is_a_profile_property(world: World) -> None:
    prediction = conversions(world)
    preds.score(world.propel, world.account_id, prediction.id, as_of=END)
    scores = current_scores(world, prediction.id)
    for group in ("High", "Medium", "Low"):
        user = scores.index[scores["grp"] == group][0]
        assert profile_properties(world, user) == {
            "Predict Conversions": group,
            "Predict Conversions score": scores.at[user, "score"]}
    assert profile_properties(world, "nobody-scored") == {}
    top = scores["score"].idxmax()
    props = profile_properties(world, top)
    assert props["Predict Conversions score"] == round(100 * scores.at[top, "probability"], 1)


def test_scores_are_written_in_batches_and_a_crash_between_them_loses_nothing(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    prediction = conversions(world)
    # as-of times of its own: the world is shared with the tests above
    earlier, later = END - timedelta(days=5), END - timedelta(hours=3)
    preds.score(world.propel, world.account_id, prediction.id, as_of=earlier)
    old = current_scores(world, prediction.id)
    monkeypatch.setattr(scoring, "SCORE_BATCH", 25)
    real, calls = scoring._upsert_scores, []

    def crash_on_third_batch(conn, *args):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("worker died")
        return real(conn, *args)

    monkeypatch.setattr(scoring, "_upsert_scores", crash_on_third_batch)
    with pytest.raises(RuntimeError):
        preds.score(world.propel, world.account_id, prediction.id, as_of=later)
    partial = current_scores(world, prediction.id)
    # two batches written, the rest still the old scores; stale rows not yet removed
    assert set(old.index) <= set(partial.index)
    assert len(set(partial.index) - set(old.index)) <= 2 * 25
    monkeypatch.setattr(scoring, "_upsert_scores", real)
    result = preds.score(world.propel, world.account_id, prediction.id, as_of=later)
    assert len(calls) == 3 and result.rows > 3 * 25
    new = current_scores(world, prediction.id)
    both = old.index.intersection(new.index)
    expected = sorted((u, old.at[u, "grp"], new.at[u, "grp"]) for u in both
                      if old.at[u, "grp"] != new.at[u, "grp"])
    # every change emitted exactly once across the crashed run and the re-run
    assert sorted(_likelihood_events(world, prediction.id, later)) == expected
    assert set(new.index) == set(both) | (set(new.index) - set(old.index))


def test_a_failed_scoring_run_is_recorded(world: World) -> None:
    prediction = conversions(world)
    version = registry.get_version(world.propel.db, prediction.id, prediction.current_version)
    path = Path(version.artifact_path)
    blob = path.read_bytes()
    path.write_bytes(blob + b"tampered")
    try:
        with pytest.raises(ArtifactError):
            preds.score(world.propel, world.account_id, prediction.id, as_of=END)
    finally:
        path.write_bytes(blob)
    run = list_runs(world.propel, prediction.id)[0]
    assert run["outcome"] == "failed" and run["finished_at"] and run["rows"] is None
    assert "ArtifactError" in run["error"] and "checksum" in run["error"]


# --------------------------------------------------------------------------- schedules


def test_schedules_train_first_then_score_and_never_run_twice_at_once(
        world: World, no_skill: Callable[[set[str]], None]) -> None:
    propel = world.propel
    # BG/NBD wins (the others are made useless), so the churn groups below also check
    # that a raw score falling as the probability rises is ranked the right way round
    no_skill({"lightgbm", "logistic"})
    prediction = preds.create_prediction(propel, world.account_id, from_template("churn"))
    score_name, train_name = (f"predictions.score:{prediction.id}",
                              f"predictions.train:{prediction.id}")
    found = {s.name: s for s in schedules.list_schedules(propel.db)}
    assert found[score_name].task == "predictions.score"
    assert found[score_name].interval_seconds == 86_400
    assert found[train_name].task == "predictions.train"
    assert found[train_name].interval_seconds == 15 * 86_400
    assert found[score_name].args == found[train_name].args == {"prediction_id": prediction.id}
    assert found[train_name].next_run_at > found[score_name].next_run_at

    now = found[score_name].next_run_at + timedelta(minutes=1)
    claimed = schedules.claim_due(propel.db, now=now)
    assert score_name in claimed and train_name not in claimed

    started, go = threading.Event(), threading.Event()

    def gated(context: Propel, **args: Any) -> Any:
        started.set()
        assert go.wait(300)
        return TASKS["predictions.score"](context, **args)

    outcome: list[str] = []
    runner = threading.Thread(target=lambda: outcome.append(schedules.run_claimed(
        propel.db, score_name, {**TASKS, "predictions.score": gated}, propel)))
    runner.start()
    try:
        assert started.wait(60)
        assert score_name not in schedules.claim_due(propel.db, now=now)

        def due_again(conn) -> None:
            conn.execute(update(schedules_table).where(schedules_table.c.name == score_name)
                         .values(next_run_at=now - timedelta(minutes=5)))

        propel.db.write(due_again)  # due again, but its run still holds the lease
        assert score_name not in schedules.claim_due(propel.db, now=now)
    finally:
        go.set()
        runner.join(600)
    assert outcome == ["ok"]

    prediction = preds.get(propel, world.account_id, prediction.id)
    assert prediction.current_version == 1  # it trained first ...
    (run,) = schedules.recent_runs(propel.db, score_name)
    scored = current_scores(world, prediction.id)
    assert (run["outcome"], run["rows"], run["error"]) == ("ok", len(scored), None)
    assert run["finished_at"] is not None and len(scored) > 500
    (scoring,) = list_runs(propel, prediction.id)  # ... then scored
    assert scoring["outcome"] == "ok" and scoring["rows"] == len(scored)
    # churn: High = likely NOT to launch the app; a backtest bears it out
    version = registry.get_version(propel.db, prediction.id, 1)
    assert version.kind == "bgnbd"
    past = preds.backtest(propel, world.account_id, prediction.id, END - timedelta(days=14))
    assert past["window_complete"] and past["positives"] > 50
    assert past["groups"]["High"]["realised_rate"] > 2 * past["groups"]["Low"]["realised_rate"]
    high = scored.index[scored["grp"] == "High"]
    low = scored.index[scored["grp"] == "Low"]
    frame = features_at(world, prediction, registry.load_model(version), END)
    assert frame.loc[high, "days_since_last"].median() > \
        frame.loc[low, "days_since_last"].median()

    # the lease is released: the due schedule is claimed again, and now only scores
    assert score_name in schedules.claim_due(propel.db, now=now)
    assert schedules.run_claimed(propel.db, score_name, TASKS, propel) == "ok"
    assert len(registry.list_versions(propel.db, prediction.id)) == 1
    assert [r["outcome"] for r in list_runs(propel, prediction.id)] == ["ok", "ok"]
    assert [r["outcome"] for r in schedules.recent_runs(propel.db, score_name)] == ["ok", "ok"]
    world.state["churn"] = prediction.id


def test_churn_backtest_stored_at_training_has_high_as_likely_churners(
        world: World, no_skill: Callable[[set[str]], None]) -> None:
    if "churn" not in world.state:
        no_skill({"lightgbm", "logistic"})
        prediction = preds.create_prediction(world.propel, world.account_id,
                                             from_template("churn"))
        preds.train(world.propel, world.account_id, prediction.id, as_of=END)
        world.state["churn"] = prediction.id
    version = registry.get_version(world.propel.db, world.state["churn"], 1)
    assert version.kind == "bgnbd"
    backtest = version.metrics["groups_backtest"]
    assert backtest["High"]["realised_rate"] > backtest["Low"]["realised_rate"]


# --------------------------------------------------------------------------- templates


def test_templates_make_valid_specs() -> None:
    specs = {name: from_template(name) for name in TEMPLATES}
    for name, spec in specs.items():
        assert spec.template == name
        assert PredictionSpec.from_json(orjson.loads(orjson.dumps(spec.as_json()))) == spec
        assert "App Uninstalled" in spec.audience.exclude_events
    conv, churn, ret, uninst = (specs[n] for n in ("conversions", "churn", "retention",
                                                    "uninstalls"))
    assert (conv.goal_event, conv.polarity, conv.goal_absent) == ("Charged", "desired", False)
    assert (churn.goal_event, churn.polarity, churn.goal_absent) == ("App Launched",
                                                                    "undesired", True)
    assert churn.goal_text == "no App Launched"
    assert (ret.goal_event, ret.polarity, ret.audience.new_within_days) == (
        "App Launched", "desired", 30)
    assert (uninst.goal_event, uninst.polarity) == ("App Uninstalled", "undesired")
    assert parse_where("amount > 0") == Condition("amount", ">", 0)
    paid = from_template("conversions", goal_where=(parse_where("amount > 0"),))
    assert paid.goal_text == "Charged where amount > 0"
    # overrides may be the typed parts themselves, as the CLI and the API pass them
    custom = from_template("conversions", audience=Audience(active_within_days=7),
                           groups=Groups(high=0.1, medium=0.2), window_days=7)
    assert custom.audience.active_within_days == 7 and custom.groups.high == 0.1
    assert custom.window_days == 7 and custom.goal_event == "Charged"
    assert parse_where("code = '10'").value == "10"
    assert parse_where("coupon exists") == Condition("coupon", "exists")
    for bad in (lambda: from_template("upsell"), lambda: parse_where("amount"),
                lambda: from_template("conversions", window_days=0),
                lambda: Groups(high=0.8, medium=0.3),
                lambda: Groups(mode="probability", high=0.1, medium=0.2)):
        with pytest.raises(SpecError):
            bad()


def test_specs_round_trip_through_the_registry(world: World) -> None:
    for name in TEMPLATES:
        spec = from_template(name, name=f"Round trip {name}",
                             goal_where=(parse_where("amount > 0"),
                                         parse_where("category in [books, music]")),
                             groups=Groups(mode="probability", high=0.4, medium=0.2))
        created = registry.create(world.propel.db, world.account_id, spec)
        assert preds.get(world.propel, world.account_id, created.id).spec == spec
        assert preds.get(world.propel, world.account_id, spec.name).id == created.id
    with pytest.raises(SpecError, match="already exists"):
        registry.create(world.propel.db, world.account_id, spec)


def test_reasons_are_the_largest_contributions_as_json() -> None:
    class Model:
        def contributions(self, frame: pd.DataFrame) -> pd.DataFrame:
            return frame

    frame = pd.DataFrame({"days_since_last": [-0.5, 0.0, np.nan],
                          'n "quoted"': [0.25, 0.0, 2.0],
                          "tenure_days": [0.123456, 0.0, -3.0],
                          "share_night": [0.0, 0.0, 0.5]}, dtype=np.float32)
    got = [orjson.loads(text) for text in scoring._reasons_json(Model(), frame)]
    assert got[0] == [{"feature": "days_since_last", "contribution": -0.5},
                      {"feature": 'n "quoted"', "contribution": 0.25},
                      {"feature": "tenure_days", "contribution": 0.1235}]
    assert [r["contribution"] for r in got[1]] == [0.0, 0.0, 0.0]
    # a missing contribution counts as none
    assert [r["feature"] for r in got[2]] == ["tenure_days", 'n "quoted"', "share_night"]
    one = pd.DataFrame({"bgnbd_expected": [0.75]})
    assert [orjson.loads(t) for t in scoring._reasons_json(Model(), one)] == [
        [{"feature": "bgnbd_expected", "contribution": 0.75}]]
