"""Looking up a user who received one of the demo's messages: their profile, events,
prediction group and score, and the messages with their states."""

from __future__ import annotations

import re
from typing import Any

from playwright.sync_api import expect

from .helpers import PREDICTION, Server, sign_in


def _inbox_recipient(server: Server) -> tuple[str, list[dict[str, Any]]]:
    """A Medium user (the demo writes to the Medium group's app inboxes) who got one."""
    for member in server.members(server.group_rule("Medium")):
        if messages := server.inbox(member["identity"]):
            return member["identity"], messages
    raise AssertionError("no Medium user has a demo inbox message")


def test_user_lookup_shows_profile_events_predictions_and_messages(
        page: Any, server: Server) -> None:
    identity, inbox = _inbox_recipient(server)
    user = server.user(identity)
    demo_inbox = next(c for c in server.campaigns() if c["channel"] == "inbox"
                      and c["prediction_id"] == server.prediction_id)

    sign_in(page, server, "viewer")
    page.goto("/users")
    expect(page.get_by_role("heading", level=1)).to_have_text("Users")
    page.get_by_label("Identity", exact=True).fill(identity)
    page.get_by_role("button", name="Look up").click()
    expect(page).to_have_url(re.compile(rf"/users/{re.escape(identity)}$"))
    main = page.get_by_role("main")
    expect(page.get_by_role("heading", level=1)).to_contain_text(identity)

    profile = user["profile"]
    for field in ("email", "timezone"):
        if profile.get(field):
            expect(main).to_contain_text(profile[field])
    for event in {e["name"] for e in user["events"][:3]}:
        expect(main.get_by_text(event, exact=True).first).to_be_visible()
    score = next(s for s in user["predictions"] if s["prediction"] == PREDICTION)
    predictions = main.locator("section, div.card").filter(
        has=page.get_by_role("heading", name=re.compile("Prediction"))).last
    expect(predictions).to_contain_text(PREDICTION)
    expect(predictions).to_contain_text(score["group"])
    value = float(score["score"])
    shown = rf"\b({value:.1f}|{value:.2f}|{round(value)})\b"  # however it is rounded
    expect(predictions).to_contain_text(re.compile(shown))
    messages = main.locator("section, div.card").filter(
        has=page.get_by_role("heading", name=re.compile("Messages"))).last
    expect(messages).to_contain_text(demo_inbox["name"])
    state = "clicked" if inbox[0]["clicked"] else "viewed" if inbox[0]["viewed"] else "sent"
    expect(messages).to_contain_text(re.compile(state, re.I))
