"""A journey from a prediction, in the browser: Engage → Journey → a first message →
wait until ``Charged`` or 2 days → branch → a reminder; validate and publish, then
drive ``Charged`` events through the API and watch users move on the journey's page
(the live server runs the journey engine every few seconds)."""

from __future__ import annotations

import re
import time
from typing import Any

from playwright.sync_api import expect

from .flows import group_checkbox, open_prediction
from .helpers import (
    PREDICTION,
    Server,
    axe_violations,
    horizontal_overflow,
    number,
    sign_in,
    token,
)

TIMEOUT = 120  # seconds for the engine (a pass every 5 s) and delivery to catch up


def card(page: Any, index: int) -> Any:
    return page.locator(f"#s{index}")


def field(scope: Any, label: str) -> Any:
    """The visible control labelled ``label`` (a card holds every step type's fields and
    shows those of the chosen type)."""
    return scope.get_by_label(label, exact=True).filter(visible=True)


def add_step(page: Any) -> int:
    before = page.locator("li.step").count()
    page.get_by_role("button", name="Add step", exact=True).click()
    expect(page.locator("li.step")).to_have_count(before + 1)
    # focus moves to the new step's type
    expect(page.locator(f"#s{before}-type")).to_be_focused()
    return before


def step_number(page: Any, step: str, metric: str) -> int:
    cell = page.locator(f'[data-step="{step}"] [data-metric="{metric}"]')
    return number(cell.inner_text()) if cell.count() else 0


def wait_for_number(page: Any, step: str, metric: str, minimum: int,
                    timeout: float = TIMEOUT) -> int:
    """Reload the journey's page until the step's number reaches ``minimum``."""
    deadline = time.monotonic() + timeout
    seen = step_number(page, step, metric)
    while seen < minimum and time.monotonic() < deadline:
        time.sleep(1)
        page.reload()
        seen = step_number(page, step, metric)
    assert seen >= minimum, f"{step} {metric} stayed at {seen} for {timeout}s"
    return seen


def engage_to_journey_editor(page: Any, server: Server) -> None:
    page.get_by_role("link", name="Engage", exact=True).click()
    group_checkbox(page, "High").check()
    page.get_by_role("button", name="Proceed").click()
    dialog = page.get_by_role("dialog", name="Create engagement")
    expect(dialog).to_be_visible()
    kinds = dialog.get_by_role("group", name="Engagement type")
    expect(kinds.get_by_role("radio", name="Campaign")).to_be_checked()
    kinds.get_by_role("radio", name="Journey").check()
    dialog.get_by_label("Channel", exact=True).select_option(label="App Inbox")
    dialog.get_by_role("button", name="Continue").click()
    expect(page).to_have_url(re.compile(r"/journeys/new\?"))
    assert page.url.endswith(f"/journeys/new?prediction={server.prediction_id}"
                             "&groups=High&channel=inbox"), page.url
    expect(page.get_by_role("heading", level=1)).to_have_text("New journey")


def build(page: Any, word: str) -> None:
    """First message → wait until Charged (or 2 days) → still High? → reminder."""
    page.get_by_label("Journey name", exact=True).fill(f"Journey {word}")
    expect(page.get_by_label("Who enters", exact=True)).to_have_value("prediction_groups")
    entry = page.get_by_role("group", name="Likelihood groups that enter")
    expect(entry.get_by_role("checkbox", name="High")).to_be_checked()
    page.get_by_label("Goal event", exact=True).fill("Subscribed")
    first = card(page, 0)
    expect(field(first, "Channel")).to_have_value("inbox")
    field(first, "Title").fill(f"Hi {word}")

    wait = add_step(page)
    field(card(page, wait), "Step name").fill("wait_charged")
    field(card(page, wait), "Type").select_option(label="Wait until an event")
    field(card(page, wait), "Wait for event").fill("Charged")
    expect(field(card(page, wait), "At most (days)")).to_have_value("2")

    branch = add_step(page)
    field(card(page, branch), "Step name").fill("still_high")
    field(card(page, branch), "Type").select_option(label="Branch (yes / no)")
    field(card(page, branch), "Condition on").select_option(label="Prediction group")
    field(card(page, branch), "Prediction").select_option(label=PREDICTION)
    expect(card(page, branch).get_by_role("group", name="Is in the group").get_by_role(
        "checkbox", name="High")).to_be_checked()

    reminder = add_step(page)
    field(card(page, reminder), "Step name").fill("reminder")
    field(card(page, reminder), "Type").select_option(label="Send a message")
    field(card(page, reminder), "Title").fill(f"Reminder {word}")
    field(card(page, reminder), "Message").fill("Your picks are still waiting.")

    # connect: the first step was connected to the new one when it was added
    expect(field(card(page, 0), "Then go to")).to_have_value("wait_charged")
    field(card(page, wait), "When the event comes, go to").select_option("still_high")
    field(card(page, wait), "When the time is up, go to").select_option("still_high")
    field(card(page, branch), "If yes, go to").select_option("reminder")
    expect(field(card(page, branch), "If no, go to")).to_have_value("")


