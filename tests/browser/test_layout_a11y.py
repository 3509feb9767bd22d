"""Every page on a phone (390×844) and a laptop (1366×768): no sideways scrolling, and
no axe-core violation of impact "serious" or "critical"."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from playwright.sync_api import expect

from .helpers import Server, axe_violations, horizontal_overflow, sign_in

VIEWPORTS = {"phone": {"width": 390, "height": 844}, "laptop": {"width": 1366, "height": 768}}


def _demo_campaign(server: Server) -> str:
    return sorted(c["id"] for c in server.campaigns())[0]


def _demo_user(server: Server) -> str:
    return server.members(server.group_rule("Medium"), limit=1)[0]["identity"]


PAGES: dict[str, Callable[[Server], str]] = {
    "login": lambda s: "/login",
    "predictions": lambda s: "/predictions",
    "prediction detail": lambda s: f"/predictions/{s.prediction_id}",
    "engage": lambda s: f"/predictions/{s.prediction_id}/engage",
    "builder": lambda s: (f"/campaigns/new?prediction={s.prediction_id}"
                          "&groups=High&groups=Medium&channel=email"),
    "campaigns": lambda s: "/campaigns",
    "campaign stats": lambda s: f"/campaigns/{_demo_campaign(s)}",
    "users": lambda s: "/users",
    "user detail": lambda s: f"/users/{_demo_user(s)}",
    "settings": lambda s: "/settings",
}


@pytest.fixture(scope="module")
def paths(server: Server) -> dict[str, str]:
    return {name: path(server) for name, path in PAGES.items()}


@pytest.fixture(scope="module")
def admin_cookies(browser: Any, server: Server) -> list[dict[str, Any]]:
    """One sign-in for the whole module (the admin sees every control a page has)."""
    context = browser.new_context(base_url=server.url)
    sign_in(context.new_page(), server, "admin")
    cookies = context.cookies()
    context.close()
    return cookies


@pytest.mark.parametrize("viewport", VIEWPORTS)
@pytest.mark.parametrize("name", PAGES)
def test_page_fits_and_has_no_serious_axe_violations(
        page: Any, paths: dict[str, str], admin_cookies: list[dict[str, Any]], name: str,
        viewport: str) -> None:
    page.set_viewport_size(VIEWPORTS[viewport])
    if name != "login":
        page.context.add_cookies(admin_cookies)
    response = page.goto(paths[name])
    assert response is not None and response.status == 200, \
        f"{name} ({paths[name]}) answered {response.status if response else None}"
    page.wait_for_load_state("networkidle")
    _check(page, f"{name} page ({paths[name]})", viewport)


def _check(page: Any, what: str, viewport: str) -> None:
    problems = []
    if overflow := horizontal_overflow(page):
        problems.append(f"horizontal scrolling at {viewport}: {overflow}")
    if violations := axe_violations(page):
        problems.append("axe-core violations:\n    " + "\n    ".join(violations))
    assert not problems, f"{what} at {viewport}:\n" + "\n".join(problems)


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_settings_with_a_new_key_shown(page: Any, server: Server, viewport: str) -> None:
    """The one-time display of a new API key (a long unbroken token) fits too."""
    page.set_viewport_size(VIEWPORTS[viewport])
    sign_in(page, server, "admin")
    page.goto("/settings")
    page.get_by_label("Key name", exact=True).fill(f"layout {viewport}")
    page.get_by_role("button", name="Create key").click()
    page.wait_for_load_state("networkidle")
    expect(page.get_by_text(re.compile(r"pk_\w+")).first).to_be_visible()
    _check(page, "settings page showing a new key", viewport)


def test_engage_dialog_has_no_serious_axe_violations(page: Any, server: Server) -> None:
    """The open "Create engagement" dialog is part of the page too."""
    sign_in(page, server, "admin")
    page.goto(f"/predictions/{server.prediction_id}/engage")
    page.get_by_role("group", name="Choose likelihood groups").get_by_role(
        "checkbox").first.check()
    page.get_by_role("button", name="Proceed").click()
    dialog = page.get_by_role("dialog")
    dialog.wait_for()
    violations = axe_violations(page)
    assert not violations, "engage page with the dialog open:\n    " + "\n    ".join(violations)


def test_the_checks_catch_what_they_look_for(page: Any, server: Server) -> None:
    """The two checks above can fail: an unlabelled field and a too-wide block on the
    sign-in page are both reported."""
    page.set_viewport_size(VIEWPORTS["phone"])
    page.goto("/login")
    assert horizontal_overflow(page) is None and axe_violations(page) == []
    page.evaluate("""() => {
        const main = document.querySelector('main');
        main.insertAdjacentHTML('beforeend',
            '<input type="text" id="unlabelled"><div style="width: 600px">wide</div>');
    }""")
    assert "scrollWidth" in (horizontal_overflow(page) or "")
    assert any(v.startswith("label (critical)") and "#unlabelled" in v
               for v in axe_violations(page))
