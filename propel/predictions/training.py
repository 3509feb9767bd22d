"""Training: labelled snapshots at past as-of dates, time-ordered validation, the
candidate models (LightGBM, the two baselines, and the blend of the three), the
promotion rule, and the registry entry.

Snapshots (see ``plan_snapshots``): the validation date ``v = end - window`` is the
newest as-of date whose label window is complete. Training dates step back from
``v - window`` every ``STEP_DAYS`` (at most ``MAX_SNAPSHOTS``, each with at least
``MIN_HISTORY_DAYS`` of history before it), so every training label window ends before
the validation one starts: no event decides both a training label and a validation
label, exactly as when the model is later used on dates after everything it learned
from. Each snapshot holds the audience's features at its as-of date and whether the
goal happened in the window after it.

Validation: half of the validation snapshot's users calibrate, the other half evaluate
(a stable hash of the identity decides). LightGBM stops early on an inner split that is
ordered in time the same way: it learns from the training dates at least one window
before the newest training date and stops on that newest date; then it is refitted on
all training dates with the number of rounds found. The baselines learn from all
training dates too.

Large accounts: when events × snapshots exceed ``SCAN_BUDGET``, training reads a fixed
random sample of users (by a hash of the resolved identity, so a user's events stay
together), materialised once and shared by all snapshots.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from propel.core import Propel
from propel.lake.reader import snapshot
from propel.predictions import quality, registry
from propel.predictions.blend import KIND as BLEND
from propel.predictions.blend import BlendModel, blend_members
from propel.predictions.exclusive import one_at_a_time
from propel.predictions.features import (
    FeatureSpec,
    choose_feature_spec,
    compute_features,
    labels,
    register_aliases,
)
from propel.predictions.model import BgNbdFeatures, LikelihoodModel
from propel.predictions.registry import ModelVersion, Prediction
from propel.predictions.spec import PredictionSpec
from propel.profiles.tables import identity_alias_history

log = logging.getLogger("propel.predictions")
MIN_POSITIVES = 50
MIN_EVAL_POSITIVES = 10
MAX_SNAPSHOTS = 24  # training dates, besides the validation date
STEP_DAYS = 7
MIN_HISTORY_DAYS = 21
MAX_USERS_PER_SNAPSHOT = 250_000
# Each snapshot's feature query reads the events before its date: above this many
# events × snapshots, training reads a random sample of users (bounds training time).
SCAN_BUDGET = 40_000_000
INNER_STOP_SHARE = 0.2  # users that decide early stopping when there is no older date


Model = LikelihoodModel | BlendModel
LEARNED = ("lightgbm", BLEND)  # the candidates that must beat the baselines
BASELINES = ("logistic", "bgnbd")


class NotEnoughData(ValueError):
    """Training cannot start; the message names what is missing."""


@dataclass
class TrainResult:
    version: ModelVersion
    promoted: bool
    reason: str
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    """Training dates (oldest first) and the validation date."""

    train: tuple[datetime, ...]
    validate: datetime
    window_days: int

    @property
    def dates(self) -> list[datetime]:
        return [*self.train, self.validate]

    @property
    def stop(self) -> datetime:
        """The newest training date: it decides LightGBM's early stopping."""
        return self.train[-1]

    @property
    def inner(self) -> tuple[datetime, ...]:
        """Training dates whose label windows end before ``stop``: what LightGBM learns
        from while ``stop`` decides the number of rounds."""
        return tuple(d for d in self.train
                     if d <= self.stop - timedelta(days=self.window_days))


@dataclass
class Snap:
    as_of: datetime
    frame: pd.DataFrame
    y: np.ndarray


@dataclass
class Candidates:
    """What ``fit_candidates`` returns: the fitted models, their validation reports and
    the data they were judged on."""

    models: dict[str, Model]
    reports: dict[str, dict[str, Any]]
    evaluation: tuple[pd.DataFrame, np.ndarray]
    calibration: tuple[pd.DataFrame, np.ndarray]
    training: dict[str, Any]


