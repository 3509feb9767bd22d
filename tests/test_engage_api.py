"""Engage over HTTP (``propel/api/campaigns.py``), on SQLite and PostgreSQL: campaign
create / list / get / edit / publish / stop / duplicate, preview for one user, stats
after a delivery (funnel, groups, variants, lift), engage from a prediction and its
engagements, audiences count / preview / export / properties, account isolation,
malformed requests (4xx, never 500), and one full send through a real SMTP server with
its tracking links followed back through the API."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import time
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import insert, select, update

from propel.campaigns.delivery import DeliveryEngine, recover_expired
from propel.campaigns.dispatch import dispatch_campaign, finish_dispatches, in_holdout
from propel.campaigns.tables import messages
from propel.channels import registry
from propel.channels.base import Outcome
from propel.db.meta import utcnow
from propel.predictions import create_prediction
from propel.predictions.spec import from_template
from propel.predictions.tables import predictions, user_predictions
from propel.profiles import get_profile

GROUPS = ("High", "Medium", "Low")
LIFT_KEYS = {"method", "treated_n", "treated_conversions", "holdout_n", "holdout_conversions",
             "treated_rate", "holdout_rate", "diff", "low", "high", "relative"}
FUNNEL_KEYS = {"targeted", "holdout", "suppressed", "suppressed_by_reason", "sent",
               "delivered", "failed", "in_doubt", "pending", "opened", "clicked", "converted",
               "revenue", "holdout_converted", "holdout_revenue"}
HEADLINE_KEYS = {"targeted", "sent", "opened", "clicked", "converted"}


# --------------------------------------------------------------------------- helpers


class Recorder:
    """A channel double: records what it is given; ``fail`` maps identity -> Outcome
    fields for the ones that should not be delivered."""

    name = "recorder"
    dedupes = True

    def __init__(self, fail: dict[str, dict[str, Any]] | None = None) -> None:
        self.sent: list = []
        self.fail = fail or {}

    async def send(self, batch):
        self.sent.extend(batch)
        return [Outcome(m.key, **self.fail.get(m.identity, {"delivered": True}))
                for m in batch]

    async def aclose(self):
        pass


def deliver(propel, channel=None, now=None) -> int:
    """Run the delivery engine until nothing is due (a recording channel, or the
    account's configured one when ``channel`` is None); then close finished runs."""
    factory = (lambda account, name: channel) if channel is not None else None
    engine = DeliveryEngine(propel, channel_factory=factory)

    async def run() -> int:
        total = 0
        try:
            for _ in range(50):
                n = await engine.run_once(now)
                if not n:
                    break
                total += n
        finally:
            await engine.aclose()
        return total

    total = asyncio.run(run())
    finish_dispatches(propel)
    return total


def uid(i: int) -> str:
    return f"u{i:03d}"


def group_of(i: int) -> str:
    return GROUPS[i % 3]


def add_profiles(client, tenant, n: int, **extra: Any) -> None:
    profiles = [{"identity": uid(i), "email": f"{uid(i)}@example.test", "timezone": "UTC",
                 "consent": {"email": True},
                 "properties": {"first_name": f"Name{i}", "plan": "pro" if i % 2 else "free",
                                **extra}} for i in range(n)]
    r = client.post("/api/v1/profiles", json={"profiles": profiles}, headers=tenant.bearer)
    assert r.status_code == 200 and r.json()["accepted"] == n, r.text


def add_events(client, tenant, events: list[dict[str, Any]]) -> None:
    r = client.post("/api/v1/events", json={"events": events}, headers=tenant.bearer)
    assert r.status_code == 200 and r.json()["accepted"] == len(events), r.text


def seed_scores(propel, account_id: str, prediction_id: str, groups: dict[str, str]) -> None:
    """Store a scoring run's result as ``propel.predictions.scoring`` does."""
    now = utcnow()
    score = {"High": 90.0, "Medium": 50.0, "Low": 10.0}
    rows = [{"prediction_id": prediction_id, "identity": ident, "account_id": account_id,
             "probability": score[g] / 100, "score": score[g], "grp": g, "model_version": 1,
             "scored_at": now, "reasons": "[]"} for ident, g in groups.items()]

    def _store(conn):
        conn.execute(insert(user_predictions), rows)
        conn.execute(update(predictions).where(predictions.c.id == prediction_id).values(
            status="scored", current_version=1, last_scored_at=now, updated_at=now))

    propel.db.write(_store)


def scored_shop(client, propel, tenant, n: int = 30) -> str:
    """n users, a "Predict Conversions" prediction and a group for everyone; its id."""
    add_profiles(client, tenant, n)
    pred = create_prediction(propel, tenant.id, from_template("conversions"))
    seed_scores(propel, tenant.id, pred.id, {uid(i): group_of(i) for i in range(n)})
    return pred.id


def email_spec(**over: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "Spring sale", "channel": "email",
        "audience": {"property": "plan", "op": "in", "value": ["pro", "free"]},
        "content": {"variants": [{
            "name": "A", "split": 100,
            "subject": "Hi {{ user.first_name | default('there') }}",
            "html": '<p>Sale!</p><a href="https://shop.test/sale?x=1&amp;y=2">Shop</a>'}]},
        "holdout_pct": 0.0}
    spec.update(over)
    return spec


def create(client, tenant, **over: Any) -> dict[str, Any]:
    r = client.post("/api/v1/campaigns", json=email_spec(**over), headers=tenant.bearer)
    assert r.status_code == 201, r.text
    return r.json()


def error_of(r) -> str:
    return r.json()["error"]["message"]


def problem_fields(r) -> set[str]:
    return {p["field"] for p in r.json()["error"]["problems"]}


def states(propel, campaign_id: str) -> dict[str, int]:
    with propel.db.read() as conn:
        rows = conn.execute(select(messages.c.state).where(
            messages.c.campaign_id == campaign_id)).scalars().all()
    out: dict[str, int] = {}
    for s in rows:
        out[s] = out.get(s, 0) + 1
    return out


# --------------------------------------------------------------------------- create, list, get


def test_create_list_get_and_field_errors(client, tenant):
    h = tenant.bearer
    made = create(client, tenant, holdout_pct=0.15, caps={"per_day": 2},
                  dnd={"start": "22:00", "end": "07:00", "action": "drop"},
                  goal={"event": "Charged", "window_hours": 48, "revenue_property": "amount"})
    assert made["id"].startswith("cmp_") and made["status"] == "draft"
    assert made["channel"] == "email" and made["holdout_pct"] == 0.15
    assert made["schedule"] == {"type": "now"} and made["next_run_at"] is None
    assert made["caps"] == {"per_day": 2}
    assert made["dnd"] == {"start": "22:00", "end": "07:00", "action": "drop"}
    assert made["goal"] == {"event": "Charged", "where": [], "window_hours": 48,
                            "revenue_property": "amount"}

    # values the service refuses: 400, and the message names the field
    bad = [({"channel": "fax"}, "channel"),
           ({"name": "  "}, "name"),
           ({"holdout_pct": 0.95}, "holdout_pct"),
           ({"rate_per_second": 0}, "rate_per_second"),
           ({"schedule": {"type": "recurring", "every": "hourly"}}, "schedule.every"),
           ({"schedule": {"type": "at", "at": "tomorrow"}}, "schedule.at"),
           ({"dnd": {"start": "25:00"}}, "dnd.start"),
           ({"caps": {"per_day": 0}}, "caps.per_day"),
           ({"goal": {"window_hours": 5}}, "goal.event"),
           ({"goal": {"event": "Charged", "revenue_property": 7}}, "goal.revenue_property"),
           ({"audience": {"property": "plan", "op": "like", "value": "x"}}, "audience"),
           ({"prediction_id": "pred_nope"}, "prediction_id")]
    for over, field in bad:
        r = client.post("/api/v1/campaigns", json=email_spec(**over), headers=h)
        assert r.status_code == 400, (over, r.text)
        assert field in error_of(r), (over, r.text)

    # template errors carry the variant, field and line
    syntax = email_spec(content={"variants": [{
        "name": "A", "split": 100, "subject": "ok", "html": "<p>\n{{ user.first_name + }}</p>"}]})
    r = client.post("/api/v1/campaigns", json=syntax, headers=h)
    assert r.status_code == 400 and "line 2" in error_of(r)
    [problem] = r.json()["error"]["problems"]
    assert (problem["variant"], problem["field"], problem["line"]) == ("A", "html", 2)
    undefined = email_spec(content={"variants": [
        {"name": "A", "split": 50, "subject": "ok", "html": "<p>fine</p>"},
        {"name": "B", "split": 50, "subject": "ok", "html": "<p>\n\n{{ user.age * 2 }}</p>"}]})
    r = client.post("/api/v1/campaigns", json=undefined, headers=h)
    assert r.status_code == 400 and "line 3" in error_of(r) and "'B'" in error_of(r)
    assert r.json()["error"]["problems"][0]["line"] == 3

    # request shape: unknown, missing and mistyped fields are 422 naming the field
    r = client.post("/api/v1/campaigns", json={**email_spec(), "bogus": 1}, headers=h)
    assert r.status_code == 422 and "body.bogus" in problem_fields(r)
    r = client.post("/api/v1/campaigns", json={"channel": "email"}, headers=h)
    assert r.status_code == 422 and {"body.name", "body.audience",
                                     "body.content"} <= problem_fields(r)
    r = client.post("/api/v1/campaigns", json=email_spec(holdout_pct="lots"), headers=h)
    assert r.status_code == 422 and "body.holdout_pct" in problem_fields(r)

    # nothing invalid was stored; list and get carry the headline metrics
    listed = client.get("/api/v1/campaigns", headers=h).json()["campaigns"]
    assert [c["id"] for c in listed] == [made["id"]]
    assert listed[0]["headline"] == dict.fromkeys(HEADLINE_KEYS, 0)
    got = client.get(f"/api/v1/campaigns/{made['id']}", headers=h)
    assert got.status_code == 200
    assert {k: v for k, v in got.json().items() if k != "headline"} == made
    assert client.get("/api/v1/campaigns/cmp_nope", headers=h).status_code == 404
    assert client.get("/api/v1/campaigns").status_code == 401


# --------------------------------------------------------------------------- lifecycle


def test_edit_publish_stop_duplicate(client, propel, tenant):
    h = tenant.bearer
    add_profiles(client, tenant, 8)
    c = create(client, tenant)
    url = f"/api/v1/campaigns/{c['id']}"

    r = client.patch(url, json={"name": "Renamed", "holdout_pct": 0.25}, headers=h)
    assert r.status_code == 200, r.text
    assert (r.json()["name"], r.json()["holdout_pct"], r.json()["status"]) == (
        "Renamed", 0.25, "draft")
    # refused edits leave the campaign as it was
    for body, status, word in [({"name": None}, 400, "name"),
                               ({"content": None}, 400, "content"),
                               ({"holdout_pct": None}, 400, "holdout_pct"),
                               ({"holdout_pct": 2}, 400, "holdout_pct"),
                               ({"audience": {"or": []}}, 400, "audience"),
                               ({"channel": "sms"}, 422, "body.channel"),
                               ({"status": "running"}, 422, "body.status")]:
        r = client.patch(url, json=body, headers=h)
        assert r.status_code == status, (body, r.text)
        text = r.text if status == 422 else error_of(r)
        assert word in text, (body, r.text)
    assert client.get(url, headers=h).json()["name"] == "Renamed"
    # removing optional settings with null is allowed
    r = client.patch(url, json={"caps": {"per_day": 1}}, headers=h)
    assert r.json()["caps"] == {"per_day": 1}
    assert client.patch(url, json={"caps": None}, headers=h).json()["caps"] is None

    # scheduled: still editable, and a new time moves the next run
    later = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)
    client.patch(url, json={"schedule": {"type": "at", "at": later.isoformat()}}, headers=h)
    r = client.post(f"{url}/publish", headers=h)
    assert r.status_code == 200 and r.json()["status"] == "scheduled"
    assert datetime.fromisoformat(r.json()["next_run_at"]) == later
    r = client.post(f"{url}/publish", headers=h)
    assert r.status_code == 400 and "only a draft" in error_of(r)
    sooner = later - timedelta(days=1)
    r = client.patch(url, json={"schedule": {"type": "at", "at": sooner.isoformat()}},
                     headers=h)
    assert r.status_code == 200 and r.json()["status"] == "scheduled"
    assert datetime.fromisoformat(r.json()["next_run_at"]) == sooner
    assert dispatch_campaign(propel, tenant.id, c["id"]) is None  # not due yet

    # once it runs, edits are refused
    r = client.patch(url, json={"schedule": {"type": "now"}}, headers=h)
    assert datetime.fromisoformat(r.json()["next_run_at"]) <= datetime.now(UTC)
    assert dispatch_campaign(propel, tenant.id, c["id"]) is not None
    assert client.get(url, headers=h).json()["status"] == "running"
    r = client.patch(url, json={"name": "Too late"}, headers=h)
    assert r.status_code == 400 and "running campaign cannot be edited" in error_of(r)

    # stop: nothing more is sent, every pending message ends suppressed (stopped)
    r = client.post(f"{url}/stop", headers=h)
    assert r.status_code == 200 and r.json()["status"] == "stopped"
    assert r.json()["finished_at"] is not None
    assert deliver(propel, Recorder()) == 0
    stats = client.get(f"{url}/stats", headers=h).json()
    assert stats["totals"]["targeted"] == 8
    queued = 8 - stats["totals"]["holdout"]
    assert stats["totals"]["suppressed_by_reason"] == ({"stopped": queued} if queued else {})
    assert stats["totals"]["sent"] == 0
    r = client.post(f"{url}/stop", headers=h)
    assert r.status_code == 400 and "already stopped" in error_of(r)

    # duplicate: a new draft with the same definition
    r = client.post(f"{url}/duplicate", headers=h)
    assert r.status_code == 201, r.text
    copy = r.json()
    assert copy["id"] != c["id"] and copy["status"] == "draft"
    assert copy["name"] == "Renamed (copy)"
    for key in ("channel", "audience", "content", "schedule", "holdout_pct"):
        assert copy[key] == client.get(url, headers=h).json()[key], key
    ids = [x["id"] for x in client.get("/api/v1/campaigns", headers=h).json()["campaigns"]]
    assert ids == [c["id"], copy["id"]]
    # a draft can be stopped too
    assert client.post(f"/api/v1/campaigns/{copy['id']}/stop",
                       headers=h).json()["status"] == "stopped"


