"""Dashboard: engage from a prediction (groups with counts and strategies, then the
channel dialog), on SQLite and PostgreSQL."""

from __future__ import annotations

import re

from sqlalchemy import func, select

from propel.predictions.tables import user_predictions


def _sizes(shop) -> dict[str, int]:
    with shop.propel.db.read() as conn:
        rows = conn.execute(select(user_predictions.c.grp, func.count()).where(
            user_predictions.c.prediction_id == shop.prediction_id).group_by(
            user_predictions.c.grp)).all()
    return {grp: int(n) for grp, n in rows}


def test_engage_page_shows_the_three_groups_with_their_counts_and_strategies(dashboard):
    shop = dashboard.shop
    client = dashboard.sign_in("marketer")
    page = client.get(f"/predictions/{shop.prediction_id}/engage")
    assert page.status_code == 200
    assert "<h1>Engage: Predict Conversions</h1>" in page.text
    assert "<legend>Choose likelihood groups</legend>" in page.text
    sizes = _sizes(shop)
    assert sum(sizes.values()) > 0
    for group in ("High", "Medium", "Low"):
        assert f'name="groups" value="{group}"' in page.text
        label = re.search(rf'<label for="group-{group}">([^<]+)</label>', page.text).group(1)
        assert label == f"{group} — {sizes.get(group, 0):,} users"
    for strategy in ("Timely offer or reminder", "Incentive or follow-up",
                     "Re-engagement reward"):
        assert f"Suggested strategy: {strategy}" in page.text
    # the dialog: heading, engagement type, channel select and a plain GET form
    assert "Create engagement" in page.text and "<legend>Engagement type</legend>" in page.text
    assert re.search(r'<form method="get" action="/campaigns/new"', page.text)
    for value, label in (("inbox", "App Inbox"), ("email", "Email"), ("webhook", "Webhook"),
                         ("push", "Push"), ("sms", "SMS")):
        assert re.search(rf'<option value="{value}"[^>]*>{label}</option>', page.text)
    assert '<label for="engage-channel">Channel</label>' in page.text
    assert ">Proceed</button>" in page.text and ">Continue</button>" in page.text


def test_proceed_without_a_group_is_an_error_and_with_groups_opens_the_dialog(dashboard):
    shop = dashboard.shop
    client = dashboard.sign_in("marketer")
    base = f"/predictions/{shop.prediction_id}/engage"
    none = client.get(base, params={"proceed": "1"})
    assert none.status_code == 422 and "Choose at least one group" in none.text
    assert '<dialog id="engage-dialog" aria-labelledby="engage-dialog-title">' in none.text
    chosen = client.get(base, params={"proceed": "1", "groups": ["High", "Low"]})
    assert chosen.status_code == 200
    assert 'aria-labelledby="engage-dialog-title" open>' in chosen.text
    assert 'value="High" id="group-High"\n               aria-describedby="strategy-High" checked' \
        in chosen.text
    bad = client.get(base, params={"proceed": "1", "groups": ["Huge"]})
    assert bad.status_code == 422 and "Choose among the groups" in bad.text


def test_the_builder_without_groups_sends_back_to_the_engage_page(dashboard):
    shop = dashboard.shop
    client = dashboard.sign_in("marketer")
    page = client.get("/campaigns/new", params={"prediction": shop.prediction_id,
                                                "channel": "email"})
    assert page.status_code == 422
    assert "<h1>Engage: Predict Conversions</h1>" in page.text
    assert "Choose at least one group" in page.text
    assert re.search(r'<option value="email" selected>Email</option>', page.text)


def test_another_accounts_prediction_is_not_found(dashboard):
    shop = dashboard.shop
    client = dashboard.sign_in(email=shop.other_admin)
    for path in (f"/predictions/{shop.prediction_id}/engage",
                 f"/campaigns/new?prediction={shop.prediction_id}&groups=High",
                 "/predictions/no-such-id/engage", "/predictions/%00%ff/engage"):
        page = client.get(path)
        assert page.status_code == 404, path
        assert "No prediction" in page.text


def test_viewer_sees_the_engage_page_but_cannot_create(dashboard):
    shop = dashboard.shop
    client = dashboard.sign_in("viewer")
    page = client.get(f"/predictions/{shop.prediction_id}/engage")
    assert page.status_code == 200 and "Viewers cannot create campaigns" in page.text
    builder = client.get("/campaigns/new", params={
        "prediction": shop.prediction_id, "groups": "High", "channel": "inbox"})
    assert builder.status_code == 200 and "Viewers cannot create campaigns" in builder.text
    refused = client.post("/campaigns/new", data={
        "csrf_token": dashboard.csrf(), "name": "Viewer campaign", "channel": "inbox"})
    assert refused.status_code == 403 and "marketer role" in refused.text


def test_engage_needs_sign_in(dashboard):
    page = dashboard.client.get(f"/predictions/{dashboard.shop.prediction_id}/engage",
                                follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"].startswith("/login")


def test_engage_dialog_without_scripts_sends_journey_to_the_journey_editor(dashboard):
    client = dashboard.sign_in("marketer")
    prediction = dashboard.shop.prediction_id
    response = client.get(f"/campaigns/new?prediction={prediction}&groups=High&groups=Low"
                          "&channel=email&type=journey", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == (
        f"/journeys/new?prediction={prediction}&groups=High&groups=Low&channel=email")
    editor = client.get(response.headers["location"])
    assert editor.status_code == 200 and "High" in editor.text