def as_utc(moment: datetime) -> datetime:
    """``moment`` in UTC; a moment without a time zone is taken as UTC already, since
    ``astimezone`` would read it in the server's local zone and shift the day."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def start_of_day(moment: datetime) -> datetime:
    return as_utc(moment).replace(hour=0, minute=0, second=0, microsecond=0)


def _hash_fraction(index: pd.Index, salt: str) -> np.ndarray:
    """A stable pseudo-random number in [0, 1) per identity: reproducible splits."""
    keys = (salt + ":" + pd.Index(index).astype(str)).to_numpy(dtype=object)
    return pd.util.hash_array(keys).astype(np.float64) / 2.0**64


def load_aliases(propel: Propel, account_id: str) -> list[tuple[str, str, datetime]]:
    """Every (re)pointing of every alias: features pick, per alias, the latest one before
    their date."""
    with propel.db.read() as conn:
        rows = conn.execute(identity_alias_history.select().where(
            identity_alias_history.c.account_id == account_id)).all()
    return [(r.alias, r.identity, r.created_at) for r in rows]


def _data_range(con: Any) -> tuple[datetime | None, datetime | None, int]:
    con.execute("SET TimeZone = 'UTC'")
    first, last, n = con.execute(
        "SELECT min(ts), max(ts), count(*) FROM events WHERE kind = 'event'").fetchone()
    return first, last, int(n or 0)


def plan_snapshots(first: datetime, end: datetime, window_days: int,
                   step_days: int = STEP_DAYS, max_snapshots: int = MAX_SNAPSHOTS
                   ) -> Plan | None:
    """The validation date ``end - window`` and the training dates before it (None when
    not even one training date has ``MIN_HISTORY_DAYS`` of history)."""
    validate = end - timedelta(days=window_days)
    train = []
    as_of = validate - timedelta(days=window_days)
    while len(train) < max_snapshots and as_of - first >= timedelta(days=MIN_HISTORY_DAYS):
        train.append(as_of)
        as_of -= timedelta(days=step_days)
    if not train:
        return None
    return Plan(tuple(train[::-1]), validate, window_days)


def snapshot_dates(first: datetime, end: datetime, window_days: int) -> list[datetime]:
    """All snapshot dates, oldest first; the last one validates."""
    plan = plan_snapshots(first, end, window_days)
    return plan.dates if plan else []


def _sample(frame: pd.DataFrame, salt: str) -> pd.DataFrame:
    if len(frame) <= MAX_USERS_PER_SNAPSHOT:
        return frame
    keep = _hash_fraction(frame.index, salt) < MAX_USERS_PER_SNAPSHOT / len(frame)
    return frame[keep]


def sample_users(con: Any, events: int, snapshots: int, seed: int,
                 budget: int = SCAN_BUDGET) -> float:
    """Replace the ``events`` view by the events of a random share of users (all their
    events, resolved through aliases) when ``events × snapshots`` is above ``budget``;
    returns the share kept. Materialised once, so each snapshot scans only the sample."""
    if events * snapshots <= budget:
        return 1.0
    share = budget / (events * snapshots)
    cut = int(share * 1_000_000)
    con.execute(f"""
      CREATE TEMP TABLE _training_events AS
      SELECT e.* FROM events e LEFT JOIN (SELECT alias, any_value(identity) AS identity
                                          FROM aliases GROUP BY alias) a
        ON a.alias = e.identity
      WHERE hash(COALESCE(a.identity, e.identity) || ':{int(seed)}') % 1000000 < {cut}""")
    con.execute("CREATE OR REPLACE TEMP VIEW events AS SELECT * FROM _training_events")
    return share


def collect_snapshots(con: Any, spec: PredictionSpec, feature_spec: FeatureSpec,
                      dates: list[datetime], seed: int,
                      say: Callable[[str], None] | None = None) -> list[Snap]:
    snaps = []
    for as_of in dates:
        if say:
            say(f"features as of {as_of.date()}")
        frame = _sample(compute_features(con, feature_spec, spec.audience, as_of),
                        f"{seed}:{as_of.date()}")
        snaps.append(Snap(as_of, frame, labels(con, spec, as_of, frame.index)))
    return snaps


def _too_short(spec: PredictionSpec, first: datetime, last: datetime, end: datetime) -> str:
    need = MIN_HISTORY_DAYS + 2 * spec.window_days
    head = f"needs at least {need} days of events before {end.date()}"
    if end <= first:  # a date before the data: a count of days would come out negative
        return f"{head}; the account's events start on {first.date()}"
    return (f"{head} to build a training and a validation snapshot; found "
            f"{(end - first).days} days ({first.date()} … {last.date()})")


def _goal_phrase(prediction: Prediction) -> str:
    spec = prediction.spec
    if spec.goal_absent:
        return f"did no {spec.goal_event}"
    return f"did {spec.goal_text}"


def train_prediction(propel: Propel, prediction: Prediction, *, as_of: datetime | None = None,
                     seed: int = 7, progress: Callable[[str], None] | None = None
                     ) -> TrainResult:
    """Train, evaluate against the baselines and the current version, register, and
    promote by the rule in docs/predictions.md. ``AlreadyRunning`` while another
    training of the prediction runs."""
    with one_at_a_time(propel, prediction, "train"):
        return _train(propel, prediction, as_of, seed, progress or (lambda _msg: None))


def _train(propel: Propel, prediction: Prediction, as_of: datetime | None, seed: int,
           say: Callable[[str], None]) -> TrainResult:
    spec = prediction.spec
    end = start_of_day(as_of or datetime.now(UTC))
    started = time.perf_counter()
    with snapshot(propel.db, propel.lake, prediction.account_id) as (con, pin):
        register_aliases(con, load_aliases(propel, prediction.account_id))
        first, last, n_events = _data_range(con)
        if first is None:
            raise NotEnoughData("needs events to learn from; this account has none")
        end = min(end, start_of_day(last) + timedelta(days=1))
        plan = plan_snapshots(first, end, spec.window_days)
        if plan is None:
            raise NotEnoughData(_too_short(spec, first, last, end))
        share = sample_users(con, n_events, len(plan.dates), seed)
        if share < 1:
            say(f"sampling {share:.1%} of users ({n_events:,} events)")
        feature_spec = choose_feature_spec(con, spec, plan.validate)
        snaps = collect_snapshots(con, spec, feature_spec, plan.dates, seed, say)
        current, unreadable = _current_eval_inputs(propel, prediction, con, snaps[-1])
        lake_version = pin.lake_version
    feature_seconds = time.perf_counter() - started
    _check_enough(prediction, snaps)
    cands = fit_candidates(spec, feature_spec, plan, snaps, seed, say)
    models, reports, evaluation = cands.models, cands.reports, cands.evaluation
    chosen, promoted, reason, current_report = _decide(models, reports, current, evaluation,
                                                       unreadable=unreadable)
    model = models[chosen]
    eval_p = model.predict_proba(evaluation[0])
    groups = _groups(prediction, model.raw_score(evaluation[0]), eval_p, evaluation[0].index)
    metrics = {
        "validation": {"as_of": plan.validate.isoformat(), "users": int(len(evaluation[1])),
                       "positives": int(evaluation[1].sum()),
                       "calibration_users": int(len(cands.calibration[1]))},
        "training": {**cands.training, "user_share": share,
                     "feature_seconds": round(feature_seconds, 2),
                     "seconds": round(time.perf_counter() - started, 2)},
        "candidates": reports,
        "current": current_report,
        "chosen": chosen,
        "quality": reports[chosen],
        "groups_backtest": quality.group_report(evaluation[1], eval_p, groups),
        "drivers": model.drivers(evaluation[0]),
        "calibration_method": model.calibrator_.method_,
    }
    version = registry.save_version(propel.db, propel.settings.data_dir, prediction, model,
                                    as_of=plan.validate, lake_version=lake_version,
                                    metrics=metrics, promoted=promoted, reason=reason)
    log.info("trained %s v%s (%s): %s", spec.name, version.version, chosen, reason)
    return TrainResult(version, promoted, reason, metrics)


def fit_candidates(spec: PredictionSpec, feature_spec: FeatureSpec, plan: Plan,
                   snaps: list[Snap], seed: int = 7,
                   say: Callable[[str], None] | None = None,
                   options: dict[str, dict[str, Any]] | None = None) -> Candidates:
    """Fit LightGBM and the two baselines on the training snapshots (``snaps`` in the
    order of ``plan.dates``), calibrate each on half of the validation snapshot and
    report on the other half; then the blend of them (``blend.py``), calibrated on the
    same half. ``options`` holds extra constructor arguments per kind."""
    by_date = {s.as_of: s for s in snaps}
    val = by_date[plan.validate]
    cal_mask = _hash_fraction(val.frame.index, f"cal:{seed}") < 0.5
    cal = (val.frame[cal_mask], val.y[cal_mask])
    evaluation = (val.frame[~cal_mask], val.y[~cal_mask])
    inner, stop, extra = _inner_split(plan, by_date, seed)
    training = {
        "snapshots": [d.isoformat() for d in plan.dates],
        "rows": int(sum(len(by_date[d].y) for d in plan.train)),
        "positives": int(sum(int(by_date[d].y.sum()) for d in plan.train)),
        "early_stopping": {"learn_rows": int(len(inner[1])), "stop_rows": int(len(stop[1])),
                           "stop_as_of": plan.stop.isoformat(),
                           "time_ordered": bool(plan.inner)},
    }
    models: dict[str, Model] = {}
    reports: dict[str, dict[str, Any]] = {}
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    # BG/NBD is fitted once on every training row's goal history and shared: its two
    # summaries are features of the other candidates and its own answer the third
    newest = by_date[plan.stop]
    bg = BgNbdFeatures(spec.window_days).fit(newest.frame)
    seconds["bgnbd_fit"] = round(time.perf_counter() - started, 2)
    for kind in ("lightgbm", "logistic", "bgnbd"):
        if say:
            say(f"training {kind}")
        started = time.perf_counter()
        try:
            model = LikelihoodModel(kind, feature_spec, spec.window_days, seed=seed,
                                    **(options or {}).get(kind, {})).fit(
                inner[0], inner[1], stop[0], stop[1], cal[0], cal[1],
                extra=extra[0], y_extra=extra[1], bg=bg)
        except ValueError as exc:  # a baseline that cannot fit here is reported, not fatal
            reports[kind] = {"error": str(exc)}
            continue
        models[kind] = model
        reports[kind] = quality.quality_report(evaluation[1], model.predict_proba(evaluation[0]))
        seconds[kind] = round(time.perf_counter() - started, 2)
        if kind == "lightgbm":
            training["lightgbm"] = model.training_summary()
    members = blend_members(models, cal[0])
    if members:
        started = time.perf_counter()
        blend = BlendModel(members).fit(cal[0], cal[1])
        models[BLEND] = blend
        reports[BLEND] = quality.quality_report(evaluation[1], blend.predict_proba(evaluation[0]))
        seconds[BLEND] = round(time.perf_counter() - started, 2)
        training[BLEND] = blend.training_summary()
    training["fit_seconds"] = seconds
    return Candidates(models, reports, evaluation, cal, training)


def _concat(snaps: list[Snap]) -> tuple[pd.DataFrame, np.ndarray]:
    if len(snaps) == 1:
        return snaps[0].frame, snaps[0].y
    return pd.concat([s.frame for s in snaps]), np.concatenate([s.y for s in snaps])


def _inner_split(plan: Plan, by_date: dict[datetime, Snap], seed: int
                 ) -> tuple[tuple, tuple, tuple]:
    """(learn, stop, extra): LightGBM learns from ``learn``, stops early on ``stop`` and
    is refitted on all three. Time-ordered when there is a training date a window
    before the newest one; otherwise a share of users (all their rows) stops."""
    if plan.inner:
        learn = _concat([by_date[d] for d in plan.inner])
        stop_snap = by_date[plan.stop]
        rest = [by_date[d] for d in plan.train if d not in plan.inner and d != plan.stop]
        extra = _concat(rest) if rest else (None, None)
        return learn, (stop_snap.frame, stop_snap.y), extra
    frame, y = _concat([by_date[d] for d in plan.train])
    stop = _hash_fraction(frame.index, f"stop:{seed}") < INNER_STOP_SHARE
    return (frame[~stop], y[~stop]), (frame[stop], y[stop]), (None, None)


def _check_enough(prediction: Prediction, snaps: list[Snap]) -> None:
    spec = prediction.spec
    train = snaps[:-1]
    positives = sum(int(s.y.sum()) for s in train)
    negatives = sum(int(len(s.y) - s.y.sum()) for s in train)
    newest_pos = int(snaps[-1].y.sum())
    span = f"{snaps[0].as_of.date()} … {snaps[-1].as_of.date()}"
    if positives < MIN_POSITIVES or newest_pos < MIN_EVAL_POSITIVES * 2:
        raise NotEnoughData(
            f"needs at least {MIN_POSITIVES} users who {_goal_phrase(prediction)} within "
            f"{spec.window_days} days after a training date ({span}), and "
            f"{MIN_EVAL_POSITIVES * 2} after the newest; found {positives} and {newest_pos}")
    if negatives < MIN_POSITIVES:
        raise NotEnoughData(
            f"needs at least {MIN_POSITIVES} users who did not reach the goal within "
            f"{spec.window_days} days after a training date ({span}); found {negatives}")


def _current_eval_inputs(propel: Propel, prediction: Prediction, con: Any, newest: Snap
                         ) -> tuple[tuple[ModelVersion, Model, pd.DataFrame] | None, str | None]:
    """The current version and the newest snapshot's features as *it* defines them, or
    None and why its artifact cannot be read: retraining is how a broken artifact is
    repaired, so it must not need that artifact."""
    if prediction.current_version is None:
        return None, None
    version = registry.get_version(propel.db, prediction.id, prediction.current_version)
    try:
        model = registry.load_model(version)
    except registry.ArtifactError as exc:
        log.warning("training %s without comparing: %s", prediction.spec.name, exc)
        why = str(exc).removesuffix("; retrain the prediction")
        return None, f"current version {version.version} could not be read ({why})"
    own = compute_features(con, model.feature_spec, prediction.spec.audience, newest.as_of)
    return (version, model, own), None


def _decide(models: dict[str, Model], reports: dict[str, dict[str, Any]],
            current: tuple | None, evaluation: tuple[pd.DataFrame, np.ndarray],
            unreadable: str | None = None) -> tuple[str, bool, str, dict[str, Any] | None]:
    """The promotion rule: LightGBM is the candidate when its validation log loss is
    lower than the best baseline's; otherwise the blend, when its log loss is; otherwise
    the best baseline. The candidate is promoted when it is not worse than the current
    version, or when the current version's artifact cannot be read (``unreadable``
    says why): a version nobody can score with is no bar to clear. LightGBM comes first
    because where it already wins, the blend's edge over it is within noise (a few
    thousandths, both ways, across data sets and splits) and the blend costs more to
    score."""
    def loss(kind: str) -> float | None:
        return reports.get(kind, {}).get("log_loss") if kind in models else None

    baselines = {k: loss(k) for k in BASELINES if loss(k) is not None}
    best = min(baselines, key=baselines.get) if baselines else None
    learned = {k: loss(k) for k in LEARNED if loss(k) is not None}
    winners = [k for k in LEARNED if k in learned
               and (best is None or learned[k] < baselines[best])]
    lgb_ll = loss("lightgbm")
    if winners:
        chosen = winners[0]
        name = "LightGBM" if chosen == "lightgbm" else "the blend"
        why = (f"{name} log loss {learned[chosen]:.4f} beats the best baseline"
               + (f" ({best} {baselines[best]:.4f})" if best else ""))
        if chosen == BLEND and lgb_ll is not None:
            why += f"; LightGBM alone did not ({lgb_ll:.4f})"
    elif best is not None:
        chosen = best
        if lgb_ll is None:
            why = f"LightGBM could not be trained; {best} is the candidate"
        else:
            why = (f"LightGBM log loss {lgb_ll:.4f}"
                   + (f" and blend log loss {learned[BLEND]:.4f}" if BLEND in learned else "")
                   + f" did not beat {best} {baselines[best]:.4f}; the baseline is the "
                   "candidate")
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
    elif unreadable:
        why += f"; {unreadable}; promoted without comparing"
    return chosen, promoted, ("promoted: " if promoted else "") + why, current_report


def _groups(prediction: Prediction, raw: np.ndarray, prob: np.ndarray, keys: pd.Index
            ) -> np.ndarray:
    """The groups scoring would give (``scoring.assign``): by rank of the raw score
    turned to rise with the probability (BG/NBD's raw score for an absent goal falls)."""
    from propel.predictions.scoring import assign  # scoring imports this module

    return assign(prediction, raw, prob, keys)
