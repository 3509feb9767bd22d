"""CleverTap-compatible campaign API (``/1/targets/*.json``), on SQLite and PostgreSQL:
the official Node client creating, estimating, listing, reading results of and stopping
targets against a live server (with a delivery run in this process, since the live
server has no background workers), then request and response shapes, errors in
CleverTap's ``{"status": "fail", "error", "code"}`` shape and credentials over HTTP."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import re
import shutil
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import insert, update

from propel.campaigns.delivery import DeliveryEngine
from propel.campaigns.dispatch import dispatch_campaign, finish_dispatches, in_holdout
from propel.channels.base import Outcome
from propel.db.meta import utcnow
from propel.ingest.limits import MAX_BODY_BYTES
from propel.predictions import create_prediction
from propel.predictions.spec import from_template
from propel.predictions.tables import predictions, user_predictions

NODE = shutil.which("node")
NODE_DIR = Path(__file__).parent / "node"
DRIVER = NODE_DIR / "clevertap_driver.js"
needs_node = pytest.mark.skipif(
    NODE is None, reason="node is not on PATH, so the official CleverTap Node client cannot run")

GROUPS = ("High", "Medium", "Low")
N = 24
TODAY = int(datetime.now(UTC).strftime("%Y%m%d"))
YESTERDAY = int((datetime.now(UTC) - timedelta(days=1)).strftime("%Y%m%d"))
HIGH = {"common_profile_properties": {"profile_fields": [
    {"name": "Predict Conversions", "operator": "equals", "value": "High"}]}}
CONTENT = {"title": "Hello {{ user.first_name | default('you') }}",
           "body": "<p>Your picks</p><a href=\"https://shop.test/picks\">see</a>"}


def uid(i: int) -> str:
    return f"u{i:02d}"


def group_of(i: int) -> str:
    return GROUPS[i % 3]


HIGH_IDS = [uid(i) for i in range(N) if group_of(i) == "High"]


# --------------------------------------------------------------------------- helpers


class Recorder:
    name = "recorder"
    dedupes = True

    def __init__(self, fail: set[str] = frozenset()) -> None:
        self.sent: list = []
        self.fail = fail

    async def send(self, batch):
        self.sent.extend(batch)
        return [Outcome(m.key, delivered=m.identity not in self.fail,
                        error="rejected" if m.identity in self.fail else None)
                for m in batch]

    async def aclose(self):
        pass


def deliver(propel, channel) -> None:
    engine = DeliveryEngine(propel, channel_factory=lambda account, name: channel)

    async def run() -> None:
        for _ in range(50):
            if not await engine.run_once():
                break

    asyncio.run(run())
    finish_dispatches(propel)


def seed_shop(base_url: str, propel, tenant) -> None:
    """N users with e-mail addresses, a "Predict Conversions" group for each, and an
    "Added To Cart" event for the first six."""
    with httpx.Client(base_url=base_url, headers=tenant.bearer, timeout=20) as http:
        r = http.post("/api/v1/profiles", json={"profiles": [
            {"identity": uid(i), "email": f"{uid(i)}@example.test",
             "consent": {"email": True}, "properties": {"first_name": f"N{i}"}}
            for i in range(N)]})
        assert r.status_code == 200 and r.json()["accepted"] == N, r.text
        r = http.post("/api/v1/events", json={"events": [
            {"identity": uid(i), "name": "Added To Cart", "message_id": f"cart-{i}"}
            for i in range(6)]})
        assert r.status_code == 200 and r.json()["accepted"] == 6, r.text
    pred = create_prediction(propel, tenant.id, from_template("conversions"))
    now = utcnow()
    rows = [{"prediction_id": pred.id, "identity": uid(i), "account_id": tenant.id,
             "probability": 0.5, "score": 50.0, "grp": group_of(i), "model_version": 1,
             "scored_at": now, "reasons": "[]"} for i in range(N)]

    def _store(conn):
        conn.execute(insert(user_predictions), rows)
        conn.execute(update(predictions).where(predictions.c.id == pred.id).values(
            status="scored", current_version=1, last_scored_at=now, updated_at=now))

    propel.db.write(_store)


@pytest.fixture(scope="session")
def node_client() -> Path:
    """The pinned, unmodified npm ``clevertap`` package, installed on first use."""
    if NODE is None:
        pytest.skip("node is not on PATH")
    if not (NODE_DIR / "node_modules" / "clevertap").is_dir():
        npm = shutil.which("npm")
        assert npm, "node_modules is missing and npm is not on PATH to run `npm ci`"
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True,
                       timeout=300, capture_output=True)
    return DRIVER


@pytest.fixture
def targets(node_client, live_server, tenant, tmp_path):
    """targets(action, payload) -> the driver's JSON line for ``ct.targets(...)``."""

    def call(action: str, payload: Any, creds: tuple[str, str] | None = None) -> dict:
        account, passcode = creds or (tenant.creds.account_id, tenant.creds.passcode)
        arg = tmp_path / f"targets-{time.monotonic_ns()}.json"
        arg.write_text(json.dumps({"action": action, "payload": payload}))
        env = {**os.environ, "PROPEL_CT_ENDPOINT": live_server.url,
               "PROPEL_CT_ACCOUNT": account, "PROPEL_CT_PASSCODE": passcode,
               "PROPEL_CT_TIMEOUT_MS": "20000"}
        done = subprocess.run([NODE or "node", str(node_client), "targets", f"@{arg}"],
                              env=env, capture_output=True, text=True, timeout=60)
        lines = done.stdout.strip().splitlines()
        assert lines, f"driver printed nothing (rc {done.returncode}): {done.stderr[-2000:]}"
        return json.loads(lines[-1])

    return call


