"""CleverTap-compatible API (/1): the official Node client end to end against a live
server, then every record code, status, limit, cursor and credential rule over HTTP."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from propel.lake.flush import flush_batches
from propel.lake.reader import count_events, message_ids
from propel.signing import sign

NODE = shutil.which("node")
NODE_DIR = Path(__file__).parent / "node"
DRIVER = NODE_DIR / "clevertap_driver.js"
needs_node = pytest.mark.skipif(
    NODE is None, reason="node is not on PATH, so the official CleverTap Node client cannot run")

NOW = int(time.time())
HOUR = 3600


def day(ts: int) -> int:
    return int(time.strftime("%Y%m%d", time.gmtime(ts)))


# Every test event is stamped within the last two days; this query window holds them all.
QUERY = {"event_name": "Buy", "from": day(NOW - 3 * 86400), "to": day(NOW)}


def event(identity: str, n: int, name: str = "Buy", **extra: Any) -> dict[str, Any]:
    record = {"type": "event", "identity": identity, "evtName": name, "evtData": {"n": n}}
    return {**record, "ts": NOW - HOUR - n, **extra}


def profile(identity: str, **data: Any) -> dict[str, Any]:
    return {"type": "profile", "identity": identity, "profileData": data or {"Name": identity}}


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="session")
def node_client() -> Path:
    """The pinned, unmodified npm ``clevertap`` package, installed on first use."""
    if not (NODE_DIR / "node_modules" / "clevertap").is_dir():
        npm = shutil.which("npm")
        assert npm, "node_modules is missing and npm is not on PATH to run `npm ci`"
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True,
                       timeout=300, capture_output=True)
    return DRIVER


def run_node(driver: Path, url: str, account: str, passcode: str, command: str, arg: Any,
             tmp_path: Path) -> dict[str, Any]:
    """Run one client call; returns the driver's JSON line (``result`` is what the
    client's Promise resolved with)."""
    arg_file = tmp_path / f"ct-{command}-{time.monotonic_ns()}.json"
    arg_file.write_text(json.dumps(arg))
    env = {**os.environ, "PROPEL_CT_ENDPOINT": url, "PROPEL_CT_ACCOUNT": account,
           "PROPEL_CT_PASSCODE": passcode, "PROPEL_CT_TIMEOUT_MS": "20000"}
    done = subprocess.run([NODE or "node", str(driver), command, f"@{arg_file}"], env=env,
                          capture_output=True, text=True, timeout=60)
    lines = done.stdout.strip().splitlines()
    assert lines, f"driver printed nothing (rc {done.returncode}): {done.stderr[-2000:]}"
    return json.loads(lines[-1])


@pytest.fixture
def ct(node_client, live_server, tenant, tmp_path):
    """ct(command, arg) -> the Node client's result, as ``tenant``; asserts it succeeded."""

    def call(command: str, arg: Any, creds: tuple[str, str] | None = None) -> Any:
        account, passcode = creds or (tenant.creds.account_id, tenant.creds.passcode)
        out = run_node(node_client, live_server.url, account, passcode, command, arg, tmp_path)
        assert out["ok"], out
        return out["result"]

    return call


def upload(client, headers: dict[str, str], records: list) -> dict[str, Any]:
    r = client.post("/1/upload", json={"d": records}, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def page_all(client, headers: dict[str, str], kind: str, query: dict, batch_size: int,
             between_pages: Any = None) -> tuple[list[dict], int]:
    """GET with batch_size + query, then GET with each cursor, as the Node client does."""
    r = client.get(f"/1/{kind}.json", params={"batch_size": batch_size,
                                              "query": json.dumps(query)}, headers=headers)
    assert r.status_code == 200, r.text
    cursor, records, pages = r.json()["cursor"], [], 0
    while cursor:
        if between_pages:
            between_pages(pages)
        r = client.get(f"/1/{kind}.json?cursor={cursor}", headers=headers)
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["records"]) <= batch_size
        records += body["records"]
        cursor = body.get("next_cursor")
        pages += 1
        assert pages < 1000
    return records, pages


