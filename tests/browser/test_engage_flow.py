"""The Engage flow end to end, twice, as the product page describes it: from a
prediction's groups to a published campaign whose messages arrive (app inbox, then
e-mail) and whose stats page counts the sends."""

from __future__ import annotations

from typing import Any

from playwright.sync_api import expect

from .flows import engage_to_builder, group_checkbox, open_prediction, publish
from .helpers import Server, funnel, sign_in, token, wait_for_funnel

GROUP_TAG = '{{ predictions["Predict Conversions"].group | default("") }}'


def _check_stats(page: Any, name: str) -> None:
    expect(page.get_by_role("heading", level=1)).to_have_text(name)
    sent = wait_for_funnel(page, "Sent")
    assert funnel(page, "Targeted") >= sent > 0


def test_engage_medium_and_low_by_app_inbox(page: Any, server: Server) -> None:
    word = token()
    groups = ("Medium", "Low")
    sign_in(page, server, "marketer")
    open_prediction(page)
    engage_to_builder(page, server, groups, "App Inbox")
    name = f"Inbox {word}"
    page.get_by_label("Campaign name", exact=True).fill(name)
    page.get_by_label("Title", exact=True).fill(f"Hi {{{{ user.identity }}}} {word}")
    page.get_by_label("Message", exact=True).fill(f"You are in {GROUP_TAG}")
    campaign_id = publish(page)
    _check_stats(page, name)

    members = {g: [u["identity"] for u in server.members(server.group_rule(g))]
               for g in groups}
    everyone = [i for g in groups for i in members[g]]
    identity, message = server.wait_for_inbox(everyone, word)
    group = next(g for g in groups if identity in members[g])
    assert message["title"] == f"Hi {identity} {word}"
    assert message["body"] == f"You are in {group}"
    assert server.campaign_named(name)["id"] == campaign_id

    # the campaign is listed where the product says: the prediction's Engagements and
    # the Campaigns page
    page.goto(f"/predictions/{server.prediction_id}")
    engagements = page.get_by_role("region", name="Engagements")
    expect(engagements.get_by_role("link", name=name)).to_have_attribute(
        "href", f"/campaigns/{campaign_id}")
    page.goto("/campaigns")
    expect(page.get_by_role("heading", level=1)).to_have_text("Campaigns")
    expect(page.get_by_role("table").get_by_role("link", name=name)).to_have_attribute(
        "href", f"/campaigns/{campaign_id}")


def test_engage_high_by_email(page: Any, server: Server) -> None:
    word = token()
    sign_in(page, server, "marketer")
    open_prediction(page)
    engage_to_builder(page, server, ("High",), "Email")
    name = f"Email {word}"
    page.get_by_label("Campaign name", exact=True).fill(name)
    page.get_by_label("Subject", exact=True).fill(f"{word}: an offer for {{{{ user.identity }}}}")
    page.get_by_label("HTML body", exact=True).fill(f"<p>You are in {GROUP_TAG}.</p>")
    page.get_by_label("Text body", exact=True).fill(f"You are in {GROUP_TAG}.")
    publish(page)
    _check_stats(page, name)

    high = {u["identity"]: u["email"] for u in server.members(server.group_rule("High"))}
    by_email = {e.lower(): i for i, e in high.items() if e}
    mails = server.wait_for_mails(word)
    assert 0 < len(mails) <= len(by_email)
    for mail in mails:
        (recipient,) = mail.rcpt_tos
        identity = by_email[recipient.lower()]  # only the High group is written to
        assert str(mail.message["Subject"]) == f"{word}: an offer for {identity}"
        text = mail.message.get_body(("plain",)).get_content()
        assert "You are in High." in text and "{{" not in text
    page.reload()
    assert funnel(page, "Sent") >= len(mails)


def test_proceed_without_a_group_asks_for_one(page: Any, server: Server) -> None:
    sign_in(page, server, "marketer")
    open_prediction(page)
    page.get_by_role("link", name="Engage", exact=True).click()
    for group in ("High", "Medium", "Low"):
        group_checkbox(page, group).uncheck()
    page.get_by_role("button", name="Proceed").click()
    expect(page.get_by_text("Choose at least one group")).to_be_visible()
    expect(page.get_by_role("dialog")).to_be_hidden()
    assert "/campaigns/new" not in page.url