def ok(out: dict) -> Any:
    assert out["ok"], out
    return out["result"]


def fail_shape(r: httpx.Response, status: int, *words: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"status", "error", "code"}, body
    assert body["status"] == "fail" and body["code"] == status and body["error"], body
    for word in words:
        assert word in body["error"], (word, body)
    return body["error"]


def campaign_of(base_url: str, tenant, campaign_id: str) -> dict[str, Any]:
    r = httpx.get(f"{base_url}/api/v1/campaigns/{campaign_id}", headers=tenant.bearer,
                  timeout=20)
    assert r.status_code == 200, r.text
    return r.json()


# --------------------------------------------------------------------------- the Node client


@needs_node
def test_node_client_create_estimate_list_result_stop(targets, live_server, propel, tenant,
                                                      other_tenant):
    seed_shop(live_server.url, propel, tenant)
    payload = {"name": "Picks for High", "where": HIGH, "content": CONTENT,
               "devices": ["android", "ios"], "target_mode": "email",
               "conversion_goal": {"event_name": "Charged", "conversion_time": 24 * 60}}

    # estimate: the client sends create.json with estimate_only, nothing is created
    assert ok(targets("estimate", payload)) == {"status": "success",
                                                "estimates": {"total": len(HIGH_IDS)}}
    carts = {**payload, "where": {"event_name": "Added To Cart", "from": YESTERDAY,
                                  "to": TODAY, **HIGH}}
    high_carts = [u for u in HIGH_IDS if int(u[1:]) < 6]
    assert ok(targets("estimate", carts))["estimates"]["total"] == len(high_carts)
    everyone = {k: v for k, v in payload.items() if k != "where"} | {"segment": "all"}

    # create: a published Propel campaign for the prediction group
    made = ok(targets("create", payload))
    assert made["status"] == "success" and made["estimates"] == {"total": len(HIGH_IDS)}
    cid = made["id"]
    c = campaign_of(live_server.url, tenant, cid)
    assert c["status"] == "scheduled" and c["channel"] == "email"
    assert c["name"] == "Picks for High"
    assert c["audience"] == {"property": "Predict Conversions", "op": "=", "value": "High"}
    assert c["content"]["variants"] == [{"name": "A", "split": 100,
                                         "subject": CONTENT["title"], "html": CONTENT["body"]}]
    assert c["goal"]["event"] == "Charged" and c["goal"]["window_hours"] == 24
    later = datetime.now(UTC) + timedelta(days=1)
    scheduled = ok(targets("create", {
        **everyone, "name": "Everyone tomorrow", "target_mode": "push",
        "when": {"type": "later", "delivery_date_time": later.strftime("%Y%m%d %H:%M")}}))
    sid = scheduled["id"]
    assert scheduled["estimates"] == {"total": N}
    assert campaign_of(live_server.url, tenant, sid)["audience"] == {"and": []}

    # list within a date range (the client posts from / to as YYYYMMDD numbers)
    listed = ok(targets("list", {"from": YESTERDAY, "to": int(later.strftime("%Y%m%d"))}))
    assert listed["status"] == "success"
    by_id = {t["id"]: t for t in listed["targets"]}
    assert set(by_id) == {cid, sid}
    assert by_id[cid]["name"] == "Picks for High" and by_id[cid]["target_mode"] == "email"
    assert by_id[sid]["scheduled_on"] == int(later.strftime("%Y%m%d%H%M"))
    assert str(by_id[cid]["scheduled_on"]).startswith(str(TODAY))
    http = httpx.Client(base_url=live_server.url, headers=tenant.clevertap, timeout=20)
    assert http.post("/1/targets/list.json", json={"from": 20200101, "to": 20200131}).json()[
        "targets"] == []
    assert {t["id"] for t in http.post("/1/targets/list.json", json={
        "from": TODAY, "to": TODAY}).json()["targets"]} == {cid}

    # deliver here (the live server runs no workers), then read the result
    assert dispatch_campaign(propel, tenant.id, cid) is not None
    held = {u for u in HIGH_IDS if in_holdout(cid, u, c["holdout_pct"])}
    treated = [u for u in HIGH_IDS if u not in held]
    channel = Recorder(fail={treated[0]})
    deliver(propel, channel)
    assert sorted(m.identity for m in channel.sent) == treated
    viewer, buyer = [m for m in channel.sent if m.identity != treated[0]][:2]
    pixel = re.search(r'<img src="([^"]+)"', viewer.html).group(1)
    assert httpx.get(live_server.url + urlsplit(pixel).path).status_code == 200
    link = re.search(r'<a href="([^"]+)"', buyer.html).group(1)
    r = httpx.get(live_server.url + urlsplit(link).path, follow_redirects=False)
    assert r.status_code == 302 and r.headers["location"] == "https://shop.test/picks"
    r = httpx.post(f"{live_server.url}/api/v1/events", headers=tenant.bearer, json={
        "events": [{"identity": buyer.identity, "name": "Charged", "message_id": "buy-1"}]})
    assert r.status_code == 200 and r.json()["accepted"] == 1
    time.sleep(0.01)

    result = ok(targets("result", {"id": cid}))
    assert result["status"] == "success"
    got = result["result"]
    assert got["status"] == "completed"
    assert (got["sent"], got["errors"]) == (len(treated) - 1, 1)
    assert (got["viewed"], got["clicked"], got["converted"]) == (2, 1, 1)
    assert got["lift"]["treated_n"] == len(treated)
    assert got["lift"]["holdout_n"] == len(held)

    # stop the scheduled one; then it is stopped, and a second stop is a success that
    # does nothing, as CleverTap answers it
    assert ok(targets("stop", {"id": sid})) == {"status": "success"}
    r = http.post("/1/targets/result.json", json={"id": sid})
    assert r.status_code == 200 and r.json()["result"]["status"] == "stopped"
    r = http.post("/1/targets/stop.json", json={"id": sid})
    assert r.status_code == 200 and r.json() == {"status": "success"}
    assert campaign_of(live_server.url, tenant, sid)["status"] == "stopped"
    r = httpx.post(f"{live_server.url}/1/targets/result.json", json={"id": cid},
                   headers=other_tenant.clevertap)
    assert r.status_code == 404 and r.json()["status"] == "fail"
    # the client resolves CleverTap's error body for bad credentials
    denied = ok(targets("list", {}, creds=(tenant.creds.account_id, "wrong")))
    assert denied == {"status": "fail", "code": 401, "error": denied["error"]}
    assert {t["id"] for t in http.post("/1/targets/list.json").json()["targets"]} == {cid, sid}
    http.close()