# --------------------------------------------------------------------------- preview


def test_preview_is_personalised_per_variant(client, propel, tenant, other_tenant):
    h = tenant.bearer
    scored_shop(client, propel, tenant, n=3)
    content = {"variants": [
        {"name": "A", "split": 50, "subject": "Hi {{ user.first_name | default('there') }}",
         "html": "<p>{{ user.plan | default('') }} plan</p>"},
        {"name": "B", "split": 50, "subject": "{{ campaign.name }} for {{ user.identity }}",
         "html": "<p>group {{ predictions['Predict Conversions'].group | default('none') }}"
                 " score {{ predictions['Predict Conversions'].score | default(0) }}</p>"}]}
    c = create(client, tenant, content=content)
    url = f"/api/v1/campaigns/{c['id']}/preview"

    r = client.post(url, params={"identity": uid(1)}, headers=h)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["identity"] == uid(1) and set(body["variants"]) == {"A", "B"}
    assert body["variants"]["A"]["subject"] == "Hi Name1"
    assert body["variants"]["A"]["html"] == "<p>pro plan</p>"
    assert body["variants"]["B"]["subject"] == f"Spring sale for {uid(1)}"
    assert body["variants"]["B"]["html"] == "<p>group Medium score 50.0</p>"
    assert body["variants"]["B"]["text"].strip() == "group Medium score 50.0"
    other = client.post(url, params={"identity": uid(0)}, headers=h).json()
    assert other["variants"]["A"]["subject"] == "Hi Name0"
    assert "group High" in other["variants"]["B"]["html"]

    r = client.post(url, params={"identity": "nobody"}, headers=h)
    assert r.status_code == 404 and "nobody" in error_of(r)
    assert client.post(url, headers=h).status_code == 422
    assert client.post(url, params={"identity": uid(1)},
                       headers=other_tenant.bearer).status_code == 404


