"""Dashboard pages: look up one user — profile, recent events, prediction scores with
their reasons, and the messages they were sent.

The page reads what ``GET /api/v1/users/{identity}`` reads (profile with aliases, lake
events under every identity, current scores) plus the outbox and the app inbox.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response

from propel import profiles
from propel.accounts.users import Session
from propel.api.auth import propel_of
from propel.campaigns.outbox import inbox_of, messages_of
from propel.ingest.records import Invalid, check_identity
from propel.lake.events import recent_events_of
from propel.predictions.properties import score_properties
from propel.predictions.scoring import current_scores
from propel.web.auth import signed_in
from propel.web.templating import render

router = APIRouter(include_in_schema=False)
RECENT_EVENTS = 50
RECENT_MESSAGES = 50
# What a person reads for each outbox state; opens and clicks outrank the state.
STATUS_TEXT = {"sent": "delivered", "sending": "sent", "failed": "failed",
               "in_doubt": "in doubt", "pending_retry": "retrying", "queued": "queued",
               "holdout": "holdout (not sent)", "suppressed": "suppressed"}


@router.get("/users")
def lookup_page(request: Request, identity: str | None = None,
                session: Session = Depends(signed_in())) -> Response:
    """The look-up form; submitting it (a GET) goes to the user's own page."""
    if identity is None:
        return render(request, "users/lookup.html", section="users", identity="")
    if not identity.strip():
        return render(request, "users/lookup.html", status_code=422, section="users",
                      identity=identity, error="Enter an identity to look up.")
    return RedirectResponse("/users/" + quote(identity.strip(), safe=""), status_code=303)


@router.get("/users/{identity:path}")
def user_page(request: Request, identity: str,
              session: Session = Depends(signed_in())) -> Response:
    account_id = session.user.account_id
    found = _load_user(request, account_id, identity)
    if found is None:
        return render(request, "users/lookup.html", status_code=404, section="users",
                      identity=identity, missing=identity)
    return render(request, "users/user.html", section="users", title=found["identity"],
                  **found)


def _load_user(request: Request, account_id: str, identity: str) -> dict[str, Any] | None:
    """Everything the page shows, or None when the account knows no such user."""
    try:
        identity = check_identity(identity)
    except Invalid:
        return None  # blank, too long or with a NUL: no user can have it
    propel = propel_of(request)
    profile = profiles.get_profile(propel.db, account_id, identity)
    identities = [identity] if profile is None else [profile.identity, *profile.aliases]
    canonical = profile.identity if profile else identity
    events = recent_events_of(propel.db, propel.lake, account_id, identities, RECENT_EVENTS)
    scores = current_scores(propel, account_id, canonical)
    sent = messages_of(propel.db, account_id, identities, RECENT_MESSAGES)
    if profile is None and not events and not scores and not sent:
        return None
    inbox = inbox_of(propel.db, account_id, identities, RECENT_MESSAGES)
    properties = dict(profile.properties) if profile else {}
    # prediction groups and scores read like any other profile property, as in the API
    properties.update(score_properties(propel.db, account_id, [canonical]).get(canonical, {}))
    return {"identity": canonical, "looked_up": identity, "profile": profile,
            "fields": _profile_fields(profile),
            "properties": sorted((k, _shown(v)) for k, v in properties.items()),
            "events": [{**e, "shown": _shown(e["properties"]) if e["properties"] else ""}
                       for e in events],
            "scores": [{**s, "reasons": [_reason(r) for r in s["reasons"]]} for s in scores],
            "messages": [{**m, "status": status_of(m)} for m in sent], "inbox": inbox}


def _profile_fields(profile: profiles.Profile | None) -> list[tuple[str, str]]:
    if profile is None:
        return []
    consent = ", ".join(f"{ch}: {'yes' if ok else 'no'}"
                        for ch, ok in sorted(profile.consent.items()))
    return [("Identity", profile.identity), ("E-mail", profile.email or "–"),
            ("Phone", profile.phone or "–"), ("Timezone", profile.timezone or "–"),
            ("Push tokens", str(len(profile.push_tokens))), ("Consent", consent or "–"),
            ("Other identities", ", ".join(profile.aliases) or "–"),
            ("Created", _when(profile.created_at.isoformat())),
            ("Updated", _when(profile.updated_at.isoformat()))]


def status_of(message: dict[str, Any]) -> str:
    """The furthest a message got: clicked, opened, delivered, sent, failed, …"""
    if message["clicked_at"]:
        return "clicked"
    if message["opened_at"]:
        # an app inbox message is opened when the app reports it viewed
        return "opened (viewed)" if message["channel"] == "inbox" else "opened"
    return STATUS_TEXT.get(message["state"], message["state"])


def _reason(reason: Any) -> dict[str, Any]:
    if not isinstance(reason, dict):
        return {"feature": str(reason), "contribution": None, "direction": ""}
    value = reason.get("contribution")
    direction = "" if not isinstance(value, int | float) else (
        "raises" if value > 0 else "lowers" if value < 0 else "no effect")
    return {"feature": str(reason.get("feature", "")), "contribution": value,
            "direction": direction}


def _shown(value: Any) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, default=str)
    return "–" if value is None else str(value)


def _when(iso: str | None) -> str:
    """2026-11-01T10:00:00.123+00:00 → 2026-11-01 10:00:00"""
    return "–" if not iso else iso[:19].replace("T", " ")
