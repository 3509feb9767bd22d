"""Engage from a prediction: draft campaigns for chosen likelihood groups, pre-filled
with a strategy per group that follows the prediction's polarity."""

from __future__ import annotations

from typing import Any

from propel.campaigns.service import Campaign, create_campaign
from propel.core import Propel
from propel.predictions.registry import Prediction

GROUPS = ("High", "Medium", "Low")

# (strategy, subject/title, body) per polarity and group.
STRATEGIES: dict[str, dict[str, tuple[str, str, str]]] = {
    "desired": {
        "High": ("Timely offer or reminder",
                 "{{ user.first_name | default('Hi') }}, your picks are waiting",
                 "Come back and finish what you started — it's all still here."),
        "Medium": ("Incentive or follow-up",
                   "A little something to help you decide",
                   "Here is 10% off your next order, just for you."),
        "Low": ("Re-engagement reward",
                "We miss you — here's a welcome-back reward",
                "Come back this week and enjoy a reward on us."),
    },
    "undesired": {
        "High": ("Retention offer",
                 "Before you go: an offer for you",
                 "We'd love you to stay — here's an exclusive offer."),
        "Medium": ("Value reminder",
                   "What you get with us",
                   "A quick reminder of everything you can do with the app."),
        "Low": ("Loyalty or referral",
                "Thanks for being with us — invite a friend",
                "Share the app with a friend and you both get a reward."),
    },
}


def default_content(channel: str, subject: str, body: str) -> dict[str, Any]:
    if channel == "email":
        variant = {"name": "A", "split": 100, "subject": subject,
                   "html": f"<p>{body}</p>", "text": body}
    elif channel == "sms":
        variant = {"name": "A", "split": 100, "body": body}
    else:
        variant = {"name": "A", "split": 100, "title": subject, "body": body}
    return {"variants": [variant]}


def draft_fields(prediction: Prediction, groups: list[str], *, channel: str,
                 name: str | None = None, holdout_pct: float = 0.10) -> dict[str, Any]:
    """The fields of one draft campaign for ``groups`` (audience, content, goal and
    strategy), not saved: what :func:`engage` creates, and what an editor starts from."""
    chosen = [g for g in GROUPS if g in groups]
    if not chosen or len(chosen) != len(set(groups)):
        raise ValueError(f"groups must be some of {', '.join(GROUPS)}")
    spec = prediction.spec
    goal = ({"event": spec.goal_event, "where": [vars(c) for c in spec.goal_where],
             "window_hours": spec.window_days * 24}
            if spec.polarity == "desired" and not spec.goal_absent else None)
    strategy, subject, body = STRATEGIES[spec.polarity][chosen[0]]
    if len(chosen) > 1:
        strategy = "; ".join(f"{g}: {STRATEGIES[spec.polarity][g][0]}" for g in chosen)
    return {"name": name or f"{spec.name} — {'/'.join(chosen)}", "channel": channel,
            "audience": {"property": spec.name, "op": "in", "value": chosen},
            "content": default_content(channel, subject, body), "holdout_pct": holdout_pct,
            "goal": goal, "prediction_id": prediction.id, "strategy": strategy}


def engage(propel: Propel, prediction: Prediction, groups: list[str], *, channel: str,
           per_group: bool = True, name: str | None = None,
           holdout_pct: float = 0.10) -> list[Campaign]:
    """Draft campaigns for ``groups`` (one per group, or one for all)."""
    chosen = [g for g in GROUPS if g in groups]
    if not chosen or len(chosen) != len(set(groups)):
        raise ValueError(f"groups must be some of {', '.join(GROUPS)}")
    batches = [[g] for g in chosen] if per_group else [chosen]
    return [create_campaign(propel, prediction.account_id, **draft_fields(
        prediction, batch, channel=channel, name=name, holdout_pct=holdout_pct))
        for batch in batches]