# --------------------------------------------------------------------------- stats


def test_schedules_that_could_never_run_are_refused(client, tenant):
    h = tenant.bearer
    r = client.post("/api/v1/campaigns", headers=h, json=email_spec(
        schedule={"type": "at", "at": "0001-01-01T00:00", "user_timezone": True}))
    assert r.status_code == 400 and "schedule.at must be between" in error_of(r)
    r = client.post("/api/v1/campaigns", headers=h, json=email_spec(
        schedule={"type": "recurring", "every": "daily", "until": "9999-12-31T23:00"}))
    assert r.status_code == 400 and "schedule.until must be between" in error_of(r)
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    c = create(client, tenant, schedule={"type": "recurring", "every": "daily",
                                         "until": past})
    r = client.post(f"/api/v1/campaigns/{c['id']}/publish", headers=h)
    assert r.status_code == 400 and "is before the first run" in error_of(r)
    assert client.get(f"/api/v1/campaigns/{c['id']}", headers=h).json()["status"] == "draft"


def test_a_campaign_on_a_prediction_group_records_groups_without_prediction_id(
        client, propel, tenant):
    # Made through the API (or CleverTap's) on the group property alone, with no
    # prediction_id: the messages still record the group, score and model version.
    h = tenant.bearer
    scored_shop(client, propel, tenant, n=30)
    c = create(client, tenant, holdout_pct=0.0, audience={
        "and": [{"property": "Predict Conversions", "op": "in", "value": ["High", "Medium"]}]})
    assert c["prediction_id"] is None
    assert client.post(f"/api/v1/campaigns/{c['id']}/publish", headers=h).status_code == 200
    assert dispatch_campaign(propel, tenant.id, c["id"]) is not None
    with propel.db.read() as conn:
        rows = conn.execute(select(messages.c.identity, messages.c.grp, messages.c.score,
                                   messages.c.model_version).where(
            messages.c.campaign_id == c["id"])).all()
    assert len(rows) == 20
    assert {(r.identity, r.grp) for r in rows} == {
        (uid(i), group_of(i)) for i in range(30) if group_of(i) != "Low"}
    assert {r.model_version for r in rows} == {1} and None not in {r.score for r in rows}
    stats = client.get(f"/api/v1/campaigns/{c['id']}/stats", headers=h).json()
    assert {g: s["targeted"] for g, s in stats["groups"].items() if s["targeted"]} == {
        "High": 10, "Medium": 10}


