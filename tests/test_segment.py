"""The Segment-compatible tracking API (``/v1/batch|track|identify|page|screen|alias|group``)
driven by the real, unmodified ``segment-analytics-python`` and ``rudder-sdk-python``
clients, plus raw HTTP for everything a client can get wrong: dedupe, per-message
rejections, envelope errors, credentials, tenant isolation and Segment's time rules."""

from __future__ import annotations

import gzip
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest

from propel.ingest import limits
from propel.ingest.service import list_rejections
from propel.lake.flush import flush_batches
from propel.lake.reader import count_events, message_ids, snapshot
from propel.profiles import get_profile

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SECOND = 1_000_000


def now_us() -> int:
    return time.time_ns() // 1000


def iso(us: int) -> str:
    return (EPOCH + timedelta(microseconds=us)).isoformat()


def stored_events(propel: Any, account_id: str) -> dict[str, dict[str, Any]]:
    """Events (not profile changes) of one account, lake ∪ recent, by message id."""
    with snapshot(propel.db, propel.lake, account_id) as (con, _):
        rows = con.execute(
            "SELECT message_id, identity, name, epoch_us(ts), properties FROM events "
            "WHERE kind = 'event'"
        ).fetchall()
    assert len({r[0] for r in rows}) == len(rows), "a message id is stored twice"
    return {m: {"identity": i, "name": n, "ts": t, "properties": orjson.loads(p)}
            for m, i, n, t, p in rows}


def rejections_api(client: Any, tenant: Any) -> list[dict[str, Any]]:
    r = client.get("/api/v1/rejections", params={"source": "segment"}, headers=tenant.bearer)
    assert r.status_code == 200, r.text
    return r.json()["rejections"]


def track(message_id: str, user: str = "u1", event: str = "Clicked", **extra: Any) -> dict:
    return {"type": "track", "messageId": message_id, "userId": user, "event": event,
            "properties": {"n": 1}, **extra}


def assert_json_error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    assert error["code"] and error["message"]
    return error


# 1. segment-analytics-python ---------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async-gzip"])
def test_segment_python_client_sends_every_call(propel, tenant, live_server, mode):
    from segment.analytics import Client

    errors: list[Any] = []
    if mode == "sync":  # one request per call; a 4xx/5xx raises here
        sa = Client(tenant.creds.write_key, host=live_server.url, sync_mode=True,
                    max_retries=0)
    else:  # the background consumer batches, gzips and reports failures to on_error
        sa = Client(tenant.creds.write_key, host=live_server.url, gzip=True,
                    upload_interval=0.05, max_retries=0,
                    on_error=lambda exc, batch: errors.append((exc, batch)))
    try:
        sa.identify(anonymous_id="anon-1", traits={"referrer": "ads", "plan": "free"})
        sa.track(anonymous_id="anon-1", event="Product Viewed",
                 properties={"sku": "A-1", "price": 9.5}, message_id="m-viewed")
        sa.page(anonymous_id="anon-1", category="Docs", name="Pricing",
                properties={"path": "/pricing"}, message_id="m-page")
        sa.identify(user_id="u-1", traits={"email": "Ada@Example.COM", "name": "Ada",
                                           "plan": "pro"})
        sa.alias(previous_id="anon-1", user_id="u-1")
        sa.screen(user_id="u-1", name="Settings", properties={"tab": "billing"},
                  message_id="m-screen")
        sa.group(user_id="u-1", group_id="acme", traits={"name": "Acme", "employees": 50})
        sa.track(user_id="u-1", event="Order Completed", properties={"revenue": 42.0},
                 message_id="m-order")
        if mode != "sync":
            sa.flush()
    finally:
        if mode != "sync":
            sa.join()
    assert errors == []

    db, lake = propel.db, propel.lake
    assert count_events(db, lake, tenant.id) == 4
    for name in ("Product Viewed", "Page Viewed", "Screen Viewed", "Order Completed"):
        assert count_events(db, lake, tenant.id, name) == 1, name
    events = stored_events(propel, tenant.id)
    assert events["m-viewed"]["identity"] == "anon-1"
    assert events["m-viewed"]["properties"]["sku"] == "A-1"
    assert events["m-page"]["properties"]["name"] == "Pricing"
    assert events["m-page"]["properties"]["category"] == "Docs"
    assert events["m-page"]["properties"]["path"] == "/pricing"
    assert events["m-screen"]["properties"]["name"] == "Settings"
    assert events["m-order"]["properties"]["revenue"] == 42.0
    assert events["m-order"]["properties"]["context"]["library"]["name"] == "analytics-python"

    profile = get_profile(db, tenant.id, "u-1")
    assert profile is not None
    assert profile.email == "ada@example.com"
    assert profile.properties["name"] == "Ada"
    assert profile.properties["plan"] == "pro"  # the identified profile wins the merge
    assert profile.properties["referrer"] == "ads"  # folded in from the anonymous profile
    assert profile.properties["group_id"] == "acme"
    assert profile.properties["group_traits"] == {"name": "Acme", "employees": 50}
    # The alias merged: the anonymous id now resolves to the user, events included.
    merged = get_profile(db, tenant.id, "anon-1")
    assert merged is not None and merged.identity == "u-1"
    assert "anon-1" in merged.aliases
    identities = {merged.identity, *merged.aliases}
    assert {e["identity"] for e in events.values()} <= identities


