"""Dashboard: the campaign builder (Who × What × When), on SQLite and PostgreSQL: what it
pre-fills, the live count, saving, editing and publishing, and refusals of bad input."""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from web_fixtures import form_fields

from propel import audiences
from propel.campaigns import service
from propel.campaigns.dispatch import dispatch_campaign, finish_dispatches, in_holdout
from propel.campaigns.tables import campaigns, messages
from propel.predictions.tables import user_predictions


def form_of(html: str, form_id: str = "builder") -> dict[str, str]:
    return dict(form_fields(html, form_id))


def _builder(client, shop, groups=("High",), channel="inbox"):
    page = client.get("/campaigns/new", params={"prediction": shop.prediction_id,
                                                "groups": list(groups), "channel": channel})
    assert page.status_code == 200, page.text
    return page


def _unique(prefix: str) -> str:
    return f"{prefix} {secrets.token_hex(3)}"


def _count_campaigns(shop, name: str) -> int:
    with shop.propel.db.read() as conn:
        return conn.execute(select(func.count()).select_from(campaigns).where(
            campaigns.c.account_id == shop.account_id, campaigns.c.name == name)).scalar()


def _field_error(page, field_id: str) -> str:
    match = re.search(rf'<p class="field-error" id="{re.escape(field_id)}-error">([^<]*)</p>',
                      page.text)
    assert match, f"no error for {field_id}"
    return match.group(1)


@pytest.mark.parametrize(("channel", "labels"), [
    ("inbox", ["Title", "Message"]), ("email", ["Subject", "HTML body", "Text body"]),
    ("webhook", ["Payload (JSON)"]), ("push", ["Title", "Body"]), ("sms", ["Message"])])
def test_builder_is_prefilled_from_the_prediction_groups_and_channel(dashboard, channel,
                                                                      labels):
    shop = dashboard.shop
    client = dashboard.sign_in("marketer")
    page = _builder(client, shop, ("High", "Medium"), channel)
    assert "<h1>New campaign</h1>" in page.text
    values = form_of(page.text)
    assert values["name"] == "Predict Conversions — High, Medium"
    assert values["channel"] == channel and values["prediction_id"] == shop.prediction_id
    assert values["a:r-0:property"] == "Predict Conversions"
    assert values["a:r-0:op"] == "in" and values["a:r-0:value"] == "High, Medium"
    for label in labels:
        assert f">{label}</label>" in page.text
    if channel == "webhook":
        assert '"title"' in values["v0:payload"]
    else:
        body = values.get("v0:body") or values.get("v0:text")
        assert "Come back and finish" in body
    assert values["holdout"] == "10" and values["goal_event"] == "Charged"
    assert values["when"] == "now" and values["goal_window"]
    for heading in ("Who", "What", "When"):
        assert f'>{heading}</h2>' in page.text
    assert ">Add variant</button>" in page.text and ">Save draft</button>" in page.text
    assert '<output id="audience-count"' in page.text
    assert "Suggested strategy: High: Timely offer or reminder" in page.text


def test_live_count_matches_the_scores_table_and_properties_offer_predictions(dashboard):
    shop = dashboard.shop
    client = dashboard.sign_in("marketer")
    page = _builder(client, shop, ("Low",))
    with shop.propel.db.read() as conn:
        low = conn.execute(select(func.count()).where(
            user_predictions.c.prediction_id == shop.prediction_id,
            user_predictions.c.grp == "Low")).scalar()
    assert low > 0
    count = re.search(r'<output id="audience-count"[^>]*>([^<]*)</output>', page.text).group(1)
    assert count == f"{low:,} users"
    assert re.search(r'<optgroup label="User properties">', page.text)
    assert ">Predict Conversions (group)</option>" in page.text
    assert ">Predict Conversions (score)</option>" in page.text
    values = form_of(page.text)
    values.update({"a:r-0:op": "=", "a:r-0:value": "Low"})
    live = client.post("/campaigns/builder/count", data=values, headers={"hx-request": "true"})
    assert live.status_code == 200 and live.text.strip() == f"{low:,} users"
    values["a:r-0:op"] = ">"
    values["a:r-0:value"] = "lots"
    bad = client.post("/campaigns/builder/count", data=values)
    assert "Cannot count yet: Enter a number" in bad.text