def test_stats_after_delivery(client, propel, tenant):
    h = tenant.bearer
    n = 60
    pred_id = scored_shop(client, propel, tenant, n=n)
    content = {"variants": [
        {"name": "A", "split": 50, "subject": "A {{ user.first_name | default('') }}",
         "html": '<p>A</p><a href="https://shop.test/a">go</a>'},
        {"name": "B", "split": 50, "subject": "B", "html": "<p>B</p>"}]}
    c = create(client, tenant, content=content, holdout_pct=0.25, prediction_id=pred_id,
               audience={"and": []},
               goal={"event": "Charged", "window_hours": 24, "revenue_property": "amount"})
    cid = c["id"]
    assert client.post(f"/api/v1/campaigns/{cid}/publish", headers=h).status_code == 200
    assert dispatch_campaign(propel, tenant.id, cid) is not None
    held = {uid(i) for i in range(n) if in_holdout(cid, uid(i), 0.25)}
    assert 0 < len(held) < n
    treated = [uid(i) for i in range(n) if uid(i) not in held]
    failing = treated[0]
    channel = Recorder(fail={failing: {"delivered": False, "error": "rejected"}})
    deliver(propel, channel)
    assert sorted(m.identity for m in channel.sent) == sorted(treated)

    # opens and clicks through the tracking routes of the recorded messages
    opener = treated[1]
    [opened_msg] = [m for m in channel.sent if m.identity == opener]
    pixel = re.search(r'<img src="([^"]+)"', opened_msg.html).group(1)
    assert client.get(urlsplit(pixel).path).status_code == 200
    # the clicker drew variant A, the one with a link
    clicked_msg = next(m for m in channel.sent
                       if "/t/c/" in m.html and m.identity not in (failing, opener))
    link = re.search(r'href="([^"]+)"', clicked_msg.html).group(1)
    r = client.get(urlsplit(link).path, follow_redirects=False)
    assert r.status_code == 302 and r.headers["location"] == "https://shop.test/a"
    clicked = 1

    # conversions after the dispatch started, for treated and holdout users
    converters = [u for u in treated if u not in (failing, opener, clicked_msg.identity)][:2]
    converters.append(sorted(held)[0])
    add_events(client, tenant, [
        {"identity": who, "name": "Charged", "properties": {"amount": 10.5 * (k + 1)},
         "message_id": f"conv-{who}"} for k, who in enumerate(converters)]
        + [{"identity": treated[-1], "name": "Viewed", "message_id": "other-event"}])
    time.sleep(0.01)

    r = client.get(f"/api/v1/campaigns/{cid}/stats", headers=h)
    assert r.status_code == 200, r.text
    stats = r.json()
    totals = stats["totals"]
    assert set(totals) == FUNNEL_KEYS
    assert totals["targeted"] == n and totals["holdout"] == len(held)
    assert totals["failed"] == 1 and totals["sent"] == totals["delivered"] == len(treated) - 1
    assert totals["opened"] == 1 + clicked and totals["clicked"] == clicked
    assert totals["converted"] == 2 and totals["holdout_converted"] == 1
    assert totals["revenue"] == 10.5 + 21.0 and totals["holdout_revenue"] == 31.5
    lift = stats["lift"]
    assert set(lift) == LIFT_KEYS
    assert lift["treated_n"] == n - len(held) and lift["holdout_n"] == len(held)
    assert lift["treated_conversions"] == 2 and lift["holdout_conversions"] == 1
    assert lift["low"] <= lift["diff"] <= lift["high"]
    assert lift["diff"] == pytest.approx(2 / (n - len(held)) - 1 / len(held))

    # per likelihood group (recorded at send time), in High, Medium, Low order
    assert list(stats["groups"]) == list(GROUPS)
    for g, s in stats["groups"].items():
        assert s["targeted"] == sum(1 for i in range(n) if group_of(i) == g)
        assert s["holdout"] == sum(1 for i in range(n) if group_of(i) == g and uid(i) in held)
        assert set(s["lift"]) == LIFT_KEYS
    assert sum(s["converted"] for s in stats["groups"].values()) == 2
    # per variant: every user drew one, holdout included
    assert set(stats["variants"]) == {"A", "B"}
    assert sum(v["targeted"] for v in stats["variants"].values()) == n
    for v in stats["variants"].values():
        assert set(v["lift"]) == LIFT_KEYS and "conversion_rate" in v
    assert sum(v["converted"] for v in stats["variants"].values()) == 2
    today = datetime.now(UTC).date().isoformat()
    assert stats["series"] and stats["series"][-1]["bucket"].startswith(today)
    assert sum(b["sent"] for b in stats["series"]) == len(treated) - 1

    hourly = client.get(f"/api/v1/campaigns/{cid}/stats?series=hourly", headers=h).json()
    assert hourly["totals"] == totals and len(hourly["series"][-1]["bucket"]) > 10
    r = client.get(f"/api/v1/campaigns/{cid}/stats?series=weekly", headers=h)
    assert r.status_code == 400 and "series" in error_of(r)
    headline = client.get(f"/api/v1/campaigns/{cid}", headers=h).json()["headline"]
    assert headline == {"targeted": n, "sent": len(treated) - 1, "opened": 1 + clicked,
                        "clicked": clicked, "converted": 2}
    assert client.get(f"/api/v1/campaigns/{cid}", headers=h).json()["status"] == "completed"


