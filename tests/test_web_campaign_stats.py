"""Dashboard: the campaigns list and a campaign's stats page, with Stop and Duplicate,
on SQLite and PostgreSQL."""

from __future__ import annotations

import html
import re
import secrets

import pytest

from propel.accounts import create_api_key
from propel.campaigns import service
from propel.campaigns.dispatch import dispatch_campaign
from propel.campaigns.engage import default_content
from propel.campaigns.stats import campaign_stats
from propel.web.campaign_stats import audience_summary
from propel.web.templating import lift_text, signed_points

FUNNEL_CAPTION = '<caption class="sr-only">Funnel</caption>'
FUNNEL = ("Targeted", "Sent", "Delivered", "Opened", "Clicked", "Converted")


def _demo_campaigns(shop) -> list[service.Campaign]:
    """The three campaigns the demo sent (High by e-mail, Medium to the inbox, Low by
    webhook)."""
    sent = [c for c in service.list_campaigns(shop.propel, shop.account_id)
            if c.name.startswith("Predict Conversions — ") and c.status == "completed"]
    assert {c.channel for c in sent} >= {"email", "inbox", "webhook"}
    return sent


def _new_campaign(shop, account_id: str | None = None, **fields) -> service.Campaign:
    values = {"name": f"Stats test {secrets.token_hex(3)}", "channel": "inbox",
              "audience": {"property": "Predict Conversions", "op": "in", "value": ["Low"]},
              "content": default_content("inbox", "Hello", "A message"),
              "prediction_id": shop.prediction_id} | fields
    return service.create_campaign(shop.propel, account_id or shop.account_id, **values)


def _running_campaign(shop) -> service.Campaign:
    """Published and dispatched but not delivered (no workers run): running, queued."""
    c = _new_campaign(shop)
    service.publish(shop.propel, shop.account_id, c.id)
    assert dispatch_campaign(shop.propel, shop.account_id, c.id) is not None
    return service.get_campaign(shop.propel, shop.account_id, c.id)


def _row(page: str, header: str) -> list[str]:
    """The cells of the table row whose header cell starts with ``header``."""
    match = re.search(r"<tr>\s*<th scope=\"row\">" + re.escape(header) + r"(.*?)</tr>",
                      page, re.S)
    assert match, f"no row {header!r}"
    return [html.unescape(re.sub(r"<[^>]+>", "", cell)).strip()
            for cell in re.findall(r"<td[^>]*>(.*?)</td>", match.group(1), re.S)]


def _num(text: str) -> int:
    return int(text.split()[0].replace(",", ""))


def _api_stats(dashboard, campaign_id: str) -> dict:
    _, token = create_api_key(dashboard.shop.propel.db, dashboard.shop.account_id, "stats")
    response = dashboard.client.get(f"/api/v1/campaigns/{campaign_id}/stats",
                                    headers={"authorization": f"Bearer {token}",
                                             "accept": "application/json"})
    assert response.status_code == 200, response.text
    return response.json()


# --- list ---------------------------------------------------------------------------

def test_list_shows_the_demo_campaigns_with_the_apis_numbers(dashboard):
    client = dashboard.sign_in("viewer")
    page = client.get("/campaigns")
    assert page.status_code == 200
    assert "<h1>Campaigns</h1>" in page.text
    assert 'href="/campaigns/new"' not in page.text  # viewers cannot create
    for c in _demo_campaigns(dashboard.shop):
        totals = _api_stats(dashboard, c.id)["totals"]
        assert f'<a href="/campaigns/{c.id}">{html.escape(c.name)}</a>' in page.text
        cells = _row(page.text, f'<a href="/campaigns/{c.id}">')
        # channel, prediction + group, status, next run, then the metrics
        assert cells[2] == "Completed"
        assert "Predict Conversions" in cells[1]
        group = c.audience["value"][0]
        assert group in cells[1]
        metrics = [_num(x) for x in cells[4:10]]
        assert metrics == [totals[k] for k in ("targeted", "sent", "delivered", "opened",
                                                "clicked", "converted")]
        assert totals["sent"] > 0


