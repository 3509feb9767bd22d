"""Compose one outbound message: the variant's content rendered for the user as they
are at send time, plus tracking and unsubscribe links for e-mail."""

from __future__ import annotations

from typing import Any

import orjson

from propel.channels.base import Outbound
from propel.core import Propel
from propel.predictions.properties import score_properties


def predictions_of(scores: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``score_properties`` output ({name: group, "name score": score}) as templates see
    it: {name: {"group", "score"}}."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in scores.items():
        if key.endswith(" score"):
            out.setdefault(key[: -len(" score")], {})["score"] = value
        else:
            out.setdefault(key, {})["group"] = value
    return out


def _address(channel: str, profile: Any) -> str | None:
    if profile is None:
        return None
    if channel == "email":
        return profile.email
    if channel == "sms":
        return profile.phone
    if channel == "push":
        tokens = orjson.loads(profile.push_tokens)
        return tokens[-1] if tokens else None
    return None


def compose(propel: Propel, claimed: Any, scores: dict[str, Any] | None = None) -> Outbound:
    """``scores``: the user's score properties when the caller fetched them for a batch."""
    from propel.campaigns import render, tracking

    campaign = claimed.campaign
    if scores is None:
        scores = score_properties(propel.db, campaign.account_id, [claimed.identity]).get(
            claimed.identity, {})
    base = propel.settings.public_url
    secret = propel.settings.resolved_secret_key()
    unsubscribe = tracking.unsubscribe_url(base, claimed.key, secret)
    context = render.build_context(
        claimed.profile, predictions=predictions_of(scores), campaign_name=campaign.name,
        unsubscribe_url=unsubscribe)
    variants = campaign.content.get("variants", [])
    variant = next((v for v in variants if v.get("name") == claimed.variant), variants[0])
    fields = render.render(campaign.channel, variant, context)
    out = Outbound(key=claimed.key, account_id=campaign.account_id, campaign_id=campaign.id,
                   identity=claimed.identity, to=_address(campaign.channel, claimed.profile),
                   subject=fields.get("subject", ""), html=fields.get("html", ""),
                   text=fields.get("text", ""), title=fields.get("title", ""),
                   body=fields.get("body", ""), url=fields.get("url") or None,
                   data=fields.get("data") or {})
    if campaign.channel == "email":
        out.html = tracking.rewrite_links(out.html, base, claimed.key, secret) + (
            f'<img src="{tracking.tracking_pixel_url(base, claimed.key, secret)}" '
            'width="1" height="1" alt="">')
        out.headers.update(tracking.list_unsubscribe_headers(unsubscribe))
    return out
