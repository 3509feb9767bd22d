"""Scoring: every audience user gets a calibrated probability, a score (100 × p, one
decimal) and a likelihood group; current scores live in ``user_predictions``, every
run is appended to the lake's ``scores`` table as history, and group changes emit the
system event ``Likelihood Changed``."""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
from deltalake import write_deltalake
from sqlalchemy import Connection, delete, insert, select, update

from propel.core import Propel
from propel.db.bulk import db_time, upsert_many
from propel.db.meta import utcnow
from propel.ingest.records import EventRecord, IngestItem, key_hash
from propel.ingest.service import store_items
from propel.lake.reader import snapshot
from propel.predictions import quality, registry
from propel.predictions.exclusive import one_at_a_time
from propel.predictions.features import compute_features, register_aliases
from propel.predictions.registry import Prediction
from propel.predictions.spec import Audience
from propel.predictions.tables import predictions, scoring_runs, user_predictions
from propel.predictions.training import NotEnoughData, as_utc, load_aliases

log = logging.getLogger("propel.predictions")
LIKELIHOOD_CHANGED = "Likelihood Changed"
GROUPS = ("High", "Medium", "Low")
SCORE_BATCH = 5_000  # rows per write: a few hundred ms on the one SQLite writer
_COLUMNS = ("prediction_id", "identity", "account_id", "probability", "score", "grp",
            "model_version", "scored_at", "reasons")


class NotTrained(LookupError):
    pass


@dataclass
class ScoreResult:
    run_id: int
    rows: int
    changed: int
    group_sizes: dict[str, int]
    expected_rates: dict[str, float]
    model_version: int
    as_of: datetime


def assign(prediction: Prediction, raw: np.ndarray, prob: np.ndarray, keys: pd.Index
           ) -> np.ndarray:
    """Likelihood groups: by rank of the raw score (exact group sizes, ties broken by
    identity), or by probability thresholds."""
    g = prediction.spec.groups
    if g.mode == "probability":
        return quality.assign_groups_by_threshold(prob, g.high, g.medium)
    return quality.assign_groups(oriented(raw, prob), np.asarray(keys, dtype=str), g.high,
                                 g.medium)