# --------------------------------------------------------------------------- over HTTP


def test_request_shapes_and_errors(live_server, client, propel, tenant, other_tenant):
    seed_shop(live_server.url, propel, tenant)
    http = httpx.Client(base_url=live_server.url, headers=tenant.clevertap, timeout=20)
    base = {"name": "T", "where": HIGH, "content": {"title": "Hi", "body": "Body"},
            "devices": ["android"], "target_mode": "push"}

    r = http.post("/1/targets/estimate.json", json=base)
    assert r.status_code == 200 and r.json() == {"status": "success",
                                                 "estimates": {"total": len(HIGH_IDS)}}
    # a gzip body, as any HTTP client may send
    r = http.post("/1/targets/estimate.json", content=gzip.compress(json.dumps(
        {"segment": "all"}).encode()), headers={"Content-Encoding": "gzip",
                                                "Content-Type": "application/json"})
    assert r.status_code == 200 and r.json()["estimates"]["total"] == N

    # how each part of a target becomes part of a campaign
    r = http.post("/1/targets/create.json", json={
        **base, "target_mode": "app inbox", "respect_frequency_caps": False,
        "where": {"event_name": "Added To Cart", "from": YESTERDAY, "to": TODAY},
        "content": {"title": "Hi", "body": "Body", "url": "https://shop.test/x"},
        "when": {"type": "user_timezone", "delivery_date_time": "20991231 09:30"},
        "conversion_goal": {"event_name": "Charged", "conversion_time": "120",
                            "revenue_property": "amount"}})
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"status", "id", "estimates"} and r.json()["estimates"] == {
        "total": 6}
    c = campaign_of(live_server.url, tenant, r.json()["id"])
    assert c["channel"] == "inbox" and c["caps"] is None and c["status"] == "scheduled"
    day = lambda d: f"{str(d)[:4]}-{str(d)[4:6]}-{str(d)[6:]}"  # noqa: E731
    assert c["audience"] == {"event": "Added To Cart", "between": [day(YESTERDAY), day(TODAY)]}
    assert c["content"]["variants"][0] == {"name": "A", "split": 100, "title": "Hi",
                                           "body": "Body", "url": "https://shop.test/x"}
    assert c["schedule"] == {"type": "at", "at": "2099-12-31T09:30:00", "user_timezone": True}
    assert c["goal"] == {"event": "Charged", "where": [], "window_hours": 2,
                         "revenue_property": "amount"}
    r = http.post("/1/targets/create.json", json={**base, "target_mode": "sms"})
    c = campaign_of(live_server.url, tenant, r.json()["id"])
    assert c["caps"] == {"per_day": 3} and c["content"]["variants"][0]["body"] == "Body"
    assert c["schedule"] == {"type": "now"}

    # the other documented shapes of when and conversion_goal
    r = http.post("/1/targets/create.json", json={
        **base, "when": {"type": "later", "delivery_date_time": ["20991231 09:30"],
                         "delivery_timezone": "user"},
        "conversion_goal": {"event_name": "Charged", "conversion_time": "1D",
                            "filter_type": {"event_property": [
                                {"property_name": "amount", "operator": "greater_than",
                                 "property_value": 10},
                                {"property_name": "Category", "operator": "equals",
                                 "property_value": ["Books", "Shoes"]}]}}})
    assert r.status_code == 200, r.text
    c = campaign_of(live_server.url, tenant, r.json()["id"])
    assert c["schedule"] == {"type": "at", "at": "2099-12-31T09:30:00", "user_timezone": True}
    assert c["goal"] == {"event": "Charged", "window_hours": 24, "revenue_property": None,
                         "where": [{"property": "amount", "op": ">", "value": 10},
                                   {"property": "Category", "op": "in",
                                    "value": ["Books", "Shoes"]}]}
    for when, at in (("20991231 09:30", "2099-12-31T09:30:00+00:00"),
                     ({"delivery_date_time": "20991231 09:30", "delivery_timezone": "account"},
                      "2099-12-31T09:30:00+00:00")):
        r = http.post("/1/targets/create.json", json={
            **base, "when": when, "conversion_goal": {"event_name": "Charged",
                                                      "conversion_time": "12h"}})
        c = campaign_of(live_server.url, tenant, r.json()["id"])
        assert c["schedule"] == {"type": "at", "at": at, "user_timezone": False}
        assert c["goal"]["window_hours"] == 12
    r = http.post("/1/targets/create.json", json={
        **base, "when": {"type": "now"}, "conversion_goal": {
            "event_name": "Charged", "conversion_time": 90},
        "content": {"title": "Hi", "body": "Body", "platform_specific": {
            "ios": {"mutable-content": "true"},
            "android": {"deep_link": "app://cart", "wzrk_cid": "offers"}}}})
    c = campaign_of(live_server.url, tenant, r.json()["id"])
    assert c["schedule"] == {"type": "now"} and c["goal"]["window_hours"] == 1.5
    assert c["content"]["variants"][0]["url"] == "app://cart"
    # no where, or an empty one, is everyone (as in CleverTap)
    for everyone in ({k: v for k, v in base.items() if k != "where"}, {**base, "where": {}}):
        r = http.post("/1/targets/estimate.json", json=everyone)
        assert r.status_code == 200 and r.json()["estimates"]["total"] == N

    # every error in CleverTap's shape, naming what is wrong; nothing is created
    before = len(http.post("/1/targets/list.json").json()["targets"])
    # (body, a word of the error, whether the error is about the audience)
    bad = [
        ({**base, "target_mode": "fax"}, "target_mode", False),
        ({**base, "segment": "some", "where": None}, "segment", True),
        ({**base, "segment": "all"}, "not both", True),
        ({k: v for k, v in base.items() if k != "target_mode"}, "target_mode is required",
         False),
        ({**base, "where": "everyone"}, "where", True),
        ({**base, "where": {"event_name": "Added To Cart", "from": TODAY}}, "from and to",
         True),
        ({**base, "where": {"event_name": "Added To Cart", "from": "yesterday",
                            "to": TODAY}}, "where.from", True),
        ({**base, "where": {"event_name": 5}}, "where", True),
        ({**base, "where": {"common_profile_properties": "x"}}, "common_profile_properties",
         True),
        ({**base, "where": {"common_profile_properties": {"profile_fields": "x"}}},
         "profile_fields", True),
        ({**base, "where": {"common_profile_properties": {"profile_fields": ["x"]}}},
         "profile_fields[0]", True),
        ({**base, "where": {"common_profile_properties": {"profile_fields": [
            {"name": "plan", "operator": "like", "value": 1}]}}}, "operator", True),
        ({**base, "content": {"title": "only a title"}}, "body", False),
        ({**base, "content": "text"}, "body", False),
        ({**base, "content": {"title": "Hi", "body": "{{ broken"}}, "line 1", False),
        ({**base, "when": "tomorrow"}, "when", False),
        ({**base, "when": {"delivery_date_time": "31/12/2099"}}, "delivery_date_time", False),
        ({**base, "conversion_goal": {"conversion_time": 60}}, "event_name", False),
        ({**base, "conversion_goal": {"event_name": "Charged", "conversion_time": "soon"}},
         "conversion_time", False),
        ({**base, "conversion_goal": {"event_name": "Charged", "conversion_time": [1]}},
         "conversion_time", False),
        ({**base, "conversion_goal": {"event_name": "Charged", "revenue_property": 3}},
         "revenue_property", False),
        ({**base, "conversion_goal": {"event_name": "Charged",
                                      "conversion_time": 10**9}}, "window_hours", False),
        ({**base, "conversion_goal": {"event_name": "Charged", "conversion_time": "30M"}},
         "from 1 hour", False),
        ({**base, "conversion_goal": {"event_name": "Charged", "conversion_time": "2W"}},
         "conversion_time", False),
        ({**base, "conversion_goal": {"event_name": "Charged", "goal": 1}},
         "conversion_goal: unknown key 'goal'", False),
        ({**base, "conversion_goal": {"event_name": "Charged",
                                      "filter_type": {"first_time": True}}},
         "conversion_goal.filter_type: unknown key 'first_time'", False),
        ({**base, "conversion_goal": {"event_name": "Charged", "filter_type": {
            "event_property": [{"property_name": "amount", "operator": "between",
                                "property_value": [1, 2]}]}}},
         "event_property[0].operator", False),
        ({**base, "conversion_goal": {"event_name": "Charged", "filter_type": {
            "event_property": [{"property_name": "amount", "operator": "greater_than"}]}}},
         "event_property[0].property_value", False),
        ({**base, "when": {"delivery_date_time": ["20991231 09:30", "20991231 10:30"]}},
         "one time", False),
        ({**base, "when": {"delivery_date_time": "20991231 09:30",
                           "delivery_timezone": "mars"}}, "delivery_timezone", False),
        ({**base, "when": {"delivery_date_time": "20991231 09:30",
                           "dnd": {"message_state": "delay"}}}, "when: unknown key 'dnd'",
         False),
        ({**base, "when": {"type": "later"}}, "delivery_date_time is required", False),
        ({**base, "when": {"type": "recurring", "delivery_date_time": "20991231 09:30"}},
         "when.type", False),
    ]
    for body, word, about_audience in bad:
        fail_shape(http.post("/1/targets/create.json", json=body), 400, word)
        estimate = http.post("/1/targets/estimate.json", json=body)
        if about_audience:
            fail_shape(estimate, 400, word)
        else:
            assert estimate.status_code == 200, (body, estimate.text)
    for raw, word in [(b"{", "JSON"), (b"[1]", "object"), (b"", "target_mode"),
                      (b"\x1f\x8b broken", "")]:
        fail_shape(http.post("/1/targets/create.json", content=raw), 400, word)
    # (in process: over a socket the server may hang up while the client still writes)
    too_big = b"{" + b" " * MAX_BODY_BYTES + b"}"
    fail_shape(client.post("/1/targets/create.json", content=too_big,
                           headers=tenant.clevertap), 413, "larger")
    assert len(http.post("/1/targets/list.json").json()["targets"]) == before

    # list, result and stop
    fail_shape(http.post("/1/targets/list.json", json={"from": "2026-01-01"}), 400, "from")
    fail_shape(http.post("/1/targets/list.json", json={"to": 2026}), 400, "to")
    assert http.post("/1/targets/list.json", content=b"").json()["status"] == "success"
    for route in ("result", "stop"):
        fail_shape(http.post(f"/1/targets/{route}.json", json={}), 400, "id")
        fail_shape(http.post(f"/1/targets/{route}.json", json={"id": ""}), 400, "id")
        fail_shape(http.post(f"/1/targets/{route}.json", json={"id": "cmp_nope"}), 404,
                   "cmp_nope")
        fail_shape(http.post(f"/1/targets/{route}.json", content=b"[]"), 400, "object")
    mine = http.post("/1/targets/list.json").json()["targets"][0]["id"]
    r = http.post("/1/targets/result.json", json={"id": mine})
    assert r.status_code == 200 and set(r.json()["result"]) == {
        "status", "sent", "errors", "clicked", "viewed", "converted", "lift"}

    # credentials: CleverTap's shape, 401, and another account sees nothing of ours
    for headers in ({**tenant.clevertap, "X-CleverTap-Passcode": "wrong"},
                    {"X-CleverTap-Account-Id": tenant.id},
                    {"X-CleverTap-Account-Id": other_tenant.id,
                     "X-CleverTap-Passcode": tenant.creds.passcode}):
        for route in ("create", "estimate", "list", "result", "stop"):
            r = httpx.post(f"{live_server.url}/1/targets/{route}.json", json=base,
                           headers=headers)
            fail_shape(r, 401)
    other = httpx.Client(base_url=live_server.url, headers=other_tenant.clevertap, timeout=20)
    assert other.post("/1/targets/list.json").json() == {"status": "success", "targets": []}
    assert other.post("/1/targets/estimate.json", json={"segment": "all"}).json()[
        "estimates"] == {"total": 0}
    fail_shape(other.post("/1/targets/stop.json", json={"id": mine}), 404)
    assert campaign_of(live_server.url, tenant, mine)["status"] != "stopped"
    http.close()
    other.close()