def test_add_and_remove_conditions_and_variants_keep_what_was_typed(dashboard):
    shop = dashboard.shop
    client = dashboard.sign_in("marketer")
    values = form_of(_builder(client, shop).text)
    values["name"] = "Typed name"
    page = client.post("/campaigns/builder/form", data={**values, "op": "add-event:r"},
                       headers={"hx-request": "true"})
    assert page.status_code == 200 and page.text.lstrip().startswith("<form")
    after = form_of(page.text)
    assert after["name"] == "Typed name" and after["a:r-1:kind"] == "event"
    assert 'data-focus="a-r-1-first"' in page.text and 'id="a-r-1-first"' in page.text
    after.update({"a:r-1:event": "Charged", "a:r-1:did": "did_not", "a:r-1:within_days": "30"})
    count = client.post("/campaigns/builder/count", data=after).text.strip()
    expected = audiences.count(shop.propel, shop.account_id, {"and": [
        {"property": "Predict Conversions", "op": "in", "value": ["High"]},
        {"event": "Charged", "did": False, "within_days": 30}]})
    assert count.startswith(f"{expected:,} user")
    page = client.post("/campaigns/builder/form", data={**after, "op": "add-variant"})
    assert "<h1>New campaign</h1>" in page.text  # without htmx: the whole page
    two = form_of(page.text)
    assert two["v1:name"] == "B" and two["v0:split"] == "50" and two["v1:split"] == "50"
    assert two["v1:title"] == two["v0:title"]
    page = client.post("/campaigns/builder/form", data={**two, "op": "remove:r-0"},
                       headers={"hx-request": "true"})
    one = form_of(page.text)
    assert one["a:r-0:kind"] == "event" and "a:r-1:kind" not in one
    page = client.post("/campaigns/builder/form", data={**one, "op": "remove-variant:0"},
                       headers={"hx-request": "true"})
    assert form_of(page.text)["v0:name"] == "B"
    switched = client.post("/campaigns/builder/form", data={**one, "channel": "email",
                                                            "op": "refresh"},
                           headers={"hx-request": "true"})
    email = form_of(switched.text)
    assert email["v0:subject"] == one["v0:title"] and ">HTML body</label>" in switched.text


def test_save_draft_then_edit_then_publish(dashboard):
    shop = dashboard.shop
    client = dashboard.sign_in("marketer")
    name = _unique("Builder draft")
    values = {**form_of(_builder(client, shop, ("Medium",), "email").text), "name": name,
              "holdout": "20", "cap_per_day": "3", "dnd_on": "on", "dnd_action": "drop"}
    saved = client.post("/campaigns/new", data={**values, "action": "save"},
                        follow_redirects=False)
    assert saved.status_code == 303, saved.text
    location = saved.headers["location"]
    cid = re.match(r"^/campaigns/([^/]+)/edit\?saved=1$", location).group(1)
    c = service.get_campaign(shop.propel, shop.account_id, cid)
    assert c.status == "draft" and c.channel == "email" and c.holdout_pct == 0.2
    assert c.audience == {"property": "Predict Conversions", "op": "in", "value": ["Medium"]}
    assert c.caps == {"per_day": 3} and c.dnd["action"] == "drop"
    assert c.prediction_id == shop.prediction_id and c.goal["event"] == "Charged"
    edit = client.get(location)
    assert edit.status_code == 200 and "<h1>Edit campaign</h1>" in edit.text
    assert "Draft saved." in edit.text
    loaded = form_of(edit.text)
    assert loaded["name"] == name and loaded["holdout"] == "20"
    assert loaded["cap_per_day"] == "3" and loaded["dnd_on"] == "on"
    loaded.update({"v0:subject": "Changed {{ user.first_name | default('you') }}",
                   "when": "at", "at": "2099-01-01T09:30", "timezone": "Europe/Paris"})
    updated = client.post(f"/campaigns/{cid}/edit", data={**loaded, "action": "save"},
                          follow_redirects=False)
    assert updated.status_code == 303
    c = service.get_campaign(shop.propel, shop.account_id, cid)
    assert c.content["variants"][0]["subject"].startswith("Changed")
    assert c.schedule == {"type": "at", "at": "2099-01-01T08:30:00+00:00",
                          "user_timezone": False}
    again = form_of(client.get(f"/campaigns/{cid}/edit").text)
    assert again["when"] == "at" and again["at"] == "2099-01-01T08:30"
    published = client.post(f"/campaigns/{cid}/edit", data={**again, "action": "publish"},
                            follow_redirects=False)
    assert published.status_code == 303 and published.headers["location"] == f"/campaigns/{cid}"
    assert service.get_campaign(shop.propel, shop.account_id, cid).status == "scheduled"
    # a scheduled campaign still opens in the builder; a running one does not
    assert client.get(f"/campaigns/{cid}/edit").status_code == 200
    assert _count_campaigns(shop, name) == 1