def oriented(raw: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """``raw`` turned, if need be, to rise with the calibrated probability. Calibration is
    monotone but may be decreasing: BG/NBD's raw score is P(at least one goal event),
    which for an absent goal (churn: *no* App Launched) is the opposite of the label,
    and a Platt fit with a negative slope turns it round; ranking by that raw score
    would put the users least likely to churn in High."""
    raw = np.asarray(raw, dtype=float)
    prob = np.asarray(prob, dtype=float)
    turned = len(raw) > 1 and np.ptp(raw) > 0 and np.ptp(prob) > 0 \
        and np.corrcoef(raw, prob)[0, 1] < 0
    return -raw if turned else raw


def _reasons_json(model: Any, frame: pd.DataFrame, top: int = 3) -> list[str]:
    """Each user's ``top`` contributions, largest first, as JSON text. Formatted with one
    template per row rather than a dict per reason: a million users' reasons took
    longer to serialise than to compute."""
    contrib = model.contributions(frame)
    matrix = np.nan_to_num(contrib.to_numpy())
    order = np.argsort(-np.abs(matrix), axis=1)[:, :top]
    width = order.shape[1]
    template = "[" + ",".join(['{"feature":%s,"contribution":%r}'] * width) + "]"
    names = np.array([orjson.dumps(str(c)).decode() for c in contrib.columns], dtype=object)
    args = np.empty((len(matrix), 2 * width), dtype=object)
    args[:, 0::2] = names[order]
    # an object array takes float64 values as Python floats, which %r writes as JSON does
    args[:, 1::2] = np.round(np.take_along_axis(matrix, order, axis=1).astype(np.float64), 4)
    return [template % tuple(row) for row in args.tolist()]


def _start_run(propel: Propel, prediction: Prediction, as_of: datetime) -> int:
    return propel.db.write(lambda conn: conn.execute(insert(scoring_runs).values(
        prediction_id=prediction.id, started_at=utcnow(), as_of=as_of, outcome="running")
        .returning(scoring_runs.c.id)).scalar())


def _finish_run(propel: Propel, run_id: int, **values: Any) -> None:
    propel.db.write(lambda conn: conn.execute(update(scoring_runs).where(
        scoring_runs.c.id == run_id).values(finished_at=utcnow(), **values)))


def score_prediction(propel: Propel, prediction: Prediction, *, as_of: datetime | None = None
                     ) -> ScoreResult:
    if prediction.current_version is None:
        raise NotTrained(f"prediction {prediction.spec.name!r} has no model yet; train it first")
    as_of = as_utc(as_of or datetime.now(UTC))
    with one_at_a_time(propel, prediction, "score"):
        run_id = _start_run(propel, prediction, as_of)
        try:
            result = _score(propel, prediction, as_of, run_id)
        except Exception as exc:
            _finish_run(propel, run_id, outcome="failed", error=f"{type(exc).__name__}: {exc}")
            raise
        _finish_run(propel, run_id, outcome="ok", rows=result.rows, changed=result.changed,
                    model_version=result.model_version,
                    summary=orjson.dumps({"groups": result.group_sizes,
                                          "expected_rates": result.expected_rates}).decode())
    return result


def _score(propel: Propel, prediction: Prediction, as_of: datetime, run_id: int) -> ScoreResult:
    started = time.perf_counter()
    version = registry.get_version(propel.db, prediction.id, prediction.current_version)
    model = registry.load_model(version)
    with snapshot(propel.db, propel.lake, prediction.account_id) as (con, _):
        register_aliases(con, load_aliases(propel, prediction.account_id))
        frame = compute_features(con, model.feature_spec, prediction.spec.audience, as_of)
    if len(frame) == 0:
        # An empty audience is far likelier a wrong date or missing data than everyone
        # leaving at once; replacing the scores with nothing would wipe them all.
        raise NotEnoughData(empty_audience(prediction, as_of)
                            + "; the current scores are kept")
    raw = model.raw_score(frame)
    prob = np.clip(model.predict_proba(frame), 0.0, 1.0)
    reasons = _reasons_json(model, frame)
    groups = assign(prediction, raw, prob, frame.index)
    scores = np.round(prob * 100, 1)
    now = utcnow()
    rows = list(zip(frame.index, prob.tolist(), scores.tolist(), groups.tolist(), reasons,
                    strict=True))
    changes = _replace_scores(propel, prediction, rows, version.version, as_of, now)
    _append_history(propel, prediction, frame.index, prob, scores, groups, version.version,
                    as_of, now)
    sizes = {g: int((groups == g).sum()) for g in GROUPS}
    rates = {g: round(float(prob[groups == g].mean()), 4) if sizes[g] else 0.0 for g in GROUPS}
    log.info("scored %s: %s users in %.1fs", prediction.spec.name, len(rows),
             time.perf_counter() - started)
    return ScoreResult(run_id, len(rows), len(changes), sizes, rates, version.version, as_of)


def audience_rule(audience: Audience, as_of: datetime) -> str:
    """The audience in words, e.g. "users with an event before 2026-06-01, active
    within 90 days before it, with no App Uninstalled"."""
    parts = [f"users with an event before {as_of.date()}"]
    if audience.active_within_days:
        parts.append(f"active within {audience.active_within_days} days before it")
    if audience.new_within_days:
        parts.append(f"first seen within {audience.new_within_days} days before it")
    if audience.exclude_events:
        parts.append(f"with no {' or '.join(audience.exclude_events)}")
    return ", ".join(parts)


def empty_audience(prediction: Prediction, as_of: datetime) -> str:
    return (f"nobody is in the audience of {prediction.spec.name!r} as of {as_of.date()} "
            f"({audience_rule(prediction.spec.audience, as_of)})")


def _replace_scores(propel: Propel, prediction: Prediction, rows: list[tuple], version: int,
                    as_of: datetime, now: datetime) -> list[tuple[str, str, str]]:
    """Replace the current scores in batches of (identity, probability, score, group,
    reasons), each batch's scores and its ``Likelihood Changed`` events in one
    transaction: a crash can lose neither alone, and no single write holds the one SQLite
    writer for long. The groups before the run are read once (only this run writes the
    prediction's scores: see ``one_at_a_time``); a re-run after a crash emits no change
    twice, since the scores already written compare equal. Users no longer in the
    audience (rows older than this run's stamp) go last."""
    before = _current_groups(propel, prediction.id)
    changes: list[tuple[str, str, str]] = []
    for start in range(0, len(rows), SCORE_BATCH):
        part = rows[start : start + SCORE_BATCH]
        changes += propel.db.write(lambda conn, part=part: _upsert_scores(
            conn, prediction, part, version, now, before, as_of))

    def _finish(conn: Connection) -> None:
        conn.execute(delete(user_predictions).where(
            user_predictions.c.prediction_id == prediction.id,
            user_predictions.c.scored_at < now))
        conn.execute(update(predictions).where(predictions.c.id == prediction.id).values(
            last_scored_at=utcnow(), status="scored", updated_at=utcnow()))

    propel.db.write(_finish)
    return changes


def _current_groups(propel: Propel, prediction_id: str) -> dict[str, str]:
    with propel.db.read() as conn:
        return dict(conn.execute(select(user_predictions.c.identity, user_predictions.c.grp)
                                 .where(user_predictions.c.prediction_id == prediction_id)).all())


def _upsert_scores(conn: Connection, prediction: Prediction, rows: list[tuple], version: int,
                   now: datetime, before: dict[str, str], as_of: datetime
                   ) -> list[tuple[str, str, str]]:
    stamp = db_time(conn, now)  # raw driver SQL: bind what the column type stores
    pid, account = prediction.id, prediction.account_id
    upsert_many(conn, "user_predictions", _COLUMNS, ("prediction_id", "identity"),
                [(pid, ident, account, p, s, g, version, stamp, r)
                 for ident, p, s, g, r in rows], _COLUMNS[3:])
    changes = [(ident, before[ident], g) for ident, _, _, g, _ in rows
               if before.get(ident, g) != g]
    items = _change_items(prediction, changes, as_of)
    if items:
        store_items(conn, prediction.account_id, items, [], "system")
    return changes


def _change_items(prediction: Prediction, changes: list[tuple[str, str, str]],
                  as_of: datetime) -> list[IngestItem]:
    """``Likelihood Changed`` for the normal ingest path, with message ids derived from
    (prediction, as-of, user, from, to), so re-running the same scoring emits nothing
    twice, while a different change at the same as-of (after a retraining, or new late
    data) is still emitted."""
    ts = int(as_of.timestamp() * 1_000_000)
    stamp = as_of.strftime("%Y%m%dT%H%M%S")
    items = []
    for identity, old, new in changes:
        change = f"{identity}:{old}>{new}"
        if len(change) > 180:  # message ids are at most 256 characters, identities too
            change = hashlib.sha256(change.encode()).hexdigest()
        mid = f"lc:{prediction.id}:{stamp}:{change}"
        props = {"prediction": prediction.spec.name, "prediction_id": prediction.id,
                 "from": old, "to": new}
        items.append(IngestItem(key_hash(prediction.account_id, mid), event=EventRecord(
            message_id=mid, identity=identity, name=LIKELIHOOD_CHANGED, ts=ts,
            properties=orjson.dumps(props).decode())))
    return items


def scores_uri(propel: Propel) -> str:
    return propel.lake.uri.rstrip("/") + "/scores"


def _append_history(propel: Propel, prediction: Prediction, identities: pd.Index,
                    prob: np.ndarray, scores: np.ndarray, groups: np.ndarray, version: int,
                    as_of: datetime, scored_at: datetime) -> None:
    n = len(identities)
    if n == 0:
        return
    table = pa.table({
        "prediction_id": pa.array([prediction.id] * n, pa.string()),
        "identity": pa.array(np.asarray(identities, dtype=object), pa.string()),
        "probability": pa.array(prob, pa.float64()),
        "score": pa.array(scores, pa.float64()),
        "grp": pa.array(groups.astype(object), pa.string()),
        "model_version": pa.array([version] * n, pa.int32()),
        "as_of": pa.array([as_of] * n, pa.timestamp("us", tz="UTC")),
        "scored_at": pa.array([scored_at] * n, pa.timestamp("us", tz="UTC")),
    })
    write_deltalake(scores_uri(propel), table, mode="append", partition_by=["prediction_id"])


def current_scores(propel: Propel, account_id: str, identity: str) -> list[dict[str, Any]]:
    """A user's current score in every prediction of the account."""
    with propel.db.read() as conn:
        rows = conn.execute(
            select(predictions.c.name, predictions.c.id, user_predictions)
            .join(predictions, predictions.c.id == user_predictions.c.prediction_id)
            .where(user_predictions.c.account_id == account_id,
                   user_predictions.c.identity == identity)).all()
    return [{"prediction": r.name, "prediction_id": r.id, "group": r.grp, "score": r.score,
             "probability": round(r.probability, 6), "model_version": r.model_version,
             "scored_at": r.scored_at.isoformat(), "reasons": orjson.loads(r.reasons)}
            for r in rows]


def group_sizes(propel: Propel, prediction_id: str) -> dict[str, int]:
    from sqlalchemy import func

    with propel.db.read() as conn:
        rows = conn.execute(select(user_predictions.c.grp, func.count()).where(
            user_predictions.c.prediction_id == prediction_id).group_by(
            user_predictions.c.grp)).all()
    found = dict(rows)
    return {g: int(found.get(g, 0)) for g in GROUPS}


def list_runs(propel: Propel, prediction_id: str, limit: int = 20) -> list[dict[str, Any]]:
    with propel.db.read() as conn:
        rows = conn.execute(select(scoring_runs).where(
            scoring_runs.c.prediction_id == prediction_id).order_by(
            scoring_runs.c.id.desc()).limit(limit)).all()
    return [{"id": r.id, "started_at": r.started_at.isoformat(),
             "finished_at": r.finished_at.isoformat() if r.finished_at else None,
             "as_of": r.as_of.isoformat(), "model_version": r.model_version, "rows": r.rows,
             "changed": r.changed, "outcome": r.outcome, "error": r.error,
             "summary": orjson.loads(r.summary) if r.summary else None} for r in rows]
