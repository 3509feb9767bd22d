"""``/api/v1/campaigns``, ``/api/v1/audiences`` and engage-from-prediction routes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from propel import predictions as preds
from propel.api.auth import api_account, propel_of
from propel.api.errors import ApiError
from propel.campaigns import service
from propel.campaigns.engage import engage

router = APIRouter(prefix="/api/v1", tags=["Engage"])


class _Strict(BaseModel):
    # An unknown field is a mistake (a typo, or a field that cannot be set here), not
    # something to drop silently: answer 422 naming it.
    model_config = ConfigDict(extra="forbid")


class CampaignIn(_Strict):
    name: str
    channel: str = Field(description="email, webhook, inbox, push or sms")
    audience: dict[str, Any] = Field(description="Rule tree; see propel.audiences.")
    content: dict[str, Any] = Field(description='{"variants": [{"name", "split", ...}]}')
    schedule: dict[str, Any] = {"type": "now"}
    dnd: dict[str, Any] | None = None
    caps: dict[str, Any] | None = None
    rate_per_second: float | None = None
    holdout_pct: float = 0.10
    goal: dict[str, Any] | None = None
    prediction_id: str | None = None


class CampaignPatch(_Strict):
    name: str | None = None
    audience: dict[str, Any] | None = None
    content: dict[str, Any] | None = None
    schedule: dict[str, Any] | None = None
    dnd: dict[str, Any] | None = None
    caps: dict[str, Any] | None = None
    rate_per_second: float | None = None
    holdout_pct: float | None = None
    goal: dict[str, Any] | None = None


class EngageIn(_Strict):
    groups: list[str] = Field(description="Some of High, Medium, Low.")
    channel: str = "email"
    per_group: bool = Field(True, description="One campaign per group, or one for all.")
    holdout_pct: float = 0.10


class AudienceIn(_Strict):
    audience: dict[str, Any]
    limit: int = 20


# PATCH fields that a campaign cannot be without; the others may be null (= remove).
_NOT_NULL = ("name", "audience", "content", "schedule", "holdout_pct")


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except service.CampaignError as exc:
        raise ApiError(400, "invalid", str(exc), **_problems(exc)) from None
    except LookupError as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    except ValueError as exc:  # a value the validation let through: still the client's
        raise ApiError(400, "invalid", str(exc)) from None


def _problems(exc: Exception) -> dict[str, Any]:
    """Every content problem (variant, field, line, reason) when the error is about the
    templates, so an editor can mark each line, not just the first."""
    from propel.campaigns.content_validation import TemplateError

    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, TemplateError):
        return {"problems": cause.problems}
    return {}


def reference_problem(propel: Any, account_id: str, fields: dict[str, Any]) -> str | None:
    """What the service does not check (also used by the CLI): the prediction belongs to
    this account, and the goal's revenue property is a property name (it ends up in the
    attribution query). The problem, or None."""
    goal = fields.get("goal")
    if isinstance(goal, dict) and goal.get("revenue_property") is not None \
            and not isinstance(goal["revenue_property"], str):
        return "goal.revenue_property must be a property name"
    if fields.get("prediction_id") is not None:
        try:
            preds.get(propel, account_id, fields["prediction_id"])
        except preds.NotFound:
            return f"prediction_id: no prediction {fields['prediction_id']!r} in this account"
    return None


def _check_refs(request: Request, account_id: str, fields: dict[str, Any]) -> None:
    problem = reference_problem(propel_of(request), account_id, fields)
    if problem:
        raise ApiError(400, "invalid", problem)


def _with_stats(request: Request, c: service.Campaign) -> dict[str, Any]:
    from propel.campaigns.stats import headline

    out = c.as_dict()
    out["headline"] = headline(propel_of(request).db, c.id)
    return out


@router.post("/campaigns", status_code=201)
def create(request: Request, body: CampaignIn, account_id: str = Depends(api_account)) -> dict:
    """Create a draft campaign; content and audience are validated now, not at send time."""
    fields = body.model_dump()
    _check_refs(request, account_id, fields)
    c = _call(service.create_campaign, propel_of(request), account_id, **fields)
    return c.as_dict()


@router.get("/campaigns")
def list_(request: Request, account_id: str = Depends(api_account)) -> dict:
    return {"campaigns": [_with_stats(request, c)
                          for c in service.list_campaigns(propel_of(request), account_id)]}


@router.get("/campaigns/{campaign_id}")
def get(request: Request, campaign_id: str, account_id: str = Depends(api_account)) -> dict:
    return _with_stats(request, _call(service.get_campaign, propel_of(request), account_id,
                                      campaign_id))


@router.patch("/campaigns/{campaign_id}")
def edit(request: Request, campaign_id: str, body: CampaignPatch,
         account_id: str = Depends(api_account)) -> dict:
    """Edit a draft or a scheduled campaign (timing, content, audience) until it runs."""
    changes = {k: v for k, v in body.model_dump().items() if k in body.model_fields_set}
    for key in _NOT_NULL:
        if key in changes and changes[key] is None:
            raise ApiError(400, "invalid", f"{key} cannot be null")
    _check_refs(request, account_id, changes)
    return _call(service.update_campaign, propel_of(request), account_id, campaign_id,
                 **changes).as_dict()


@router.post("/campaigns/{campaign_id}/publish")
def publish(request: Request, campaign_id: str, account_id: str = Depends(api_account)
            ) -> dict:
    return _call(service.publish, propel_of(request), account_id, campaign_id).as_dict()


@router.post("/campaigns/{campaign_id}/stop")
def stop(request: Request, campaign_id: str, account_id: str = Depends(api_account)) -> dict:
    return _call(service.stop, propel_of(request), account_id, campaign_id).as_dict()


@router.post("/campaigns/{campaign_id}/duplicate", status_code=201)
def duplicate(request: Request, campaign_id: str, account_id: str = Depends(api_account)
              ) -> dict:
    return _call(service.duplicate, propel_of(request), account_id, campaign_id).as_dict()


@router.get("/campaigns/{campaign_id}/stats")
async def stats(request: Request, campaign_id: str, series: str = "daily",
                account_id: str = Depends(api_account)) -> dict:
    """Funnel, per variant and per likelihood group, and intent-to-treat lift over the
    holdout with a 95 % interval."""
    from propel.campaigns.attribution import attribute_conversions
    from propel.campaigns.stats import campaign_stats

    propel = propel_of(request)
    _call(service.get_campaign, propel, account_id, campaign_id)
    if series not in ("daily", "hourly"):
        raise ApiError(400, "invalid", "series must be daily or hourly")
    await run_in_threadpool(attribute_conversions, propel, campaign_id)
    return await run_in_threadpool(campaign_stats, propel.db, campaign_id, series=series)


@router.post("/campaigns/{campaign_id}/preview")
def preview(request: Request, campaign_id: str, identity: str,
            account_id: str = Depends(api_account)) -> dict:
    """The campaign's content rendered for one user, per variant."""
    from propel.campaigns.preview import preview_for

    c = _call(service.get_campaign, propel_of(request), account_id, campaign_id)
    return _call(preview_for, propel_of(request), c, identity)