# --------------------------------------------------------------------------- where filters


def seed_charges(client, tenant) -> None:
    """Four buyers of ``Charged`` (amounts 100, 200, 300 and one without an amount)
    and two users who bought nothing; ``plan`` set on four of the six."""
    r = client.post("/api/v1/profiles", headers=tenant.bearer, json={"profiles": [
        {"identity": "b0", "properties": {"plan": "gold"}},
        {"identity": "b1", "properties": {"plan": "silver"}},
        {"identity": "b2", "properties": {"plan": "Gold plus"}},
        {"identity": "b3"},
        {"identity": "n4", "properties": {"plan": "bronze"}},
        {"identity": "n5"}]})
    assert r.status_code == 200 and r.json()["accepted"] == 6, r.text
    charges = [("b0", {"Amount": 100, "Category": "Shoes"}),
               ("b1", {"Amount": 200, "Category": "Books"}),
               ("b2", {"Amount": 300, "Category": "shoe care"}),
               ("b3", {"Category": "Books"})]
    r = client.post("/api/v1/events", headers=tenant.bearer, json={"events": [
        {"identity": who, "name": "Charged", "properties": props, "message_id": f"c-{who}"}
        for who, props in charges]})
    assert r.status_code == 200 and r.json()["accepted"] == 4, r.text