def ns(records: list[dict]) -> list[int]:
    return sorted(r["event_props"]["n"] for r in records)


def fail_shape(r: httpx.Response, status: int) -> dict[str, Any]:
    """CleverTap's error shape, as a JSON body, with the HTTP status."""
    assert r.status_code == status, r.text
    body = r.json()
    assert body["status"] == "fail" and body["code"] == status and body["error"], body
    return body


# --------------------------------------------------------------------------- the Node client


@needs_node
def test_node_upload_batches_of_100_with_bad_records(ct, propel, tenant):
    good = [event(f"u{i % 17}", i) for i in range(200)]
    good += [{k: v for k, v in event(f"u{i}", 1000 + i).items() if k != "ts"} for i in range(5)]
    good += [profile(f"u{i}", Email=f"u{i}@example.com", Plan="gold") for i in range(20)]
    # Bad records the client lets through (it only checks identity, type and the data
    # object), placed so that every one of the three batches has some.
    bad = {
        10: ({"type": "event", "identity": "u1", "evtData": {"x": 1}}, 509),
        70: (event("u1", 5000, ts="yesterday"), 525),
        110: (event("u1", 5001, ts=(NOW - HOUR) * 1000), 525),
        150: ({**event("u1", 5002), "evtData": [1, 2]}, 512),
        190: (event(" ", 5003), 523),
        215: ({"type": "token", "identity": "u1", "evtData": {}, "tokenData": {}}, 524),
        224: (profile("u2", Email="not-an-email"), 512),
        226: ({"type": "profile", "identity": "u3", "profileData": []}, 512),
    }
    records = list(good)
    for index in sorted(bad):
        records.insert(index, bad[index][0])
    assert len(records) == 233

    result = ct("upload", records)
    assert isinstance(result, list) and len(result) == 3  # 100 + 100 + 33
    assert [r["status"] for r in result] == ["partial"] * 3
    assert sum(r["processed"] for r in result) == len(good)
    unprocessed = [u for r in result for u in r["unprocessed"]]
    assert [(u["code"], u["record"]) for u in unprocessed] == [
        (code, record) for _, (record, code) in sorted(bad.items())]
    assert all(u["status"] == "fail" and u["error"] for u in unprocessed)
    assert count_events(propel.db, propel.lake, tenant.id, "Buy") == 205

    # A retry of the whole upload is processed again but stores nothing twice.
    again = ct("upload", records)
    assert sum(r["processed"] for r in again) == len(good)
    assert count_events(propel.db, propel.lake, tenant.id, "Buy") == 205
    ids = message_ids(propel.db, propel.lake, tenant.id)
    assert len(ids) == len(set(ids))
    assert count_events(propel.db, propel.lake, tenant.id, kind="profile") == 20


@needs_node
def test_node_profile_lookups(ct, client, tenant, other_tenant):
    upload(client, tenant.clevertap, [
        profile("alice", Email="Alice+news@Example.com", Name="Alice", Phone="+14155550123"),
        profile("bob+work", Email="bob@example.com", Name="Bob"),
        {"type": "profile", "objectId": "__g7f3a", "profileData": {"Name": "Anon"}},
    ])
    upload(client, other_tenant.clevertap, [profile("carol", Email="carol@example.com")])

    by_identity = ct("profile", {"identity": "alice"})
    assert by_identity["status"] == "success"
    record = by_identity["record"]
    assert record["identity"] == "alice" and record["email"] == "alice+news@example.com"
    assert record["profileData"]["Name"] == "Alice"
    assert record["profileData"]["Phone"] == "+14155550123"
    # The client does not URL-encode: "+" reaches the server as a space.
    assert ct("profile", {"email": "alice+news@example.com"})["record"]["identity"] == "alice"
    assert ct("profile", {"identity": "bob+work"})["record"]["email"] == "bob@example.com"
    assert ct("profile", {"objectId": "__g7f3a"})["record"]["profileData"]["Name"] == "Anon"
    missing = ct("profile", {"identity": "nobody"})
    assert missing["status"] == "fail" and missing["code"] == 404
    # Another account's profile is not found with these credentials.
    assert ct("profile", {"email": "carol@example.com"})["code"] == 404
    assert ct("profile", {"identity": "carol"})["code"] == 404
    # Bad credentials: the client resolves CleverTap's error body.
    denied = ct("profile", {"identity": "alice"}, creds=(tenant.creds.account_id, "wrong"))
    assert denied == {"status": "fail", "code": 401, "error": denied["error"]}
    denied = ct("profile", {"identity": "alice"}, creds=("ZZZ-ZZZ-ZZZZ", "x"))
    assert denied["status"] == "fail" and denied["code"] == 401


