"""Dashboard pages: engage from a prediction (choose likelihood groups, then a channel).

The page is a plain GET form to the campaign builder; "Proceed" opens the channel
dialog in the browser, or, without scripts, reloads this page with the dialog open.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from propel import predictions as preds
from propel.accounts.users import Session
from propel.api.auth import propel_of
from propel.campaigns.engage import GROUPS, STRATEGIES
from propel.predictions.registry import Prediction
from propel.predictions.scoring import group_sizes
from propel.web.auth import signed_in
from propel.web.builder_form import CHANNEL_NAMES
from propel.web.templating import render

router = APIRouter(include_in_schema=False)
NO_GROUP = "Choose at least one group"


def find_prediction(request: Request, session: Session, prediction_id: str) -> Prediction:
    """The session account's prediction, or a 404 page."""
    try:
        if "\x00" in prediction_id or len(prediction_id) > 200:  # never a valid id
            raise preds.NotFound(prediction_id)
        return preds.get(propel_of(request), session.user.account_id, prediction_id)
    except preds.NotFound:
        raise HTTPException(404, f"No prediction {prediction_id!r} in this account.") from None


def group_problem(groups: list[str]) -> str | None:
    if not groups:
        return NO_GROUP
    if any(g not in GROUPS for g in groups) or len(set(groups)) != len(groups):
        return f"Choose among the groups {', '.join(GROUPS)}"
    return None


def render_engage(request: Request, session: Session, prediction: Prediction, *,
                  chosen: list[str] = (), channel: str = "inbox", error: str | None = None,
                  open_dialog: bool = False, status_code: int = 200) -> Response:
    """The engage page; also what the builder answers when no group was chosen."""
    sizes = group_sizes(propel_of(request), prediction.id)
    strategies = STRATEGIES[prediction.spec.polarity]
    groups = [{"name": g, "count": sizes.get(g, 0), "strategy": strategies[g][0],
               "checked": g in chosen} for g in GROUPS]
    return render(request, "engage/engage.html", status_code=status_code,
                  section="predictions", title=f"Engage: {prediction.spec.name}",
                  prediction=prediction, groups=groups, error=error, open_dialog=open_dialog,
                  channels=CHANNEL_NAMES, channel=channel if channel in CHANNEL_NAMES
                  else "inbox", can_create=session.user.can("marketer"))


@router.get("/predictions/{prediction_id}/engage")
def engage_page(request: Request, prediction_id: str, groups: list[str] = Query([]),
                channel: str = "inbox", proceed: str = "",
                session: Session = Depends(signed_in())) -> Response:
    prediction = find_prediction(request, session, prediction_id)
    if not proceed:
        return render_engage(request, session, prediction, chosen=groups, channel=channel)
    problem = group_problem(groups)
    return render_engage(request, session, prediction, chosen=groups, channel=channel,
                         error=problem, open_dialog=problem is None,
                         status_code=422 if problem else 200)