# --------------------------------------------------------------------------- engage


def test_engage_from_prediction(client, propel, tenant, other_tenant):
    h = tenant.bearer
    r = client.post("/api/v1/predictions", json={"template": "conversions"}, headers=h)
    assert r.status_code == 201, r.text
    conv = r.json()["id"]
    churn = client.post("/api/v1/predictions", json={"template": "churn"},
                        headers=h).json()["id"]

    r = client.post(f"/api/v1/predictions/{conv}/engage", json={"groups": ["Low", "High"]},
                    headers=h)
    assert r.status_code == 201, r.text
    high, low = r.json()["campaigns"]  # in High, Medium, Low order
    assert [high["name"], low["name"]] == ["Predict Conversions — High",
                                           "Predict Conversions — Low"]
    assert [high["strategy"], low["strategy"]] == ["Timely offer or reminder",
                                                   "Re-engagement reward"]
    for c, g in ((high, "High"), (low, "Low")):
        assert c["status"] == "draft" and c["channel"] == "email"
        assert c["prediction_id"] == conv and c["holdout_pct"] == 0.10
        assert c["audience"] == {"property": "Predict Conversions", "op": "in", "value": [g]}
        # the default goal is the prediction's own: Charged within its window
        assert c["goal"] == {"event": "Charged", "where": [], "window_hours": 14 * 24,
                             "revenue_property": None}
        assert c["content"]["variants"][0]["subject"]

    r = client.post(f"/api/v1/predictions/{conv}/engage", headers=h, json={
        "groups": ["High", "Medium"], "per_group": False, "channel": "inbox",
        "holdout_pct": 0.2})
    assert r.status_code == 201, r.text
    [both] = r.json()["campaigns"]
    assert both["audience"]["value"] == ["High", "Medium"] and both["channel"] == "inbox"
    assert both["strategy"] == ("High: Timely offer or reminder; "
                                "Medium: Incentive or follow-up")
    assert both["holdout_pct"] == 0.2 and both["content"]["variants"][0]["title"]

    # an undesired outcome: retention strategies and no conversion goal
    r = client.post(f"/api/v1/predictions/{churn}/engage", json={"groups": ["High"],
                                                                 "channel": "push"}, headers=h)
    [keep] = r.json()["campaigns"]
    assert keep["strategy"] == "Retention offer" and keep["goal"] is None
    assert keep["content"]["variants"][0]["body"]

    # refused: nothing is created
    for body, status in [({"groups": []}, 400), ({"groups": ["Top"]}, 400),
                         ({"groups": ["High", "Top"]}, 400),
                         ({"groups": ["High"], "channel": "fax"}, 400),
                         ({"groups": ["High"], "holdout_pct": 5}, 400),
                         ({"groups": "High"}, 422), ({"groups": ["High"], "x": 1}, 422),
                         ({}, 422)]:
        r = client.post(f"/api/v1/predictions/{conv}/engage", json=body, headers=h)
        assert r.status_code == status, (body, r.text)
    assert client.post("/api/v1/predictions/pred_nope/engage", json={"groups": ["High"]},
                       headers=h).status_code == 404
    assert client.post(f"/api/v1/predictions/{conv}/engage", json={"groups": ["High"]},
                       headers=other_tenant.bearer).status_code == 404

    # engagements: this prediction's campaigns only, with headline metrics
    r = client.get(f"/api/v1/predictions/{conv}/engagements", headers=h)
    assert r.status_code == 200
    listed = r.json()["campaigns"]
    assert [c["id"] for c in listed] == [high["id"], low["id"], both["id"]]
    assert all(c["headline"] == dict.fromkeys(HEADLINE_KEYS, 0) for c in listed)
    assert [c["id"] for c in client.get(f"/api/v1/predictions/{churn}/engagements",
                                        headers=h).json()["campaigns"]] == [keep["id"]]
    assert client.get(f"/api/v1/predictions/{conv}/engagements",
                      headers=other_tenant.bearer).status_code == 404
    assert len(client.get("/api/v1/campaigns", headers=h).json()["campaigns"]) == 4