@needs_node
def test_node_events_and_profiles_paging_across_lake_and_recent(ct, client, propel, tenant,
                                                               other_tenant):
    ids = [f"user{i:02d}" for i in range(13)]
    first = [event(ids[i % 13], i) for i in range(30)]
    second = [event(ids[i % 13], i) for i in range(30, 55)]
    third = [event(ids[i % 13], i) for i in range(55, 70)]
    noise = [event("user99", 900, name="Browse"), event("user98", 901, ts=NOW - 30 * 86400)]
    assert upload(client, tenant.clevertap, first + noise)["processed"] == 32
    upload(client, tenant.clevertap, [profile(i, Email=f"{i}@example.com") for i in ids[:5]])
    upload(client, other_tenant.clevertap, [event("intruder", 999)])
    flush_batches(propel.db, propel.lake)  # first batch: all in the lake
    upload(client, tenant.clevertap, second)
    flush_batches(propel.db, propel.lake, max_rows=10, max_batches=1)  # part of the second
    upload(client, tenant.clevertap, third)  # still only in recent_events

    expected = list(range(70))
    for batch_size in (7, 10, 100):
        got = ct("events", {"query": QUERY, "batchSize": batch_size})
        assert ns(got) == expected, batch_size
        assert {r["profile"]["identity"] for r in got} == set(ids)
    sample = next(r for r in got if r["event_props"]["n"] == 3)
    assert sample["profile"]["objectId"] == ids[3]
    assert str(sample["ts"]) == time.strftime("%Y%m%d%H%M%S", time.gmtime(NOW - HOUR - 3))

    got = ct("profiles", {"query": QUERY, "batchSize": 4})
    assert sorted(r["identity"] for r in got) == sorted(ids)
    assert next(r for r in got if r["identity"] == "user01")["email"] == "user01@example.com"
    assert ct("events", {"query": {**QUERY, "event_name": "Nothing"}, "batchSize": 5}) == []
    # The other account sees only its own event.
    other = (other_tenant.creds.account_id, other_tenant.creds.passcode)
    assert ns(ct("events", {"query": QUERY, "batchSize": 3}, creds=other)) == [999]


# --------------------------------------------------------------------------- record codes


