"""Training: labelled snapshots at past as-of dates, time-ordered validation, three
candidate models, the promotion rule, and the registry entry.

Snapshots: a_0 = end - window is the newest as-of date whose label window is complete;
older ones step back a week at a time. Each snapshot holds the audience's features at
its as-of date and whether the goal happened in the window after it. The newest
snapshot validates (half calibrates, half evaluates); the one before it decides early
stopping; the rest train. So every model is judged on a later period than it learned
from, as it will be used.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from propel.core import Propel
from propel.lake.reader import snapshot
from propel.predictions import quality, registry
from propel.predictions.features import (
    choose_feature_spec,
    compute_features,
    labels,
    register_aliases,
)
from propel.predictions.model import LikelihoodModel
from propel.predictions.registry import ModelVersion, Prediction
from propel.profiles.tables import identity_aliases

log = logging.getLogger("propel.predictions")
MIN_POSITIVES = 50
MIN_EVAL_POSITIVES = 10
SNAPSHOTS = 6
STEP_DAYS = 7
MIN_HISTORY_DAYS = 21
MAX_USERS_PER_SNAPSHOT = 250_000


class NotEnoughData(ValueError):
    """Training cannot start; the message names what is missing."""


@dataclass
class TrainResult:
    version: ModelVersion
    promoted: bool
    reason: str
    metrics: dict[str, Any] = field(default_factory=dict)


def start_of_day(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _hash_fraction(index: pd.Index, salt: str) -> np.ndarray:
    """A stable pseudo-random number in [0, 1) per identity: reproducible splits."""
    keys = (salt + ":" + pd.Index(index).astype(str)).to_numpy(dtype=object)
    return pd.util.hash_array(keys).astype(np.float64) / 2.0**64


def load_aliases(propel: Propel, account_id: str) -> list[tuple[str, str, datetime]]:
    with propel.db.read() as conn:
        rows = conn.execute(
            identity_aliases.select().where(identity_aliases.c.account_id == account_id)
        ).all()
    return [(r.alias, r.identity, r.created_at) for r in rows]


def _data_range(con: Any) -> tuple[datetime | None, datetime | None]:
    con.execute("SET TimeZone = 'UTC'")
    first, last = con.execute("SELECT min(ts), max(ts) FROM events WHERE kind = 'event'"
                              ).fetchone()
    return first, last


def snapshot_dates(first: datetime, end: datetime, window_days: int) -> list[datetime]:
    newest = end - timedelta(days=window_days)
    dates = []
    for k in range(SNAPSHOTS):
        as_of = newest - timedelta(days=STEP_DAYS * k)
        if as_of - first < timedelta(days=MIN_HISTORY_DAYS):
            break
        dates.append(as_of)
    return dates[::-1]  # oldest first


def _sample(frame: pd.DataFrame, salt: str) -> pd.DataFrame:
    if len(frame) <= MAX_USERS_PER_SNAPSHOT:
        return frame
    keep = _hash_fraction(frame.index, salt) < MAX_USERS_PER_SNAPSHOT / len(frame)
    return frame[keep]


def _goal_phrase(prediction: Prediction) -> str:
    spec = prediction.spec
    if spec.goal_absent:
        return f"did no {spec.goal_event}"
    return f"did {spec.goal_text}"


def train_prediction(propel: Propel, prediction: Prediction, *, as_of: datetime | None = None,
                     seed: int = 7, progress: Callable[[str], None] | None = None
                     ) -> TrainResult:
    """Train, evaluate against the baselines and the current version, register, and
    promote by the rule in docs/predictions.md."""
    say = progress or (lambda _msg: None)
    spec = prediction.spec
    end = start_of_day(as_of or datetime.now(UTC))
    with snapshot(propel.db, propel.lake, prediction.account_id) as (con, pin):
        register_aliases(con, load_aliases(propel, prediction.account_id))
        first, last = _data_range(con)
        if first is None:
            raise NotEnoughData("needs events to learn from; this account has none")
        end = min(end, start_of_day(last) + timedelta(days=1))
        dates = snapshot_dates(first, end, spec.window_days)
        if len(dates) < 2:
            need = MIN_HISTORY_DAYS + spec.window_days + STEP_DAYS
            raise NotEnoughData(
                f"needs at least {need} days of events before {end.date()} to build two "
                f"training snapshots; found {(end - first).days} days "
                f"({first.date()} … {last.date()})")
        feature_spec = choose_feature_spec(con, spec, dates[-1])
        snaps = []
        for as_of_k in dates:
            say(f"features as of {as_of_k.date()}")
            frame = _sample(compute_features(con, feature_spec, spec.audience, as_of_k),
                            f"{seed}:{as_of_k.date()}")
            y = labels(con, spec, as_of_k, frame.index)
            snaps.append((as_of_k, frame, y))
        current = _current_eval_inputs(propel, prediction, con, snaps[-1])
        lake_version = pin.lake_version
    _check_enough(prediction, snaps)
    train, stop, val = _split(snaps, seed)
    cal_mask = _hash_fraction(val[0].index, f"cal:{seed}") < 0.5
    cal = (val[0][cal_mask], val[1][cal_mask])
    evaluation = (val[0][~cal_mask], val[1][~cal_mask])
    models: dict[str, LikelihoodModel] = {}
    reports: dict[str, dict[str, Any]] = {}
    for kind in ("lightgbm", "logistic", "bgnbd"):
        say(f"training {kind}")
        try:
            model = LikelihoodModel(kind, feature_spec, spec.window_days, seed=seed).fit(
                train[0], train[1], stop[0], stop[1], cal[0], cal[1])
        except ValueError as exc:  # a baseline that cannot fit here is reported, not fatal
            reports[kind] = {"error": str(exc)}
            continue
        models[kind] = model
        reports[kind] = quality.quality_report(evaluation[1], model.predict_proba(evaluation[0]))
    chosen, promoted, reason, current_report = _decide(models, reports, current, evaluation)
    model = models[chosen]
    eval_p = model.predict_proba(evaluation[0])
    groups = _groups(prediction, model.raw_score(evaluation[0]), eval_p, evaluation[0].index)
    metrics = {
        "validation": {"as_of": snaps[-1][0].isoformat(), "users": int(len(evaluation[1])),
                       "positives": int(evaluation[1].sum()),
                       "calibration_users": int(len(cal[1]))},
        "training": {"snapshots": [d.isoformat() for d, _, _ in snaps],
                     "rows": int(len(train[1])), "positives": int(train[1].sum())},
        "candidates": reports,
        "current": current_report,
        "chosen": chosen,
        "quality": reports[chosen],
        "groups_backtest": quality.group_report(evaluation[1], eval_p, groups),
        "drivers": model.drivers(evaluation[0]),
        "calibration_method": model.calibrator_.method_,
    }
    version = registry.save_version(propel.db, propel.settings.data_dir, prediction, model,
                                    as_of=snaps[-1][0], lake_version=lake_version,
                                    metrics=metrics, promoted=promoted, reason=reason)
    log.info("trained %s v%s (%s): %s", spec.name, version.version, chosen, reason)
    return TrainResult(version, promoted, reason, metrics)


def _check_enough(prediction: Prediction, snaps: list) -> None:
    spec = prediction.spec
    positives = sum(int(y.sum()) for _, _, y in snaps)
    negatives = sum(int(len(y) - y.sum()) for _, _, y in snaps)
    newest_pos = int(snaps[-1][2].sum())
    span = f"{snaps[0][0].date()} … {snaps[-1][0].date()}"
    if positives < MIN_POSITIVES or newest_pos < MIN_EVAL_POSITIVES * 2:
        raise NotEnoughData(
            f"needs at least {MIN_POSITIVES} users who {_goal_phrase(prediction)} within "
            f"{spec.window_days} days after a training date ({span}), and "
            f"{MIN_EVAL_POSITIVES * 2} after the newest; found {positives} and {newest_pos}")
    if negatives < MIN_POSITIVES:
        raise NotEnoughData(
            f"needs at least {MIN_POSITIVES} users who did not reach the goal within "
            f"{spec.window_days} days after a training date ({span}); found {negatives}")


def _split(snaps: list, seed: int) -> tuple[tuple, tuple, tuple]:
    frames = [(f, y) for _, f, y in snaps]
    val = frames[-1]
    if len(frames) >= 3:
        train_f = pd.concat([f for f, _ in frames[:-2]])
        train_y = np.concatenate([y for _, y in frames[:-2]])
        return (train_f, train_y), frames[-2], val
    older_f, older_y = frames[0]
    stop = _hash_fraction(older_f.index, f"stop:{seed}") < 0.2
    return (older_f[~stop], older_y[~stop]), (older_f[stop], older_y[stop]), val


def _current_eval_inputs(propel: Propel, prediction: Prediction, con: Any, newest: tuple
                         ) -> tuple[ModelVersion, LikelihoodModel, pd.DataFrame] | None:
    """The current version and the newest snapshot's features as *it* defines them."""
    if prediction.current_version is None:
        return None
    version = registry.get_version(propel.db, prediction.id, prediction.current_version)
    model = registry.load_model(version)
    as_of_k, frame, _ = newest
    own = compute_features(con, model.feature_spec, prediction.spec.audience, as_of_k)
    return version, model, own