def test_publish_an_inbox_campaign_queues_the_audience_minus_the_holdout(dashboard):
    shop = dashboard.shop
    client = dashboard.sign_in("marketer")
    name = _unique("Builder inbox")
    values = {**form_of(_builder(client, shop, ("High",), "inbox").text), "name": name}
    published = client.post("/campaigns/new", data={**values, "action": "publish"},
                            follow_redirects=False)
    assert published.status_code == 303, published.text
    cid = published.headers["location"].removeprefix("/campaigns/")
    assert dispatch_campaign(shop.propel, shop.account_id, cid) is not None
    c = service.get_campaign(shop.propel, shop.account_id, cid)
    assert c.status in ("running", "completed")
    with shop.propel.db.read() as conn:
        rows = conn.execute(select(messages.c.identity, messages.c.state).where(
            messages.c.campaign_id == cid)).all()
    members = audiences.members(shop.propel, shop.account_id, c.audience)
    expected = {m for m in members if not in_holdout(cid, m, c.holdout_pct)}
    assert expected and len(expected) < len(members)
    assert {i for i, s in rows if s == "queued"} == expected
    assert {i for i, s in rows if s == "holdout"} == set(members) - expected
    # a running campaign cannot be edited
    locked = client.get(f"/campaigns/{cid}/edit")
    assert locked.status_code == 409
    assert "only draft and scheduled campaigns can be edited" in locked.text
    refused = client.post(f"/campaigns/{cid}/edit", data={**values, "action": "save"})
    assert refused.status_code == 409


@pytest.mark.parametrize(("field", "source", "reason"), [
    ("v0:title", "Hi {{ profile.name | nosuchfilter }}", "nosuchfilter"),
    ("v0:body", "Line one\n{% if user.plan %}unclosed", "syntax error"),
])
def test_template_errors_are_shown_on_the_field_with_line_and_nothing_is_saved(
        dashboard, field, source, reason):
    shop = dashboard.shop
    client = dashboard.sign_in("marketer")
    name = _unique("Builder broken")
    values = {**form_of(_builder(client, shop).text), "name": name, field: source}
    page = client.post("/campaigns/new", data={**values, "action": "save"})
    assert page.status_code == 422
    message = _field_error(page, field.replace(":", "-"))
    assert message.startswith("Line ") and reason in message
    assert 'role="alert"' in page.text
    assert form_of(page.text)[field] == source  # kept as typed
    assert _count_campaigns(shop, name) == 0


def test_bad_numbers_are_refused_next_to_their_fields(dashboard):
    shop = dashboard.shop
    client = dashboard.sign_in("marketer")
    name = _unique("Builder numbers")
    values = {**form_of(_builder(client, shop).text), "name": name, "holdout": "120",
              "goal_window": "0", "cap_per_day": "2.5", "v0:split": "abc",
              "a:r-0:op": ">", "a:r-0:value": "many"}
    page = client.post("/campaigns/new", data={**values, "action": "publish"})
    assert page.status_code == 422
    assert "Holdout % must be a number from 0 to 90" in _field_error(page, "holdout")
    assert "from 1 to 365" in _field_error(page, "goal_window")
    assert "whole number" in _field_error(page, "cap_per_day")
    assert "must be a number" in _field_error(page, "v0-split")
    assert _field_error(page, "a-r-0") == "Enter a number"
    assert 'aria-describedby="holdout-hint holdout-error" aria-invalid="true"' in page.text
    assert form_of(page.text)["holdout"] == "120"
    assert _count_campaigns(shop, name) == 0
    empty = client.post("/campaigns/new", data={**form_of(_builder(client, shop).text),
                                                "name": "  ", "action": "save"})
    assert empty.status_code == 422 and _field_error(empty, "name") == "Enter a campaign name"


