"""``/api/v1/predictions``: thin adapters over ``propel.predictions``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from propel import predictions as preds
from propel import profiles
from propel.api.auth import api_account, propel_of
from propel.api.errors import ApiError
from propel.predictions import registry, scoring
from propel.predictions.spec import (
    TEMPLATES,
    Audience,
    Condition,
    Groups,
    PredictionSpec,
    SpecError,
    from_template,
)

router = APIRouter(prefix="/api/v1/predictions", tags=["Predictions"])


class ConditionIn(BaseModel):
    property: str
    op: str = Field(description="=, !=, >, >=, <, <=, in, contains, exists")
    value: Any = None


class AudienceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt key must not widen who is scored

    active_within_days: int | None = Field(None, description="Only users active within "
                                           "this many days before the as-of date.")
    new_within_days: int | None = Field(None, description="Only users first seen within "
                                        "this many days (new users).")
    exclude_events: list[str] = Field([], description="Leave out users who did any of "
                                      "these events (an uninstall).")


class PredictionIn(BaseModel):
    name: str | None = Field(None, description="Defaults to the template's name.")
    template: str | None = Field(None, description=f"One of {', '.join(TEMPLATES)}.")
    goal_event: str | None = None
    goal_where: list[ConditionIn] = []
    goal_absent: bool | None = Field(None, description="Goal is NOT doing goal_event (churn).")
    polarity: str | None = Field(None, description="desired or undesired")
    window_days: int | None = None
    audience: AudienceIn | None = None
    score_every_days: int | None = None
    retrain_every_days: int | None = None
    groups: dict[str, Any] | None = Field(
        None, description='{"mode": "percentile", "high": 0.2, "medium": 0.3} or '
        '{"mode": "probability", "high": 0.5, "medium": 0.2}')


class TrainIn(BaseModel):
    as_of: datetime | None = Field(None, description="Train as if today were this date "
                                      "(UTC unless it has an offset).")
    seed: int = 7


class ScoreIn(BaseModel):
    as_of: datetime | None = Field(None, description="Score as of this date (UTC unless "
                                      "it has an offset).")


def _spec(body: PredictionIn) -> PredictionSpec:
    fields: dict[str, Any] = {k: v for k, v in body.model_dump().items()
                              if v is not None and k not in ("template", "goal_where")}
    try:
        if "audience" in fields:
            aud = fields["audience"]
            fields["audience"] = Audience(
                active_within_days=aud["active_within_days"],
                new_within_days=aud["new_within_days"],
                exclude_events=tuple(aud["exclude_events"]))
        if "groups" in fields:
            fields["groups"] = Groups(**fields["groups"])
        if body.goal_where:
            fields["goal_where"] = tuple(Condition(**c.model_dump()) for c in body.goal_where)
        if body.template:
            return from_template(body.template, **fields)
        missing = [f for f in ("name", "goal_event", "window_days") if f not in fields]
        if missing:
            raise SpecError(f"give a template or {', '.join(missing)}")
        return PredictionSpec(**fields)
    except (SpecError, TypeError) as exc:
        raise ApiError(400, "invalid", str(exc)) from None


def _unreadable(exc: registry.ArtifactError) -> ApiError:
    # the current model cannot be used until a retraining replaces it: a state to fix,
    # not a server fault
    return ApiError(409, "model_unreadable", str(exc))


def _find(request: Request, account_id: str, prediction_id: str) -> registry.Prediction:
    try:
        return preds.get(propel_of(request), account_id, prediction_id)
    except registry.NotFound as exc:
        raise ApiError(404, "not_found", str(exc)) from None


def _summary(request: Request, p: registry.Prediction) -> dict[str, Any]:
    propel = propel_of(request)
    out = p.as_dict()
    out["groups"] = scoring.group_sizes(propel, p.id)
    schedules = {s.name: s for s in preds.schedules.list_schedules(propel.db)}
    train = schedules.get(f"predictions.train:{p.id}")
    score = schedules.get(f"predictions.score:{p.id}")
    out["next_retrain_at"] = train.next_run_at.isoformat() if train else None
    out["next_score_at"] = score.next_run_at.isoformat() if score else None
    return out


@router.post("", status_code=201)
def create(request: Request, body: PredictionIn, account_id: str = Depends(api_account)
           ) -> dict:
    """Create a prediction from a template or a custom goal; it then trains and scores
    on its schedules (or call /train and /score)."""
    try:
        prediction = preds.create_prediction(propel_of(request), account_id, _spec(body))
    except SpecError as exc:
        raise ApiError(409 if "already exists" in str(exc) else 400, "invalid", str(exc)
                       ) from None
    return _summary(request, prediction)


@router.get("")
def list_predictions(request: Request, account_id: str = Depends(api_account)) -> dict:
    return {"predictions": [_summary(request, p) for p in
                            registry.list_all(propel_of(request).db, account_id)]}


@router.get("/{prediction_id}")
def get_prediction(request: Request, prediction_id: str,
                   account_id: str = Depends(api_account)) -> dict:
    """The prediction with its current model's quality report and its versions."""
    p = _find(request, account_id, prediction_id)
    db = propel_of(request).db
    out = _summary(request, p)
    versions = registry.list_versions(db, p.id)
    current = next((v for v in versions if v.version == p.current_version), None)
    out["quality"] = current.metrics if current else None
    out["versions"] = [{k: v for k, v in ver.as_dict().items() if k != "metrics"}
                       for ver in versions]
    out["scoring_runs"] = scoring.list_runs(propel_of(request), p.id, limit=10)
    return out


