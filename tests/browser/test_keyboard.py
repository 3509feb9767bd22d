"""The Engage flow by keyboard alone, from the prediction's page to a published
campaign: Tab / Shift+Tab to move, Space to tick, Enter to follow and press, Escape to
close the dialog, arrow keys in the channel list."""

from __future__ import annotations

import re
from typing import Any

from playwright.sync_api import expect

from .flows import group_checkbox
from .helpers import PREDICTION, Server, sign_in, token


def focused(locator: Any) -> bool:
    return bool(locator.evaluate("el => el === document.activeElement"))


def tab_to(page: Any, target: Any, back: bool = False, limit: int = 300) -> None:
    """Press Tab (Shift+Tab with ``back``) until ``target`` has the focus."""
    key = "Shift+Tab" if back else "Tab"
    for _ in range(limit):
        if focused(target):
            return
        page.keyboard.press(key)
    active = page.evaluate("() => document.activeElement && document.activeElement.outerHTML")
    raise AssertionError(f"{key} x{limit} never reached {target}; focus is on {active}")


def choose_with_arrows(page: Any, select: Any, value: str) -> None:
    for _ in range(10):
        if select.input_value() == value:
            return
        page.keyboard.press("ArrowDown")
    for _ in range(10):
        if select.input_value() == value:
            return
        page.keyboard.press("ArrowUp")
    assert select.input_value() == value


def test_engage_flow_by_keyboard(page: Any, server: Server) -> None:
    word = token()
    sign_in(page, server, "marketer")
    page.goto(f"/predictions/{server.prediction_id}")
    page.locator("body").focus()

    engage = page.get_by_role("link", name="Engage", exact=True)
    tab_to(page, engage)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Engage: {PREDICTION}")

    high, low = group_checkbox(page, "High"), group_checkbox(page, "Low")
    proceed = page.get_by_role("button", name="Proceed")
    tab_to(page, high)
    page.keyboard.press("Space")
    expect(high).to_be_checked()
    tab_to(page, proceed)
    page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog", name="Create engagement")
    expect(dialog).to_be_visible()
    assert dialog.evaluate("d => d.contains(document.activeElement)"), \
        "the focus did not move into the dialog"
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    assert focused(proceed), "closing the dialog did not return the focus to Proceed"

    tab_to(page, low, back=True)
    page.keyboard.press("Space")
    expect(low).to_be_checked()
    tab_to(page, proceed)
    page.keyboard.press("Enter")
    expect(dialog).to_be_visible()
    channel = dialog.get_by_label("Channel", exact=True)
    tab_to(page, channel)
    choose_with_arrows(page, channel, "inbox")
    tab_to(page, dialog.get_by_role("button", name="Continue"))
    page.keyboard.press("Enter")

    expect(page.get_by_role("heading", level=1)).to_have_text("New campaign")
    assert "groups=High" in page.url and "groups=Low" in page.url, page.url
    assert "channel=inbox" in page.url, page.url
    name = f"Keyboard {word}"
    tab_to(page, page.get_by_label("Campaign name", exact=True))
    page.keyboard.press("Control+a")
    page.keyboard.type(name)
    tab_to(page, page.get_by_label("Title", exact=True))
    page.keyboard.type(f"{word} for {{{{ user.identity }}}}")
    tab_to(page, page.get_by_label("Message", exact=True))
    page.keyboard.type("A message typed by keyboard")
    tab_to(page, page.get_by_role("button", name="Publish", exact=True))
    page.keyboard.press("Enter")

    expect(page).to_have_url(re.compile(r"/campaigns/(?!new$)[^/?#]+$"))
    expect(page.get_by_role("heading", level=1)).to_have_text(name)
    campaign = server.campaign_named(name)
    assert campaign is not None and campaign["status"] != "draft", campaign
    assert campaign["channel"] == "inbox"
