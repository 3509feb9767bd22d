"""Dashboard: journeys — the list, the editor (from the Engage flow, steps added,
removed and connected, validation per step), saving, publishing, versions, the
lifecycle, the journey's numbers after the engine ran, a user's path, roles, CSRF and
account isolation; on SQLite and PostgreSQL."""

from __future__ import annotations

import re
import secrets
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from web_fixtures import form_fields

from propel import journeys
from propel.campaigns import service as campaign_service
from propel.ingest.records import EventRecord, IngestItem, key_hash
from propel.ingest.service import ingest_sync
from propel.journeys.tables import journeys as journeys_table
from propel.predictions.tables import user_predictions


def form_of(html: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for name, value in form_fields(html, "journey-editor"):
        out[name].append(value)
    return dict(out)


def post(client, action: str, form: dict[str, list[str]], op: str, **changes):
    data = {**form, **{k: v if isinstance(v, list) else [v] for k, v in changes.items()},
            "op": [op]}
    return client.post(action, data=data, follow_redirects=False)


def unique(prefix: str) -> str:
    return f"{prefix} {secrets.token_hex(3)}"


def engage_editor(client, shop, groups=("High",), channel="inbox"):
    page = client.get("/journeys/new", params={"prediction": shop.prediction_id,
                                               "groups": list(groups), "channel": channel})
    assert page.status_code == 200, page.text
    return page


T0 = datetime.now(UTC).replace(microsecond=0)
PREDICTION = "Predict Conversions"


def base_form(client, name: str, **values) -> dict[str, list[str]]:
    """A journey form entered by the prediction's High group, with a goal and holdout."""
    form = {"csrf_token": [csrf_of(client)], "name": [name],
            "entry_type": ["prediction_groups"], "entry_prediction": [PREDICTION],
            "entry_groups": ["High"], "entry_every_hours": ["24"], "reentry": ["once"],
            "holdout": ["10"], "goal_event": ["Charged"], "goal_window": ["7"]}
    form.update({k: v if isinstance(v, list) else [v] for k, v in values.items()})
    return form


def with_steps(form: dict[str, list[str]], *steps: dict[str, str]) -> dict[str, list[str]]:
    out = {k: v for k, v in form.items() if not re.match(r"^s\d+\.", k)}
    out["step_count"] = [str(len(steps))]
    for i, step in enumerate(steps):
        for key, value in step.items():
            out[f"s{i}.{key}"] = value if isinstance(value, list) else [value]
    return out


def send(step_id: str, nxt: str = "", title: str = "Hello {{ user.identity }}") -> dict:
    return {"id": step_id, "orig": step_id, "type": "send", "channel": "inbox",
            "inbox_title": title, "inbox_body": "We kept your cart.", "next": nxt}


def csrf_of(client) -> str:
    page = client.get("/journeys")
    return re.search(r'"X-CSRF-Token": "([^"]+)"', page.text).group(1)


def saved_named(shop, name: str) -> list:
    with shop.propel.db.read() as conn:
        return conn.execute(select(journeys_table).where(
            journeys_table.c.account_id == shop.account_id,
            journeys_table.c.name == name)).all()


def step_card(html: str, index: int) -> str:
    found = re.search(rf'<li class="card step[^"]*" id="s{index}".*?(?=<li class="card step|'
                      r"<button type=\"submit\" name=\"op\" value=\"add\")", html, re.S)
    assert found, f"no step card {index}"
    return found.group(0)


def created_journey(shop, name: str) -> journeys.Journey:
    rows = saved_named(shop, name)
    assert len(rows) == 1, rows
    return journeys.get(shop.propel, shop.account_id, rows[0].id)


# ------------------------------------------------------------------ the list and the nav

def test_list_page_shows_journeys_with_their_numbers(dashboard):
    shop = dashboard.shop
    name = unique("Listed")
    j = journeys.create(shop.propel, shop.account_id, {
        "name": name, "entry": {"type": "event", "event": "Signed Up"},
        "steps": [{"id": "w", "type": "wait", "duration": {"days": 1}}]})
    client = dashboard.sign_in("viewer")
    page = client.get("/journeys")
    assert page.status_code == 200
    assert "<h1>Journeys</h1>" in page.text
    assert '<a href="/journeys" aria-current="page">Journeys</a>' in page.text
    row = re.search(rf'<a href="/journeys/{j.id}">{name}</a>.*?</tr>', page.text, re.S).group(0)
    assert "status-draft" in row and "event Signed Up" not in row and "Does Signed Up" in row
    assert "New journey" not in page.text  # viewers cannot create
    marketer = dashboard.sign_in("marketer")
    assert 'href="/journeys/new">New journey</a>' in marketer.get("/journeys").text


# ------------------------------------------------------------------ engage -> editor

def test_engage_dialog_offers_campaign_and_journey(dashboard):
    shop = dashboard.shop
    client = dashboard.sign_in("marketer")
    page = client.get(f"/predictions/{shop.prediction_id}/engage")
    assert re.search(r'<input type="radio" id="engagement-campaign" name="type" '
                     r'value="campaign" checked', page.text)
    assert re.search(r'<input type="radio" id="engagement-journey" name="type" '
                     r'value="journey"\s+data-action="/journeys/new"', page.text)
    assert '<label for="engagement-journey">Journey</label>' in page.text


def test_editor_is_prefilled_from_the_engage_flow_and_saves_a_draft(dashboard):
    shop = dashboard.shop
    client = dashboard.sign_in("marketer")
    page = engage_editor(client, shop, ("High", "Medium"), "email")
    assert "<h1>New journey</h1>" in page.text
    form = form_of(page.text)
    assert form["name"] == [f"{PREDICTION} — High, Medium journey"]
    assert form["entry_type"] == ["prediction_groups"]
    assert form["entry_prediction"] == [PREDICTION] and form["entry_groups"] == ["High",
                                                                              "Medium"]
    assert form["s0.type"] == ["send"] and form["s0.channel"] == ["email"]
    assert "your picks are waiting" in form["s0.email_subject"][0]
    assert form["holdout"] == ["10"] and form["goal_event"] == ["Charged"]
    for label in ("Journey name", "Who enters", "Holdout %", "Goal event", "Step name",
                  "Type", "Channel", "Subject", "HTML body", "Then go to"):
        assert re.search(rf'<label for="[^"]+">{re.escape(label)}</label>', page.text), label

    name = unique("Engaged")
    saved = post(client, "/journeys/new", form, "save", name=name)
    assert saved.status_code == 303, saved.text
    j = created_journey(shop, name)
    assert saved.headers["location"] == f"/journeys/{j.id}/edit?saved=1"
    assert j.status == "draft" and j.version == 1
    assert j.definition["entry"] == {"type": "prediction_groups", "prediction": PREDICTION,
                                     "groups": ["High", "Medium"], "every_hours": 24}
    assert j.definition["holdout_pct"] == 0.1
    assert j.definition["goal"]["event"] == "Charged"
    (step,) = j.definition["steps"]
    assert step["type"] == "send" and step["channel"] == "email" and step["next"] is None
    assert "your picks are waiting" in step["content"]["variants"][0]["subject"]
    again = client.get(saved.headers["location"])
    assert again.status_code == 200 and "Draft saved." in again.text
    assert form_of(again.text)["s0.email_subject"] == form["s0.email_subject"]


def test_engage_prefill_refuses_bad_groups_and_unknown_predictions(dashboard):
    shop = dashboard.shop
    client = dashboard.sign_in("marketer")
    none = client.get("/journeys/new", params={"prediction": shop.prediction_id})
    assert none.status_code == 422 and "Choose at least one group" in none.text
    bad = client.get("/journeys/new", params={"prediction": shop.prediction_id,
                                              "groups": ["Huge"]})
    assert bad.status_code == 422 and "Choose among the groups" in bad.text
    assert client.get("/journeys/new", params={"prediction": "prd_nope",
                                               "groups": ["High"]}).status_code == 404
    odd = client.get("/journeys/new", params={"channel": "pigeon"})
    assert odd.status_code == 200 and form_of(odd.text)["s0.channel"] == ["inbox"]


# ------------------------------------------------------------------ add, remove, connect

def test_add_remove_and_connect_steps(dashboard):
    shop = dashboard.shop
    client = dashboard.sign_in("marketer")
    form = form_of(engage_editor(client, shop).text)
    added = post(client, "/journeys/new", form, "add")
    assert added.status_code == 200
    form = form_of(added.text)
    assert form["step_count"] == ["2"] and form["s1.id"] == ["step2"]
    assert form["s0.next"] == ["step2"]  # the last step now leads to the new one
    assert re.search(r'id="s1-type" name="s1.type" class="step-type"[^>]*autofocus', added.text)
    # the connection selects list the steps by name
    assert '<option value="step2" selected>step2 (Wait)</option>' in added.text

    form = form_of(post(client, "/journeys/new", form, "add").text)
    form["s1.type"], form["s1.id"] = ["split"], ["coin"]
    form["s2.type"] = ["exit"]
    form = form_of(post(client, "/journeys/new", form, "add_path:1").text)
    # a renamed step keeps its incoming connection
    assert form["s0.next"] == ["coin"] and form["s1.path_count"] == ["3"]
    form["s1.p0.next"], form["s1.p1.next"], form["s1.p2.next"] = ["step3"] * 3
    form["s1.p0.percent"], form["s1.p1.percent"], form["s1.p2.percent"] = ["40"], ["30"], ["30"]
    form = form_of(post(client, "/journeys/new", form, "remove_path:1.2").text)
    assert form["s1.path_count"] == ["2"]
    form["s1.p1.percent"] = ["60"]
    name = unique("Connected")
    assert post(client, "/journeys/new", form, "save", name=name).status_code == 303
    steps = created_journey(shop, name).definition["steps"]
    assert [(s["id"], s["type"]) for s in steps] == [("first_message", "send"),
                                                      ("coin", "split"), ("step3", "exit")]
    assert steps[0]["next"] == "coin"
    assert steps[1]["paths"] == [{"percent": 40, "next": "step3"},
                                 {"percent": 60, "next": "step3"}]

    removed = post(client, "/journeys/new", form, "remove:1")
    form = form_of(removed.text)
    assert form["step_count"] == ["2"] and form["s1.id"] == ["step3"]
    assert form["s0.next"] == [""]  # the removed step's incoming connection is cleared


def test_every_step_type_round_trips_through_the_form(dashboard):
    shop = dashboard.shop
    client = dashboard.sign_in("marketer")
    name = unique("All types")
    form = with_steps(
        base_form(client, name),
        send("hello", "pause"),
        {"id": "pause", "type": "wait", "wait_days": "1", "wait_hours": "6", "next": "charged"},
        {"id": "charged", "type": "wait_until", "event": "Charged", "timeout_days": "2",
         "on_event": "bye", "on_timeout": "is_high"},
        {"id": "is_high", "type": "branch", "cond_kind": "prediction",
         "cond_prediction": PREDICTION, "cond_groups": ["High", "Medium"], "yes": "vip",
         "no": "did_open"},
        {"id": "did_open", "type": "branch", "cond_kind": "event", "cond_event": "App Opened",
         "cond_did": "no", "cond_within_days": "3", "yes": "ab", "no": "bye"},
        {"id": "ab", "type": "split", "path_count": "2", "p0.percent": "50",
         "p0.next": "vip", "p1.percent": "50", "p1.next": "bye"},
        {"id": "vip", "type": "update_property", "property": "vip", "value": "true",
         "next": "reminder"},
        send("reminder", "", "Still there?"),
        {"id": "bye", "type": "exit"})
    saved = post(client, "/journeys/new", form, "save")
    assert saved.status_code == 303, saved.text
    j = created_journey(shop, name)
    steps = {s["id"]: s for s in j.definition["steps"]}
    assert steps["pause"]["duration"] == {"days": 1, "hours": 6}
    assert steps["charged"]["timeout"] == {"days": 2}
    assert steps["charged"]["on_event"] == "bye" and steps["charged"]["on_timeout"] == "is_high"
    assert steps["is_high"]["condition"] == {"property": PREDICTION, "op": "in",
                                             "value": ["High", "Medium"]}
    assert steps["did_open"]["condition"]["did"] is False
    assert steps["did_open"]["condition"]["within"] == {"days": 3}
    assert steps["vip"]["value"] is True and steps["reminder"]["next"] is None
    # the editor shows the saved journey as it was typed, and saving it again changes nothing
    page = client.get(f"/journeys/{j.id}/edit")
    again = form_of(page.text)
    assert again["s3.cond_kind"] == ["property"]  # a prediction test reads as its property
    assert again["s3.cond_value"] == ["High, Medium"] and again["s3.cond_op"] == ["in"]
    assert post(client, f"/journeys/{j.id}/edit", again, "save").status_code == 303
    assert journeys.get(shop.propel, shop.account_id, j.id).definition == j.definition


def test_settings_the_form_does_not_edit_are_kept(dashboard):
    shop = dashboard.shop
    name = unique("Kept")
    j = journeys.create(shop.propel, shop.account_id, {
        "name": name, "entry": {"type": "event", "event": "Signed Up",
                                "where": [{"property": "plan", "op": "=", "value": "pro"}]},
        "steps": [
            {"id": "s", "type": "send", "channel": "inbox", "next": "b",
             "caps": {"per_day": 2}, "content": {"variants": [
                 {"name": "A", "split": 50, "title": "A", "body": "a"},
                 {"name": "B", "split": 50, "title": "B", "body": "b"}]}},
            {"id": "b", "type": "branch", "condition": {"or": [
                {"property": "plan", "op": "=", "value": "pro"},
                {"event": "Added To Cart", "did": True}]}, "yes": None, "no": None}]})
    client = dashboard.sign_in("marketer")
    form = form_of(client.get(f"/journeys/{j.id}/edit").text)
    assert form["entry_where"] == ["plan = pro"] and form["s1.cond_kind"] == ["json"]
    form["s0.inbox_title"] = ["A, changed"]
    assert post(client, f"/journeys/{j.id}/edit", form, "save").status_code == 303
    after = journeys.get(shop.propel, shop.account_id, j.id).definition
    assert after["steps"][0]["caps"] == {"per_day": 2}
    assert [v["title"] for v in after["steps"][0]["content"]["variants"]] == ["A, changed", "B"]
    assert after["steps"][1]["condition"] == j.definition["steps"][1]["condition"]
    assert after["entry"] == j.definition["entry"]


# ------------------------------------------------------------------ validation

@pytest.mark.parametrize("case", ["orphan", "cycle", "never_ends"])
def test_graph_problems_are_shown_on_their_step_and_nothing_is_saved(dashboard, case):
    shop = dashboard.shop
    client = dashboard.sign_in("marketer")
    name = unique(f"Broken {case}")
    steps = {
        "orphan": [send("a"), {"id": "lost", "type": "exit"}],
        "cycle": [send("a", "b"), {"id": "b", "type": "branch", "cond_kind": "property",
                                   "cond_property": "plan", "cond_op": "=",
                                   "cond_value": "pro", "yes": "a", "no": "c"},
                  {"id": "c", "type": "exit"}],
        "never_ends": [send("a", "w1"),
                       {"id": "w1", "type": "wait", "wait_days": "1", "next": "w2"},
                       {"id": "w2", "type": "wait", "wait_hours": "2", "next": "w1"}],
    }[case]
    form = with_steps(base_form(client, name), *steps)
    for op in ("validate", "save", "publish"):
        page = post(client, "/journeys/new", form, op)
        assert page.status_code == 422, (op, page.text[:400])
        assert 'role="alert"' in page.text and "nothing was saved" in page.text
        assert saved_named(shop, name) == []
    expected = {"orphan": (1, "steps[1]: orphan step &#39;lost&#39;: no path from the first "
                              "step leads to it"),
                "cycle": (0, "steps[0]: cycle without a wait: a → b → a"),
                "never_ends": (1, "steps[1]: never ends: no path from &#39;w1&#39; reaches "
                                  "an exit")}[case]
    index, message = expected
    card = step_card(page.text, index)
    assert 'class="card step has-error"' in card and message in card
    assert f'<a href="#s{index}">' in page.text  # the summary links to the step
    assert form_of(page.text)["name"] == [name]  # what was typed is kept


def test_field_problems_are_shown_by_their_control(dashboard):
    shop = dashboard.shop
    client = dashboard.sign_in("marketer")
    name = unique("Bad fields")
    form = with_steps(base_form(client, name, holdout="95", goal_window="0"),
                      send("a", "nowhere", "Hi {{ user.first_name "),
                      {"id": "w", "type": "wait", "wait_days": "soon", "next": ""},
                      {"id": "c", "type": "branch", "cond_kind": "json",
                       "cond_json": "{not json", "yes": "", "no": ""})
    page = post(client, "/journeys/new", form, "validate")
    assert page.status_code == 422 and saved_named(shop, name) == []
    assert re.search(r'id="holdout-error">Holdout % must be a number from 0 to 90', page.text)
    assert re.search(r'id="s2-cond_json-error">Not valid JSON', page.text)
    assert re.search(r'aria-invalid="true" aria-describedby="s2-cond_json-error', page.text)
    # the definition's own checks come back with their path, by the right control
    page = post(client, "/journeys/new", form, "validate", holdout="10", **{
        "s2.cond_json": '{"property": "plan", "op": "=", "value": "pro"}'})
    assert page.status_code == 422
    assert re.search(r'id="goal_window-error">goal.within_days: must be more than 0', page.text)
    assert re.search(r'id="s1-wait_days-error">steps\[1\].duration.days: must be a whole '
                     r"number", page.text)
    card = step_card(page.text, 0)
    assert re.search(r"steps\[0\].content.A.title: .*\(line 1\)", card), card[:2000]
    page = post(client, "/journeys/new", form, "validate", holdout="10", goal_window="7", **{
        "s0.inbox_title": "Hi", "s1.wait_days": "1",
        "s2.cond_json": '{"property": "plan", "op": "=", "value": "pro"}'})
    assert page.status_code == 422
    assert re.search(r"id=\"s0-next-error\">steps\[0\].next: no step &#39;nowhere&#39;",
                     page.text)
    ok = post(client, "/journeys/new", form, "validate", holdout="10", goal_window="7", **{
        "s0.inbox_title": "Hi", "s0.next": "w", "s1.wait_days": "1", "s1.next": "c",
        "s2.cond_json": '{"property": "plan", "op": "=", "value": "pro"}'})
    assert ok.status_code == 200 and "The journey is valid" in ok.text
    assert saved_named(shop, name) == []  # validating saves nothing


def test_malformed_forms_are_refused_cleanly(dashboard):
    client = dashboard.sign_in("marketer")
    token = csrf_of(client)
    for data in ({"csrf_token": token}, {"csrf_token": token, "step_count": "999999"},
                 {"csrf_token": token, "step_count": "x", "entry_type": "nope"},
                 {"csrf_token": token, "step_count": "1", "s0.type": "teleport",
                  "s0.extra": "[1, 2]", "entry_type": "audience", "entry_audience": "{"}):
        page = client.post("/journeys/new", data={**data, "op": "save"})
        assert page.status_code == 422, page.text[:300]
        assert 'role="alert"' in page.text
    odd = client.post("/journeys/new", data={"csrf_token": token, "op": "remove:abc"})
    assert odd.status_code == 200


# ------------------------------------------------------------------ lifecycle and versions

def _publishable(client, name: str) -> dict[str, list[str]]:
    return with_steps(base_form(client, name), send("hello", "pause"),
                      {"id": "pause", "type": "wait", "wait_days": "1", "next": ""})


def test_publish_edit_live_creates_version_two_then_pause_resume_stop(dashboard):
    shop = dashboard.shop
    client = dashboard.sign_in("marketer")
    name = unique("Lifecycle")
    published = post(client, "/journeys/new", _publishable(client, name), "publish")
    assert published.status_code == 303, published.text
    j = created_journey(shop, name)
    assert published.headers["location"] == f"/journeys/{j.id}"
    assert j.status == "live" and j.versions[0]["published_at"]

    page = client.get(f"/journeys/{j.id}")
    assert page.status_code == 200 and f"<h1>{name}</h1>" in page.text
    for button in ("Pause", "Stop"):
        assert f">{button}</button>" in page.text
    assert f'href="/journeys/{j.id}/edit">Edit</a>' in page.text

    edit = client.get(f"/journeys/{j.id}/edit")
    assert "Saving creates version 2" in edit.text and ">Save as version 2</button>" in edit.text
    assert ">Publish</button>" not in edit.text
    form = form_of(edit.text)
    form["s1.wait_days"] = ["2"]
    saved = post(client, f"/journeys/{j.id}/edit", form, "save")
    assert saved.status_code == 303 and saved.headers["location"] == f"/journeys/{j.id}"
    j2 = journeys.get(shop.propel, shop.account_id, j.id)
    assert j2.version == 2 and j2.status == "live"
    assert j2.definition["steps"][1]["duration"] == {"days": 2}
    assert journeys.get_version(shop.propel, shop.account_id, j.id, 1)["steps"][1][
        "duration"] == {"days": 1}
    page = client.get(f"/journeys/{j.id}")
    assert f'href="/journeys/{j.id}?version=1">Version 1</a>' in page.text
    v1 = client.get(f"/journeys/{j.id}", params={"version": "1"})
    assert v1.status_code == 200 and "Steps of version 1" in v1.text and "Wait 1 day" in v1.text
    for bad in ("9", "x", "-1"):
        assert client.get(f"/journeys/{j.id}", params={"version": bad}).status_code == 404

    token = csrf_of(client)
    for action, status in (("pause", "paused"), ("resume", "live"), ("pause", "paused"),
                           ("stop", "stopped")):
        done = client.post(f"/journeys/{j.id}/{action}", data={"csrf_token": token},
                           follow_redirects=False)
        assert done.status_code == 303, done.text
        assert journeys.get(shop.propel, shop.account_id, j.id).status == status
    refused = client.post(f"/journeys/{j.id}/resume", data={"csrf_token": token})
    assert refused.status_code == 409 and "cannot be" in refused.text
    assert client.post(f"/journeys/{j.id}/explode", data={"csrf_token": token}
                       ).status_code == 404
    locked = client.get(f"/journeys/{j.id}/edit")
    assert locked.status_code == 409 and "cannot be edited" in locked.text
    assert post(client, f"/journeys/{j.id}/edit", form, "save").status_code == 409
    page = client.get(f"/journeys/{j.id}")
    assert ">Pause</button>" not in page.text and ">Stop</button>" not in page.text


def test_a_draft_is_published_from_its_page(dashboard):
    shop = dashboard.shop
    client = dashboard.sign_in("marketer")
    name = unique("Draft first")
    assert post(client, "/journeys/new", _publishable(client, name), "save").status_code == 303
    j = created_journey(shop, name)
    page = client.get(f"/journeys/{j.id}")
    assert ">Publish</button>" in page.text and ">Pause</button>" not in page.text
    done = client.post(f"/journeys/{j.id}/publish", data={"csrf_token": csrf_of(client)},
                       follow_redirects=False)
    assert done.status_code == 303
    assert journeys.get(shop.propel, shop.account_id, j.id).status == "live"


# ------------------------------------------------------------------ numbers after the engine

def event(shop, identity: str, name: str, at: datetime) -> None:
    mid = f"{name}:{identity}:{at.timestamp()}:{secrets.token_hex(3)}"
    ingest_sync(shop.propel.db, shop.account_id, [IngestItem(
        key_hash(shop.account_id, mid), event=EventRecord(
            message_id=mid, identity=identity, name=name, ts=int(at.timestamp() * 1_000_000),
            properties="{}"))], [], "test")


def node_numbers(html: str, step: str) -> dict[str, int]:
    node = re.search(rf'data-step="{step}">(.*?)</li>\s*(?:<li class="card node|</ol>)',
                     html, re.S).group(1)
    return {k: int(v.replace(",", "")) for k, v in
            re.findall(r'<dd data-metric="(\w+)">([\d,]+)</dd>', node)}


def test_journey_page_numbers_are_the_stats_after_the_engine_ran(dashboard):
    shop = dashboard.shop
    propel = shop.propel
    name = unique("Engine")
    definition = {
        "name": name,
        "entry": {"type": "prediction_groups", "prediction": PREDICTION, "groups": ["High"]},
        "holdout_pct": 0.1, "goal": {"event": "Charged", "within_days": 7},
        "steps": [
            {"id": "hello", "type": "send", "channel": "inbox", "next": "charged",
             "content": {"variants": [{"name": "A", "split": 100, "title": "Hi",
                                       "body": "b"}]}},
            {"id": "charged", "type": "wait_until", "event": "Charged",
             "timeout": {"days": 2}, "on_event": "bye", "on_timeout": "high"},
            {"id": "high", "type": "branch", "condition": {"prediction": PREDICTION,
                                                           "group": ["High"]},
             "yes": "reminder", "no": "bye"},
            {"id": "reminder", "type": "send", "channel": "inbox", "next": None,
             "content": {"variants": [{"name": "A", "split": 100, "title": "Still there?",
                                       "body": "b"}]}},
            {"id": "bye", "type": "exit"}]}
    j = journeys.create(propel, shop.account_id, definition)
    journeys.publish(propel, shop.account_id, j.id, now=T0)
    journeys.advance(propel, now=T0)
    with propel.db.read() as conn:
        high = set(conn.execute(select(user_predictions.c.identity).where(
            user_predictions.c.prediction_id == shop.prediction_id,
            user_predictions.c.grp == "High")).scalars())
    stats = journeys.journey_stats(propel, shop.account_id, j.id)
    assert stats["totals"]["entered"] == len(high) > 0
    treated = stats["totals"]["entered"] - stats["totals"]["holdout"]
    buyer = next(i for i in sorted(high)
                 if not journeys.user_path(propel, shop.account_id, j.id, i)[0]["holdout"])
    event(shop, buyer, "Charged", T0 + timedelta(hours=1))
    journeys.advance(propel, now=T0 + timedelta(hours=2))

    client = dashboard.sign_in("viewer")
    page = client.get(f"/journeys/{j.id}")
    stats = journeys.journey_stats(propel, shop.account_id, j.id)
    assert stats["totals"]["converted"] == 1
    assert node_numbers(page.text, "charged")["waiting"] == treated - 1
    journeys.advance(propel, now=T0 + timedelta(days=2, minutes=1))

    page = client.get(f"/journeys/{j.id}")
    assert 'hx-trigger="every 5s"' in page.text  # live: the numbers refresh themselves
    stats = journeys.journey_stats(propel, shop.account_id, j.id)
    for s in stats["steps"]:
        shown = node_numbers(page.text, s["id"])
        expected = {k: s[k] for k in ("entered", "waiting", "exited")}
        if s["type"] == "send":
            expected.update({k: s["messages"][k] for k in ("sent", "opened", "clicked")})
        assert {k: shown[k] for k in expected} == expected, s["id"]
    assert node_numbers(page.text, "reminder")["entered"] == treated - 1
    assert node_numbers(page.text, "hello")["entered"] == treated
    totals = stats["totals"]
    for key, element in (("entered", "total-entered"), ("in_flight", "total-in-flight"),
                         ("converted", "total-converted")):
        shown = re.search(rf'id="{element}">([\d,]+)<', page.text).group(1)
        assert int(shown.replace(",", "")) == totals[key]
    lift = stats["lift"]
    if lift["diff"] is not None:
        assert "95 % CI" in page.text
    panel = client.get(f"/journeys/{j.id}/stats-panel")
    assert panel.status_code == 200 and "<html" not in panel.text
    assert node_numbers(panel.text, "reminder") == node_numbers(page.text, "reminder")

    # the user's path, as the API's path function tells it
    path = client.get(f"/journeys/{j.id}/path", params={"identity": buyer})
    assert path.status_code == 200 and f"<h1>Path of {buyer}</h1>" in path.text
    taken = re.findall(r'<th scope="row">(\w+)</th>', path.text)
    assert taken == [s["step"] for s in journeys.user_path(
        propel, shop.account_id, j.id, buyer)[0]["steps"]] == ["hello", "charged"]
    assert "goal" in path.text
    nobody = client.get(f"/journeys/{j.id}/path", params={"identity": "nobody-here"})
    assert nobody.status_code == 200 and "nobody-here has not entered this journey" in nobody.text
    blank = client.get(f"/journeys/{j.id}/path", params={"identity": " "})
    assert blank.status_code == 422 and "Enter a user" in blank.text

    # listed on the prediction's page among its engagements, and among the journeys
    prediction = client.get(f"/predictions/{shop.prediction_id}")
    row = re.search(rf'<a href="/journeys/{j.id}">{name}</a>.*?</tr>', prediction.text,
                    re.S).group(0)
    assert f'<td class="num">{totals["entered"]:,}</td>' in row
    assert f'<td class="num">{totals["converted"]:,}</td>' in row

    # the send steps' own campaigns stay off the campaigns list and point back here
    step_campaigns = [c.id for c in campaign_service.list_campaigns(propel, shop.account_id)
                      if c.strategy == "journey"]
    assert step_campaigns
    listed = client.get("/campaigns")
    assert not any(cid in listed.text for cid in step_campaigns)
    mine = [cid for cid in step_campaigns if name in client.get(f"/campaigns/{cid}").text]
    assert mine
    stats_page = client.get(f"/campaigns/{mine[0]}")
    assert f'<a href="/journeys/{j.id}">{name}</a>' in stats_page.text
    marketer = dashboard.sign_in("marketer")
    own = marketer.get(f"/campaigns/{mine[0]}")
    assert ">Duplicate</button>" not in own.text and ">Stop</button>" not in own.text


# ------------------------------------------------------------------ roles, CSRF, isolation

def test_viewers_see_but_cannot_change(dashboard):
    shop = dashboard.shop
    j = journeys.create(shop.propel, shop.account_id, {
        "name": unique("Viewer"), "entry": {"type": "event", "event": "Signed Up"},
        "steps": [{"id": "w", "type": "wait", "duration": {"days": 1}}]})
    client = dashboard.sign_in("viewer")
    editor = client.get("/journeys/new")
    assert editor.status_code == 200 and "Viewers cannot create or change journeys" in editor.text
    assert ">Save draft</button>" not in editor.text and ">Add step</button>" not in editor.text
    page = client.get(f"/journeys/{j.id}")
    assert page.status_code == 200 and ">Publish</button>" not in page.text
    assert ">Edit</a>" not in page.text
    token = csrf_of(client)
    form = with_steps(base_form(client, unique("Viewer new")), send("a"))
    for path, data in (("/journeys/new", form), (f"/journeys/{j.id}/edit", form),
                       (f"/journeys/{j.id}/publish", {"csrf_token": token}),
                       (f"/journeys/{j.id}/stop", {"csrf_token": token})):
        refused = client.post(path, data={**data, "op": "save"})
        assert refused.status_code == 403 and "marketer" in refused.text
    assert journeys.get(shop.propel, shop.account_id, j.id).status == "draft"
    assert saved_named(shop, form["name"][0]) == []


def test_posts_without_the_csrf_token_are_refused(dashboard):
    shop = dashboard.shop
    client = dashboard.sign_in("marketer")
    name = unique("No token")
    form = _publishable(client, name)
    form.pop("csrf_token")
    refused = post(client, "/journeys/new", form, "publish")
    assert refused.status_code == 403 and "security token" in refused.text
    assert saved_named(shop, name) == []
    j = journeys.create(shop.propel, shop.account_id, {
        "name": unique("Token"), "entry": {"type": "event", "event": "Signed Up"},
        "steps": [{"id": "w", "type": "wait", "duration": {"days": 1}}]})
    forged = client.post(f"/journeys/{j.id}/publish", data={"csrf_token": "forged"})
    assert forged.status_code == 403
    assert journeys.get(shop.propel, shop.account_id, j.id).status == "draft"


def test_another_accounts_journeys_are_not_found(dashboard):
    shop = dashboard.shop
    name = unique("Private")
    j = journeys.create(shop.propel, shop.account_id, {
        "name": name, "entry": {"type": "event", "event": "Signed Up"},
        "steps": [{"id": "w", "type": "wait", "duration": {"days": 1}}]})
    client = dashboard.sign_in(email=shop.other_admin)
    assert name not in client.get("/journeys").text
    for path in (f"/journeys/{j.id}", f"/journeys/{j.id}/edit",
                 f"/journeys/{j.id}/stats-panel", f"/journeys/{j.id}/path?identity=u1",
                 "/journeys/jrn_000000000000", "/journeys/%00bad", "/journeys/" + "x" * 300):
        assert client.get(path).status_code == 404, path
    token = csrf_of(client)
    for action in ("publish", "pause", "stop"):
        assert client.post(f"/journeys/{j.id}/{action}",
                           data={"csrf_token": token}).status_code == 404
    form = with_steps(base_form(client, name), send("a"))
    assert post(client, f"/journeys/{j.id}/edit", form, "save").status_code == 404
    assert journeys.get(shop.propel, shop.account_id, j.id).status == "draft"
