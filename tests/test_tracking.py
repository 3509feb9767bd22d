"""Open/click tracking and unsubscribe links: signed tokens, recorded once, no open
redirect, RFC 8058 one-click through ingest."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from urllib.parse import urlsplit

import orjson
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import insert, select

from propel.api import errors
from propel.campaigns import tracking
from propel.campaigns.tables import campaigns, messages
from propel.db.meta import utcnow
from propel.ingest.records import IngestItem, ProfileUpdate, key_hash
from propel.ingest.service import ingest_sync
from propel.ingest.tables import recent_events
from propel.profiles import get_profile
from propel.signing import sign

BASE = "https://propel.example.com"
_dispatch_ids = itertools.count(1)


@pytest.fixture
def app_client(propel) -> Iterator[TestClient]:
    app = FastAPI()
    errors.install(app)
    app.include_router(tracking.router)
    app.state.propel = propel
    with TestClient(app, base_url=BASE, follow_redirects=False) as c:
        yield c


@pytest.fixture
def secret(propel) -> str:
    return propel.settings.resolved_secret_key()


def seed_message(propel, account_id: str, identity: str, key: str, channel: str = "email"
                 ) -> None:
    now = utcnow()
    ingest_sync(propel.db, account_id, [IngestItem(
        key_hash(account_id, f"seed:{identity}"),
        profile=ProfileUpdate(identity=identity, email=f"{identity}@example.com",
                              consent={channel: True}))], [], "api")

    def _insert(conn) -> None:
        campaign_id = f"c-{key}"[:32]
        conn.execute(insert(campaigns).values(
            id=campaign_id, account_id=account_id, name="Spring", status="running",
            channel=channel, audience="{}", content="{}", schedule="{}", holdout_pct=0.0,
            created_at=now, updated_at=now))
        conn.execute(insert(messages).values(
            account_id=account_id, campaign_id=campaign_id, dispatch_id=next(_dispatch_ids),
            identity=identity, key=key, state="sent", created_at=now, sent_at=now))

    propel.db.write(_insert)


def message(propel, key: str):
    with propel.db.read() as conn:
        return conn.execute(select(messages).where(messages.c.key == key)).one()


def path_of(url: str) -> str:
    return urlsplit(url).path


def test_urls_and_list_unsubscribe_headers(secret) -> None:
    assert tracking.tracking_pixel_url(BASE + "/", "k1", secret).startswith(f"{BASE}/t/o/")
    assert tracking.tracking_pixel_url(BASE, "k1", secret).endswith(".gif")
    headers = tracking.list_unsubscribe_headers(tracking.unsubscribe_url(BASE, "k1", secret))
    assert headers == {
        "List-Unsubscribe": f"<{tracking.unsubscribe_url(BASE, 'k1', secret)}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
    assert re.fullmatch(r"<https://propel\.example\.com/u/[A-Za-z0-9_\-.]+>",
                        headers["List-Unsubscribe"])
    with_mail = tracking.list_unsubscribe_headers(tracking.unsubscribe_url(BASE, "k1", secret),
                                                  "unsub@example.com")
    assert with_mail["List-Unsubscribe"].endswith(", <mailto:unsub@example.com>")
    with pytest.raises(ValueError):
        tracking.click_url(BASE, "k1", "javascript:alert(1)", secret)


def test_rewrite_links_tracks_every_http_link_only(secret) -> None:
    html = ('<p><a href="https://shop.example/a?x=1&amp;y=2">A</a> '
            "<a class='b' href='http://shop.example/b'>B</a> "
            '<a href=https://shop.example/c>C</a> '
            '<a href="mailto:help@example.com">mail</a> <a href="#top">top</a> '
            '<a href="/relative">rel</a> <a data-propel-notrack href="https://x.example/">x</a>'
            f' <a href="{tracking.unsubscribe_url(BASE, "k", secret)}">unsub</a>'
            ' <area shape="rect" href="https://shop.example/d" alt="d"></p>')
    out = tracking.rewrite_links(html, BASE, "k", secret)
    hrefs = re.findall(r"""href=["']?([^"'\s>]+)""", out)
    tracked = [h for h in hrefs if h.startswith(f"{BASE}/t/c/")]
    assert len(tracked) == 4
    assert "mailto:help@example.com" in hrefs and "#top" in hrefs and "/relative" in hrefs
    assert "https://x.example/" in hrefs
    assert tracking.unsubscribe_url(BASE, "k", secret) in hrefs
    payloads = [tracking.read_token(secret, h.rsplit("/", 1)[1], tracking.CLICK)
                for h in tracked]
    assert [p["u"] for p in payloads] == ["https://shop.example/a?x=1&y=2",
                                          "http://shop.example/b", "https://shop.example/c",
                                          "https://shop.example/d"]
    assert {p["k"] for p in payloads} == {"k"}


def test_open_pixel_records_once(app_client, propel, tenant, secret) -> None:
    seed_message(propel, tenant.id, "u1", "m-open")
    url = tracking.tracking_pixel_url(BASE, "m-open", secret)
    r = app_client.get(path_of(url))
    assert r.status_code == 200 and r.headers["content-type"] == "image/gif"
    assert r.content == tracking.PIXEL and "no-store" in r.headers["cache-control"]
    first = message(propel, "m-open").opened_at
    assert first is not None
    assert app_client.get(path_of(url)).status_code == 200
    assert message(propel, "m-open").opened_at == first
    assert message(propel, "m-open").clicked_at is None


@pytest.mark.parametrize("token", [
    "garbage", "a.b", "-", "x" * 9000, "%00.%00",
])
def test_open_pixel_with_bad_token_is_still_a_gif(app_client, propel, tenant, token) -> None:
    seed_message(propel, tenant.id, "u1", "m-bad")
    r = app_client.get(f"/t/o/{token}.gif")
    assert r.status_code == 200 and r.content == tracking.PIXEL
    assert message(propel, "m-bad").opened_at is None


def test_tokens_are_tamper_proof(app_client, propel, tenant, secret) -> None:
    seed_message(propel, tenant.id, "u1", "m-t")
    pixel = tracking.tracking_pixel_url(BASE, "m-t", secret).rsplit("/", 1)[1][:-4]
    body, mac = pixel.split(".")
    flipped = body[:-1] + ("A" if body[-1] != "A" else "B")
    forged_key = sign(secret + "x", {"k": "m-t"}, tracking.OPEN)  # another secret
    for token in (f"{flipped}.{mac}", forged_key, pixel[:-2]):
        assert app_client.get(f"/t/o/{token}.gif").content == tracking.PIXEL
    assert message(propel, "m-t").opened_at is None
    # a token made for one purpose is refused for another
    click_token = tracking.click_url(BASE, "m-t", "https://shop.example/", secret)
    r = app_client.get(f"/t/o/{click_token.rsplit('/', 1)[1]}.gif")
    assert r.status_code == 200 and message(propel, "m-t").opened_at is None
    r = app_client.get(f"/u/{pixel}")
    assert r.status_code == 400
    r = app_client.get(f"/t/c/{pixel}")
    assert r.status_code == 400 and "location" not in r.headers


def test_click_records_once_and_redirects_to_the_signed_url(app_client, propel, tenant,
                                                             secret) -> None:
    seed_message(propel, tenant.id, "u1", "m-c")
    target = "https://shop.example/product/7?utm_source=propel&x=%2F"
    r = app_client.get(path_of(tracking.click_url(BASE, "m-c", target, secret)))
    assert r.status_code == 302 and r.headers["location"] == target
    row = message(propel, "m-c")
    assert row.clicked_at is not None and row.opened_at is not None  # a click is an open
    first = (row.opened_at, row.clicked_at)
    other = "https://shop.example/other"
    r = app_client.get(path_of(tracking.click_url(BASE, "m-c", other, secret)))
    assert r.headers["location"] == other
    row = message(propel, "m-c")
    assert (row.opened_at, row.clicked_at) == first


def test_click_on_unknown_message_still_redirects(app_client, secret) -> None:
    r = app_client.get(path_of(tracking.click_url(BASE, "gone", "https://a.example/", secret)))
    assert r.status_code == 302 and r.headers["location"] == "https://a.example/"


def test_no_open_redirect(app_client, propel, tenant, secret) -> None:
    seed_message(propel, tenant.id, "u1", "m-r")
    good = tracking.click_url(BASE, "m-r", "https://shop.example/", secret).rsplit("/", 1)[1]
    body, mac = good.split(".")
    evil_body = sign(secret, {"k": "m-r", "u": "https://evil.example/"}, "other").split(".")[0]
    attempts = [
        f"/t/c/{evil_body}.{mac}",  # new payload, old signature
        "/t/c/" + sign("guessed", {"k": "m-r", "u": "https://evil.example/"},
                       tracking.CLICK),
        f"/t/c/{good}x",
        "/t/c/" + sign(secret, {"k": "m-r", "u": "https://evil.example/"}, tracking.OPEN),
        "/t/c/" + sign(secret, {"k": "m-r", "u": "javascript:alert(1)"}, tracking.CLICK),
    ]
    for path in attempts:
        r = app_client.get(path, headers={"accept": "application/json"})
        assert r.status_code == 400, path
        assert "location" not in r.headers
        assert r.json()["error"]["code"] == "bad_token"
    r = app_client.get(attempts[0], headers={"accept": "text/html"})
    assert r.status_code == 400 and r.headers["content-type"].startswith("text/html")
    # extra query parameters cannot steer it either
    r = app_client.get(f"/t/c/{good}?url=https://evil.example/&next=https://evil.example/")
    assert r.headers["location"] == "https://shop.example/"
    assert message(propel, "m-r").clicked_at is not None


def profile_changes(propel, account_id: str, identity: str) -> list[dict]:
    with propel.db.read() as conn:
        rows = conn.execute(select(recent_events).where(
            recent_events.c.account_id == account_id, recent_events.c.identity == identity,
            recent_events.c.kind == "profile").order_by(recent_events.c.id)).all()
    return [{"source": r.source, **orjson.loads(r.properties)} for r in rows]


def test_unsubscribe_page_does_not_unsubscribe(app_client, propel, tenant, secret) -> None:
    seed_message(propel, tenant.id, "u1", "m-u")
    r = app_client.get(path_of(tracking.unsubscribe_url(BASE, "m-u", secret)))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert '<form method="post">' in r.text
    assert 'name="List-Unsubscribe" value="One-Click"' in r.text
    assert get_profile(propel.db, tenant.id, "u1").consent == {"email": True}
    assert message(propel, "m-u").reason is None


def test_one_click_unsubscribe_updates_consent_through_ingest(app_client, propel, tenant,
                                                              secret) -> None:
    seed_message(propel, tenant.id, "u1", "m-1c")
    before = profile_changes(propel, tenant.id, "u1")
    path = path_of(tracking.unsubscribe_url(BASE, "m-1c", secret))
    r = app_client.post(path, content=b"List-Unsubscribe=One-Click",
                        headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200, r.text
    assert r.json() == {"unsubscribed": True, "channel": "email"}
    assert get_profile(propel.db, tenant.id, "u1").consent == {"email": False}
    changes = profile_changes(propel, tenant.id, "u1")
    assert changes[len(before):] == [{"source": "unsubscribe", "consent": {"email": False}}]
    assert message(propel, "m-1c").reason == "unsubscribed"
    assert message(propel, "m-1c").state == "sent"  # delivery state kept
    # a repeat (the page's button, a retrying mail provider) is a no-op
    r = app_client.post(path, data={"List-Unsubscribe": "One-Click"},
                        headers={"accept": "text/html"})
    assert r.status_code == 200 and "no longer receive" in r.text
    assert profile_changes(propel, tenant.id, "u1") == changes


def test_unsubscribe_uses_the_campaign_channel(app_client, propel, tenant, secret) -> None:
    seed_message(propel, tenant.id, "u2", "m-sms", channel="sms")
    r = app_client.post(path_of(tracking.unsubscribe_url(BASE, "m-sms", secret)))
    assert r.status_code == 200 and r.json()["channel"] == "sms"
    assert get_profile(propel.db, tenant.id, "u2").consent == {"sms": False}


def test_unsubscribe_errors(app_client, propel, tenant, secret) -> None:
    r = app_client.post("/u/not-a-token", content=b"List-Unsubscribe=One-Click")
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_token"
    r = app_client.post(path_of(tracking.unsubscribe_url(BASE, "unknown-key", secret)))
    assert r.status_code == 404
    r = app_client.get("/u/not-a-token")
    assert r.status_code == 400


def test_unsubscribe_stays_in_its_account(app_client, propel, tenant, other_tenant,
                                          secret) -> None:
    seed_message(propel, tenant.id, "same-id", "m-a")
    seed_message(propel, other_tenant.id, "same-id", "m-b")
    app_client.post(path_of(tracking.unsubscribe_url(BASE, "m-a", secret)))
    assert get_profile(propel.db, tenant.id, "same-id").consent == {"email": False}
    assert get_profile(propel.db, other_tenant.id, "same-id").consent == {"email": True}
