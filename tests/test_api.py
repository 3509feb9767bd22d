"""Propel's own API: ingest, users, rejections, credentials, errors."""

from __future__ import annotations

import gzip

import orjson
import pytest
from fastapi.testclient import TestClient

from propel.accounts import revoke_api_key
from propel.app import create_app
from propel.lake.flush import flush_batches
from propel.lake.reader import count_events


def post_events(client, tenant, events, **kw):
    return client.post("/api/v1/events", json={"events": events}, headers=tenant.bearer, **kw)


def test_bad_record_never_drops_good_ones(client, propel, tenant):
    events = [
        {"identity": "u1", "name": "Charged", "properties": {"amount": 5}, "message_id": "a"},
        {"identity": "u1", "name": "", "message_id": "b"},
        {"identity": "u2", "name": "Search", "ts": "yesterday", "message_id": "c"},
        {"identity": "u2", "name": "Search", "ts": 4102444800 * 10, "message_id": "d"},
        {"identity": "u3", "name": "X", "properties": [1, 2], "message_id": "e"},
        {"identity": "u3", "name": "X", "colour": "red", "message_id": "f"},
        "not an object",
        {"identity": "u4", "name": "App Launched", "message_id": "g"},
    ]
    r = post_events(client, tenant, events)
    assert r.status_code == 200
    body = r.json()
    assert body["accepted"] == 2
    fields = {(x["index"], x["field"]) for x in body["rejected"]}
    assert fields == {(1, "name"), (2, "ts"), (3, "ts"), (4, "properties"), (5, "colour"),
                      (6, "")}
    assert all(x["reason"] for x in body["rejected"])
    assert count_events(propel.db, propel.lake, tenant.id) == 2
    stored = client.get("/api/v1/rejections", headers=tenant.bearer).json()["rejections"]
    assert {x["field"] for x in stored} == {"name", "ts", "properties", "colour", ""}


def test_retry_with_same_message_ids_stores_nothing_twice(client, propel, tenant):
    events = [{"identity": f"u{i}", "name": "Search", "message_id": f"m{i}"} for i in range(50)]
    assert post_events(client, tenant, events).json()["accepted"] == 50
    flush_batches(propel.db, propel.lake)
    again = post_events(client, tenant, events + [{"identity": "z", "name": "Search",
                                                   "message_id": "new"}]).json()
    assert again == {"accepted": 1, "duplicates": 50, "rejected": []}
    assert count_events(propel.db, propel.lake, tenant.id) == 51


def test_events_without_message_id_dedupe_on_content(client, propel, tenant):
    event = {"identity": "u1", "name": "Search", "ts": "2026-01-01T00:00:00Z"}
    post_events(client, tenant, [event])
    assert post_events(client, tenant, [event]).json()["duplicates"] == 1
    assert count_events(propel.db, propel.lake, tenant.id) == 1


def test_duplicate_inside_one_batch_is_stored_once(client, propel, tenant):
    event = {"identity": "u1", "name": "Search", "message_id": "same"}
    assert post_events(client, tenant, [event, event]).json() == {
        "accepted": 1, "duplicates": 1, "rejected": []}


def test_profiles_upsert_and_user_read(client, tenant):
    r = client.post("/api/v1/profiles", headers=tenant.bearer, json={"profiles": [
        {"identity": "u1", "email": "Ada@Example.com", "phone": "+44 20 7946 0958",
         "timezone": "Europe/London", "consent": {"email": True}, "plan": "pro",
         "push_tokens": ["tok1"]},
        {"identity": "u2", "timezone": "Mars/Olympus"},
        {"identity": "u3", "consent": {"email": "yes"}},
    ]})
    body = r.json()
    assert body["accepted"] == 1
    assert {(x["field"]) for x in body["rejected"]} == {"timezone", "consent.email"}
    client.post("/api/v1/profiles", headers=tenant.bearer, json={"profiles": [
        {"identity": "u1", "plan": "team", "push_tokens": ["tok2"], "message_id": "p2"}]})
    post_events(client, tenant, [{"identity": "u1", "name": "Charged", "message_id": "c1",
                                  "properties": {"amount": 9.5}}])
    user = client.get("/api/v1/users/u1", headers=tenant.bearer).json()
    profile = user["profile"]
    assert profile["email"] == "ada@example.com"
    assert profile["phone"] == "+442079460958"
    assert profile["properties"] == {"plan": "team"}
    assert profile["push_tokens"] == ["tok1", "tok2"]
    assert profile["consent"] == {"email": True}
    assert [e["name"] for e in user["events"]] == ["Charged"]
    assert user["events"][0]["properties"] == {"amount": 9.5}