# --------------------------------------------------------------------------- audiences


def test_audiences_count_preview_export_properties(client, propel, tenant, other_tenant):
    h = tenant.bearer
    n = 30
    scored_shop(client, propel, tenant, n=n)
    high = {"property": "Predict Conversions", "op": "=", "value": "High"}
    expected = sorted(uid(i) for i in range(n) if group_of(i) == "High")

    r = client.post("/api/v1/audiences/count", json={"audience": high}, headers=h)
    assert r.status_code == 200 and r.json() == {"count": len(expected)}
    both = {"and": [high, {"property": "plan", "op": "=", "value": "pro"}]}
    assert client.post("/api/v1/audiences/count", json={"audience": both}, headers=h).json()[
        "count"] == sum(1 for i in range(n) if group_of(i) == "High" and i % 2)
    assert client.post("/api/v1/audiences/count", json={"audience": high},
                       headers=other_tenant.bearer).json() == {"count": 0}

    r = client.post("/api/v1/audiences/preview", json={"audience": high, "limit": 3},
                    headers=h)
    assert r.status_code == 200
    users = r.json()["users"]
    assert len(users) == 3 and [u["identity"] for u in users] == sorted(
        u["identity"] for u in users)
    for u in users:
        assert u["identity"] in expected
        assert u["predictions"] == {"Predict Conversions": "High"}
        assert u["scores"] == {"Predict Conversions": 90.0}
        assert u["email"] == f"{u['identity']}@example.test"
    assert len(client.post("/api/v1/audiences/preview", json={"audience": high, "limit": 0},
                           headers=h).json()["users"]) == 1

    r = client.post("/api/v1/audiences/export", json={"audience": high}, headers=h)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(r.text)))
    assert rows[0] == ["identity", "email", "phone", "Predict Conversions",
                       "Predict Conversions score"]
    assert [row[0] for row in rows[1:]] == expected
    assert all(row[1] == f"{row[0]}@example.test" and row[3:] == ["High", "90.0"]
               for row in rows[1:])

    r = client.get("/api/v1/audiences/properties", headers=h)
    assert r.status_code == 200
    props = {p["name"]: p for p in r.json()["properties"]}
    first = r.json()["properties"][0]
    assert first["name"] == "Predict Conversions" and first["kind"] == "prediction"
    assert set(first["values"]) == set(GROUPS)
    assert props["Predict Conversions score"]["type"] == "number"
    assert props["plan"]["kind"] == "profile" and props["email"]["kind"] == "system"
    other = client.get("/api/v1/audiences/properties", headers=other_tenant.bearer).json()
    assert not any(p["kind"] == "prediction" for p in other["properties"])

    for route in ("count", "preview", "export"):
        r = client.post(f"/api/v1/audiences/{route}", headers=h,
                        json={"audience": {"property": "plan", "op": "like", "value": 1}})
        assert r.status_code == 400 and "op" in error_of(r), (route, r.text)
        for body in ({"audience": [1]}, {}, {"audience": {"and": []}, "extra": 1}):
            assert client.post(f"/api/v1/audiences/{route}", json=body,
                               headers=h).status_code == 422, (route, body)
        assert client.post(f"/api/v1/audiences/{route}",
                           json={"audience": high}).status_code == 401


