"""Preview a campaign's content for one chosen user, per variant."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from propel.campaigns.compose import predictions_of
from propel.campaigns.service import Campaign
from propel.core import Propel
from propel.predictions.properties import score_properties
from propel.profiles import resolve
from propel.profiles.tables import profiles


def preview_for(propel: Propel, campaign: Campaign, identity: str) -> dict[str, Any]:
    from propel.campaigns import render

    with propel.db.read() as conn:
        identity = resolve(conn, campaign.account_id, identity)
        profile = conn.execute(select(profiles).where(
            profiles.c.account_id == campaign.account_id,
            profiles.c.identity == identity)).first()
    if profile is None:
        raise LookupError(f"no user {identity!r} in this account")
    scores = score_properties(propel.db, campaign.account_id, [identity]).get(identity, {})
    context = render.build_context(profile, predictions=predictions_of(scores),
                                   campaign_name=campaign.name)
    return {"identity": identity, "variants": {
        v.get("name", "A"): render.render(campaign.channel, v, context)
        for v in campaign.content.get("variants", [])}}
