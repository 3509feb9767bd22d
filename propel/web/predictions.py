"""Dashboard pages: predictions."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from propel.accounts.users import Session
from propel.web.auth import signed_in
from propel.web.templating import render

router = APIRouter(include_in_schema=False)


@router.get("/predictions")
def predictions_page(request: Request, session: Session = Depends(signed_in())) -> Response:
    return render(request, "error.html", title="Predictions", message="")