def test_journey_from_a_prediction_moves_users_along(page: Any, server: Server) -> None:
    word = token()
    sign_in(page, server, "marketer")
    open_prediction(page)
    engage_to_journey_editor(page, server)
    build(page, word)

    # a broken connection is refused next to its step, and nothing is saved
    field(card(page, 3), "Then go to").select_option("still_high")
    page.get_by_role("button", name="Validate", exact=True).click()
    expect(page.get_by_role("alert")).to_contain_text("cycle without a wait")
    expect(card(page, 2).locator(".step-errors")).to_contain_text("cycle without a wait")
    field(card(page, 3), "Then go to").select_option("")
    page.get_by_role("button", name="Validate", exact=True).click()
    expect(page.get_by_role("status")).to_contain_text("The journey is valid")
    assert not [j for j in server.api("GET", "/api/v1/journeys")["journeys"]
                if j["name"] == f"Journey {word}"]

    page.get_by_role("button", name="Publish", exact=True).click()
    expect(page).to_have_url(re.compile(r"/journeys/jrn_[0-9a-f]+$"))
    journey_id = page.url.rsplit("/", 1)[1]
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Journey {word}")
    expect(page.locator("#journey-status")).to_have_text("Live")

    # users enter (the High group, less the holdout) and wait for Charged
    high = [u["identity"] for u in server.members(server.group_rule("High"))]
    wait_for_number(page, "wait_charged", "waiting", 1)
    paths = {i: server.api("GET", f"/api/v1/journeys/{journey_id}/users/{i}")["entries"]
             for i in high[:40]}
    waiting = [i for i, entries in paths.items()
               if entries and not entries[0]["holdout"] and entries[0]["step"] == "wait_charged"]
    assert len(waiting) >= 3, paths
    identity, _ = server.wait_for_inbox(waiting, f"Hi {word}")
    assert identity in waiting
    before = step_number(page, "wait_charged", "waiting")

    buyers = waiting[:3]
    sent = server.api("POST", "/api/v1/events", json={"events": [
        {"identity": i, "name": "Charged", "properties": {"amount": 20},
         "message_id": f"{word}-{i}"} for i in buyers]})
    assert sent["accepted"] == 3, sent

    wait_for_number(page, "reminder", "entered", 3)
    wait_for_number(page, "still_high", "entered", 3)
    assert step_number(page, "wait_charged", "waiting") <= before - 3
    identity, message = server.wait_for_inbox(buyers, f"Reminder {word}")
    assert message["body"] == "Your picks are still waiting."

    # the user's path through the journey, from the journey's page
    page.get_by_label("Identity", exact=True).fill(identity)
    page.get_by_role("button", name="Show path", exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Path of {identity}")
    steps = page.get_by_role("table", name=re.compile("Steps taken")).get_by_role("rowheader")
    expect(steps).to_have_text(["first_message", "wait_charged", "still_high", "reminder"])

    # and the journey is listed among the prediction's engagements
    open_prediction(page)
    engagements = page.get_by_role("table", name="Journeys on this prediction")
    expect(engagements.get_by_role("link", name=f"Journey {word}")).to_be_visible()


def test_journey_pages_fit_a_phone_and_pass_axe(browser: Any, server: Server) -> None:
    word = token()
    made = server.api("POST", "/api/v1/journeys", json={
        "name": f"Phone {word}", "holdout_pct": 0.1, "goal": {"event": "Charged"},
        "entry": {"type": "prediction_groups", "prediction": PREDICTION, "groups": ["Low"]},
        "steps": [
            {"id": "hello", "type": "send", "channel": "inbox", "next": "split",
             "content": {"variants": [{"name": "A", "split": 100, "title": "Hi",
                                       "body": "b"}]}},
            {"id": "split", "type": "split", "paths": [{"percent": 50, "next": "bye"},
                                                       {"percent": 50, "next": None}]},
            {"id": "bye", "type": "exit"}]})
    context = browser.new_context(base_url=server.url, viewport={"width": 390, "height": 844},
                                  bypass_csp=True)
    context.set_default_timeout(15_000)
    page = context.new_page()
    try:
        sign_in(page, server, "marketer")
        for path in ("/journeys", f"/journeys/{made['id']}", f"/journeys/{made['id']}/edit",
                     f"/journeys/new?prediction={server.prediction_id}&groups=High",
                     f"/journeys/{made['id']}/path?identity=nobody"):
            page.goto(path)
            assert horizontal_overflow(page) is None, (path, horizontal_overflow(page))
            assert axe_violations(page) == [], (path, axe_violations(page))
        # the editor with its problems shown: still readable on a phone
        page.goto(f"/journeys/{made['id']}/edit")
        field(card(page, 0), "Title").fill("Hi {{ user.first_name ")
        page.get_by_role("button", name="Validate", exact=True).click()
        expect(page.get_by_role("alert")).to_contain_text("steps[0].content")
        assert horizontal_overflow(page) is None, horizontal_overflow(page)
        assert axe_violations(page) == [], axe_violations(page)
    finally:
        context.close()
