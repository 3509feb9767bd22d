"""App inbox API: signed identities, own messages only, idempotent marks mirrored on the
outbox message."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import timedelta

import orjson
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import insert, select

from propel.accounts import inbox_credentials, user_signature
from propel.api import errors, inbox
from propel.campaigns.tables import inbox_messages, messages
from propel.db.meta import utcnow

_ids = itertools.count(1)


@pytest.fixture
def app_client(propel) -> Iterator[TestClient]:
    app = FastAPI()
    errors.install(app)
    app.include_router(inbox.router)
    app.state.propel = propel
    with TestClient(app) as c:
        yield c


def auth(propel, account_id: str, identity: str) -> dict[str, str]:
    creds = inbox_credentials(propel.db, account_id)
    return {"X-Propel-Client-Key": creds.client_key, "X-Propel-User": identity,
            "X-Propel-User-Signature": user_signature(creds.signing_secret, identity)}


def seed(propel, account_id: str, identity: str, key: str, minutes_ago: int = 0,
         outbox: bool = True) -> None:
    now = utcnow()

    def _insert(conn) -> None:
        conn.execute(insert(inbox_messages).values(
            key=key, account_id=account_id, identity=identity, campaign_id="c1",
            title=f"Title {key}", body="Body", url="https://shop.example/x",
            data=orjson.dumps({"badge": 1}).decode(),
            created_at=now - timedelta(minutes=minutes_ago)))
        if outbox:
            conn.execute(insert(messages).values(
                account_id=account_id, campaign_id="c1", dispatch_id=next(_ids),
                identity=identity, key=key, state="sent", created_at=now, sent_at=now))

    propel.db.write(_insert)


def outbox(propel, key: str):
    with propel.db.read() as conn:
        return conn.execute(select(messages).where(messages.c.key == key)).one()


def test_lists_only_own_messages_newest_first(app_client, propel, tenant) -> None:
    for i, key in enumerate(["k-old", "k-mid", "k-new"]):
        seed(propel, tenant.id, "ada", key, minutes_ago=30 - 10 * i)
    seed(propel, tenant.id, "bob", "k-bob")
    r = app_client.get("/inbox/v1/messages", headers=auth(propel, tenant.id, "ada"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert [m["key"] for m in body["messages"]] == ["k-new", "k-mid", "k-old"]
    first = body["messages"][0]
    assert first == {"key": "k-new", "title": "Title k-new", "body": "Body",
                     "url": "https://shop.example/x", "data": {"badge": 1},
                     "created_at": first["created_at"], "viewed": False, "clicked": False,
                     "viewed_at": None, "clicked_at": None}
    assert body["unviewed"] == 3 and body["next_before"] is None


def test_pages_with_before(app_client, propel, tenant) -> None:
    for i in range(5):
        seed(propel, tenant.id, "ada", f"p{i}", minutes_ago=i, outbox=False)
    seed(propel, tenant.id, "ada", "p-tie", minutes_ago=2, outbox=False)  # same minute as p2
    headers = auth(propel, tenant.id, "ada")
    seen, before = [], None
    while True:
        params = {"limit": 2} | ({"before": before} if before else {})
        page = app_client.get("/inbox/v1/messages", params=params, headers=headers).json()
        seen += [m["key"] for m in page["messages"]]
        before = page["next_before"]
        if before is None:
            break
    assert len(seen) == 6 and set(seen) == {"p0", "p1", "p2", "p3", "p4", "p-tie"}
    assert seen.index("p0") == 0 and seen.index("p4") == 5


def test_authentication_failures_are_401_json(app_client, propel, tenant, other_tenant
                                              ) -> None:
    seed(propel, tenant.id, "ada", "k1")
    good = auth(propel, tenant.id, "ada")
    other = auth(propel, other_tenant.id, "ada")
    cases = [
        {},
        {k: v for k, v in good.items() if k != "X-Propel-User-Signature"},
        good | {"X-Propel-User-Signature": "0" * 64},
        good | {"X-Propel-User-Signature": "not hex ✓".encode()},
        good | {"X-Propel-User": "bob"},  # signature is for ada
        good | {"X-Propel-Client-Key": "ck_unknown"},
        good | {"X-Propel-User-Signature": other["X-Propel-User-Signature"]},  # wrong secret
        good | {"X-Propel-User": "a" * 300},
    ]
    for headers in cases:
        for method, path in (("GET", "/inbox/v1/messages"),
                             ("POST", "/inbox/v1/messages/k1/viewed"),
                             ("POST", "/inbox/v1/messages/k1/clicked")):
            r = app_client.request(method, path, headers=headers)
            assert r.status_code == 401, (headers, path, r.text)
            assert r.json()["error"]["code"] == "unauthorized"
    assert outbox(propel, "k1").opened_at is None
    r = app_client.get("/inbox/v1/messages",
                       headers=good | {"X-Propel-User-Signature": good[
                           "X-Propel-User-Signature"].upper()})
    assert r.status_code == 200  # hex is case-insensitive


def test_viewed_is_idempotent_and_marks_the_outbox_open(app_client, propel, tenant) -> None:
    seed(propel, tenant.id, "ada", "k1")
    headers = auth(propel, tenant.id, "ada")
    r = app_client.post("/inbox/v1/messages/k1/viewed", headers=headers)
    assert r.status_code == 200, r.text
    first = r.json()
    assert first["viewed"] is True and first["clicked"] is False
    opened = outbox(propel, "k1").opened_at
    assert opened is not None and outbox(propel, "k1").clicked_at is None
    again = app_client.post("/inbox/v1/messages/k1/viewed", headers=headers).json()
    assert again["viewed_at"] == first["viewed_at"]
    assert outbox(propel, "k1").opened_at == opened
    page = app_client.get("/inbox/v1/messages", headers=headers).json()
    assert page["messages"][0]["viewed"] is True and page["unviewed"] == 0


def test_clicked_is_idempotent_and_marks_the_outbox_click(app_client, propel, tenant) -> None:
    seed(propel, tenant.id, "ada", "k2")
    headers = auth(propel, tenant.id, "ada")
    first = app_client.post("/inbox/v1/messages/k2/clicked", headers=headers).json()
    assert first["clicked"] is True and first["viewed"] is True  # a click is a view
    row = outbox(propel, "k2")
    assert row.clicked_at is not None and row.opened_at is not None
    again = app_client.post("/inbox/v1/messages/k2/clicked", headers=headers).json()
    assert (again["viewed_at"], again["clicked_at"]) == (first["viewed_at"],
                                                        first["clicked_at"])
    assert (outbox(propel, "k2").opened_at, outbox(propel, "k2").clicked_at) == \
        (row.opened_at, row.clicked_at)


def test_inbox_message_without_outbox_row_can_still_be_marked(app_client, propel, tenant
                                                              ) -> None:
    seed(propel, tenant.id, "ada", "solo", outbox=False)
    r = app_client.post("/inbox/v1/messages/solo/clicked",
                        headers=auth(propel, tenant.id, "ada"))
    assert r.status_code == 200 and r.json()["clicked"] is True


def test_another_users_message_is_404(app_client, propel, tenant) -> None:
    seed(propel, tenant.id, "bob", "k-bob")
    headers = auth(propel, tenant.id, "ada")
    for action in ("viewed", "clicked"):
        r = app_client.post(f"/inbox/v1/messages/k-bob/{action}", headers=headers)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    row = outbox(propel, "k-bob")
    assert row.opened_at is None and row.clicked_at is None
    r = app_client.get("/inbox/v1/messages", params={"before": "k-bob"}, headers=headers)
    assert r.status_code == 400


def test_accounts_are_isolated(app_client, propel, tenant, other_tenant) -> None:
    seed(propel, tenant.id, "ada", "mine")
    seed(propel, other_tenant.id, "ada", "theirs")
    mine = auth(propel, tenant.id, "ada")
    theirs = auth(propel, other_tenant.id, "ada")
    assert mine["X-Propel-Client-Key"] != theirs["X-Propel-Client-Key"]
    assert [m["key"] for m in app_client.get("/inbox/v1/messages", headers=mine)
            .json()["messages"]] == ["mine"]
    assert [m["key"] for m in app_client.get("/inbox/v1/messages", headers=theirs)
            .json()["messages"]] == ["theirs"]
    assert app_client.post("/inbox/v1/messages/theirs/clicked", headers=mine).status_code \
        == 404
    assert outbox(propel, "theirs").clicked_at is None


def test_client_input_never_causes_a_500(app_client, propel, tenant) -> None:
    seed(propel, tenant.id, "ada", "k1")
    headers = auth(propel, tenant.id, "ada")
    for params in ({"limit": 0}, {"limit": 101}, {"limit": "x"}):
        assert app_client.get("/inbox/v1/messages", params=params,
                              headers=headers).status_code == 422
    for before in ("nope", "k1\x00", "x" * 500):
        r = app_client.get("/inbox/v1/messages", params={"before": before}, headers=headers)
        assert r.status_code == 400
    for key in ("%00", "x" * 500, "%E2%9C%93", "k1%00"):
        r = app_client.post(f"/inbox/v1/messages/{key}/viewed", headers=headers)
        assert r.status_code == 404, key


def test_unicode_identity(app_client, propel, tenant) -> None:
    seed(propel, tenant.id, "zoë", "k-u")
    headers = auth(propel, tenant.id, "zoë")
    raw = [(k.encode(), v.encode()) for k, v in headers.items()]  # UTF-8 on the wire
    r = app_client.get("/inbox/v1/messages", headers=raw)
    assert r.status_code == 200 and [m["key"] for m in r.json()["messages"]] == ["k-u"]