RECORD_CODES = [
    ({"type": "event", "identity": "u1", "evtData": {}}, 509),
    ({"type": "event", "identity": "u1", "evtName": "", "evtData": {}}, 509),
    ({"type": "event", "identity": "u1", "evtName": "   "}, 509),
    ({"type": "event", "identity": "u1", "evtName": 7}, 512),
    ({"type": "event", "identity": "u1", "evtName": "E" * 300}, 512),
    ({"type": "event", "identity": "u1", "evtName": "Buy", "evtData": [1]}, 512),
    ({"type": "event", "identity": "u1", "evtName": "Buy", "evtData": {"s": "x" * 9000}}, 512),
    ({"type": "event", "identity": "u1", "evtName": "Buy", "evtData": {"k": "x" * 40_000}},
     512),
    ({"type": "event", "identity": "u1", "evtName": "Buy\u0000"}, 512),
    ({"type": "profile", "identity": "u1"}, 512),
    ({"type": "profile", "identity": "u1", "profileData": {}}, 512),
    ({"type": "profile", "identity": "u1", "profileData": "Name"}, 512),
    ({"type": "profile", "identity": "u1", "profileData": {"Email": "nope"}}, 512),
    ({"type": "profile", "identity": "u1", "profileData": {"Phone": "12"}}, 512),
    ({"type": "profile", "identity": "u1", "profileData": {"Tz": "Mars/Base"}}, 512),
    ({"type": "profile", "identity": "u1", "profileData": {"Email": "a\u0000@b.co"}}, 512),
    ("not a record", 512),
    ([1, 2], 512),
    (None, 512),
    ({"type": "event", "evtName": "Buy"}, 523),
    ({"type": "event", "identity": "", "evtName": "Buy"}, 523),
    ({"type": "event", "identity": "  ", "evtName": "Buy"}, 523),
    ({"type": "event", "identity": ["u1"], "evtName": "Buy"}, 523),
    ({"type": "event", "identity": "u" * 300, "evtName": "Buy"}, 523),
    ({"type": "event", "identity": "u\u0000", "evtName": "Buy"}, 523),
    ({"type": "profile", "profileData": {"Name": "x"}}, 523),
    ({"identity": "u1", "evtName": "Buy"}, 524),
    ({"type": "token", "identity": "u1"}, 524),
    ({"type": "Event", "identity": "u1", "evtName": "Buy"}, 524),
    ({"type": ["event"], "identity": "u1", "evtName": "Buy"}, 524),
    ({"type": "event", "identity": "u1", "evtName": "Buy", "ts": "yesterday"}, 525),
    ({"type": "event", "identity": "u1", "evtName": "Buy", "ts": "²"}, 525),
    ({"type": "event", "identity": "u1", "evtName": "Buy", "ts": NOW * 1000}, 525),
    ({"type": "event", "identity": "u1", "evtName": "Buy", "ts": -1}, 525),
    ({"type": "event", "identity": "u1", "evtName": "Buy", "ts": NOW + 3 * 86400}, 525),
    ({"type": "event", "identity": "u1", "evtName": "Buy", "ts": None}, 525),
    ({"type": "event", "identity": "u1", "evtName": "Buy", "ts": True}, 525),
    ({"type": "profile", "identity": "u1", "profileData": {"A": 1}, "ts": "2024-01-01"}, 525),
]


def test_every_record_code_beside_good_records(client, propel, tenant):
    good = [event("g1", 1), profile("g2", Email="g2@example.com"), event("g3", 2, ts=str(NOW))]
    records = [good[0]] + [record for record, _ in RECORD_CODES] + good[1:]
    body = upload(client, tenant.clevertap, records)
    assert body["status"] == "partial"
    assert body["processed"] == 3
    assert [(u["code"], u["record"]) for u in body["unprocessed"]] == [
        (code, record) for record, code in RECORD_CODES]
    assert all(u["status"] == "fail" and isinstance(u["error"], str) and u["error"]
               for u in body["unprocessed"])
    assert count_events(propel.db, propel.lake, tenant.id, "Buy") == 2
    found = client.get("/1/profile.json?identity=g2", headers=tenant.clevertap).json()
    assert found["record"]["email"] == "g2@example.com"
    # Rejections are kept for operators, on both databases (NUL in a key included).
    nul_key = {"type": "event", "identity": "u1", "evtName": "Buy",
               "evtData": {"k\u0000": "x" * 9000}}
    body = upload(client, tenant.clevertap, [nul_key, event("g4", 3)])
    assert (body["status"], body["processed"]) == ("partial", 1)
    assert body["unprocessed"][0]["code"] == 512


