"""The Engage flow's steps, as a user clicks through them (shared by the flow, builder
and role tests)."""

from __future__ import annotations

import re
from typing import Any

from playwright.sync_api import expect

from .helpers import PREDICTION, Server


def open_prediction(page: Any) -> None:
    """Predictions → the prediction's own page."""
    page.goto("/predictions")
    expect(page.get_by_role("heading", level=1)).to_have_text("Predictions")
    expect(page.get_by_role("link", name="Create prediction")).to_have_attribute(
        "href", "/predictions/new")
    page.get_by_role("link", name=PREDICTION, exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_have_text(PREDICTION)


def group_checkbox(page: Any, group: str) -> Any:
    return page.get_by_role("group", name="Choose likelihood groups").get_by_role(
        "checkbox", name=re.compile(rf"^{group}\b"))


def engage_to_builder(page: Any, server: Server, groups: tuple[str, ...], channel: str
                      ) -> None:
    """From the prediction's page: Engage → groups → Proceed → channel → Continue, and
    check the builder opened on what was chosen."""
    page.get_by_role("link", name="Engage", exact=True).click()
    expect(page).to_have_url(re.compile(rf"/predictions/{server.prediction_id}/engage$"))
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Engage: {PREDICTION}")
    sizes = server.prediction(PREDICTION)["groups"]
    for group in ("High", "Medium", "Low"):
        # each label names the group and its size as the prediction's API counts it
        label = f"{sizes[group]:,} users"
        expect(group_checkbox(page, group)).to_have_accessible_name(re.compile(label))
    for group in groups:
        group_checkbox(page, group).check()
    page.get_by_role("button", name="Proceed").click()
    dialog = page.get_by_role("dialog", name="Create engagement")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_role("group", name="Engagement type").get_by_role(
        "radio", name="Campaign")).to_be_checked()
    dialog.get_by_label("Channel", exact=True).select_option(label=channel)
    dialog.get_by_role("button", name="Continue").click()
    expect(page).to_have_url(re.compile(r"/campaigns/new\?"))
    expect(page.get_by_role("heading", level=1)).to_have_text("New campaign")
    for group in groups:
        assert f"groups={group}" in page.url, page.url
    expect(page.get_by_label("Campaign name", exact=True)).to_have_value(re.compile(PREDICTION))
    expect(page.get_by_role("heading", name="Who")).to_be_visible()


def publish(page: Any) -> str:
    """Press Publish; the campaign's stats page opens. Returns the campaign id."""
    page.get_by_role("button", name="Publish", exact=True).click()
    expect(page).to_have_url(re.compile(r"/campaigns/(?!new$)[^/?#]+$"))
    return page.url.rsplit("/", 1)[1]