def test_failed_update_leaves_the_stored_campaign_unchanged(dashboard):
    shop = dashboard.shop
    client = dashboard.sign_in("marketer")
    name = _unique("Builder keep")
    values = {**form_of(_builder(client, shop).text), "name": name}
    saved = client.post("/campaigns/new", data={**values, "action": "save"},
                        follow_redirects=False)
    cid = saved.headers["location"].split("/")[2]
    before = service.get_campaign(shop.propel, shop.account_id, cid)
    bad = {**values, "name": "Renamed", "v0:title": "{{ user.name | nosuch }}",
           "when": "at", "at": "2099-01-01T09:00"}
    page = client.post(f"/campaigns/{cid}/edit", data={**bad, "action": "save"})
    assert page.status_code == 422 and "<h1>Edit campaign</h1>" in page.text
    after = service.get_campaign(shop.propel, shop.account_id, cid)
    assert (after.name, after.content, after.schedule) == (before.name, before.content,
                                                           before.schedule)
    past = client.post(f"/campaigns/{cid}/edit", data={
        **values, "when": "at", "at": "2001-01-01T09:00", "action": "save"})
    assert past.status_code == 422 and "in the past" in _field_error(past, "at")


def test_roles_csrf_and_isolation_on_the_builder_posts(dashboard):
    shop = dashboard.shop
    client = dashboard.sign_in("marketer")
    values = {**form_of(_builder(client, shop).text), "name": _unique("Builder csrf")}
    no_token = {k: v for k, v in values.items() if k != "csrf_token"}
    refused = client.post("/campaigns/new", data={**no_token, "action": "save"},
                          headers={"accept": "text/html"})
    assert refused.status_code == 403 and "security token" in refused.text
    assert _count_campaigns(shop, values["name"]) == 0
    saved = client.post("/campaigns/new", data={**values, "action": "save"},
                        follow_redirects=False)
    cid = saved.headers["location"].split("/")[2]
    viewer = dashboard.sign_in("viewer")
    page = viewer.get(f"/campaigns/{cid}/edit")
    assert page.status_code == 200 and "Viewers cannot create campaigns" in page.text
    token = dashboard.csrf()
    for path in ("/campaigns/new", f"/campaigns/{cid}/edit"):
        response = viewer.post(path, data={**values, "csrf_token": token, "action": "save"})
        assert response.status_code == 403
    other = dashboard.sign_in(email=shop.other_admin)
    assert other.get(f"/campaigns/{cid}/edit").status_code == 404
    token = dashboard.csrf()
    response = other.post(f"/campaigns/{cid}/edit", data={**values, "csrf_token": token})
    assert response.status_code == 404
    foreign = other.post("/campaigns/new", data={**values, "csrf_token": token,
                                                 "action": "save"})
    assert foreign.status_code == 422 and "no prediction" in foreign.text
    assert other.get("/campaigns/nope/edit").status_code == 404


def test_preview_renders_for_a_user_and_explains_an_unknown_user(dashboard):
    shop = dashboard.shop
    client = dashboard.sign_in("viewer")
    values = form_of(_builder(client, shop).text)
    member = audiences.members(shop.propel, shop.account_id, {"and": []})[0]
    values["v0:title"] = "Hello {{ user.identity }}"
    shown = client.post("/campaigns/builder/preview", data={
        **values, "preview_identity": member}, headers={"hx-request": "true"})
    assert shown.status_code == 200
    assert f"Preview for {member}" in shown.text and f"Hello {member}" in shown.text
    unknown = client.post("/campaigns/builder/preview", data={
        **values, "preview_identity": "nobody-here"}, headers={"hx-request": "true"})
    assert "No user &#39;nobody-here&#39; in this account" in unknown.text
    broken = client.post("/campaigns/builder/preview", data={
        **values, "v0:title": "{% if %}", "preview_identity": member},
        headers={"hx-request": "true"})
    assert "Fix the content first" in broken.text
    page = client.post("/campaigns/builder/preview", data={**values,
                                                           "preview_identity": member})
    assert "<h1>New campaign</h1>" in page.text and f"Hello {member}" in page.text


def test_blank_builder_without_a_prediction(dashboard):
    client = dashboard.sign_in("marketer")
    page = client.get("/campaigns/new?channel=sms")
    assert page.status_code == 200 and ">Message</label>" in page.text
    values = form_of(page.text)
    assert values["name"] == "" and values["goal_event"] == "Charged"
    assert "No conditions yet: everyone matches." in page.text