def test_list_filters_by_status_and_refuses_unknown_ones(dashboard):
    shop = dashboard.shop
    draft = _new_campaign(shop)
    client = dashboard.sign_in("marketer")
    page = client.get("/campaigns?status=draft")
    assert page.status_code == 200
    assert draft.name in page.text
    assert not any(c.name in page.text for c in _demo_campaigns(shop))
    assert '<label for="status-filter">Status</label>' in page.text
    assert 'href="/campaigns/new"' in page.text
    completed = client.get("/campaigns?status=completed").text
    assert draft.name not in completed and _demo_campaigns(shop)[0].name in completed
    bad = client.get("/campaigns?status=<b>nope</b>")
    assert bad.status_code == 422 and 'role="alert"' in bad.text
    assert "<b>nope</b>" not in bad.text


def test_list_is_empty_for_another_account_and_points_to_predictions(dashboard):
    client = dashboard.sign_in(email=dashboard.shop.other_admin)
    page = client.get("/campaigns")
    assert page.status_code == 200
    assert "Engage a prediction to create a campaign" in page.text
    assert 'href="/predictions"' in page.text
    assert not any(c.name in page.text for c in _demo_campaigns(dashboard.shop))


# --- stats page ---------------------------------------------------------------------

def test_stats_page_funnel_equals_the_stats_module(dashboard):
    client = dashboard.sign_in("viewer")
    for c in _demo_campaigns(dashboard.shop):
        page = client.get(f"/campaigns/{c.id}")
        assert page.status_code == 200
        assert f"<h1>{html.escape(c.name)}</h1>" in page.text
        assert 'class="badge status-completed">Completed<' in page.text
        assert FUNNEL_CAPTION in page.text
        totals = campaign_stats(dashboard.shop.propel.db, c.id)["totals"]
        for step in FUNNEL:
            assert _num(_row(page.text, step + "</th>")[0]) == totals[step.lower()], step
        assert _num(_row(page.text, "Holdout")[0]) == totals["holdout"]
        assert _num(_row(page.text, "Suppressed")[0]) == totals["suppressed"]
        assert 'data-chart=' in page.text and 'role="img"' in page.text
        # a finished campaign is not polled
        assert 'hx-trigger="every 5s"' not in page.text


def test_stats_page_shows_groups_variants_lift_and_time_series(dashboard):
    client = dashboard.sign_in("viewer")
    c = next(c for c in _demo_campaigns(dashboard.shop) if c.channel == "email")
    page = client.get(f"/campaigns/{c.id}").text
    stats = campaign_stats(dashboard.shop.propel.db, c.id)
    group = c.audience["value"][0]
    cells = _row(page, f'<span class="badge group-{group}">{group}</span>')
    g = stats["groups"][group]
    assert [_num(x) for x in cells[:5]] == [g["targeted"], g["sent"], g["opened"],
                                           g["clicked"], g["converted"]]
    assert html.unescape(cells[-1]) == lift_text(g["lift"])
    assert _num(_row(page, "A</th>")[0]) == stats["variants"]["A"]["targeted"]
    text = lift_text(stats["lift"])
    assert re.fullmatch(r"[+−]?\d+\.\d points \(95 % CI [+−]?\d+\.\d to [+−]?\d+\.\d\)", text)
    assert f'id="lift-text">{text}<' in html.unescape(page)
    assert "Over time" in page and "The same as a table" in page
    assert "Suppressed, by reason" in page
    assert "Over time (per hour, UTC)" in page  # a short campaign: hourly by default
    daily = client.get(f"/campaigns/{c.id}?series=daily")
    assert daily.status_code == 200 and "Over time (per day, UTC)" in daily.text
    buckets = [b for b in campaign_stats(dashboard.shop.propel.db, c.id, series="daily")[
        "series"] if b["sent"]]
    assert sum(_num(_row(daily.text, b["bucket"][:10])[0]) for b in buckets) == \
        stats["totals"]["sent"]
    assert client.get(f"/campaigns/{c.id}?series=weekly").status_code == 422


def test_lift_text_formats_points_with_signs():
    assert lift_text({"diff": 0.023, "low": -0.011, "high": 0.056, "holdout_n": 10}) == \
        "+2.3 points (95 % CI −1.1 to +5.6)"
    assert "no holdout" in lift_text({"diff": None, "holdout_n": 0})
    assert signed_points(0.0) == "0.0" and signed_points(None) == "–"
    assert audience_summary({"and": [
        {"property": "Predict Conversions", "op": "in", "value": ["High", "Medium"]},
        {"not": {"event": "Charged", "within_days": 30}}]}) == \
        "Predict Conversions in High, Medium and not did Charged in the last 30 days"