# 2. rudder-sdk-python (gzip by default) ------------------------------------------------


def test_rudder_python_client_gzips_track_and_identify(propel, tenant, live_server,
                                                       monkeypatch):
    from rudderstack.analytics import Client
    from rudderstack.analytics import request as rudder_request

    sent_headers: list[dict[str, str]] = []
    real_post = rudder_request._session.post

    def spy(url: str, **kwargs: Any) -> Any:
        sent_headers.append(dict(kwargs["headers"]))
        return real_post(url, **kwargs)

    monkeypatch.setattr(rudder_request._session, "post", spy)
    # host= is the data plane URL; the SDK appends /v1/batch and gzips by default.
    rs = Client(tenant.creds.write_key, host=live_server.url, sync_mode=True, max_retries=0)
    assert rs.gzip is True
    rs.identify(user_id="r-1", anonymous_id="r-anon",
                traits={"email": "grace@example.com", "plan": "team"})
    rs.track(user_id="r-1", event="Signed Up", properties={"source": "rudder"},
             message_id="r-track")
    rs.track(anonymous_id="r-anon", event="Opened", message_id="r-anon-track")

    assert len(sent_headers) == 3
    assert all(h.get("Content-Encoding") == "gzip" for h in sent_headers)
    events = stored_events(propel, tenant.id)
    assert events["r-track"]["name"] == "Signed Up"
    assert events["r-track"]["properties"]["source"] == "rudder"
    assert events["r-anon-track"]["identity"] == "r-anon"
    # RudderStack puts identify traits in context.traits, not at the top level.
    profile = get_profile(propel.db, tenant.id, "r-anon")
    assert profile is not None and profile.identity == "r-1"
    assert profile.email == "grace@example.com"
    assert profile.properties["plan"] == "team"
    assert list_rejections(propel.db, tenant.id) == []


# 3. messageId dedupe -------------------------------------------------------------------