# --------------------------------------------------------------------------- isolation


def test_other_accounts_campaigns_are_not_found(client, propel, tenant, other_tenant):
    add_profiles(client, tenant, 3)
    c = create(client, tenant)
    url = f"/api/v1/campaigns/{c['id']}"
    o = other_tenant.bearer
    calls = [("get", url, None), ("patch", url, {"name": "mine"}),
             ("post", f"{url}/publish", None), ("post", f"{url}/stop", None),
             ("post", f"{url}/duplicate", None), ("get", f"{url}/stats", None),
             ("post", f"{url}/preview?identity={uid(0)}", None)]
    for method, path, body in calls:
        r = client.request(method, path, json=body, headers=o)
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["error"]["code"] == "not_found"
    assert client.get("/api/v1/campaigns", headers=o).json() == {"campaigns": []}
    assert client.get(url, headers=tenant.bearer).json()["status"] == "draft"
    assert client.get(url, headers=tenant.bearer).json()["name"] == "Spring sale"
    assert len(client.get("/api/v1/campaigns", headers=tenant.bearer).json()[
        "campaigns"]) == 1


def test_malformed_requests_are_4xx_never_500(client, tenant):
    h = tenant.bearer
    c = create(client, tenant)
    url = f"/api/v1/campaigns/{c['id']}"
    raw = [b"{", b"[1, 2]", b"null", b'"text"', b"{\"name\": }", b"\xff\xfe"]
    for path in ("/api/v1/campaigns", url, "/api/v1/audiences/count"):
        method = "patch" if path == url else "post"
        for body in raw:
            r = client.request(method, path, content=body,
                               headers={**h, "content-type": "application/json"})
            assert 400 <= r.status_code < 500, (path, body, r.status_code, r.text)
    odd_specs = [
        {"schedule": {"type": "recurring", "every": "daily", "until": "not a date"}},
        {"schedule": {"type": "recurring", "every": "weekly", "weekday": "Monday"}},
        {"schedule": {"type": 5}}, {"schedule": {"type": "at"}},
        {"dnd": {"start": ["x"]}}, {"dnd": {"action": {"a": 1}}},
        {"caps": {"per_day": "3"}}, {"caps": {"per_campaign": 10**9}},
        {"goal": {"event": "x", "where": {"a": 1}}}, {"goal": {"event": "x", "where": None}},
        {"goal": {"event": "x", "where": [{"property": "p", "op": "??", "value": 1}]}},
        {"goal": {"event": ["x"]}}, {"goal": {"event": "x", "window_hours": "24"}},
        {"content": {"variants": "x"}}, {"content": {"variants": [{"name": 5}]}},
        {"content": {"variants": [{"name": "A", "split": 100, "subject": 5}]}},
        {"content": {"variants": [{"name": "A", "split": "all", "subject": "s",
                                   "html": "x"}]}},
        {"audience": {"and": "x"}}, {"audience": {"not": None}},
        {"audience": {"event": "x", "within_days": -1}},
        {"holdout_pct": float("nan")}, {"rate_per_second": float("inf")},
        {"holdout_pct": float("-inf")}, {"holdout_pct": 1e308}, {"name": "x" * 201},
    ]
    ctype = {**h, "content-type": "application/json"}
    for over in odd_specs:
        # json.dumps writes NaN / Infinity, which Python's JSON parser accepts
        r = client.post("/api/v1/campaigns", content=json.dumps(email_spec(**over)),
                        headers=ctype)
        assert 400 <= r.status_code < 500, (over, r.status_code, r.text)
        r = client.patch(url, content=json.dumps(over), headers=ctype)
        assert 400 <= r.status_code < 500, ("patch", over, r.status_code, r.text)
    assert client.get(url, headers=h).json()["schedule"] == {"type": "now"}
    for path in (f"{url}/publish", f"{url}/stop", f"{url}/duplicate"):
        r = client.post(path, content=b"garbage", headers=h)
        assert r.status_code < 500, (path, r.text)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # validation only
