"""Predictions and their model versions: definitions, artifacts with checksums."""

from __future__ import annotations

import hashlib
import pickle
import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Connection, case, func, insert, select, update

from propel.db.engine import Database
from propel.db.meta import utcnow
from propel.predictions.model import LikelihoodModel
from propel.predictions.spec import PredictionSpec, SpecError
from propel.predictions.tables import model_versions, predictions, user_predictions


class NotFound(LookupError):
    pass


@dataclass(frozen=True)
class Prediction:
    id: str
    account_id: str
    spec: PredictionSpec
    status: str
    current_version: int | None
    last_trained_at: datetime | None
    last_scored_at: datetime | None
    created_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.spec.name, "status": self.status,
            "goal": self.spec.goal_text, "goal_event": self.spec.goal_event,
            "polarity": self.spec.polarity, "window_days": self.spec.window_days,
            "template": self.spec.template, "current_version": self.current_version,
            "last_trained_at": _iso(self.last_trained_at),
            "last_scored_at": _iso(self.last_scored_at),
            "created_at": _iso(self.created_at), "spec": self.spec.as_json(),
        }


@dataclass(frozen=True)
class ModelVersion:
    prediction_id: str
    version: int
    kind: str
    trained_at: datetime
    as_of: datetime
    lake_version: int | None
    seed: int
    features: list[str]
    metrics: dict[str, Any]
    promoted: bool
    reason: str
    artifact_path: str
    artifact_sha256: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version, "kind": self.kind, "trained_at": _iso(self.trained_at),
            "as_of": _iso(self.as_of), "lake_version": self.lake_version, "seed": self.seed,
            "features": self.features, "metrics": self.metrics, "promoted": self.promoted,
            "reason": self.reason, "artifact_sha256": self.artifact_sha256,
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _row_to_prediction(row: Any) -> Prediction:
    spec = PredictionSpec.from_json({
        "name": row.name, "goal_event": row.goal_event, "window_days": row.window_days,
        "polarity": row.polarity, "goal_where": orjson.loads(row.goal_where),
        "goal_absent": bool(row.goal_absent), "audience": orjson.loads(row.audience),
        "score_every_days": row.score_every_days, "retrain_every_days": row.retrain_every_days,
        "groups": orjson.loads(row.groups), "template": row.template,
    })
    return Prediction(row.id, row.account_id, spec, row.status, row.current_version,
                      row.last_trained_at, row.last_scored_at, row.created_at)


def create(db: Database, account_id: str, spec: PredictionSpec) -> Prediction:
    data = spec.as_json()
    pred_id = "pred_" + secrets.token_hex(6)
    now = utcnow()

    def _insert(conn: Connection) -> None:
        clash = conn.execute(select(predictions.c.id).where(
            predictions.c.account_id == account_id, predictions.c.name == spec.name)).first()
        if clash:
            raise SpecError(f"a prediction named {spec.name!r} already exists")
        conn.execute(insert(predictions).values(
            id=pred_id, account_id=account_id, name=spec.name, template=spec.template,
            goal_event=spec.goal_event, goal_where=orjson.dumps(data["goal_where"]).decode(),
            goal_absent=int(spec.goal_absent), polarity=spec.polarity,
            window_days=spec.window_days, audience=orjson.dumps(data["audience"]).decode(),
            score_every_days=spec.score_every_days,
            retrain_every_days=spec.retrain_every_days,
            groups=orjson.dumps(data["groups"]).decode(), status="new",
            created_at=now, updated_at=now))

    db.write(_insert)
    return get(db, account_id, pred_id)


def get(db: Database, account_id: str, id_or_name: str) -> Prediction:
    with db.read() as conn:
        row = conn.execute(select(predictions).where(
            predictions.c.account_id == account_id,
            (predictions.c.id == id_or_name) | (predictions.c.name == id_or_name))).first()
    if row is None:
        raise NotFound(f"no prediction {id_or_name!r} in this account")
    return _row_to_prediction(row)


def get_by_id(db: Database, prediction_id: str) -> Prediction:
    with db.read() as conn:
        row = conn.execute(select(predictions).where(predictions.c.id == prediction_id)).first()
    if row is None:
        raise NotFound(f"no prediction {prediction_id!r}")
    return _row_to_prediction(row)


def list_all(db: Database, account_id: str | None = None) -> list[Prediction]:
    query = select(predictions).order_by(predictions.c.created_at)
    if account_id:
        query = query.where(predictions.c.account_id == account_id)
    with db.read() as conn:
        return [_row_to_prediction(r) for r in conn.execute(query).all()]


def set_state(db: Database, prediction_id: str, **values: Any) -> None:
    db.write(lambda conn: conn.execute(update(predictions).where(
        predictions.c.id == prediction_id).values(updated_at=utcnow(), **values)))