def test_same_batch_twice_is_stored_once(propel, tenant, live_server):
    batch = {"batch": [track(f"d-{i}", user=f"u{i}") for i in range(5)]
             + [{"type": "page", "anonymousId": "no-id-anon", "name": "Home"}]}
    with httpx.Client(base_url=live_server.url, auth=tenant.segment_auth) as http:
        assert http.post("/v1/batch", json=batch).status_code == 200
        assert len(message_ids(propel.db, propel.lake, tenant.id)) == 6
        flush_batches(propel.db, propel.lake)  # dedupe holds across the lake flush too
        r = http.post("/v1/batch", content=gzip.compress(orjson.dumps(batch)),
                      headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
        assert r.status_code == 200, r.text
        # and within one batch
        dup = http.post("/v1/batch", json={"batch": [track("d-new"), track("d-new")]})
        assert dup.status_code == 200
    ids = message_ids(propel.db, propel.lake, tenant.id)
    assert sorted(i for i in ids if i.startswith("d-")) == [f"d-{i}" for i in range(5)] + [
        "d-new"]
    assert len(ids) == len(set(ids)) == 7
    assert count_events(propel.db, propel.lake, tenant.id, "Page Viewed") == 1


# 4. one batch, some bad messages -------------------------------------------------------


def test_batch_stores_good_messages_and_records_each_bad_one(client, propel, tenant):
    oversize = track("bad-big", properties={f"k{i}": "x" * 4000 for i in range(10)})
    assert len(orjson.dumps(oversize)) > limits.MAX_EVENT_BYTES
    batch = [
        track("good-1"),
        oversize,
        {"type": "track", "messageId": "bad-noid", "event": "Clicked"},
        track("good-2", user="u2"),
        track("bad-ts", timestamp="yesterday-ish"),
        {"type": "identify", "messageId": "good-3", "userId": "u3",
         "traits": {"email": "u3@example.com"}},
        track("good-4", user="u4", timestamp=iso(now_us() - 3600 * SECOND)),
    ]
    r = client.post("/v1/batch", json={"batch": batch}, auth=tenant.segment_auth)
    assert r.status_code == 200, r.text
    assert r.json() == {"success": True}

    ids = set(message_ids(propel.db, propel.lake, tenant.id))
    assert {"good-1", "good-2", "good-4"} <= ids
    assert not any(i.startswith("bad-") for i in ids)
    assert get_profile(propel.db, tenant.id, "u3").email == "u3@example.com"

    rows = rejections_api(client, tenant)
    assert len(rows) == 3
    by_field = {row["field"]: row for row in rows}
    assert set(by_field) == {"record", "userId", "timestamp"}
    assert "32768" in by_field["record"]["reason"]
    assert "anonymousId" in by_field["userId"]["reason"]
    assert "ISO 8601" in by_field["timestamp"]["reason"]
    assert by_field["userId"]["record"]["messageId"] == "bad-noid"
    assert by_field["timestamp"]["record"]["messageId"] == "bad-ts"
    assert all(row["source"] == "segment" for row in rows)


def test_batch_context_applies_to_every_message(client, propel, tenant):
    body = {
        "context": {"app": {"version": "2.1"}, "locale": "fr-FR"},
        "batch": [
            track("bc-1"),
            track("bc-2", context={"locale": "de-DE"}),
            # RudderStack-style identify: the traits live in context.traits
            {"type": "identify", "messageId": "bc-3", "userId": "bc-user",
             "context": {"traits": {"email": "bc@example.com", "tier": "gold"}},
             "traits": {"tier": "platinum"}},
        ],
    }
    assert client.post("/v1/batch", json=body, auth=tenant.segment_auth).status_code == 200
    events = stored_events(propel, tenant.id)
    assert events["bc-1"]["properties"]["context"] == {"app": {"version": "2.1"},
                                                       "locale": "fr-FR"}
    assert events["bc-2"]["properties"]["context"]["locale"] == "de-DE"
    assert events["bc-2"]["properties"]["context"]["app"] == {"version": "2.1"}
    profile = get_profile(propel.db, tenant.id, "bc-user")
    assert profile.email == "bc@example.com"
    assert profile.properties["tier"] == "platinum"  # top-level traits win


# 5. envelope errors, credentials, tenants ----------------------------------------------


def test_batch_envelope_errors_are_clear_json(client, propel, tenant):
    auth = tenant.segment_auth
    good = track("env-1")
    pad = "x" * 7000
    big = {"batch": [track(f"big-{i}", properties={"pad": pad}) for i in range(80)]}
    raw = orjson.dumps(big)
    assert len(raw) > limits.MAX_BATCH_BYTES

    error = assert_json_error(client.post("/v1/batch", content=raw, auth=auth,
                                          headers={"Content-Type": "application/json"}), 400)
    assert "500" in error["message"] or "512000" in error["message"]
    packed = gzip.compress(raw)
    assert len(packed) < limits.MAX_BATCH_BYTES
    assert_json_error(client.post("/v1/batch", content=packed, auth=auth, headers={
        "Content-Type": "application/json", "Content-Encoding": "gzip"}), 400)
    assert_json_error(client.post("/v1/batch", content=b'{"batch": [', auth=auth,
                                  headers={"Content-Type": "application/json"}), 400)
    assert_json_error(client.post("/v1/batch", content=b"not gzip", auth=auth, headers={
        "Content-Type": "application/json", "Content-Encoding": "gzip"}), 400)
    assert_json_error(client.post("/v1/batch", content=b"", auth=auth,
                                  headers={"Content-Type": "application/json"}), 400)
    for body in ([good], {"batch": good}, {"messages": [good]}):
        assert_json_error(client.post("/v1/batch", json=body, auth=auth), 400)
    assert_json_error(client.post("/v1/batch", content=orjson.dumps({"batch": [good]}),
                                  auth=auth, headers={"Content-Type": "text/plain"}), 415)
    assert_json_error(client.post("/v1/track", content=orjson.dumps(good), auth=auth,
                                  headers={"Content-Type": "application/x-www-form-urlencoded"}),
                      415)
    assert message_ids(propel.db, propel.lake, tenant.id) == []
    # the same batch, correctly sent, goes through
    assert client.post("/v1/batch", json={"batch": [good]}, auth=auth).status_code == 200
    assert message_ids(propel.db, propel.lake, tenant.id) == ["env-1"]


def test_credentials_are_accepted_only_where_they_belong(client, propel, tenant):
    body = {"batch": [track("cred-1")]}
    assert_json_error(client.post("/v1/batch", json=body), 401)
    assert_json_error(client.post("/v1/batch", json=body, auth=("wrong-key", "")), 401)
    assert_json_error(client.post("/v1/batch", json=body,
                                  headers={"Authorization": "Basic !!!notbase64"}), 401)
    # an API key is not a write key, neither as Basic user nor as Bearer
    assert_json_error(client.post("/v1/batch", json=body, auth=(tenant.api_key, "")), 401)
    assert_json_error(client.post("/v1/track", json=track("cred-2"), headers=tenant.bearer),
                      401)
    # nor is the write key an API key
    wk = tenant.creds.write_key
    assert_json_error(client.get("/api/v1/rejections",
                                 headers={"Authorization": f"Bearer {wk}"}), 401)
    assert_json_error(client.get("/api/v1/rejections", auth=tenant.segment_auth), 401)
    assert_json_error(client.post("/api/v1/events", auth=tenant.segment_auth,
                                  json={"events": [{"identity": "u", "name": "E"}]}), 401)
    # nor the CleverTap passcode
    assert_json_error(client.post("/v1/batch", json=body,
                                  auth=(tenant.creds.passcode, "")), 401)
    assert message_ids(propel.db, propel.lake, tenant.id) == []
    assert list_rejections(propel.db, tenant.id) == []


def test_write_key_writes_only_into_its_own_account(client, propel, tenant, other_tenant):
    batch = {"batch": [track("shared-id", user="alice"),
                       {"type": "identify", "messageId": "x-ident", "userId": "alice",
                        "traits": {"email": "alice@a.example"}},
                       {"type": "track", "messageId": "x-bad", "userId": "alice"}]}
    assert client.post("/v1/batch", json=batch, auth=tenant.segment_auth).status_code == 200

    assert list(stored_events(propel, tenant.id)) == ["shared-id"]
    assert message_ids(propel.db, propel.lake, other_tenant.id) == []
    assert get_profile(propel.db, other_tenant.id, "alice") is None
    r = client.get("/api/v1/users/alice", headers=other_tenant.bearer)
    assert_json_error(r, 404)
    assert rejections_api(client, other_tenant) == []
    mine = client.get("/api/v1/users/alice", headers=tenant.bearer)
    assert mine.status_code == 200
    assert mine.json()["profile"]["email"] == "alice@a.example"
    assert [e["message_id"] for e in mine.json()["events"]] == ["shared-id"]
    assert len(rejections_api(client, tenant)) == 1
    # The other account's own write key and the same message id: a different message.
    r = client.post("/v1/batch", json=batch, auth=other_tenant.segment_auth)
    assert r.status_code == 200
    assert list(stored_events(propel, other_tenant.id)) == ["shared-id"]
    assert list(stored_events(propel, tenant.id)) == ["shared-id"]
    assert get_profile(propel.db, other_tenant.id, "alice").email == "alice@a.example"


# 6. single-message endpoints -----------------------------------------------------------


SINGLE_INVALID = [
    ("track", {"userId": "s1", "properties": {"a": 1}}, "event"),
    ("track", {"event": "Clicked"}, "userId"),
    ("track", {"userId": "s1", "event": "Clicked", "properties": ["a"]}, "properties"),
    ("identify", {"userId": "s1", "traits": "vip"}, "traits"),
    ("identify", {"userId": "s1", "traits": {"email": "not-an-email"}}, "traits.email"),
    ("page", {"anonymousId": "a1", "name": 12}, "name"),
    ("screen", {"userId": "s1", "timestamp": "31/12/2024"}, "timestamp"),
    ("alias", {"userId": "s1"}, "previousId"),
    ("alias", {"previousId": "a1"}, "userId"),
    ("group", {"userId": "s1", "traits": {"name": "Acme"}}, "groupId"),
]


def test_single_endpoints_refuse_invalid_messages_and_record_them(client, propel, tenant):
    for index, (kind, msg, field) in enumerate(SINGLE_INVALID):
        msg = {**msg, "messageId": f"inv-{index}"}
        r = client.post(f"/v1/{kind}", json=msg, auth=tenant.segment_auth)
        error = assert_json_error(r, 400)
        assert error["field"] == field, (kind, msg, error)
        assert field in error["message"]
    not_object = client.post("/v1/track", json=["a"], auth=tenant.segment_auth)
    assert assert_json_error(not_object, 400)["field"]
    oversize = {"userId": "s1", "event": "Big", "messageId": "inv-big",
                "properties": {f"k{i}": "x" * 4000 for i in range(10)}}
    assert assert_json_error(client.post("/v1/track", json=oversize,
                                         auth=tenant.segment_auth), 400)["field"] == "record"

    rows = rejections_api(client, tenant)
    assert len(rows) == len(SINGLE_INVALID) + 2
    recorded = sorted((row["field"], row["record"]["messageId"]) for row in rows
                      if isinstance(row["record"], dict) and "messageId" in row["record"])
    # the oversize message is kept whole too, so it can be replayed
    assert recorded == sorted([("record", "inv-big")] + [
        (field, f"inv-{i}") for i, (_, _, field) in enumerate(SINGLE_INVALID)])
    assert message_ids(propel.db, propel.lake, tenant.id) == []
    assert get_profile(propel.db, tenant.id, "s1") is None


def test_single_endpoints_store_valid_messages(client, propel, tenant):
    auth = tenant.segment_auth
    calls = [
        ("track", {"userId": "v1", "event": "Added", "messageId": "v-track"}),
        # the endpoint decides the type
        ("page", {"userId": "v1", "name": "Home", "messageId": "v-page", "type": "track"}),
        ("screen", {"anonymousId": "v-anon", "name": "Cart", "messageId": "v-screen"}),
        ("identify", {"userId": "v1", "anonymousId": "v-anon", "messageId": "v-ident",
                      "traits": {"email": "v1@example.com", "phone": "+14155550123"}}),
        ("group", {"userId": "v1", "groupId": 77, "messageId": "v-group"}),
        ("alias", {"previousId": "v-old", "userId": "v1", "messageId": "v-alias"}),
    ]
    for kind, msg in calls:
        r = client.post(f"/v1/{kind}", json=msg, auth=auth)
        assert r.status_code == 200, (kind, r.text)
        assert r.json() == {"success": True}
    events = stored_events(propel, tenant.id)
    assert {m: e["name"] for m, e in events.items()} == {
        "v-track": "Added", "v-page": "Page Viewed", "v-screen": "Screen Viewed"}
    profile = get_profile(propel.db, tenant.id, "v-anon")
    assert profile.identity == "v1"
    assert profile.email == "v1@example.com" and profile.phone == "+14155550123"
    assert profile.properties["group_id"] == "77"
    assert set(profile.aliases) == {"v-anon", "v-old"}
    assert rejections_api(client, tenant) == []


# 7. timestamps -------------------------------------------------------------------------


def test_segment_timestamp_rules(client, propel, tenant):
    auth = tenant.segment_auth
    real_now = now_us()
    given = real_now - 3 * 3600 * SECOND
    device_ahead = real_now + 2 * 86_400 * SECOND  # a phone whose clock is 2 days fast
    device_behind = real_now - 3600 * SECOND
    batch = {
        "sentAt": iso(device_behind),
        "batch": [
            # timestamp wins over everything else
            track("t-wins", timestamp=iso(given), originalTimestamp=iso(real_now - SECOND),
                  sentAt=iso(real_now)),
            # originalTimestamp corrected by the message's own sentAt, even when the
            # device clock is so far off that its raw times would be out of range
            track("t-ahead", originalTimestamp=iso(device_ahead - 60 * SECOND),
                  sentAt=iso(device_ahead)),
            # ... or by the batch's sentAt
            track("t-behind", originalTimestamp=iso(device_behind - 120 * SECOND)),
            track("t-none"),
        ],
    }
    before = now_us()
    assert client.post("/v1/batch", json=batch, auth=auth).status_code == 200
    after = now_us()
    # without any sentAt, originalTimestamp is taken as it is
    r = client.post("/v1/track", auth=auth, json=track("t-orig", originalTimestamp=iso(given)))
    assert r.status_code == 200
    # epoch seconds are accepted for timestamp as well
    r = client.post("/v1/track", auth=auth, json=track("t-epoch", timestamp=given / SECOND))
    assert r.status_code == 200
    # an explicit timestamp must itself be plausible
    future = track("t-future", timestamp=iso(real_now + 3 * 86_400 * SECOND))
    assert assert_json_error(client.post("/v1/track", auth=auth, json=future),
                             400)["field"] == "timestamp"

    ts = {m: e["ts"] for m, e in stored_events(propel, tenant.id).items()}
    assert ts["t-wins"] == given
    assert ts["t-orig"] == given
    assert abs(ts["t-epoch"] - given) <= 1
    tolerance = (after - before) + 2 * SECOND
    assert abs(ts["t-ahead"] - (real_now - 60 * SECOND)) <= tolerance
    assert abs(ts["t-behind"] - (real_now - 120 * SECOND)) <= tolerance
    assert before <= ts["t-none"] <= after
    assert "t-future" not in ts


# Storage-level edge cases that must not turn into a 5xx (which clients retry forever).


def test_nul_characters_are_rejected_not_a_server_error(client, propel, tenant):
    batch = [
        track("nul-ok", properties={"note": "a\u0000b"}),  # fine inside JSON properties
        track("nul-event", event="Click\u0000ed"),
        track("nul-user", user="u\u00001"),
        {"type": "identify", "messageId": "nul-mail", "userId": "u9",
         "traits": {"email": "a\u0000b@example.com"}},
        track("nul-key", properties={"k\u0000" + "y" * 200: 1}),
    ]
    r = client.post("/v1/batch", json={"batch": batch}, auth=tenant.segment_auth)
    assert r.status_code == 200, r.text
    events = stored_events(propel, tenant.id)
    assert set(events) == {"nul-ok"}
    assert events["nul-ok"]["properties"]["note"] == "a\u0000b"
    rows = rejections_api(client, tenant)
    assert len(rows) == 4
    assert {row["record"]["messageId"] for row in rows if isinstance(row["record"], dict)} == {
        "nul-event", "nul-user", "nul-mail", "nul-key"}


def test_rejections_endpoint_lists_json_records(client, tenant):
    r = client.post("/v1/batch", auth=tenant.segment_auth,
                    content=json.dumps({"batch": [{"type": "nope", "messageId": "r1"}]}),
                    headers={"Content-Type": "application/json; charset=utf-8"})
    assert r.status_code == 200
    (row,) = rejections_api(client, tenant)
    assert row["field"] == "type" and "track" in row["reason"]
    assert row["record"] == {"type": "nope", "messageId": "r1"}



def test_concurrent_retries_of_one_batch_store_it_once(propel, tenant, live_server):
    from concurrent.futures import ThreadPoolExecutor

    batch = {"batch": [track(f"c-{i}", user=f"cu{i % 3}") for i in range(30)]
             + [{"type": "identify", "messageId": f"ci-{i}", "userId": f"cu{i}",
                 "traits": {"n": i}} for i in range(3)]}

    def send(_: int) -> int:
        with httpx.Client(base_url=live_server.url, auth=tenant.segment_auth) as http:
            return http.post("/v1/batch", json=batch, timeout=30).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(send, range(8)))
    assert statuses == [200] * 8
    events = stored_events(propel, tenant.id)
    assert sorted(events) == sorted(f"c-{i}" for i in range(30))
    assert len(message_ids(propel.db, propel.lake, tenant.id)) == 33