def test_stats_panel_renders_alone_and_polls_only_while_sending(dashboard):
    shop = dashboard.shop
    client = dashboard.sign_in("viewer")
    done = _demo_campaigns(shop)[0]
    panel = client.get(f"/campaigns/{done.id}/stats-panel", headers={"hx-request": "true"})
    assert panel.status_code == 200
    assert "<html" not in panel.text and 'id="stats-panel"' in panel.text
    assert FUNNEL_CAPTION in panel.text and "every 5s" not in panel.text
    running = _running_campaign(shop)
    page = client.get(f"/campaigns/{running.id}").text
    assert 'hx-get="/campaigns/' + running.id + '/stats-panel?series=hourly"' in page
    assert 'hx-trigger="every 5s"' in page
    assert _num(_row(page, "Pending")[0]) > 0
    panel = client.get(f"/campaigns/{running.id}/stats-panel?series=daily").text
    assert 'hx-trigger="every 5s"' in panel and "series=daily" in panel
    service.stop(shop.propel, shop.account_id, running.id)
    assert "every 5s" not in client.get(f"/campaigns/{running.id}/stats-panel").text


# --- actions ------------------------------------------------------------------------

def test_marketer_sees_actions_that_match_the_status_and_viewer_sees_none(dashboard):
    shop = dashboard.shop
    done = _demo_campaigns(shop)[0]
    draft = _new_campaign(shop)
    viewer = dashboard.sign_in("viewer")
    for c in (done, draft):
        page = viewer.get(f"/campaigns/{c.id}").text
        assert ">Stop</button>" not in page and ">Duplicate</button>" not in page
        assert f'/campaigns/{c.id}/edit' not in page
    marketer = dashboard.sign_in("marketer")
    page = marketer.get(f"/campaigns/{done.id}").text
    assert ">Duplicate</button>" in page
    assert ">Stop</button>" not in page and f"/campaigns/{done.id}/edit" not in page
    page = marketer.get(f"/campaigns/{draft.id}").text
    assert f'href="/campaigns/{draft.id}/edit">Edit</a>' in page
    scheduled = _new_campaign(shop, schedule={"type": "at", "at": "2099-01-01T10:00:00+00:00"})
    service.publish(shop.propel, shop.account_id, scheduled.id)
    page = marketer.get(f"/campaigns/{scheduled.id}").text
    assert ">Stop</button>" in page and "confirm(" in page
    assert f'href="/campaigns/{scheduled.id}/edit">Edit</a>' in page


