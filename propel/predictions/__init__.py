"""Predictions: the small Python API the CLI, HTTP routes and tasks call.

A prediction is created once (``create_prediction``); it then trains and scores itself
through the database-held schedules (``predictions.score:<id>`` daily by default,
``predictions.train:<id>`` every 15 days), or on demand with ``train`` / ``score``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from sqlalchemy import select

from propel.core import Propel
from propel.jobs import schedules
from propel.lake.reader import snapshot
from propel.predictions import quality, registry
from propel.predictions.exclusive import AlreadyRunning
from propel.predictions.features import compute_features, labels, register_aliases
from propel.predictions.registry import NotFound, Prediction
from propel.predictions.scoring import (
    NotTrained,
    ScoreResult,
    assign,
    empty_audience,
    score_prediction,
)
from propel.predictions.spec import PredictionSpec, SpecError
from propel.predictions.tables import user_predictions
from propel.predictions.training import (
    NotEnoughData,
    TrainResult,
    load_aliases,
    start_of_day,
    train_prediction,
)

__all__ = ["AlreadyRunning", "NotEnoughData", "NotFound", "NotTrained", "SpecError", "backtest",
           "create_prediction", "export_scores", "get", "schedules", "score",
           "score_prediction", "train", "train_prediction"]

DAY = 86_400


def _schedule_names(prediction_id: str) -> tuple[str, str]:
    return f"predictions.score:{prediction_id}", f"predictions.train:{prediction_id}"


def ensure_schedules(propel: Propel, prediction: Prediction) -> None:
    score_name, train_name = _schedule_names(prediction.id)
    tomorrow = start_of_day(datetime.now(UTC)) + timedelta(days=1, minutes=5)
    schedules.ensure_schedule(propel.db, score_name, "predictions.score",
                              prediction.spec.score_every_days * DAY,
                              {"prediction_id": prediction.id}, first_run_at=tomorrow)
    schedules.ensure_schedule(propel.db, train_name, "predictions.train",
                              prediction.spec.retrain_every_days * DAY,
                              {"prediction_id": prediction.id},
                              first_run_at=datetime.now(UTC)
                              + timedelta(days=prediction.spec.retrain_every_days))


def create_prediction(propel: Propel, account_id: str, spec: PredictionSpec) -> Prediction:
    prediction = registry.create(propel.db, account_id, spec)
    ensure_schedules(propel, prediction)
    return prediction


def get(propel: Propel, account_id: str, name_or_id: str) -> Prediction:
    return registry.get(propel.db, account_id, name_or_id)


def train(propel: Propel, account_id: str, name_or_id: str, *, as_of: datetime | None = None,
          seed: int = 7, progress: Any = None) -> TrainResult:
    return train_prediction(propel, get(propel, account_id, name_or_id), as_of=as_of,
                            seed=seed, progress=progress)


def score(propel: Propel, account_id: str, name_or_id: str, *,
          as_of: datetime | None = None) -> ScoreResult:
    return score_prediction(propel, get(propel, account_id, name_or_id), as_of=as_of)


def backtest(propel: Propel, account_id: str, name_or_id: str, as_of: datetime
             ) -> dict[str, Any]:
    """Score as of a past date with the current model, then compare with what happened
    in the window after it."""
    prediction = get(propel, account_id, name_or_id)
    if prediction.current_version is None:
        raise NotTrained(f"prediction {prediction.spec.name!r} has no model yet; train it first")
    version = registry.get_version(propel.db, prediction.id, prediction.current_version)
    model = registry.load_model(version)
    as_of = start_of_day(as_of)
    with snapshot(propel.db, propel.lake, account_id) as (con, _):
        register_aliases(con, load_aliases(propel, account_id))
        frame = compute_features(con, model.feature_spec, prediction.spec.audience, as_of)
        y = labels(con, prediction.spec, as_of, frame.index)
        last = con.execute("SELECT max(ts) FROM events WHERE kind = 'event'").fetchone()[0]
    if len(frame) == 0:
        raise NotEnoughData(empty_audience(prediction, as_of))
    end = as_of + timedelta(days=prediction.spec.window_days)
    seen_until = start_of_day(version.as_of) + timedelta(days=prediction.spec.window_days)
    prob = model.predict_proba(frame)
    groups = assign(prediction, model.raw_score(frame), prob, frame.index)
    return {
        "prediction": prediction.spec.name, "model_version": version.version,
        "as_of": as_of.date().isoformat(), "window_days": prediction.spec.window_days,
        # the data runs to the end of the day of its last event
        "window_complete": bool(last is not None and start_of_day(last) + timedelta(days=1)
                                >= end),
        # the model learnt from outcomes up to its newest snapshot's window end: a window
        # that ends by then was seen in training, and its figures flatter the model
        "in_sample": end <= seen_until,
        "model_saw_outcomes_until": seen_until.date().isoformat(),
        "users": int(len(y)), "positives": int(y.sum()),
        "auc": quality.auc(y, prob), "pr_auc": quality.pr_auc(y, prob),
        "log_loss": quality.log_loss(y, prob), "brier": quality.brier(y, prob),
        "groups": quality.group_report(y, prob, groups),
    }


def export_scores(propel: Propel, account_id: str, name_or_id: str, fmt: str, output: Path
                  ) -> int:
    prediction = get(propel, account_id, name_or_id)
    if fmt not in ("csv", "parquet"):
        raise ValueError("format must be csv or parquet")
    with propel.db.read() as conn:
        rows = conn.execute(select(
            user_predictions.c.identity, user_predictions.c.probability,
            user_predictions.c.score, user_predictions.c.grp, user_predictions.c.model_version,
            user_predictions.c.scored_at).where(
            user_predictions.c.prediction_id == prediction.id).order_by(
            user_predictions.c.score.desc(), user_predictions.c.identity)).all()
    cols = list(zip(*rows, strict=True)) if rows else [[]] * 6
    table = pa.table({
        "identity": pa.array(cols[0], pa.string()),
        "probability": pa.array(cols[1], pa.float64()),
        "score": pa.array(cols[2], pa.float64()),
        "group": pa.array(cols[3], pa.string()),
        "model_version": pa.array(cols[4], pa.int32()),
        "scored_at": pa.array(cols[5], pa.timestamp("us", tz="UTC")),
    })
    if fmt == "csv":
        pacsv.write_csv(table, output)
    else:
        pq.write_table(table, output)
    return table.num_rows


# -- scheduled tasks (registered in propel.jobs.tasks.TASKS) ------------------------------

def score_task(propel: Propel, prediction_id: str) -> int:
    """Daily scoring; a prediction that has never trained trains first."""
    prediction = registry.get_by_id(propel.db, prediction_id)
    if prediction.current_version is None:
        train_prediction(propel, prediction)
        prediction = registry.get_by_id(propel.db, prediction_id)
    return score_prediction(propel, prediction).rows


def train_task(propel: Propel, prediction_id: str) -> int:
    result = train_prediction(propel, registry.get_by_id(propel.db, prediction_id))
    return int(result.promoted)