def models_dir(data_dir: Path, prediction_id: str) -> Path:
    path = data_dir / "models" / prediction_id
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_version(db: Database, data_dir: Path, prediction: Prediction, model: LikelihoodModel,
                 *, as_of: datetime, lake_version: int | None, metrics: dict[str, Any],
                 promoted: bool, reason: str) -> ModelVersion:
    blob = pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
    sha = hashlib.sha256(blob).hexdigest()

    def _insert(conn: Connection) -> int:
        version = (conn.execute(select(func.max(model_versions.c.version)).where(
            model_versions.c.prediction_id == prediction.id)).scalar() or 0) + 1
        path = models_dir(data_dir, prediction.id) / f"v{version}-{model.kind}.pkl"
        path.write_bytes(blob)
        conn.execute(insert(model_versions).values(
            prediction_id=prediction.id, version=version, kind=model.kind,
            trained_at=utcnow(), as_of=as_of, lake_version=lake_version, seed=model.seed,
            features=orjson.dumps(model.feature_spec.as_json()).decode(),
            metrics=orjson.dumps(metrics).decode(), promoted=int(promoted), reason=reason,
            artifact_path=str(path), artifact_sha256=sha))
        if promoted:
            conn.execute(update(predictions).where(predictions.c.id == prediction.id).values(
                current_version=version, last_trained_at=utcnow(), updated_at=utcnow(),
                status="trained" if prediction.status in ("new", "failed") else
                prediction.status))
        return version

    version = db.write(_insert)
    return get_version(db, prediction.id, version)


def _row_to_version(row: Any) -> ModelVersion:
    features = orjson.loads(row.features)
    return ModelVersion(row.prediction_id, row.version, row.kind, row.trained_at, row.as_of,
                        row.lake_version, row.seed, _feature_names(features),
                        orjson.loads(row.metrics), bool(row.promoted), row.reason,
                        row.artifact_path, row.artifact_sha256)


def _feature_names(features: dict[str, Any]) -> list[str]:
    from propel.predictions.features import FeatureSpec

    return FeatureSpec.from_json(features).columns()


def get_version(db: Database, prediction_id: str, version: int) -> ModelVersion:
    with db.read() as conn:
        row = conn.execute(select(model_versions).where(
            model_versions.c.prediction_id == prediction_id,
            model_versions.c.version == version)).first()
    if row is None:
        raise NotFound(f"prediction {prediction_id} has no version {version}")
    return _row_to_version(row)


def list_versions(db: Database, prediction_id: str) -> list[ModelVersion]:
    with db.read() as conn:
        rows = conn.execute(select(model_versions).where(
            model_versions.c.prediction_id == prediction_id).order_by(
            model_versions.c.version.desc())).all()
    return [_row_to_version(r) for r in rows]


def score_histogram(db: Database, prediction_id: str, bins: int = 20
                    ) -> list[dict[str, Any]]:
    """Current scores (0-100) counted in ``bins`` equal bins between the lowest and the
    highest score, per likelihood group, counted in the database so a large audience is
    never loaded. Spanning the observed range rather than 0-100 keeps rare goals (all
    scores under 10) readable. Each bin is ``[lower, upper)``, the last includes
    ``upper``; no scores give ``[]``."""
    score = user_predictions.c.score
    mine = user_predictions.c.prediction_id == prediction_id
    with db.read() as conn:
        low, high = conn.execute(select(func.min(score), func.max(score)).where(mine)).one()
        if low is None:
            return []
        low, high = float(low), float(high)
        width = (high - low) / bins or 1.0
        edges = [low + width * i for i in range(bins + 1)]
        bucket = case(*[(score < edges[i], i - 1) for i in range(1, bins)],
                      else_=bins - 1).label("bucket")
        # grouped through a subquery: PostgreSQL would not match a bound CASE in GROUP BY
        inner = select(bucket, user_predictions.c.grp).where(mine).subquery()
        rows = conn.execute(select(inner.c.bucket, inner.c.grp, func.count())
                            .group_by(inner.c.bucket, inner.c.grp)).all()
    out = [{"lower": round(edges[i], 2), "upper": round(edges[i + 1], 2), "count": 0,
            "groups": {}} for i in range(bins)]
    for index, grp, count in rows:
        out[int(index)]["count"] += int(count)
        out[int(index)]["groups"][grp] = int(count)
    return out


class ArtifactError(ValueError):
    """A model artifact is missing or is not the file that was registered."""


def load_model(version: ModelVersion) -> LikelihoodModel:
    """The version's model, after checking the artifact against its recorded SHA-256."""
    # The file's name only: the message reaches API clients, the server's folders not.
    name = Path(version.artifact_path).name
    try:
        blob = Path(version.artifact_path).read_bytes()
    except OSError as exc:
        raise ArtifactError(f"model artifact {name} (version {version.version}) cannot be "
                            f"read: {exc.strerror or type(exc).__name__}; retrain the "
                            "prediction") from None
    if hashlib.sha256(blob).hexdigest() != version.artifact_sha256:
        raise ArtifactError(f"model artifact {name} (version "
                            f"{version.version}) does not match its recorded checksum; "
                            "retrain the prediction")
    # Artifacts are written by Propel itself into its data folder, never uploaded.
    return pickle.loads(blob)  # noqa: S301