def test_every_repointing_of_an_alias_is_kept_in_its_history(client, propel, tenant):
    """identity_aliases says where an alias points now; the history keeps each change,
    so features as of a past date can read the aliases as they were then."""
    from sqlalchemy import select

    from propel.profiles.tables import identity_alias_history, identity_aliases

    for n, (previous, user) in enumerate((("h-anon", "h-1"), ("h-1", "h-2"),
                                          ("h-anon", "h-2"))):  # the last changes nothing
        r = client.post("/v1/alias", json={"previousId": previous, "userId": user,
                                           "messageId": f"h-alias-{n}"},
                        auth=tenant.segment_auth)
        assert r.status_code == 200, r.text
    with propel.db.read() as conn:
        history = conn.execute(
            select(identity_alias_history.c.alias, identity_alias_history.c.identity)
            .where(identity_alias_history.c.account_id == tenant.id)
            .order_by(identity_alias_history.c.id)).all()
        now = conn.execute(select(identity_aliases.c.alias, identity_aliases.c.identity)
                           .where(identity_aliases.c.account_id == tenant.id)).all()
    assert [tuple(r) for r in history] == [("h-anon", "h-1"), ("h-anon", "h-2"),
                                           ("h-1", "h-2")]
    assert {tuple(r) for r in now} == {("h-anon", "h-2"), ("h-1", "h-2")}