def test_schedule_until_error_names_the_field(client, tenant):
    r = client.post("/api/v1/campaigns", headers=tenant.bearer, json=email_spec(
        schedule={"type": "recurring", "every": "daily", "until": "not a date"}))
    assert r.status_code == 400 and "schedule.until" in error_of(r)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # validation only
def test_engage_from_a_long_window_prediction(client, tenant):
    h = tenant.bearer
    r = client.post("/api/v1/predictions", headers=h, json={
        "name": "Big buyers", "goal_event": "Charged", "window_days": 120})
    assert r.status_code == 201, r.text
    r = client.post(f"/api/v1/predictions/{r.json()['id']}/engage", json={"groups": ["High"]},
                    headers=h)
    assert r.status_code == 201, r.text


# --------------------------------------------------------------------------- e-mail end to end


def test_email_through_smtp_with_tracking_and_unsubscribe(client, propel, tenant, smtp_peer):
    h = tenant.bearer
    n = 5
    add_profiles(client, tenant, n)
    registry.set_config(propel.db, tenant.id, "email", {
        "host": smtp_peer.host, "port": smtp_peer.port, "security": "none",
        "from_address": "Shop <news@shop.test>", "timeout": 5})
    c = create(client, tenant, audience={"and": []})
    assert client.post(f"/api/v1/campaigns/{c['id']}/publish", headers=h).status_code == 200
    assert dispatch_campaign(propel, tenant.id, c["id"]) is not None
    assert deliver(propel) == n
    assert len(smtp_peer.received) == n
    with propel.db.read() as conn:
        keys = dict(conn.execute(select(messages.c.identity, messages.c.key).where(
            messages.c.campaign_id == c["id"])).all())

    base = propel.settings.public_url.rstrip("/")
    tracked: dict[str, tuple[str, str, str]] = {}
    for mail in smtp_peer.received:
        msg: EmailMessage = mail.message
        [to] = mail.rcpt_tos
        ident = to.split("@")[0]
        # Message-ID is derived from the outbox key: the same for any resend
        assert msg["Message-ID"] == f"<{keys[ident]}@shop.test>"
        assert msg["Subject"] == f"Hi Name{int(ident[1:])}"
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        unsub = re.fullmatch(r"<(\S+)>", str(msg["List-Unsubscribe"]))
        assert unsub and unsub.group(1).startswith(f"{base}/u/")
        html = msg.get_body(("html",)).get_content()
        pixel = re.search(r'<img src="([^"]+)" width="1" height="1"', html)
        assert pixel and re.fullmatch(rf"{re.escape(base)}/t/o/[\w.-]+\.gif", pixel.group(1))
        [link] = re.findall(r'<a href="([^"]+)"', html)
        assert re.fullmatch(rf"{re.escape(base)}/t/c/[\w.-]+", link)
        assert "shop.test/sale" not in html  # only the tracked link is left
        assert msg.get_body(("plain",)).get_content().strip()
        tracked[ident] = (pixel.group(1), link, unsub.group(1))

    # the reader opens one, clicks another (twice): recorded once each
    opener, clicker, leaver = uid(0), uid(1), uid(2)
    r = client.get(urlsplit(tracked[opener][0]).path)
    assert r.status_code == 200 and r.headers["content-type"] == "image/gif"
    for _ in range(2):
        r = client.get(urlsplit(tracked[clicker][1]).path, follow_redirects=False)
        assert r.status_code == 302
        assert r.headers["location"] == "https://shop.test/sale?x=1&y=2"
    stats = client.get(f"/api/v1/campaigns/{c['id']}/stats", headers=h).json()["totals"]
    assert (stats["sent"], stats["opened"], stats["clicked"]) == (n, 2, 1)

    # one-click unsubscribe (RFC 8058) through the header's URL
    r = client.post(urlsplit(tracked[leaver][2]).path, content=b"List-Unsubscribe=One-Click",
                    headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200 and r.json() == {"unsubscribed": True, "channel": "email"}
    assert get_profile(propel.db, tenant.id, leaver).consent["email"] is False

    # a worker that died after handing one over: the resend carries the same Message-ID
    resent = uid(3)
    past = utcnow() - timedelta(minutes=10)
    propel.db.write(lambda conn: conn.execute(update(messages).where(
        messages.c.key == keys[resent]).values(state="sending", claim_until=past)))
    assert recover_expired(propel) == {"resent": 1, "in_doubt": 0}
    assert deliver(propel) == 1
    copies = [m.message_id for m in smtp_peer.received if m.rcpt_tos == [f"{resent}@example.test"]]
    assert copies == [f"<{keys[resent]}@shop.test>"] * 2
    assert states(propel, c["id"]) == {"sent": n}