def _decide(models: dict[str, LikelihoodModel], reports: dict[str, dict[str, Any]],
            current: tuple | None, evaluation: tuple[pd.DataFrame, np.ndarray]
            ) -> tuple[str, bool, str, dict[str, Any] | None]:
    """The promotion rule: LightGBM is promoted when its validation log loss is lower
    than the best baseline's and not worse than the current version's; when it loses to
    a baseline, the best baseline is the candidate instead."""
    baselines = {k: reports[k]["log_loss"] for k in ("logistic", "bgnbd")
                 if k in models and reports[k].get("log_loss") is not None}
    best = min(baselines, key=baselines.get) if baselines else None
    lgb_ll = reports.get("lightgbm", {}).get("log_loss")
    if "lightgbm" in models and (best is None or lgb_ll < baselines[best]):
        chosen = "lightgbm"
        why = (f"LightGBM log loss {lgb_ll:.4f} beats the best baseline"
               + (f" ({best} {baselines[best]:.4f})" if best else ""))
    elif best is not None:
        chosen = best
        why = (f"LightGBM log loss {lgb_ll:.4f} did not beat {best} {baselines[best]:.4f}; "
               f"the baseline is the candidate" if lgb_ll is not None
               else f"LightGBM could not be trained; {best} is the candidate")
    else:
        raise NotEnoughData("no model could be trained on this data: "
                            + "; ".join(f"{k}: {r.get('error')}" for k, r in reports.items()))
    current_report = None
    promoted = True
    if current is not None:
        version, model, frame = current
        current_p = model.predict_proba(frame.reindex(evaluation[0].index))
        current_report = {"version": version.version, "kind": version.kind,
                          **quality.quality_report(evaluation[1], current_p)}
        cand_ll = reports[chosen]["log_loss"]
        if cand_ll > current_report["log_loss"]:
            promoted = False
            why += (f"; not promoted: worse than current v{version.version} "
                    f"({cand_ll:.4f} > {current_report['log_loss']:.4f})")
        else:
            why += f"; not worse than current v{version.version} ({current_report['log_loss']:.4f})"
    return chosen, promoted, ("promoted: " if promoted else "") + why, current_report


def _groups(prediction: Prediction, raw: np.ndarray, prob: np.ndarray, keys: pd.Index
            ) -> np.ndarray:
    g = prediction.spec.groups
    if g.mode == "probability":
        return quality.assign_groups_by_threshold(prob, g.high, g.medium)
    return quality.assign_groups(raw, np.asarray(keys, dtype=str), g.high, g.medium)