def charged(*filters: tuple[str, str, Any], **where: Any) -> dict[str, Any]:
    props = [{"name": n, "operator": op, **({} if v is None else {"value": v})}
             for n, op, v in filters]
    return {"event_name": "Charged", "event_properties": props, **where}


def profile(*fields: tuple[str, str, Any]) -> dict[str, Any]:
    return {"common_profile_properties": {"profile_fields": [
        {"name": n, "operator": op, **({} if v is None else {"value": v})}
        for n, op, v in fields]}}


def test_where_event_properties_and_negative_operators(client, tenant):
    seed_charges(client, tenant)

    def estimate(where: dict[str, Any]) -> int:
        r = client.post("/1/targets/estimate.json", headers=tenant.clevertap,
                        json={"where": where})
        assert r.status_code == 200, (where, r.text)
        return r.json()["estimates"]["total"]

    assert estimate(charged()) == 4
    # event property filters narrow the event, not the profile
    assert estimate(charged(("Amount", "greater_than", 150))) == 2
    assert estimate(charged(("Amount", "greater_than", 150),
                            **{"from": YESTERDAY, "to": TODAY})) == 2
    assert estimate(charged(("Amount", "less_than_equals", 200))) == 2
    assert estimate(charged(("Amount", "between", [100, 200]))) == 2
    assert estimate(charged(("Category", "contains", "shoe"))) == 2
    assert estimate(charged(("Category", "does_not_contain", "shoe"))) == 2
    assert estimate(charged(("Category", "equals", ["Books", "Shoes"]))) == 3
    assert estimate(charged(("Category", "not_equals", ["Books", "Shoes"]))) == 1
    assert estimate(charged(("Amount", "exists", None))) == 3
    assert estimate(charged(("Amount", "does_not_exist", None))) == 1
    assert estimate(charged(("Amount", "greater_than", 150),
                            ("Category", "does_not_contain", "shoe"))) == 1
    # the negative operators on profile fields: set and not containing / not set
    assert estimate(profile(("plan", "does_not_contain", "gold"))) == 2
    assert estimate(profile(("plan", "does_not_exist", None))) == 2
    assert estimate(profile(("plan", "exists", None))) == 4
    assert estimate({**charged(("Amount", "greater_than", 150)),
                     **profile(("plan", "does_not_contain", "GOLD"))}) == 1

    # what create stores is the same audience, event filters included
    r = client.post("/1/targets/create.json", headers=tenant.clevertap, json={
        "name": "Big spenders", "target_mode": "webhook",
        "content": {"title": "Hi", "body": "Body"},
        "where": {**charged(("Amount", "greater_than", 150),
                            ("Category", "does_not_exist", None)),
                  **profile(("plan", "does_not_exist", None))}})
    assert r.status_code == 200 and r.json()["estimates"] == {"total": 0}, r.text
    r = client.get(f"/api/v1/campaigns/{r.json()['id']}", headers=tenant.bearer)
    assert r.json()["audience"] == {"and": [
        {"event": "Charged", "where": [
            {"property": "Amount", "op": ">", "value": 150},
            {"property": "Category", "op": "is not set"}]},
        {"property": "plan", "op": "is not set"}]}


