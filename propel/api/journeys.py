"""``/api/v1/journeys``: create from JSON, validate, edit (a new version when live),
publish, pause, resume, stop, stats and a user's path."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, Request

from propel import journeys
from propel.api.auth import api_account, propel_of
from propel.api.errors import ApiError

router = APIRouter(prefix="/api/v1/journeys", tags=["Journeys"])

_EXAMPLE = {
    "name": "High intent, no purchase",
    "entry": {"type": "likelihood", "prediction": "Predict Purchase", "to": ["High"]},
    "reentry": {"policy": "after_days", "days": 30},
    "holdout_pct": 0.1,
    "goal": {"event": "Charged", "within_days": 7},
    "steps": [
        {"id": "hello", "type": "send", "channel": "inbox", "next": "wait",
         "content": {"variants": [{"name": "A", "split": 100, "title": "Hi", "body": "…"}]}},
        {"id": "wait", "type": "wait", "duration": {"days": 1}, "next": "bye"},
        {"id": "bye", "type": "exit"},
    ],
}
Definition = Body(..., examples=[_EXAMPLE], description="A journey definition; see "
                  "docs/journeys.md.")


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except journeys.JourneyError as exc:
        raise ApiError(400, "invalid", str(exc), problems=exc.problems) from None
    except LookupError as exc:
        raise ApiError(404, "not_found", str(exc)) from None


@router.post("", status_code=201)
def create(request: Request, definition: dict[str, Any] = Definition,
           account_id: str = Depends(api_account)) -> dict:
    """Save a draft journey; it is validated now (every problem with its path)."""
    return _call(journeys.create, propel_of(request), account_id, definition).as_dict()


@router.post("/validate")
def validate(definition: dict[str, Any] = Definition,
             account_id: str = Depends(api_account)) -> dict:
    """Check a definition without saving it."""
    try:
        return {"valid": True, "definition": journeys.validate(definition), "problems": []}
    except journeys.JourneyError as exc:
        return {"valid": False, "problems": exc.problems}


@router.get("")
def list_(request: Request, account_id: str = Depends(api_account)) -> dict:
    return {"journeys": [j.as_dict() for j in
                         journeys.list_journeys(propel_of(request), account_id)]}


@router.get("/{journey_id}")
def get(request: Request, journey_id: str, account_id: str = Depends(api_account)) -> dict:
    return _call(journeys.get, propel_of(request), account_id, journey_id).as_dict()


@router.put("/{journey_id}")
def update(request: Request, journey_id: str, definition: dict[str, Any] = Definition,
           account_id: str = Depends(api_account)) -> dict:
    """Edit: a draft in place; a live or paused journey gets a new version (users
    already inside finish on theirs)."""
    return _call(journeys.update, propel_of(request), account_id, journey_id,
                 definition).as_dict()


@router.get("/{journey_id}/versions/{version}")
def version(request: Request, journey_id: str, version: int,
            account_id: str = Depends(api_account)) -> dict:
    return {"version": version, "definition": _call(
        journeys.get_version, propel_of(request), account_id, journey_id, version)}


@router.post("/{journey_id}/publish")
def publish(request: Request, journey_id: str, account_id: str = Depends(api_account)) -> dict:
    return _call(journeys.publish, propel_of(request), account_id, journey_id).as_dict()


@router.post("/{journey_id}/pause")
def pause(request: Request, journey_id: str, account_id: str = Depends(api_account)) -> dict:
    return _call(journeys.pause, propel_of(request), account_id, journey_id).as_dict()


@router.post("/{journey_id}/resume")
def resume(request: Request, journey_id: str, account_id: str = Depends(api_account)) -> dict:
    return _call(journeys.resume, propel_of(request), account_id, journey_id).as_dict()


@router.post("/{journey_id}/stop")
def stop(request: Request, journey_id: str, account_id: str = Depends(api_account)) -> dict:
    return _call(journeys.stop, propel_of(request), account_id, journey_id).as_dict()


@router.get("/{journey_id}/stats")
def stats(request: Request, journey_id: str, version: int | None = None,
          account_id: str = Depends(api_account)) -> dict:
    """Per step: entered, waiting, exited, messages; the journey's conversions and the
    intent-to-treat lift over its holdout with a 95 % interval."""
    return _call(journeys.journey_stats, propel_of(request), account_id, journey_id, version)


@router.get("/{journey_id}/users/{identity}")
def user_path(request: Request, journey_id: str, identity: str,
              account_id: str = Depends(api_account)) -> dict:
    """The user's entries and the steps each took, in order."""
    return {"identity": identity, "entries": _call(
        journeys.user_path, propel_of(request), account_id, journey_id, identity)}