@router.post("/{prediction_id}/train")
async def train(request: Request, prediction_id: str, body: TrainIn | None = None,
                account_id: str = Depends(api_account)) -> dict:
    """Train now (synchronously) and apply the promotion rule."""
    p = _find(request, account_id, prediction_id)
    body = body or TrainIn()
    try:
        result = await run_in_threadpool(
            preds.train_prediction, propel_of(request), p, as_of=body.as_of, seed=body.seed)
    except preds.NotEnoughData as exc:
        raise ApiError(422, "not_enough_data", str(exc)) from None
    except preds.AlreadyRunning as exc:
        raise ApiError(409, "already_running", str(exc)) from None
    except registry.ArtifactError as exc:
        raise _unreadable(exc) from None
    return {"version": result.version.as_dict(), "promoted": result.promoted,
            "reason": result.reason}


@router.post("/{prediction_id}/score")
async def score(request: Request, prediction_id: str, body: ScoreIn | None = None,
                account_id: str = Depends(api_account)) -> dict:
    p = _find(request, account_id, prediction_id)
    as_of = (body.as_of if body and body.as_of else datetime.now(UTC))
    try:
        result = await run_in_threadpool(preds.score_prediction, propel_of(request), p,
                                         as_of=as_of)
    except preds.NotTrained as exc:
        raise ApiError(409, "not_trained", str(exc)) from None
    except preds.NotEnoughData as exc:
        raise ApiError(422, "not_enough_data", str(exc)) from None
    except preds.AlreadyRunning as exc:
        raise ApiError(409, "already_running", str(exc)) from None
    except registry.ArtifactError as exc:
        raise _unreadable(exc) from None
    return {"run_id": result.run_id, "rows": result.rows, "changed": result.changed,
            "groups": result.group_sizes, "expected_rates": result.expected_rates,
            "model_version": result.model_version}


@router.get("/{prediction_id}/groups")
def groups(request: Request, prediction_id: str, account_id: str = Depends(api_account)
           ) -> dict:
    p = _find(request, account_id, prediction_id)
    # a failed run (an empty audience, say) leaves the scores of the last good one
    ok = next((r for r in scoring.list_runs(propel_of(request), p.id)
               if r["outcome"] == "ok"), None)
    rates = (ok["summary"] or {}).get("expected_rates") if ok else None
    return {"prediction": p.spec.name, "groups": scoring.group_sizes(propel_of(request), p.id),
            "expected_rates": rates}


@router.get("/{prediction_id}/users/{identity}")
def user_score(request: Request, prediction_id: str, identity: str,
               account_id: str = Depends(api_account)) -> dict:
    """One user's score, group and top reasons."""
    p = _find(request, account_id, prediction_id)
    propel = propel_of(request)
    # scores are kept under the identity an alias (say an anonymous id) now points to
    with propel.db.read() as conn:
        canonical = profiles.resolve(conn, account_id, identity)
    for s in scoring.current_scores(propel, account_id, canonical):
        if s["prediction_id"] == p.id:
            return s
    raise ApiError(404, "not_found", f"{identity!r} has no score in {p.spec.name!r}")


@router.get("/{prediction_id}/backtest")
def backtest(request: Request, prediction_id: str,
             as_of: datetime = Query(..., description="Score as of this date (UTC "
                                        "unless it has an offset), compare with the window "
                                        "after it."),
             account_id: str = Depends(api_account)) -> dict:
    p = _find(request, account_id, prediction_id)
    try:
        return preds.backtest(propel_of(request), account_id, p.id, as_of)
    except (preds.NotTrained, preds.NotEnoughData) as exc:
        raise ApiError(409, "unavailable", str(exc)) from None
    except registry.ArtifactError as exc:
        raise _unreadable(exc) from None