def test_status_success_partial_fail(client, tenant):
    assert upload(client, tenant.clevertap, [event("a", 1), profile("a")]) == {
        "status": "success", "processed": 2, "unprocessed": []}
    body = upload(client, tenant.clevertap, [event("a", 2), {"type": "event"}])
    assert (body["status"], body["processed"], len(body["unprocessed"])) == ("partial", 1, 1)
    body = upload(client, tenant.clevertap, [{"type": "event"}, {"type": "x", "identity": "a"}])
    assert (body["status"], body["processed"]) == ("fail", 0)
    assert [u["code"] for u in body["unprocessed"]] == [523, 524]


def test_batch_limits_and_bodies(client, propel, tenant):
    h = tenant.clevertap
    many = [event(f"m{i}", i, name="Bulk") for i in range(1000)]
    assert upload(client, h, many) == {"status": "success", "processed": 1000, "unprocessed": []}
    fail_shape(client.post("/1/upload", json={"d": many + [event("m", 1001)]}, headers=h), 400)
    assert count_events(propel.db, propel.lake, tenant.id, "Bulk") == 1000

    fail_shape(client.post("/1/upload", content=b'{"d": [', headers=h), 400)
    fail_shape(client.post("/1/upload", content=b"", headers=h), 400)
    fail_shape(client.post("/1/upload", json=[event("a", 1)], headers=h), 400)
    fail_shape(client.post("/1/upload", json={"d": {"a": 1}}, headers=h), 400)
    fail_shape(client.post("/1/upload", json={"records": []}, headers=h), 400)
    fail_shape(client.post("/1/upload", content=b'{"d":["\\ud800"]}', headers=h), 400)
    huge = b'{"d":[{"type":"event","identity":"a","evtName":"x","evtData":{"s":"' + (
        b"x" * (4 * 1024 * 1024)) + b'"}}]}'
    fail_shape(client.post("/1/upload", content=huge, headers=h), 413)
    bomb = gzip.compress(huge)
    fail_shape(client.post("/1/upload", content=bomb,
                           headers={**h, "Content-Encoding": "gzip"}), 413)
    fail_shape(client.post("/1/upload", content=b"not gzip",
                           headers={**h, "Content-Encoding": "gzip"}), 400)
    small = gzip.compress(json.dumps({"d": [event("z", 1, name="Zipped")]}).encode())
    r = client.post("/1/upload", content=small, headers={**h, "Content-Encoding": "gzip"})
    assert r.json()["processed"] == 1
    # Content-Type is not required (some clients send text/plain).
    r = client.post("/1/upload", content=json.dumps({"d": [event("t", 1, name="Plain")]}),
                    headers={**h, "Content-Type": "text/plain"})
    assert r.status_code == 200 and r.json()["processed"] == 1


def test_retry_is_deduplicated_on_exactly_what_was_sent(client, propel, tenant, other_tenant):
    h = tenant.clevertap
    no_ts = [{"type": "event", "identity": f"r{i}", "evtName": "Retry", "evtData": {"i": i}}
             for i in range(5)]
    records = no_ts + [event("r9", 9, name="Retry"), profile("r1", Plan="gold")]
    assert upload(client, h, records)["processed"] == 7
    # A retry later on: records without ts are stamped "now" but still hash the same.
    assert upload(client, h, records)["processed"] == 7
    assert count_events(propel.db, propel.lake, tenant.id, "Retry") == 6
    flush_batches(propel.db, propel.lake)
    reordered = [dict(reversed(list(r.items()))) for r in records]
    upload(client, h, reordered)  # same fields, other key order: the same record
    assert count_events(propel.db, propel.lake, tenant.id, "Retry") == 6
    assert count_events(propel.db, propel.lake, tenant.id, kind="profile") == 1
    # Anything the client changed makes another record.
    upload(client, h, [{**no_ts[0], "ts": NOW - 5}, {**no_ts[1], "evtData": {"i": 1, "j": 2}},
                       event("r9", 9, name="Retry", ts=NOW - HOUR - 10)])
    assert count_events(propel.db, propel.lake, tenant.id, "Retry") == 9
    # Duplicates within one upload count once.
    upload(client, h, [event("d", 1, name="Twice")] * 3)
    assert count_events(propel.db, propel.lake, tenant.id, "Twice") == 1
    # Dedupe is per account: the same records in another account are stored there.
    assert upload(client, other_tenant.clevertap, records)["processed"] == 7
    assert count_events(propel.db, propel.lake, other_tenant.id, "Retry") == 6
    ids = message_ids(propel.db, propel.lake, tenant.id)
    assert len(ids) == len(set(ids))


