"""``/api/v1/journeys`` over HTTP: create, validate, publish, pause, resume, edit (a
new version), stats, a user's path, stop; errors with paths; accounts kept apart."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from fastapi.testclient import TestClient

from propel import journeys
from propel.api import journeys as journeys_api
from propel.app import create_app
from propel.ingest.records import EventRecord, IngestItem, ProfileUpdate, key_hash
from propel.ingest.service import ingest_sync

SPEC = {
    "name": "Cart reminder",
    "entry": {"type": "event", "event": "Added To Cart",
              "where": [{"property": "price", "op": ">", "value": 20}]},
    "reentry": {"policy": "after_days", "days": 3},
    "steps": [
        {"id": "remind", "type": "send", "channel": "inbox", "next": "wait",
         "content": {"variants": [{"name": "A", "split": 100, "title": "Your cart",
                                   "body": "Still thinking?"}]}},
        {"id": "wait", "type": "wait_until", "event": "Charged", "timeout": {"days": 1},
         "on_event": None, "on_timeout": "bye"},
        {"id": "bye", "type": "exit"},
    ],
}


@pytest.fixture
def api(propel):
    app = create_app(propel=propel, background=False)
    app.include_router(journeys_api.router)
    with TestClient(app) as c:
        yield c


def cart(propel, account, identity, price):
    mid = f"cart-{identity}-{price}"
    ingest_sync(propel.db, account, [IngestItem(key_hash(account, f"p-{identity}"),
                                                profile=ProfileUpdate(identity=identity)),
                                     IngestItem(key_hash(account, mid), event=EventRecord(
                                         message_id=mid, identity=identity,
                                         name="Added To Cart",
                                         ts=int(datetime.now(UTC).timestamp() * 1e6),
                                         properties=orjson.dumps({"price": price}).decode()))],
                [], "test")


def test_journey_api_lifecycle(api, propel, tenant, other_tenant):
    h = tenant.bearer
    bad = dict(SPEC, steps=[dict(SPEC["steps"][0], next="nowhere")])
    r = api.post("/api/v1/journeys", json=bad, headers=h)
    assert r.status_code == 400
    assert r.json()["error"]["problems"] == [{"path": "steps[0].next",
                                              "reason": "no step 'nowhere'"}]
    r = api.post("/api/v1/journeys/validate", json=bad, headers=h)
    assert r.status_code == 200 and r.json()["valid"] is False
    assert api.post("/api/v1/journeys/validate", json=SPEC, headers=h).json()["valid"]

    r = api.post("/api/v1/journeys", json=SPEC, headers=h)
    assert r.status_code == 201, r.text
    jid = r.json()["id"]
    assert api.get(f"/api/v1/journeys/{jid}", headers=other_tenant.bearer).status_code == 404
    assert api.post(f"/api/v1/journeys/{jid}/publish", headers=h).json()["status"] == "live"
    assert api.post(f"/api/v1/journeys/{jid}/publish", headers=h).status_code == 400

    cart(propel, tenant.id, "cheap", 5)
    cart(propel, tenant.id, "keen", 50)
    journeys.advance(propel)
    path = api.get(f"/api/v1/journeys/{jid}/users/keen", headers=h).json()["entries"]
    assert [s["step"] for s in path[0]["steps"]] == ["remind", "wait"]
    assert path[0]["state"] == "waiting"
    assert api.get(f"/api/v1/journeys/{jid}/users/cheap", headers=h).json()["entries"] == []

    stats = api.get(f"/api/v1/journeys/{jid}/stats", headers=h).json()
    steps = {s["id"]: s for s in stats["steps"]}
    assert steps["remind"]["entered"] == 1 and steps["remind"]["messages"]["queued"] == 1
    assert steps["wait"]["waiting"] == 1 and stats["totals"]["in_flight"] == 1

    assert api.post(f"/api/v1/journeys/{jid}/pause", headers=h).json()["status"] == "paused"
    cart(propel, tenant.id, "late", 80)
    journeys.advance(propel)  # paused: nobody enters
    assert api.get(f"/api/v1/journeys/{jid}/users/late", headers=h).json()["entries"] == []
    assert api.post(f"/api/v1/journeys/{jid}/resume", headers=h).json()["status"] == "live"

    edited = dict(SPEC, name="Cart reminder v2")
    r = api.put(f"/api/v1/journeys/{jid}", json=edited, headers=h)
    assert r.json()["version"] == 2 and len(r.json()["versions"]) == 2
    assert api.get(f"/api/v1/journeys/{jid}/versions/1", headers=h).json()[
        "definition"]["name"] == "Cart reminder"

    r = api.post(f"/api/v1/journeys/{jid}/stop", headers=h)
    assert r.json()["status"] == "stopped"
    path = api.get(f"/api/v1/journeys/{jid}/users/keen", headers=h).json()["entries"]
    assert path[0]["exit_reason"] == "stopped"
    stats = api.get(f"/api/v1/journeys/{jid}/stats", headers=h).json()
    assert stats["steps"][0]["messages"]["suppressed"] == 1  # not sent after the stop
    assert api.put(f"/api/v1/journeys/{jid}", json=SPEC, headers=h).status_code == 400
    assert [j["id"] for j in api.get("/api/v1/journeys", headers=h).json()["journeys"]] == [jid]