def test_where_rejects_what_it_does_not_understand(client, tenant):
    seed_charges(client, tenant)
    amount = {"name": "Amount", "operator": "greater_than", "value": 150}
    # (where, words the error must hold)
    bad = [
        ({**charged(), "session_properties": []}, ["where", "'session_properties'"]),
        ({**charged(), "event_property": [amount]}, ["where", "'event_property'"]),
        ({**profile(("plan", "exists", None)), "foo": None}, ["where", "'foo'"]),
        ({"common_profile_properties": {"profile_fields": [], "geo_fields": [[1, 2]]}},
         ["where.common_profile_properties", "'geo_fields'"]),
        ({"event_name": "Charged", "event_properties": [{**amount, "type": "number"}]},
         ["where.event_properties[0]", "'type'"]),
        ({"event_name": "Charged", "event_properties": [{"name": "Amount", "op": ">",
                                                         "value": 150}]},
         ["where.event_properties[0]", "'op'"]),
        (profile(("plan", "exists", None)) | {"common_profile_properties": {
            "profile_fields": [{"name": "plan", "operator": "exists", "is": 1}]}},
         ["where.common_profile_properties.profile_fields[0]", "'is'"]),
        ({"event_properties": [amount], **profile(("plan", "exists", None))},
         ["where.event_properties", "event_name"]),
        ({"from": YESTERDAY, "to": TODAY, **profile(("plan", "exists", None))},
         ["where.from", "event_name"]),
        ({"event_name": ""}, ["where.event_name"]),
        ({"event_name": "Charged", "event_properties": amount},
         ["where.event_properties", "list"]),
        ({"event_name": "Charged", "event_properties": ["Amount"]},
         ["where.event_properties[0]", "object"]),
        ({"event_name": "Charged", "event_properties": [{"operator": "exists"}]},
         ["where.event_properties[0].name"]),
        ({"event_name": "Charged", "event_properties": [{**amount, "operator": "like"}]},
         ["where.event_properties[0].operator", "'like'", "does_not_contain"]),
        ({"event_name": "Charged", "event_properties": [{**amount, "value": "lots"}]},
         ["where.event_properties[0].value", "number"]),
        ({"event_name": "Charged", "event_properties": [{**amount, "value": None}]},
         ["where.event_properties[0].value"]),
        (profile(("plan", "does_not_contain", "")),
         ["where.common_profile_properties.profile_fields[0].value"]),
        (profile(("plan", "equals", [])),
         ["where.common_profile_properties.profile_fields[0].value"]),
        (profile(("plan", "between", [5, 1])),
         ["where.common_profile_properties.profile_fields[0].value"]),
    ]
    body = {"name": "T", "content": {"title": "Hi", "body": "Body"}, "target_mode": "push"}
    for where, words in bad:
        for route in ("estimate", "create"):
            r = client.post(f"/1/targets/{route}.json", headers=tenant.clevertap,
                            json={**body, "where": where})
            fail_shape(r, 400, *words)
    assert client.post("/1/targets/list.json", headers=tenant.clevertap).json()[
        "targets"] == []
