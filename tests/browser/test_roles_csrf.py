"""Roles and CSRF in the browser: a viewer has no way to publish and is refused when
forcing it; a state-changing request without the right token is refused."""

from __future__ import annotations

import re
from typing import Any

from playwright.sync_api import expect

from .helpers import Server, csrf_token, sign_in, token


def _builder(server: Server) -> str:
    return f"/campaigns/new?prediction={server.prediction_id}&groups=High&channel=inbox"


def _builder_form(name: str, csrf: str, action: str) -> dict[str, str]:
    return {"csrf_token": csrf, "name": name, "channel": "inbox", "a:r:kind": "group",
            "a:r:join": "and", "variant_count": "1", "v0:name": "A", "v0:split": "100",
            "v0:title": "Hello", "v0:body": "Hi", "when": "now", "holdout": "10",
            "action": action}


def test_viewer_cannot_publish(page: Any, server: Server) -> None:
    demo = next(c for c in server.campaigns() if c["status"] in ("running", "completed"))
    sign_in(page, server, "viewer")
    page.goto(_builder(server))
    publish = page.get_by_role("button", name="Publish", exact=True)
    if publish.count():
        expect(publish).to_be_disabled()
    page.goto(f"/campaigns/{demo['id']}")
    expect(page.get_by_role("heading", level=1)).to_have_text(demo["name"])
    for control in ("Stop", "Duplicate"):
        expect(page.get_by_role("button", name=control, exact=True)).to_have_count(0)
    expect(page.get_by_role("link", name="Edit", exact=True)).to_have_count(0)

    # Forcing it with the viewer's own valid token: refused, nothing created or changed.
    name = f"Forced {token()}"
    csrf = csrf_token(page)
    r = page.request.post("/campaigns/new", form=_builder_form(name, csrf, "publish"),
                          max_redirects=0)
    assert r.status == 403, f"viewer publish: {r.status}"
    assert server.campaign_named(name) is None
    for action in ("stop", "duplicate"):
        r = page.request.post(f"/campaigns/{demo['id']}/{action}", form={"csrf_token": csrf},
                              max_redirects=0)
        assert r.status == 403, f"viewer {action}: {r.status}"
    assert server.campaign_named(demo["name"])["status"] == demo["status"]


def test_post_without_the_token_is_refused(page: Any, server: Server) -> None:
    sign_in(page, server, "marketer")
    page.goto(_builder(server))
    name = f"No token {token()}"
    form = _builder_form(name, "", "save")
    del form["csrf_token"]
    r = page.request.post("/campaigns/new", form=form, max_redirects=0)
    assert r.status == 403, f"no token: {r.status}"
    r = page.request.post("/campaigns/new", form=_builder_form(name, "forged", "save"),
                          max_redirects=0)
    assert r.status == 403, f"forged token: {r.status}"
    assert server.campaign_named(name) is None


def test_altered_token_in_the_page_is_refused(page: Any, server: Server) -> None:
    sign_in(page, server, "marketer")
    page.goto(_builder(server))
    name = f"Altered {token()}"
    page.get_by_label("Campaign name", exact=True).fill(name)
    page.get_by_label("Title", exact=True).fill("Hello")
    page.get_by_label("Message", exact=True).fill("Hi")
    page.locator("form#builder input[name='csrf_token']").evaluate(
        "el => { el.value = el.value.split('').reverse().join('') + 'x'; }")
    with page.expect_response(re.compile(r"/campaigns/new$")) as answer:
        page.get_by_role("button", name="Save draft").click()
    assert answer.value.status == 403
    expect(page.get_by_role("heading", level=1)).to_have_text("Not allowed")
    expect(page.get_by_text("security token")).to_be_visible()
    assert server.campaign_named(name) is None

    # the same form with the page's own token saves: the refusal was the token's doing
    page.goto(_builder(server))
    page.get_by_label("Campaign name", exact=True).fill(name)
    page.get_by_label("Title", exact=True).fill("Hello")
    page.get_by_label("Message", exact=True).fill("Hi")
    page.get_by_role("button", name="Save draft").click()
    expect(page).not_to_have_url(re.compile(r"/campaigns/new"))
    saved = server.campaign_named(name)
    assert saved is not None and saved["status"] == "draft"