def test_marketer_stops_a_running_campaign(dashboard):
    shop = dashboard.shop
    running = _running_campaign(shop)
    client = dashboard.sign_in("marketer")
    response = client.post(f"/campaigns/{running.id}/stop",
                           data={"csrf_token": dashboard.csrf()}, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == f"/campaigns/{running.id}"
    assert service.get_campaign(shop.propel, shop.account_id, running.id).status == "stopped"
    totals = campaign_stats(shop.propel.db, running.id)["totals"]
    assert totals["pending"] == 0 and totals["suppressed_by_reason"].get("stopped", 0) > 0
    page = client.get(f"/campaigns/{running.id}").text
    assert "Stopped" in page and _num(_row(page, "stopped")[0]) > 0


def test_stopping_a_completed_campaign_is_a_clear_conflict(dashboard):
    done = _demo_campaigns(dashboard.shop)[0]
    client = dashboard.sign_in("admin")
    response = client.post(f"/campaigns/{done.id}/stop", data={"csrf_token": dashboard.csrf()})
    assert response.status_code == 409
    assert "already completed" in response.text and 'role="alert"' in response.text
    assert service.get_campaign(dashboard.shop.propel, dashboard.shop.account_id,
                                done.id).status == "completed"


def test_marketer_duplicates_a_campaign_into_a_draft(dashboard):
    shop = dashboard.shop
    done = _demo_campaigns(shop)[0]
    client = dashboard.sign_in("marketer")
    before = {c.id for c in service.list_campaigns(shop.propel, shop.account_id)}
    response = client.post(f"/campaigns/{done.id}/duplicate",
                           data={"csrf_token": dashboard.csrf()}, follow_redirects=False)
    assert response.status_code == 303
    new_id = re.fullmatch(r"/campaigns/([^/]+)/edit", response.headers["location"]).group(1)
    assert new_id not in before
    copy = service.get_campaign(shop.propel, shop.account_id, new_id)
    assert copy.status == "draft" and copy.name == f"{done.name} (copy)"
    assert copy.audience == done.audience and copy.content == done.content


def test_duplicating_a_campaign_with_a_long_name_keeps_it_valid(dashboard):
    shop = dashboard.shop
    c = _new_campaign(shop, name="N" * 200)
    client = dashboard.sign_in("marketer")
    response = client.post(f"/campaigns/{c.id}/duplicate",
                           data={"csrf_token": dashboard.csrf()}, follow_redirects=False)
    assert response.status_code == 303
    new_id = response.headers["location"].split("/")[2]
    name = service.get_campaign(shop.propel, shop.account_id, new_id).name
    assert len(name) == 200 and name.endswith("… (copy)")


@pytest.mark.parametrize("action", ["stop", "duplicate"])
def test_viewer_cannot_stop_or_duplicate(dashboard, action):
    shop = dashboard.shop
    c = _new_campaign(shop, schedule={"type": "at", "at": "2099-01-01T10:00:00+00:00"})
    service.publish(shop.propel, shop.account_id, c.id)
    client = dashboard.sign_in("viewer")
    count = len(service.list_campaigns(shop.propel, shop.account_id))
    response = client.post(f"/campaigns/{c.id}/{action}", data={"csrf_token": dashboard.csrf()})
    assert response.status_code == 403 and "marketer role" in response.text
    assert service.get_campaign(shop.propel, shop.account_id, c.id).status == "scheduled"
    assert len(service.list_campaigns(shop.propel, shop.account_id)) == count


@pytest.mark.parametrize("action", ["stop", "duplicate"])
def test_actions_without_the_csrf_token_are_refused(dashboard, action):
    shop = dashboard.shop
    c = _new_campaign(shop, schedule={"type": "at", "at": "2099-01-01T10:00:00+00:00"})
    service.publish(shop.propel, shop.account_id, c.id)
    client = dashboard.sign_in("marketer")
    count = len(service.list_campaigns(shop.propel, shop.account_id))
    for data in ({}, {"csrf_token": "forged"}):
        response = client.post(f"/campaigns/{c.id}/{action}", data=data)
        assert response.status_code == 403 and "security token" in response.text
    assert service.get_campaign(shop.propel, shop.account_id, c.id).status == "scheduled"
    assert len(service.list_campaigns(shop.propel, shop.account_id)) == count


def test_another_accounts_campaign_is_not_found(dashboard):
    shop = dashboard.shop
    theirs = _new_campaign(shop, account_id=shop.other_account_id, prediction_id=None,
                           audience={"and": []})
    ours = _demo_campaigns(shop)[0]
    client = dashboard.sign_in("admin")
    token = dashboard.csrf()
    for path in (f"/campaigns/{theirs.id}", f"/campaigns/{theirs.id}/stats-panel"):
        response = client.get(path)
        assert response.status_code == 404 and theirs.name not in response.text
    for action in ("stop", "duplicate"):
        response = client.post(f"/campaigns/{theirs.id}/{action}", data={"csrf_token": token})
        assert response.status_code == 404
    assert service.get_campaign(shop.propel, shop.other_account_id, theirs.id).status == "draft"
    other = dashboard.sign_in(email=shop.other_admin)
    assert other.get(f"/campaigns/{ours.id}").status_code == 404
    assert other.get(f"/campaigns/{theirs.id}").status_code == 200


@pytest.mark.parametrize("bad_id", ["nope", "cmp_" + "0" * 40, "a%00b", "%E2%9C%93", "a%20b",
                                    "%3Cscript%3E"])
def test_malformed_ids_are_not_found(dashboard, bad_id):
    client = dashboard.sign_in("marketer")
    token = dashboard.csrf()
    assert client.get(f"/campaigns/{bad_id}").status_code == 404
    assert client.get(f"/campaigns/{bad_id}/stats-panel").status_code == 404
    for action in ("stop", "duplicate"):
        assert client.post(f"/campaigns/{bad_id}/{action}",
                           data={"csrf_token": token}).status_code == 404


def test_pages_need_sign_in(dashboard):
    dashboard.client.cookies.clear()
    for path in ("/campaigns", f"/campaigns/{_demo_campaigns(dashboard.shop)[0].id}"):
        response = dashboard.client.get(path, follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"].startswith("/login")