def test_profile_email_is_a_mailbox_smtp_can_carry(client, tenant):
    good = ["ada.lovelace+news@example.com", '"ada lovelace"@example.com', "bob@mail.example.co.uk"]
    bad = ['a"b@example.com', "x<y@example.com", "ada@example.com>", "ada @example.com",
           "ada@example", "@example.com", "ada@@example.com", "a\x00b@example.com"]
    profiles = [{"identity": f"m{i}", "email": e} for i, e in enumerate(good + bad)]
    body = client.post("/api/v1/profiles", headers=tenant.bearer,
                       json={"profiles": profiles}).json()
    assert body["accepted"] == len(good)
    assert sorted(r["index"] for r in body["rejected"]) == list(range(len(good), len(profiles)))
    assert {(r["field"], r["reason"].split(" (")[0]) for r in body["rejected"]} == {
        ("email", "is not an e-mail address")}
    quoted = client.get("/api/v1/users/m1", headers=tenant.bearer).json()["profile"]
    assert quoted["email"] == '"ada lovelace"@example.com'


def test_profile_changes_are_recorded_in_the_lake(client, propel, tenant):
    for plan in ("free", "pro", "pro"):
        client.post("/api/v1/profiles", headers=tenant.bearer,
                    json={"profiles": [{"identity": "u1", "plan": plan, "message_id": plan}]})
    flush_batches(propel.db, propel.lake)
    assert count_events(propel.db, propel.lake, tenant.id, kind="profile") == 2


def test_unknown_user_is_404(client, tenant):
    r = client.get("/api/v1/users/nobody", headers=tenant.bearer)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("headers,body,status,code", [
    ({"content-type": "application/json"}, b"{not json", 400, "malformed_json"),
    ({"content-type": "text/plain"}, b'{"events": []}', 415, "unsupported_media_type"),
    ({"content-type": "application/json"}, b"", 400, "empty_body"),
    ({"content-type": "application/json"}, b'{"evts": []}', 400, "invalid"),
    ({"content-type": "application/json"}, b"[]", 400, "invalid"),
    ({"content-type": "application/json", "content-encoding": "br"}, b"{}", 415,
     "unsupported_encoding"),
    ({"content-type": "application/json", "content-encoding": "gzip"}, b"plain", 400,
     "bad_encoding"),
])
def test_malformed_requests_get_json_4xx(client, tenant, headers, body, status, code):
    r = client.post("/api/v1/events", content=body, headers={**tenant.bearer, **headers})
    assert r.status_code == status
    assert r.json()["error"]["code"] == code


def test_oversize_and_too_many(client, tenant):
    huge = b'{"events": [' + b'{"identity":"u","name":"' + b"x" * (5 << 20) + b'"}]}'
    r = client.post("/api/v1/events", content=huge,
                    headers={**tenant.bearer, "content-type": "application/json"})
    assert r.status_code == 413
    bomb = gzip.compress(b'{"events": ["' + b"a" * (6 << 20) + b'"]}')
    r = client.post("/api/v1/events", content=bomb, headers={
        **tenant.bearer, "content-type": "application/json", "content-encoding": "gzip"})
    assert r.status_code == 413
    many = [{"identity": "u", "name": "n"}] * 1001
    r = post_events(client, tenant, many)
    assert r.status_code == 400
    assert "1000" in r.json()["error"]["message"]


def test_gzip_body_accepted(client, propel, tenant):
    body = gzip.compress(orjson.dumps({"events": [{"identity": "u", "name": "n"}]}))
    r = client.post("/api/v1/events", content=body, headers={
        **tenant.bearer, "content-type": "application/json", "content-encoding": "gzip"})
    assert r.json()["accepted"] == 1


@pytest.mark.parametrize("auth", [None, "Bearer", "Bearer nope", "Basic abc",
                                  "Bearer pk_000000000000_xyz"])
def test_bad_api_key_is_401_json(client, auth):
    headers = {"Authorization": auth} if auth else {}
    r = client.post("/api/v1/events", json={"events": []}, headers=headers)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthorized"