def test_forged_input_gets_a_clear_answer_not_a_server_error(dashboard):
    shop = dashboard.shop
    client = dashboard.sign_in("marketer")
    values = form_of(_builder(client, shop).text)
    name = _unique("Builder nul")
    saved = client.post("/campaigns/new", data={**values, "name": name + "\x00",
                                                 "action": "save"}, follow_redirects=False)
    assert saved.status_code == 303 and _count_campaigns(shop, name) == 1
    odd = {**values, "channel": "fax", "when": "someday", "variant_count": "x",
           "a:r-0:kind": "nonsense", "a:r-0-0-0:kind": "property", "op": "remove:r-9"}
    page = client.post("/campaigns/builder/form", data=odd)
    assert page.status_code == 200
    page = client.post("/campaigns/new", data={**odd, "action": "save"})
    assert page.status_code == 422 and "Choose Send now, Schedule or Recurring" in page.text
    shown = client.post("/campaigns/builder/preview", data={
        **values, "preview_identity": "a\x00b"}, headers={"hx-request": "true"})
    assert shown.status_code == 200 and "No user" in shown.text
    assert client.get("/campaigns/a%00b/edit").status_code == 404


def _has_run_once(shop, cid: str) -> None:
    """Make the recurring campaign due, dispatch it, and finish the run (its audience
    matches nobody, so nothing is left to send)."""
    shop.propel.db.write(lambda conn: conn.execute(campaigns.update().where(
        campaigns.c.id == cid).values(next_run_at=datetime.now(UTC) - timedelta(minutes=1))))
    assert dispatch_campaign(shop.propel, shop.account_id, cid) is not None
    finish_dispatches(shop.propel)
    assert service.is_between_runs(shop.propel, service.get_campaign(
        shop.propel, shop.account_id, cid))


def test_a_recurring_campaign_is_edited_between_runs_except_what_fixes_its_results(dashboard):
    shop = dashboard.shop
    client = dashboard.sign_in("marketer")
    name = _unique("Builder recurring")
    values = {**form_of(_builder(client, shop, ("High",), "inbox").text), "name": name,
              "a:r-0:op": "=", "a:r-0:value": "Nobody", "when": "recurring",
              "every": "daily", "time": "10:00", "timezone": "UTC"}
    published = client.post("/campaigns/new", data={**values, "action": "publish"},
                            follow_redirects=False)
    assert published.status_code == 303, published.text
    cid = published.headers["location"].removeprefix("/campaigns/")
    _has_run_once(shop, cid)
    assert f'href="/campaigns/{cid}/edit">Edit</a>' in client.get(f"/campaigns/{cid}").text

    edit = client.get(f"/campaigns/{cid}/edit")
    assert edit.status_code == 200 and 'id="between-runs"' in edit.text
    assert ">Save changes</button>" in edit.text and ">Publish</button>" not in edit.text
    loaded = form_of(edit.text)
    loaded.update({"name": f"{name} v2", "v0:title": "Second run", "time": "11:30",
                   "a:r-0:value": "Nobody either"})
    saved = client.post(f"/campaigns/{cid}/edit", data={**loaded, "action": "save"},
                        follow_redirects=False)
    assert saved.status_code == 303 and saved.headers["location"].endswith("?saved=1")
    c = service.get_campaign(shop.propel, shop.account_id, cid)
    assert c.status == "running" and c.name == f"{name} v2"
    assert c.content["variants"][0]["title"] == "Second run"
    assert c.audience["value"] == "Nobody either"
    assert (c.next_run_at.hour, c.next_run_at.minute) == (11, 30)
    assert "Changes saved." in client.get(saved.headers["location"]).text

    # the holdout (and channel, goal) would mix two set-ups in one campaign's results
    again = form_of(client.get(f"/campaigns/{cid}/edit").text)
    refused = client.post(f"/campaigns/{cid}/edit",
                          data={**again, "holdout": "30", "action": "save"})
    assert refused.status_code == 422
    assert "cannot be changed once a recurring campaign has run" in _field_error(refused,
                                                                                  "holdout")
    assert service.get_campaign(shop.propel, shop.account_id, cid).holdout_pct == 0.1