# --------------------------------------------------------------------------- reading


def test_paging_is_exactly_once_while_flushes_happen(client, propel, tenant):
    h = tenant.clevertap
    # Many share a timestamp, so the keyset must break ties on the message id.
    records = [event(f"p{i % 11:02d}", i, ts=NOW - HOUR - i // 8) for i in range(60)]
    upload(client, h, records[:25])
    flush_batches(propel.db, propel.lake)
    upload(client, h, records[25:])

    def flush_some(page: int) -> None:
        if page in (1, 3):
            flush_batches(propel.db, propel.lake, max_rows=9, max_batches=1)

    got, pages = page_all(client, h, "events", QUERY, 7, flush_some)
    assert ns(got) == list(range(60)) and pages == 9
    got, pages = page_all(client, h, "events", QUERY, 60)
    assert ns(got) == list(range(60)) and pages == 2  # a full last page, then an empty one
    got, _ = page_all(client, h, "profiles", QUERY, 3, flush_some)
    assert sorted(r["identity"] for r in got) == [f"p{i:02d}" for i in range(11)]
    narrow = {**QUERY, "from": day(NOW + 86400), "to": day(NOW + 86400)}
    assert page_all(client, h, "events", narrow, 5)[0] == []


def test_profiles_lists_a_merged_profile_once(client, tenant):
    h = tenant.clevertap
    upload(client, h, [event("anon-1", 1), event("user-1", 2), event("user-2", 3),
                       profile("user-1", Name="U")])
    # Another API merges the anonymous id into user-1; its event keeps the old id.
    merge = {"type": "identify", "anonymousId": "anon-1", "userId": "user-1", "messageId": "m1"}
    r = client.post("/v1/batch", json={"batch": [merge]}, auth=tenant.segment_auth)
    assert r.status_code == 200, r.text
    for size in (1, 2, 10):
        got, _ = page_all(client, h, "profiles", QUERY, size)
        assert [(r["identity"], r["aliases"]) for r in got] == [
            ("user-1", ["anon-1"]), ("user-2", [])]
        assert got[0]["profileData"] == {"Name": "U"}
        assert got[1] == {"identity": "user-2", "objectId": "user-2", "email": None,
                          "profileData": {}, "push_tokens": [], "aliases": []}
    # The profile page and the single look-up agree.
    one = client.get("/1/profile.json?identity=anon-1", headers=h).json()["record"]
    assert one == got[0]


def test_post_forms_of_events_and_profiles(client, tenant):
    h = tenant.clevertap
    upload(client, h, [event(f"q{i}", i) for i in range(9)] + [profile("q1", Plan="x")])
    for kind, size, pages in (("events", 4, 3), ("profiles", 2, 5)):
        r = client.post(f"/1/{kind}.json?batch_size={size}", json=QUERY, headers=h)
        assert r.status_code == 200, r.text
        cursor, records = r.json()["cursor"], []
        for _ in range(pages):
            r = client.post(f"/1/{kind}.json", params={"cursor": cursor}, headers=h)
            assert r.status_code == 200, r.text
            records += r.json()["records"]
            cursor = r.json().get("next_cursor")
        assert cursor is None
        if kind == "events":
            assert ns(records) == list(range(9))
        else:
            assert sorted(r["identity"] for r in records) == [f"q{i}" for i in range(9)]
            assert next(r for r in records if r["identity"] == "q1")["profileData"] == {
                "Plan": "x"}
    # The query may also come in the URL of a POST.
    r = client.post("/1/events.json", params={"query": json.dumps(QUERY)}, headers=h)
    assert "cursor" in r.json()
    fail_shape(client.post("/1/events.json", content=b"{", headers=h), 400)
    fail_shape(client.post("/1/events.json", content=b"", headers=h), 400)
    fail_shape(client.post("/1/profiles.json", json=[QUERY], headers=h), 400)


@pytest.mark.parametrize("kind", ["events", "profiles"])
def test_bad_queries_are_400(client, tenant, kind):
    h = tenant.clevertap
    bad = [
        {"query": "{not json"}, {"query": "[1]"}, {"query": json.dumps({**QUERY, "to": None})},
        {"query": json.dumps({k: v for k, v in QUERY.items() if k != "event_name"})},
        {"query": json.dumps({**QUERY, "from": "2024-01-01"})},
        {"query": json.dumps({**QUERY, "from": 2024011})},
        {"query": json.dumps({**QUERY, "from": 20241340})},
        {"query": json.dumps({**QUERY, "from": True})},
        {"query": json.dumps({**QUERY, "from": QUERY["to"], "to": QUERY["from"]})},
        {"query": json.dumps({**QUERY, "event_name": "E" * 300})},
        {"query": json.dumps(QUERY), "batch_size": "ten"},
        {"query": json.dumps(QUERY), "batch_size": "0"},
        {"query": json.dumps(QUERY), "batch_size": "-3"},
        {"batch_size": "5"},
    ]
    for params in bad:
        fail_shape(client.get(f"/1/{kind}.json", params=params, headers=h), 400)
    r = client.get(f"/1/{kind}.json", params={"query": json.dumps(
        {**QUERY, "from": str(QUERY["from"])}), "batch_size": "99999"}, headers=h)
    assert r.status_code == 200 and "cursor" in r.json()


def test_profile_lookup_errors(client, tenant):
    h = tenant.clevertap
    upload(client, h, [profile("x y", Email="xy@example.com")])
    assert client.get("/1/profile.json", params={"identity": "x y"},
                      headers=h).json()["record"]["identity"] == "x y"
    fail_shape(client.get("/1/profile.json", headers=h), 400)
    fail_shape(client.get("/1/profile.json?identity=&email=", headers=h), 400)
    fail_shape(client.get("/1/profile.json?identity=nope", headers=h), 404)
    fail_shape(client.get("/1/profile.json?identity=a%00b", headers=h), 404)
    fail_shape(client.get("/1/profile.json?email=a%00@b.co", headers=h), 404)


def test_tampered_and_foreign_cursors_are_refused(client, propel, tenant, other_tenant):
    h = tenant.clevertap
    upload(client, h, [event(f"c{i}", i) for i in range(6)])
    upload(client, other_tenant.clevertap, [event("theirs", 50)])
    start = client.get("/1/events.json", params={"batch_size": 2, "query": json.dumps(QUERY)},
                       headers=h).json()["cursor"]
    body, mac = start.split(".")
    flipped = body[:-3] + ("A" if body[-3] != "A" else "B") + body[-2:]
    secret = propel.settings.resolved_secret_key()
    forged = sign("not-the-secret", {"a": tenant.id, "q": {"event_name": "Buy", "from": 0,
                                                          "to": 10**17}, "n": 2, "after": None},
                  "ct.events")
    for bad in (f"{flipped}.{mac}", f"{body}.{mac[:-2]}xx", body, f"{body}.", "garbage",
                "a.b.c", "%%%", "é.é", forged, " "):
        r = client.get("/1/events.json", params={"cursor": bad}, headers=h)
        assert fail_shape(r, 400)["error"] == "cursor is not valid"
    # A cursor is for one endpoint: an events cursor is not a profiles cursor.
    fail_shape(client.get("/1/profiles.json", params={"cursor": start}, headers=h), 400)
    # Another account's credentials cannot continue this account's cursor...
    r = client.get("/1/events.json", params={"cursor": start}, headers=other_tenant.clevertap)
    assert "another account" in fail_shape(r, 400)["error"]
    # ...while the owner still can, and a valid cursor signed for another account in
    # this deployment's own key is refused too.
    assert len(client.get("/1/events.json", params={"cursor": start},
                          headers=h).json()["records"]) == 2
    theirs = sign(secret, {"a": other_tenant.id, "q": {"event_name": "Buy", "from": 0,
                                                        "to": 10**17}, "n": 2, "after": None},
                  "ct.events")
    fail_shape(client.get("/1/events.json", params={"cursor": theirs}, headers=h), 400)


# --------------------------------------------------------------------------- credentials


def test_credentials_are_checked_everywhere(client, propel, tenant, other_tenant):
    wrong = {**tenant.clevertap, "X-CleverTap-Passcode": "wrong"}
    swapped = {"X-CleverTap-Account-Id": tenant.id,
               "X-CleverTap-Passcode": other_tenant.creds.passcode}
    unknown = {"X-CleverTap-Account-Id": "ZZZ-ZZZ-ZZZZ", "X-CleverTap-Passcode": "x"}
    only_id = {"X-CleverTap-Account-Id": tenant.id}
    calls = [
        ("POST", "/1/upload", {"json": {"d": [event("a", 1)]}}),
        ("POST", "/1/upload", {"content": b"{broken"}),
        ("GET", "/1/profile.json?identity=a", {}),
        ("GET", "/1/events.json", {"params": {"query": json.dumps(QUERY)}}),
        ("POST", "/1/profiles.json", {"json": QUERY}),
    ]
    for headers in (wrong, swapped, unknown, only_id, {}):
        for method, path, kw in calls:
            r = client.request(method, path, headers=headers, **kw)
            fail_shape(r, 401)
            assert r.headers["content-type"].startswith("application/json")
    assert count_events(propel.db, propel.lake, tenant.id) == 0


def test_accounts_are_isolated(client, propel, tenant, other_tenant):
    mine, theirs = tenant.clevertap, other_tenant.clevertap
    upload(client, mine, [profile("shared", Email="mine@example.com", Secret="s1"),
                          event("shared", 1), event("only-mine", 2)])
    upload(client, theirs, [profile("shared", Email="theirs@example.com"), event("shared", 3)])
    assert client.get("/1/profile.json?identity=shared", headers=mine).json()["record"][
        "profileData"] == {"Email": "mine@example.com", "Secret": "s1"}
    assert client.get("/1/profile.json?identity=shared", headers=theirs).json()["record"][
        "profileData"] == {"Email": "theirs@example.com"}
    fail_shape(client.get("/1/profile.json?email=mine@example.com", headers=theirs), 404)
    fail_shape(client.get("/1/profile.json?identity=only-mine", headers=theirs), 404)
    flush_batches(propel.db, propel.lake)
    assert ns(page_all(client, mine, "events", QUERY, 1)[0]) == [1, 2]
    assert ns(page_all(client, theirs, "events", QUERY, 1)[0]) == [3]
    assert [r["identity"] for r in page_all(client, theirs, "profiles", QUERY, 1)[0]] == [
        "shared"]
    assert count_events(propel.db, propel.lake, other_tenant.id, "Buy") == 1


def test_openapi_has_one_operation_id_per_clevertap_operation(client):
    spec = client.get("/openapi.json").json()
    ops = [(path, method, op["operationId"]) for path, item in spec["paths"].items()
           if path.startswith("/1/") for method, op in item.items()]
    assert {(path, method) for path, method, _ in ops} == {
        ("/1/upload", "post"), ("/1/profile.json", "get"), ("/1/events.json", "get"),
        ("/1/events.json", "post"), ("/1/profiles.json", "get"), ("/1/profiles.json", "post"),
        *((f"/1/targets/{name}.json", "post")
          for name in ("create", "estimate", "list", "result", "stop"))}
    assert len({op for _, _, op in ops}) == len(ops)