def test_revoked_key_stops_working(client, propel, tenant):
    key_id = "key_" + tenant.api_key.split("_")[1]
    assert client.get("/api/v1/rejections", headers=tenant.bearer).status_code == 200
    assert revoke_api_key(propel.db, tenant.id, key_id)
    assert client.get("/api/v1/rejections", headers=tenant.bearer).status_code == 401


def test_credentials_only_work_where_they_belong(client, tenant):
    as_bearer = {"Authorization": f"Bearer {tenant.creds.write_key}"}
    assert client.get("/api/v1/rejections", headers=as_bearer).status_code == 401
    passcode = {"Authorization": f"Bearer {tenant.creds.passcode}"}
    assert client.get("/api/v1/rejections", headers=passcode).status_code == 401
    r = client.post("/v1/track", auth=(tenant.api_key, ""), json={
        "userId": "u", "event": "x"})
    assert r.status_code == 401
    r = client.post("/1/upload", json={"d": []}, headers={
        "X-CleverTap-Account-Id": tenant.id, "X-CleverTap-Passcode": tenant.api_key})
    assert r.status_code == 401


def test_accounts_are_isolated_on_api(client, propel, tenant, other_tenant):
    post_events(client, tenant, [{"identity": "shared", "name": "Secret", "message_id": "s"}])
    client.post("/api/v1/profiles", headers=tenant.bearer,
                json={"profiles": [{"identity": "shared", "email": "a@b.co"}]})
    post_events(client, tenant, [{"identity": "", "name": "bad"}])
    assert client.get("/api/v1/users/shared", headers=other_tenant.bearer).status_code == 404
    assert client.get("/api/v1/rejections",
                      headers=other_tenant.bearer).json()["rejections"] == []
    # the same message id in another account is a different message
    r = post_events(client, other_tenant, [{"identity": "shared", "name": "Mine",
                                            "message_id": "s"}])
    assert r.json()["accepted"] == 1
    flush_batches(propel.db, propel.lake)
    assert count_events(propel.db, propel.lake, tenant.id) == 1
    user = client.get("/api/v1/users/shared", headers=other_tenant.bearer).json()
    assert [e["name"] for e in user["events"]] == ["Mine"]


def test_ops_endpoints(client, tenant):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["database"] == "ok"
    post_events(client, tenant, [{"identity": "u", "name": "n"}])
    metrics = client.get("/metrics").text
    assert 'propel_ingest_accepted_total{source="api"} 1.0' in metrics
    assert "propel_lake_pending_rows 1.0" in metrics
    spec = client.get("/openapi.json").json()
    assert "/api/v1/events" in spec["paths"] and "/v1/batch" in spec["paths"]
    docs = client.get("/docs").text
    assert "/static/vendor/swagger-ui/swagger-ui-bundle.js" in docs
    assert "cdn" not in docs.lower()
    assert client.get("/static/vendor/swagger-ui/swagger-ui-bundle.js").status_code == 200


def test_gzip_members_truncation_and_trailing_bytes(client, tenant):
    body = orjson.dumps({"events": [{"identity": "u", "name": "n", "message_id": "z"}]})
    half = len(body) // 2
    two_members = gzip.compress(body[:half]) + gzip.compress(body[half:])
    headers = {**tenant.bearer, "content-type": "application/json",
               "content-encoding": "gzip"}
    assert client.post("/api/v1/events", content=two_members, headers=headers
                       ).json()["accepted"] == 1
    r = client.post("/api/v1/events", content=gzip.compress(body)[:-12], headers=headers)
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_encoding"
    r = client.post("/api/v1/events", content=gzip.compress(body) + b"junk", headers=headers)
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_encoding"


def test_requests_are_measured_and_an_unexpected_error_is_a_logged_json_500(
        propel, tenant, caplog):
    app = create_app(propel=propel, background=False)

    def explode() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/explode", explode)
    with TestClient(app, raise_server_exceptions=False) as c:
        assert c.get("/healthz").status_code == 200
        failed = c.get("/explode")
        assert failed.status_code == 500
        assert failed.json() == {"error": {"code": "internal",
                                           "message": "internal error; it was logged"}}
        assert c.get("/api/v1/users/x").status_code == 401
        metrics = c.get("/metrics").text
    assert 'method="GET",route="/healthz",status="200"' in metrics
    assert 'method="GET",route="/explode",status="500"' in metrics
    assert 'route="/api/v1/users/{identity}",status="401"' in metrics
    assert any(r.message == "unhandled error" for r in caplog.records)
