"""The builder's Who and What: a condition on a prediction's group, chosen through the
"User properties" list, with a live count that matches the JSON API, and a preview
rendered for one chosen user."""

from __future__ import annotations

import re
from typing import Any

from playwright.sync_api import expect

from .helpers import PREDICTION, Server, number, sign_in, token


def test_who_targets_low_group_with_a_live_count(page: Any, server: Server) -> None:
    rule = {"property": PREDICTION, "op": "=", "value": "Low"}
    expected = server.audience_count(rule)
    low = server.prediction(PREDICTION)["groups"]["Low"]
    assert expected == low > 0  # the API's own two counts agree

    sign_in(page, server, "marketer")
    page.goto("/campaigns/new?channel=inbox")
    expect(page.get_by_role("heading", level=1)).to_have_text("New campaign")
    who = page.get_by_role("region", name="Who")
    count = page.locator("output#audience-count")
    everyone = server.audience_count({"and": []})
    expect(count).to_contain_text(f"{everyone:,} user")

    who.get_by_role("button", name="Add condition").click()
    prop = who.get_by_label("Property", exact=True)
    expect(prop).to_have_count(1)
    option = prop.locator("optgroup[label='User properties'] option",
                          has_text=f"{PREDICTION} (group)")
    expect(option).to_have_count(1)
    prop.select_option(label=f"{PREDICTION} (group)")
    who.get_by_label("Operator", exact=True).select_option(label="equals")
    who.get_by_label("Value", exact=True).fill("Low")
    who.get_by_label("Value", exact=True).press("Tab")
    expect(count).to_contain_text(re.compile(rf"\b{expected:,} users?\b"))
    assert number(count.inner_text()) == expected


def test_preview_renders_for_a_chosen_user(page: Any, server: Server) -> None:
    word = token()
    member = server.members({"property": PREDICTION, "op": "=", "value": "Low"}, limit=1)[0]
    identity = member["identity"]
    sign_in(page, server, "marketer")
    page.goto(f"/campaigns/new?prediction={server.prediction_id}&groups=Low&channel=inbox")
    expect(page.locator("output#audience-count")).to_contain_text(
        f"{server.prediction(PREDICTION)['groups']['Low']:,} user")
    page.get_by_label("Title", exact=True).fill(f"{word} for {{{{ user.identity }}}}")
    page.get_by_label("Message", exact=True).fill(
        'Group {{ predictions["Predict Conversions"].group | default("") }}, '
        '{{ user.first_name | default("there") }}')
    page.get_by_label("Preview as user", exact=True).fill(identity)
    page.get_by_role("button", name="Preview", exact=True).click()
    preview = page.locator("#preview")
    expect(preview).to_contain_text(f"{word} for {identity}")
    expect(preview).to_contain_text("Group Low, ")
    assert "{{" not in preview.inner_text()