@router.post("/predictions/{prediction_id}/engage", status_code=201)
def engage_prediction(request: Request, prediction_id: str, body: EngageIn,
                      account_id: str = Depends(api_account)) -> dict:
    """Draft campaigns for the chosen likelihood groups, with a strategy per group."""
    propel = propel_of(request)
    try:
        prediction = preds.get(propel, account_id, prediction_id)
    except preds.NotFound as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    try:
        made = engage(propel, prediction, body.groups, channel=body.channel,
                      per_group=body.per_group, holdout_pct=body.holdout_pct)
    except (ValueError, service.CampaignError) as exc:
        raise ApiError(400, "invalid", str(exc)) from None
    return {"campaigns": [c.as_dict() for c in made]}


@router.get("/predictions/{prediction_id}/engagements")
def engagements(request: Request, prediction_id: str, account_id: str = Depends(api_account)
                ) -> dict:
    """Campaigns (and later journeys) running on this prediction, with headline metrics."""
    propel = propel_of(request)
    try:
        prediction = preds.get(propel, account_id, prediction_id)
    except preds.NotFound as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    return {"campaigns": [_with_stats(request, c) for c in service.list_campaigns(
        propel, account_id, prediction_id=prediction.id)]}


def _audience_call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    from propel import audiences

    try:
        return fn(*args, **kwargs)
    except audiences.AudienceError as exc:
        raise ApiError(400, "invalid", str(exc)) from None


@router.post("/audiences/count")
def audience_count(request: Request, body: AudienceIn, account_id: str = Depends(api_account)
                   ) -> dict:
    from propel import audiences

    return {"count": _audience_call(audiences.count, propel_of(request), account_id,
                                    body.audience)}


@router.post("/audiences/preview")
def audience_preview(request: Request, body: AudienceIn,
                     account_id: str = Depends(api_account)) -> dict:
    from propel import audiences

    limit = max(1, min(body.limit, 200))
    return {"users": _audience_call(audiences.preview, propel_of(request), account_id,
                                    body.audience, limit=limit)}


@router.post("/audiences/export", response_class=PlainTextResponse)
def audience_export(request: Request, body: AudienceIn,
                    account_id: str = Depends(api_account)) -> PlainTextResponse:
    """Members as CSV (identity, email, phone, prediction groups), e.g. for ad retargeting."""
    import tempfile
    from pathlib import Path

    from propel import audiences

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "audience.csv"
        _audience_call(audiences.export_csv, propel_of(request), account_id, body.audience,
                       path)
        return PlainTextResponse(path.read_text(), media_type="text/csv")


@router.get("/audiences/properties")
def audience_properties(request: Request, account_id: str = Depends(api_account)) -> dict:
    from propel import audiences

    return {"properties": audiences.available_properties(propel_of(request), account_id)}
