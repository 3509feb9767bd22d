"""Channels against real peers on loopback: an SMTP server, a webhook receiver, FCM v1,
Twilio's Messages API, and the database for the inbox. What is checked is what goes
over the wire, and that every answer a provider can give maps to the right outcome."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import anyio
import orjson
import pytest
from peers import Blackhole, Certificate, free_port
from peers.fcm import FcmPeer
from peers.smtp import SMTP_LOGIN, SmtpPeer
from peers.twilio import TwilioPeer
from peers.webhook import WEBHOOK_SECRET, Reply, WebhookReceiver
from sqlalchemy import insert, select

from propel.campaigns.tables import channel_configs, inbox_messages
from propel.channels import registry
from propel.channels.base import ChannelError, Outbound, Outcome
from propel.channels.email import EmailChannel, EmailConfig, html_to_text
from propel.channels.fake import FakeChannel
from propel.channels.inbox import InboxChannel
from propel.channels.push import PushChannel, PushConfig
from propel.channels.sms import SmsChannel, SmsConfig
from propel.channels.webhook import WebhookChannel, WebhookConfig
from propel.core import Propel
from propel.db.meta import utcnow

pytestmark = pytest.mark.anyio

# A signed unsubscribe token makes the URL longer than a header line (78 characters).
TOKEN = "eyJrIjoibTdmM2EiLCJhIjoiYWNjdCJ9.c2lnbmF0dXJlLW9mLXRoZS10b2tlbi0xMjM0NTY3ODkw"
UNSUB = {"List-Unsubscribe": f"<https://propel.test/u/{TOKEN}>, <mailto:unsub+{TOKEN[:20]}"
                             "@shop.test>",
         "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def outbound(key: str, to: str | None = None, **kw: Any) -> Outbound:
    fields: dict[str, Any] = {"account_id": "acct", "campaign_id": "camp1",
                              "identity": f"user-{key}", "subject": "Your cart misses you",
                              "text": "Come back!", "html": "<p>Come <b>back</b>!</p>",
                              "title": "Hello", "body": "Come back!", "data": {"n": 1}}
    fields.update(kw)
    return Outbound(key=key, to=to, **fields)


def kind(o: Outcome) -> str:
    if o.delivered:
        return "delivered"
    if o.bounced:
        return "bounced"
    return "retryable" if o.retryable else "failed"


# -- e-mail ---------------------------------------------------------------------------


@pytest.fixture(params=["pipelining", "one by one"])
def smtp_peer(request: pytest.FixtureRequest) -> Iterator[SmtpPeer]:
    """Every e-mail test runs against a relay that offers PIPELINING and one that does
    not: the two ways a transaction is carried."""
    with SmtpPeer(pipelining=request.param == "pipelining") as peer:
        yield peer


def email_config(peer: SmtpPeer, **kw: Any) -> EmailConfig:
    base: dict[str, Any] = {"host": peer.host, "port": peer.port, "security": "none",
                            "from_address": "Shop <news@shop.test>", "timeout": 5}
    return EmailConfig(**{**base, **kw})


async def test_email_batch_of_50_travels_over_one_connection(smtp_peer: SmtpPeer) -> None:
    channel = EmailChannel(email_config(smtp_peer))
    batch = [outbound(f"m{i:03d}", f"user{i}@example.test") for i in range(50)]
    outcomes = await channel.send(batch)
    assert [o.key for o in outcomes] == [ob.key for ob in batch]
    assert all(o.delivered for o in outcomes)
    assert all("queued as" in (o.provider_ref or "") for o in outcomes)
    assert len(smtp_peer.received) == 50
    assert smtp_peer.connections == 1
    # The connection stays open for the next batch.
    assert all(o.delivered for o in await channel.send([outbound("m050", "late@example.test")]))
    assert smtp_peer.connections == 1 and channel.connections == 1
    await channel.aclose()


async def test_email_large_batch_is_spread_over_the_configured_connections(
        smtp_peer: SmtpPeer) -> None:
    channel = EmailChannel(email_config(smtp_peer, connections=3))
    batch = [outbound(f"w{i:03d}", f"user{i}@example.test") for i in range(200)]
    outcomes = await channel.send(batch)
    assert [o.key for o in outcomes] == [ob.key for ob in batch]
    assert all(o.delivered for o in outcomes)
    assert sorted(m.message_id for m in smtp_peer.received) == sorted(
        f"<w{i:03d}@shop.test>" for i in range(200))  # each once
    assert smtp_peer.connections == 3 and channel.connections == 3
    # 120 messages make two runs of at least 50: two of the open connections carry them.
    assert all(o.delivered for o in await channel.send(batch[:120]))
    assert smtp_peer.connections == 3
    await channel.aclose()


async def test_email_is_multipart_with_stable_message_id_and_unsubscribe_headers(
        smtp_peer: SmtpPeer) -> None:
    ob = outbound("m7f3a", "ada@example.test", subject="Grüße — 20% off 🎉",
                  text="Plain body — grüße", html="<p>HTML — grüße</p>", headers=dict(UNSUB))
    cfg = email_config(smtp_peer, reply_to="help@shop.test", return_path="bounces@shop.test")
    channel = EmailChannel(cfg)
    [outcome] = await channel.send([ob])
    await channel.aclose()
    assert outcome.delivered
    [mail] = smtp_peer.received
    msg: EmailMessage = mail.message
    assert mail.mail_from == "bounces@shop.test" and mail.rcpt_tos == ["ada@example.test"]
    assert msg.get_content_type() == "multipart/alternative"
    parts = {p.get_content_type(): p.get_content().strip() for p in msg.iter_parts()}
    assert parts == {"text/plain": "Plain body — grüße", "text/html": "<p>HTML — grüße</p>"}
    assert mail.raw.isascii()  # 7-bit clean on the wire
    assert msg["From"] == "Shop <news@shop.test>"
    assert msg["To"] == "ada@example.test"
    assert msg["Reply-To"] == "help@shop.test"
    assert msg["Subject"] == "Grüße — 20% off 🎉"
    assert msg["Message-ID"] == "<m7f3a@shop.test>"
    assert msg["Date"]
    assert msg["List-Unsubscribe"] == UNSUB["List-Unsubscribe"]
    # Verbatim on the wire, not RFC 2047-encoded: mailbox providers parse the raw header.
    assert f"List-Unsubscribe: {UNSUB['List-Unsubscribe']}\r\n".encode() in mail.raw
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    # A resend after a crash (new process, new channel) carries the same Message-ID.
    again = EmailChannel(cfg)
    assert (await again.send([ob]))[0].delivered
    await again.aclose()
    assert smtp_peer.received[1].message_id == smtp_peer.received[0].message_id


async def test_email_html_only_gets_a_text_part(smtp_peer: SmtpPeer) -> None:
    channel = EmailChannel(email_config(smtp_peer, message_id_domain="mail.shop.test"))
    html = "<html><head><style>p{}</style></head><body><h1>Sale</h1><p>All  shoes</p></body>"
    await channel.send([outbound("h1", "a@example.test", text="", html=html)])
    await channel.aclose()
    msg = smtp_peer.received[0].message
    assert msg.get_body(("plain",)).get_content().splitlines() == ["Sale", "", "All shoes"]
    assert msg["Message-ID"] == "<h1@mail.shop.test>"
    assert html_to_text("<p>a</p><p>b</p>") == "a\n\nb"


async def test_email_mixed_batch_maps_smtp_replies_and_keeps_order(smtp_peer: SmtpPeer) -> None:
    smtp_peer.reject("gone@example.test")  # 550 5.1.1 No such user
    smtp_peer.reject("plain550@example.test", "550 No such user here")
    smtp_peer.defer("busy@example.test")  # 451 4.3.0
    smtp_peer.reject("relay@example.test", "550 5.7.1 Relaying denied")
    smtp_peer.reject("full@example.test", "552 5.2.2 Mailbox full")
    batch = [
        outbound("a", "ok1@example.test"),
        outbound("b", "gone@example.test"),
        outbound("c", "busy@example.test"),
        outbound("d", "relay@example.test"),
        outbound("e", None),
        outbound("f", "ok2@example.test", headers={"X-Bad": "evil\r\nBcc: all@x.test"}),
        outbound("g", "plain550@example.test"),
        outbound("h", "full@example.test"),
        outbound("i", "ok3@example.test"),
    ]
    channel = EmailChannel(email_config(smtp_peer))
    outcomes = await channel.send(batch)
    await channel.aclose()
    assert [o.key for o in outcomes] == list("abcdefghi")
    assert [kind(o) for o in outcomes] == ["delivered", "bounced", "retryable", "failed",
                                           "failed", "failed", "bounced", "failed",
                                           "delivered"]
    assert "550 5.1.1" in (outcomes[1].error or "")
    assert "451" in (outcomes[2].error or "")
    assert outcomes[4].error == "no e-mail address"
    assert "invalid message" in (outcomes[5].error or "")
    assert [m.rcpt_tos for m in smtp_peer.received] == [["ok1@example.test"],
                                                        ["ok3@example.test"]]
    assert smtp_peer.connections == 1  # refusals reset the envelope, not the connection


async def test_email_first_message_of_a_connection_declares_size_and_8bitmime(
        smtp_peer: SmtpPeer) -> None:
    channel = EmailChannel(email_config(smtp_peer))
    await channel.send([outbound("first", "a@example.test")])
    await channel.aclose()
    [mail] = smtp_peer.received
    # The relay's extensions are known before the first MAIL, not learnt from it.
    size, body = mail.mail_options
    assert size.startswith("SIZE=") and int(size[5:]) >= len(mail.raw)
    assert body == "BODY=8BITMIME"


async def test_email_address_smtp_cannot_carry_fails_alone_and_is_not_rewritten(
        smtp_peer: SmtpPeer) -> None:
    channel = EmailChannel(email_config(smtp_peer))
    batch = [outbound("ok", "ok@example.test"),
             outbound("quote", 'a"b@example.test'),
             outbound("angle", "bad<addr@example.test"),
             outbound("quoted", '"john doe"@example.test')]
    outcomes = await channel.send(batch)
    await channel.aclose()
    assert [kind(o) for o in outcomes] == ["delivered", "failed", "failed", "delivered"]
    assert all(o.error.startswith("invalid address") for o in outcomes[1:3])
    assert [m.rcpt_tos for m in smtp_peer.received] == [["ok@example.test"],
                                                        ['"john doe"@example.test']]


async def test_email_envelope_is_pipelined_only_where_the_relay_offers_it(
        smtp_peer: SmtpPeer) -> None:
    channel = EmailChannel(email_config(smtp_peer))
    batch = [outbound(f"p{i}", f"u{i}@example.test", text=f".{i}\n..dots\n.", html="")
             for i in range(20)]
    assert all(o.delivered for o in await channel.send(batch))
    await channel.aclose()
    expected = "pipelined" if smtp_peer.pipelining else "one by one"
    assert smtp_peer.envelopes == [expected] * 20
    # Lines starting with a dot survive the transparency procedure both ways.
    assert [m.message.get_content().replace("\r\n", "\n") for m in smtp_peer.received] == [
        f".{i}\n..dots\n.\n" for i in range(20)]


async def test_email_refused_sender_fails_and_the_connection_carries_on(
        smtp_peer: SmtpPeer) -> None:
    channel = EmailChannel(email_config(smtp_peer))
    smtp_peer.mail_reply = "553 5.7.1 Sender address rejected: not owned by you"
    refused = await channel.send([outbound("m1", "a@example.test"), outbound("m2", "b@x.test")])
    smtp_peer.mail_reply = "421 4.7.0 Too many errors, closing"
    [closing] = await channel.send([outbound("m3", "c@example.test")])
    smtp_peer.mail_reply = None
    [ok] = await channel.send([outbound("m4", "d@example.test")])
    await channel.aclose()
    # About us, not the recipient: failed, never a bounce that would revoke consent.
    assert [kind(o) for o in refused] == ["failed", "failed"]
    assert "553 5.7.1" in (refused[0].error or "")
    assert kind(closing) == "retryable"
    assert ok.delivered and [m.rcpt_tos for m in smtp_peer.received] == [["d@example.test"]]
    assert smtp_peer.connections == 2  # the 421 ended the first connection


async def test_email_line_lost_after_the_content_is_outcome_unknown(smtp_peer: SmtpPeer) -> None:
    channel = EmailChannel(email_config(smtp_peer))
    smtp_peer.vanish_in_data = True
    [lost] = await channel.send([outbound("v1", "a@example.test")])
    smtp_peer.vanish_in_data = False
    [ok] = await channel.send([outbound("v2", "b@example.test")])
    await channel.aclose()
    # The relay may have the message: retryable, but marked so that it is never resent
    # blindly (the same Message-ID lets a deduplicating relay drop a resend).
    assert kind(lost) == "retryable" and "outcome unknown" in (lost.error or "")
    assert "DATA" in (lost.error or "")
    assert ok.delivered and smtp_peer.connections == 2


async def test_email_refused_data_is_failed_or_retryable(smtp_peer: SmtpPeer) -> None:
    channel = EmailChannel(email_config(smtp_peer))
    smtp_peer.data_reply = "554 5.7.1 Message rejected as spam"
    [spam] = await channel.send([outbound("s", "a@example.test")])
    smtp_peer.data_reply = "452 4.3.1 Insufficient system storage"
    [full] = await channel.send([outbound("t", "a@example.test")])
    smtp_peer.data_reply = None
    [ok] = await channel.send([outbound("u", "a@example.test")])
    await channel.aclose()
    assert kind(spam) == "failed" and "554" in (spam.error or "")
    assert kind(full) == "retryable"
    assert ok.delivered and smtp_peer.connections == 1


async def test_email_reconnects_when_the_server_hangs_up(smtp_peer: SmtpPeer) -> None:
    smtp_peer.drop_after = 10  # the relay ends the session after every 10 messages
    channel = EmailChannel(email_config(smtp_peer))
    batch = [outbound(f"r{i:02d}", f"u{i}@example.test") for i in range(25)]
    outcomes = await channel.send(batch)
    await channel.aclose()
    assert all(o.delivered for o in outcomes), [o.error for o in outcomes if not o.delivered]
    ids = [m.message_id for m in smtp_peer.received]
    assert sorted(ids) == sorted(f"<r{i:02d}@shop.test>" for i in range(25))  # once each
    assert smtp_peer.connections == 3


async def test_email_relay_refusing_the_greeting_is_retryable_and_hung_up(
        smtp_peer: SmtpPeer) -> None:
    smtp_peer.refuse_greeting = True
    channel = EmailChannel(email_config(smtp_peer))
    outcomes = await channel.send([outbound(f"g{i}", f"u{i}@example.test") for i in range(3)])
    assert [kind(o) for o in outcomes] == ["retryable"] * 3
    assert "cannot connect" in (outcomes[0].error or "") and smtp_peer.received == []
    for _ in range(50):  # the client closes the connection it could not use
        if smtp_peer.disconnections == smtp_peer.connections:
            break
        await anyio.sleep(0.02)
    assert smtp_peer.connections >= 1 and smtp_peer.disconnections == smtp_peer.connections
    await channel.aclose()


async def test_email_relay_down_answers_the_batch_retryable_at_once() -> None:
    cfg = EmailConfig(host="127.0.0.1", port=free_port(), security="none",
                      from_address="news@shop.test", timeout=5)
    channel = EmailChannel(cfg)
    started = time.monotonic()
    outcomes = await channel.send([outbound(f"d{i}", f"u{i}@example.test") for i in range(20)])
    await channel.aclose()
    assert time.monotonic() - started < 3
    assert all(kind(o) == "retryable" for o in outcomes)
    assert "cannot connect" in (outcomes[0].error or "")


async def test_email_hanging_relay_is_retryable_within_the_timeout(blackhole: Blackhole) -> None:
    cfg = EmailConfig(host="127.0.0.1", port=blackhole.port, security="none",
                      from_address="news@shop.test", timeout=0.5)
    channel = EmailChannel(cfg)
    started = time.monotonic()
    outcomes = await channel.send([outbound(f"x{i}", f"u{i}@example.test") for i in range(10)])
    await channel.aclose()
    assert time.monotonic() - started < 2.5  # one timeout for the batch, not one per message
    assert all(kind(o) == "retryable" for o in outcomes)


async def test_email_starttls_with_auth(smtp_starttls_peer: SmtpPeer,
                                        tls_cert: Certificate) -> None:
    peer = smtp_starttls_peer
    user, password = SMTP_LOGIN
    good = EmailChannel(email_config(peer, security="starttls", ca_file=str(tls_cert.cert_file),
                                     username=user, password=password))
    [ok] = await good.send([outbound("t1", "a@example.test")])
    await good.aclose()
    assert ok.delivered
    assert peer.received[0].tls and peer.received[0].login == user

    wrong = EmailChannel(email_config(peer, security="starttls",
                                      ca_file=str(tls_cert.cert_file), username=user,
                                      password="wrong"))
    outcomes = await wrong.send([outbound("t2", "a@example.test"), outbound("t3", "b@x.test")])
    await wrong.aclose()
    assert [kind(o) for o in outcomes] == ["retryable", "retryable"]
    assert "login refused" in (outcomes[0].error or "")

    # The relay's certificate is checked: a self-signed one is refused without its CA.
    untrusted = EmailChannel(email_config(peer, security="starttls", username=user,
                                          password=password))
    [refused] = await untrusted.send([outbound("t4", "a@example.test")])
    await untrusted.aclose()
    assert kind(refused) == "retryable" and "cannot connect" in (refused.error or "")
    assert len(peer.received) == 1


async def test_email_implicit_tls(smtp_tls_peer: SmtpPeer, tls_cert: Certificate) -> None:
    user, password = SMTP_LOGIN
    channel = EmailChannel(email_config(smtp_tls_peer, security="tls", username=user,
                                        password=password, ca_file=str(tls_cert.cert_file)))
    outcomes = await channel.send([outbound(f"i{i}", f"u{i}@example.test") for i in range(3)])
    await channel.aclose()
    assert all(o.delivered for o in outcomes)
    assert all(m.tls for m in smtp_tls_peer.received) and smtp_tls_peer.connections == 1


# -- webhook --------------------------------------------------------------------------


def webhook(peer: WebhookReceiver, **kw: Any) -> WebhookChannel:
    base: dict[str, Any] = {"url": peer.endpoint, "secret": WEBHOOK_SECRET, "timeout": 2,
                            "backoff": 0.02}
    return WebhookChannel(WebhookConfig(**{**base, **kw}))


async def test_webhook_posts_signed_json_with_idempotency_key(
        webhook_peer: WebhookReceiver) -> None:
    channel = webhook(webhook_peer)
    ob = outbound("w1", url="https://shop.test/cart", data={"cart": 3, "sku": "A-1"})
    [outcome] = await channel.send([ob])
    await channel.aclose()
    assert outcome.delivered and outcome.provider_ref == "req-1"
    [d] = webhook_peer.deliveries
    assert d.signature_ok and webhook_peer.bad_signatures == 0
    # Verify independently of the peer: HMAC-SHA256 of "<timestamp>.<raw body>".
    signed = d.headers["x-propel-timestamp"].encode() + b"." + d.body
    expected = hmac.new(WEBHOOK_SECRET.encode(), signed, hashlib.sha256).hexdigest()
    assert d.headers["x-propel-signature"] == f"sha256={expected}"
    assert d.headers["idempotency-key"] == "w1"
    assert d.headers["content-type"] == "application/json"
    assert abs(int(d.headers["x-propel-timestamp"]) - time.time()) < 10
    assert d.json == {"key": "w1", "campaign_id": "camp1", "identity": "user-w1",
                      "title": "Hello", "body": "Come back!", "url": "https://shop.test/cart",
                      "data": {"cart": 3, "sku": "A-1"}}


async def test_webhook_wrong_secret_is_refused_permanently(
        webhook_peer: WebhookReceiver) -> None:
    channel = webhook(webhook_peer, secret="not-the-shared-secret")
    [outcome] = await channel.send([outbound("w2")])
    await channel.aclose()
    assert kind(outcome) == "failed" and "HTTP 401" in (outcome.error or "")
    assert webhook_peer.bad_signatures == 1 and len(webhook_peer.deliveries) == 1


async def test_webhook_replayed_with_an_old_timestamp_is_refused(
        webhook_peer: WebhookReceiver) -> None:
    channel = webhook(webhook_peer)
    [outcome] = await channel.send([outbound("w3")])
    await channel.aclose()
    assert outcome.delivered
    [d] = webhook_peer.deliveries
    # A replay with a newer timestamp but the captured signature fails: the timestamp is
    # signed. A replay keeping the old timestamp fails as stale.
    newer = str(int(d.headers["x-propel-timestamp"]) + 60)
    assert not webhook_peer.verify(d.body, d.headers["x-propel-signature"], newer)
    old = str(int(time.time()) - 600)
    signed = old.encode() + b"." + d.body
    resigned = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), signed, hashlib.sha256).hexdigest()
    assert not webhook_peer.verify(d.body, resigned, old)
    tampered = d.body.replace(b"user-w3", b"user-xx")
    assert not webhook_peer.verify(tampered, d.headers["x-propel-signature"],
                                   d.headers["x-propel-timestamp"])


async def test_webhook_batch_reuses_pooled_connections(webhook_peer: WebhookReceiver) -> None:
    channel = webhook(webhook_peer, concurrency=4)
    outcomes = await channel.send([outbound(f"p{i:02d}") for i in range(50)])
    assert [o.key for o in outcomes] == [f"p{i:02d}" for i in range(50)]
    assert all(o.delivered for o in outcomes)
    assert webhook_peer.unique_keys == 50
    assert 1 <= webhook_peer.connections <= 4
    seen = webhook_peer.connections
    assert all(o.delivered for o in await channel.send([outbound(f"q{i}") for i in range(8)]))
    assert webhook_peer.connections == seen  # kept alive between batches
    await channel.aclose()


async def test_webhook_retries_5xx_in_place_with_backoff(webhook_peer: WebhookReceiver) -> None:
    webhook_peer.script("r1", Reply(503), Reply(502))
    webhook_peer.script("r2", Reply(500), Reply(500), Reply(500))
    channel = webhook(webhook_peer, backoff=0.1, max_attempts=3)
    outcomes = await channel.send([outbound("r1"), outbound("r2")])
    await channel.aclose()
    assert [kind(o) for o in outcomes] == ["delivered", "retryable"]
    assert "HTTP 500" in (outcomes[1].error or "") and "3 tries" in (outcomes[1].error or "")
    tries = webhook_peer.attempts("r1")
    assert len(tries) == 3
    assert len({d.body for d in tries}) == 1  # same body and key every time, each signed
    assert all(d.signature_ok for d in tries)
    gaps = [b.at - a.at for a, b in zip(tries, tries[1:], strict=False)]
    assert gaps[0] >= 0.09 and gaps[1] >= 0.19  # 0.1 s, then doubled
    assert webhook_peer.unique_keys == 1


async def test_webhook_honours_retry_after_up_to_the_cap(webhook_peer: WebhookReceiver) -> None:
    webhook_peer.script("soon", Reply(429, {"Retry-After": "1"}))
    webhook_peer.script("later", Reply(429, {"Retry-After": "120"}))
    channel = webhook(webhook_peer, max_retry_after=5)
    outcomes = await channel.send([outbound("soon"), outbound("later")])
    await channel.aclose()
    assert [kind(o) for o in outcomes] == ["delivered", "retryable"]
    first, second = webhook_peer.attempts("soon")
    assert second.at - first.at >= 0.9
    assert len(webhook_peer.attempts("later")) == 1  # back to the outbox, not waited out
    assert "Retry-After 120" in (outcomes[1].error or "")


async def test_webhook_other_4xx_is_permanent(webhook_peer: WebhookReceiver) -> None:
    webhook_peer.script("bad", Reply(422, body={"error": "unknown campaign"}))
    channel = webhook(webhook_peer)
    [outcome] = await channel.send([outbound("bad")])
    await channel.aclose()
    assert kind(outcome) == "failed" and "422" in (outcome.error or "")
    assert "unknown campaign" in (outcome.error or "")
    assert len(webhook_peer.attempts("bad")) == 1


async def test_webhook_resend_is_deduplicated_by_the_receiver(
        webhook_peer: WebhookReceiver) -> None:
    channel = webhook(webhook_peer)
    assert (await channel.send([outbound("dup")]))[0].delivered
    assert (await channel.send([outbound("dup")]))[0].delivered  # e.g. after a crash
    await channel.aclose()
    assert webhook_peer.unique_keys == 1 and webhook_peer.duplicates["dup"] == 1


async def test_webhook_hanging_receiver_is_retryable_within_the_timeout(
        webhook_peer: WebhookReceiver) -> None:
    webhook_peer.hang("slow")
    channel = webhook(webhook_peer, timeout=0.5)
    started = time.monotonic()
    outcomes = await channel.send([outbound("fast1"), outbound("slow"), outbound("fast2")])
    await channel.aclose()
    assert time.monotonic() - started < 2
    assert [kind(o) for o in outcomes] == ["delivered", "retryable", "delivered"]
    assert "outcome unknown" in (outcomes[1].error or "")
    assert len(webhook_peer.attempts("slow")) == 1  # a hang is not retried in place


async def test_webhook_unreachable_endpoint_is_retryable() -> None:
    channel = WebhookChannel(WebhookConfig(url=f"http://127.0.0.1:{free_port()}/hook",
                                           secret=WEBHOOK_SECRET, backoff=0.01))
    [outcome] = await channel.send([outbound("n1")])
    await channel.aclose()
    assert kind(outcome) == "retryable" and "not sent" in (outcome.error or "")


# -- push (FCM HTTP v1) ---------------------------------------------------------------


def push(peer: FcmPeer, **kw: Any) -> PushChannel:
    base: dict[str, Any] = {"service_account": peer.service_account(), "base_url": peer.url,
                            "timeout": 2}
    return PushChannel(PushConfig(**{**base, **kw}))


async def test_push_sends_fcm_v1_messages(fcm_peer: FcmPeer) -> None:
    channel = push(fcm_peer, concurrency=4)
    batch = [outbound(f"f{i:02d}", f"token-{i}", url="https://shop.test/p/1",
                      data={"n": i, "deep": {"a": [1, 2]}, "s": "x"}) for i in range(20)]
    outcomes = await channel.send(batch)
    await channel.aclose()
    assert [o.key for o in outcomes] == [ob.key for ob in batch]
    assert all(o.delivered for o in outcomes), [o.error for o in outcomes]
    assert all((o.provider_ref or "").startswith("projects/propel-test/messages/")
               for o in outcomes)
    message = fcm_peer.to("token-3")[0]
    assert message == {"token": "token-3",
                       "notification": {"title": "Hello", "body": "Come back!"},
                       "data": {"n": "3", "deep": '{"a":[1,2]}', "s": "x",
                                "url": "https://shop.test/p/1", "propel_key": "f03"}}
    assert fcm_peer.tokens_issued == 1  # one access token for the whole batch
    assert 1 <= fcm_peer.connections <= 5  # the token endpoint shares the pool


async def test_push_with_a_static_access_token(fcm_peer: FcmPeer) -> None:
    channel = PushChannel(PushConfig(project_id="propel-test", access_token="static-test-token",
                                     base_url=fcm_peer.url))
    [ok] = await channel.send([outbound("s1", "token-a")])
    await channel.aclose()
    assert ok.delivered and fcm_peer.token_requests == 0
    bad = PushChannel(PushConfig(project_id="propel-test", access_token="expired",
                                 base_url=fcm_peer.url))
    [refused] = await bad.send([outbound("s2", "token-a")])
    await bad.aclose()
    assert kind(refused) == "retryable" and "UNAUTHENTICATED" in (refused.error or "")


async def test_push_mixed_batch_maps_fcm_errors(fcm_peer: FcmPeer) -> None:
    fcm_peer.unregistered.add("gone")
    fcm_peer.invalid.add("garbage")
    fcm_peer.other_project.add("theirs")
    fcm_peer.overload(429, 503)
    channel = push(fcm_peer, concurrency=1)  # one at a time: the overloads hit a and b
    batch = [outbound("a", "t1"), outbound("b", "t2"), outbound("c", "gone"),
             outbound("d", "garbage"), outbound("e", "theirs"), outbound("f", None),
             outbound("g", "t3")]
    outcomes = await channel.send(batch)
    await channel.aclose()
    assert [o.key for o in outcomes] == list("abcdefg")
    assert [kind(o) for o in outcomes] == ["retryable", "retryable", "bounced", "bounced",
                                           "bounced", "failed", "delivered"]
    assert "QUOTA_EXCEEDED" in (outcomes[0].error or "")
    assert "UNAVAILABLE" in (outcomes[1].error or "")
    assert "UNREGISTERED" in (outcomes[2].error or "")
    assert "registration token" in (outcomes[3].error or "")
    assert "SENDER_ID_MISMATCH" in (outcomes[4].error or "")


async def test_push_refreshes_a_revoked_token_once(fcm_peer: FcmPeer) -> None:
    channel = push(fcm_peer)
    assert (await channel.send([outbound("x1", "t1")]))[0].delivered
    fcm_peer.revoke_tokens()
    assert (await channel.send([outbound("x2", "t1")]))[0].delivered
    await channel.aclose()
    assert fcm_peer.tokens_issued == 2
    assert fcm_peer.statuses == [200, 401, 200]


async def test_push_bare_404_is_not_a_bounce(fcm_peer: FcmPeer) -> None:
    # A wrong base URL answers 404 for every token: that must not revoke consent.
    channel = push(fcm_peer, base_url=f"{fcm_peer.url}/wrong")
    [outcome] = await channel.send([outbound("w", "t1")])
    await channel.aclose()
    assert kind(outcome) == "failed" and not outcome.bounced


async def test_push_non_string_data_would_be_rejected_by_fcm(fcm_peer: FcmPeer) -> None:
    # The peer enforces FCM's rule; the channel's stringification is what satisfies it.
    import httpx

    async with httpx.AsyncClient() as client:
        r = await client.post(
            f"{fcm_peer.url}/v1/projects/propel-test/messages:send",
            headers={"Authorization": "Bearer static-test-token"},
            json={"message": {"token": "t", "data": {"n": 1}}})
    assert r.status_code == 400
    assert r.json()["error"]["status"] == "INVALID_ARGUMENT"


async def test_push_hanging_fcm_is_retryable_within_the_timeout(fcm_peer: FcmPeer) -> None:
    fcm_peer.hung.add("slow")
    channel = push(fcm_peer, timeout=0.5)
    started = time.monotonic()
    outcomes = await channel.send([outbound("h1", "slow"), outbound("h2", "quick")])
    await channel.aclose()
    assert time.monotonic() - started < 2
    assert [kind(o) for o in outcomes] == ["retryable", "delivered"]
    assert "outcome unknown" in (outcomes[0].error or "")


# -- SMS (Twilio) ---------------------------------------------------------------------


def sms(peer: TwilioPeer, **kw: Any) -> SmsChannel:
    base: dict[str, Any] = {"account_sid": peer.account_sid, "auth_token": peer.auth_token,
                            "from_number": "+15005550006", "base_url": peer.url, "timeout": 2}
    return SmsChannel(SmsConfig(**{**base, **kw}))


async def test_sms_creates_twilio_messages(twilio_peer: TwilioPeer) -> None:
    channel = sms(twilio_peer, concurrency=3,
                  status_callback="https://propel.test/hooks/twilio")
    batch = [outbound(f"s{i:02d}", f"+1415555{i:04d}", body="20% off today",
                      url="https://shop.test/s") for i in range(30)]
    outcomes = await channel.send(batch)
    await channel.aclose()
    assert [o.key for o in outcomes] == [ob.key for ob in batch]
    assert all(o.delivered for o in outcomes), [o.error for o in outcomes]
    assert all((o.provider_ref or "").startswith("SM") for o in outcomes)
    assert {o.provider_ref for o in outcomes} == {m["sid"] for m in twilio_peer.messages}
    form = twilio_peer.forms[0]
    assert form == {"To": form["To"], "From": "+15005550006",
                    "Body": "20% off today\nhttps://shop.test/s",
                    "StatusCallback": "https://propel.test/hooks/twilio"}
    assert 1 <= twilio_peer.connections <= 3


async def test_sms_messaging_service_with_an_api_key(twilio_peer: TwilioPeer) -> None:
    sid, secret = twilio_peer.add_api_key()
    channel = sms(twilio_peer, from_number=None, messaging_service_sid="MG" + "a" * 32,
                  api_key=sid, auth_token=secret)
    [ok] = await channel.send([outbound("k1", "+14155550100", body="Hi")])
    await channel.aclose()
    assert ok.delivered
    assert twilio_peer.forms[0]["MessagingServiceSid"] == "MG" + "a" * 32
    assert "From" not in twilio_peer.forms[0]


async def test_sms_mixed_batch_maps_twilio_errors(twilio_peer: TwilioPeer) -> None:
    twilio_peer.invalid.add("+14155550002")
    twilio_peer.unsubscribed.add("+14155550003")
    twilio_peer.overload(429, 500)
    channel = sms(twilio_peer, concurrency=1)
    batch = [outbound("a", "+14155550000"), outbound("b", "+14155550001"),
             outbound("c", "+14155550002"), outbound("d", "+14155550003"),
             outbound("e", "555-1234"), outbound("f", None), outbound("g", "+14155550004")]
    outcomes = await channel.send(batch)
    await channel.aclose()
    assert [o.key for o in outcomes] == list("abcdefg")
    assert [kind(o) for o in outcomes] == ["retryable", "retryable", "bounced", "bounced",
                                           "bounced", "failed", "delivered"]
    assert "20429" in (outcomes[0].error or "")
    assert "21211" in (outcomes[2].error or "") and "21610" in (outcomes[3].error or "")


async def test_sms_bad_credentials_and_sender(twilio_peer: TwilioPeer) -> None:
    wrong = sms(twilio_peer, auth_token="0" * 32)
    [refused] = await wrong.send([outbound("a", "+14155550000")])
    await wrong.aclose()
    assert kind(refused) == "retryable" and "20003" in (refused.error or "")
    not_ours = sms(twilio_peer, from_number="+14155559999")
    [failed] = await not_ours.send([outbound("b", "+14155550000")])
    await not_ours.aclose()
    assert kind(failed) == "failed" and "21606" in (failed.error or "")


async def test_sms_hanging_twilio_is_retryable_within_the_timeout(
        twilio_peer: TwilioPeer) -> None:
    twilio_peer.hung.add("+14155550009")
    channel = sms(twilio_peer, timeout=0.5)
    started = time.monotonic()
    outcomes = await channel.send([outbound("a", "+14155550009"),
                                   outbound("b", "+14155550008")])
    await channel.aclose()
    assert time.monotonic() - started < 2
    assert [kind(o) for o in outcomes] == ["retryable", "delivered"]


async def test_http_channels_give_up_on_a_silent_server(blackhole: Blackhole) -> None:
    channels = [
        WebhookChannel(WebhookConfig(url=f"{blackhole.url}/h", secret=WEBHOOK_SECRET,
                                     timeout=0.5)),
        PushChannel(PushConfig(project_id="p", access_token="t", base_url=blackhole.url,
                               timeout=0.5)),
        SmsChannel(SmsConfig(account_sid="AC" + "1" * 32, auth_token="x",
                             from_number="+15005550006", base_url=blackhole.url, timeout=0.5)),
    ]
    for channel in channels:
        started = time.monotonic()
        outcomes = await channel.send([outbound(f"b{i}", "+14155550000") for i in range(5)])
        await channel.aclose()
        assert time.monotonic() - started < 2, channel.name
        assert all(kind(o) == "retryable" for o in outcomes), channel.name


# -- inbox (both databases) ------------------------------------------------------------


def inbox_rows(propel: Propel) -> list[Any]:
    with propel.db.read() as conn:
        return conn.execute(select(inbox_messages).order_by(inbox_messages.c.key)).all()


async def test_inbox_stores_once(propel: Propel, tenant: Any) -> None:
    channel = InboxChannel(propel)
    batch = [outbound(f"i{i}", None, account_id=tenant.id, url="https://shop.test/i",
                      data={"n": i}) for i in range(3)]
    assert all(o.delivered for o in await channel.send(batch))
    rows = inbox_rows(propel)
    assert [(r.key, r.identity, r.title, r.body, r.url, orjson.loads(r.data)) for r in rows] == [
        (f"i{i}", f"user-i{i}", "Hello", "Come back!", "https://shop.test/i", {"n": i})
        for i in range(3)]
    assert all(r.account_id == tenant.id and r.campaign_id == "camp1" for r in rows)
    # Storing again (a resend after a crash) is a no-op, and says delivered.
    again = [outbound(f"i{i}", None, account_id=tenant.id, title="Changed") for i in range(3)]
    assert all(o.delivered for o in await channel.send(again))
    assert [r.title for r in inbox_rows(propel)] == ["Hello"] * 3
    await channel.aclose()


async def test_inbox_bad_message_fails_alone(propel: Propel, tenant: Any) -> None:
    channel = InboxChannel(propel)
    batch = [outbound("ok1", None, account_id=tenant.id),
             outbound("bad", None, account_id=tenant.id, identity=None),
             outbound("ok2", None, account_id=tenant.id)]
    outcomes = await channel.send(batch)
    assert [kind(o) for o in outcomes] == ["delivered", "failed", "delivered"]
    assert [r.key for r in inbox_rows(propel)] == ["ok1", "ok2"]


# -- registry -------------------------------------------------------------------------


@pytest.mark.parametrize(("channel", "config", "error"), [
    ("email", {}, "email.host is required"),
    ("email", {"host": "smtp.test"}, "email.from_address is required"),
    ("email", {"host": "h", "from_address": "shop"}, "email.from_address must contain"),
    ("email", {"host": "h", "from_address": "a@b.test", "port": 70000},
     "email.port must be at most 65535"),
    ("email", {"host": "h", "from_address": "a@b.test", "port": "abc"},
     "email.port must be a number"),
    ("email", {"host": "h", "from_address": "a@b.test", "security": "ssl"},
     "email.security must be one of starttls, tls, none"),
    ("email", {"host": "h", "from_address": "a@b.test", "username": "u"},
     "email.password is required when email.username is set"),
    ("email", {"host": "h", "from_address": "a@b.test", "validate_certs": "maybe"},
     "email.validate_certs must be true or false"),
    ("email", {"host": "h", "from_address": "a@b.test", "hostname": "x"},
     "email.hostname is not a setting"),
    ("webhook", {"url": "ftp://x", "secret": "s" * 16}, "webhook.url must be an http"),
    ("webhook", {"url": "http://[::1", "secret": "s" * 16}, "webhook.url must be an http"),
    ("webhook", {"url": "http://x.test:99999", "secret": "s" * 16}, "outside 1-65535"),
    ("webhook", {"url": "https://x.test", "secret": "short"},
     "webhook.secret must be at least 16 characters"),
    ("webhook", {"url": "https://x.test", "secret": "s" * 16, "max_attempts": 0},
     "webhook.max_attempts must be at least 1"),
    ("push", {"project_id": "p"}, "push.service_account is required"),
    ("push", {"service_account": "{not json"}, "push.service_account must be a JSON object"),
    ("push", {"service_account": {"client_email": "a@b"}},
     "push.service_account.private_key is missing"),
    ("push", {"service_account": {"client_email": "a@b", "private_key": "nope"}},
     "push.service_account.private_key is not a PEM private key"),
    ("push", {"access_token": "t"}, "push.project_id is required"),
    ("sms", {"account_sid": "AC1", "auth_token": "t", "from_number": "+15005550006"},
     "sms.account_sid must look like AC"),
    ("sms", {"account_sid": "AC" + "0" * 32, "auth_token": "t"},
     "sms.from_number is required"),
    ("sms", {"account_sid": "AC" + "0" * 32, "auth_token": "t", "from_number": "+0123"},
     "sms.from_number must be E.164"),
    ("sms", {"account_sid": "AC" + "0" * 32, "from_number": "+15005550006"},
     "sms.auth_token is required"),
    ("telegram", {}, "unknown channel 'telegram'"),
])
def test_config_validation_names_the_field(channel: str, config: dict[str, Any],
                                           error: str) -> None:
    with pytest.raises(ChannelError) as info:
        registry.validate_config(channel, config)
    assert error in str(info.value)


def test_config_values_are_coerced_from_form_strings(fcm_peer: FcmPeer) -> None:
    cfg = registry.validate_config("email", {"host": " smtp.test ", "port": "2525",
                                             "from_address": "a@b.test",
                                             "validate_certs": "false", "timeout": "2.5",
                                             "reply_to": ""})
    assert (cfg.host, cfg.port, cfg.validate_certs, cfg.timeout, cfg.reply_to) == (
        "smtp.test", 2525, False, 2.5, None)
    sa = fcm_peer.service_account()
    push_cfg = registry.validate_config("push", {"service_account": orjson.dumps(sa).decode()})
    assert push_cfg.resolved_project_id == "propel-test"
    assert "private_key" not in repr(push_cfg)  # secrets stay out of logs and tracebacks
    fields = {f["name"]: f for f in registry.describe("sms")}
    assert fields["auth_token"]["secret"] and fields["account_sid"]["required"]
    assert fields["timeout"]["default"] == 10.0 and fields["timeout"]["type"] == "number"


def test_registry_stores_masks_and_keeps_secrets(propel: Propel, tenant: Any) -> None:
    config = {"host": "smtp.test", "port": "2525", "from_address": "news@shop.test",
              "username": "u", "password": "hunter2hunter2"}
    shown = registry.set_config(propel.db, tenant.id, "email", config)
    assert shown["password"] == registry.MASK and shown["port"] == 2525
    assert registry.get_config(propel.db, tenant.id, "email") == shown
    assert registry.get_config(propel.db, tenant.id, "email",
                               reveal_secrets=True)["password"] == "hunter2hunter2"
    # The settings form sends the mask back: the stored password is kept.
    registry.set_config(propel.db, tenant.id, "email",
                        {**config, "port": 587, "password": registry.MASK})
    stored = registry.get_config(propel.db, tenant.id, "email", reveal_secrets=True)
    assert stored["port"] == 587 and stored["password"] == "hunter2hunter2"
    with pytest.raises(ChannelError, match="email.port must be at most 65535"):
        registry.set_config(propel.db, tenant.id, "email", {**config, "port": 99999})
    with pytest.raises(ChannelError, match="sms.auth_token is required"):
        registry.set_config(propel.db, tenant.id, "sms", {
            "account_sid": "AC" + "0" * 32, "auth_token": registry.MASK,
            "from_number": "+15005550006"})
    listed = registry.list_configs(propel.db, tenant.id)
    assert listed["email"] == registry.get_config(propel.db, tenant.id, "email")
    assert listed["inbox"] == {} and listed["sms"] is None
    assert registry.get_config(propel.db, "another-account", "email") is None
    assert registry.delete_config(propel.db, tenant.id, "email")
    assert registry.get_config(propel.db, tenant.id, "email") is None


def test_build_channel_errors_and_types(propel: Propel, tenant: Any,
                                        webhook_peer: WebhookReceiver) -> None:
    with pytest.raises(ChannelError) as info:
        registry.build_channel(propel, tenant.id, "email")
    assert str(info.value) == ("email is not configured: set it in Settings or with "
                               "propel channels set")
    with pytest.raises(ChannelError, match="unknown channel 'fax'"):
        registry.build_channel(propel, tenant.id, "fax")
    assert isinstance(registry.build_channel(propel, tenant.id, "inbox"), InboxChannel)
    registry.set_config(propel.db, tenant.id, "webhook",
                        {"url": webhook_peer.endpoint, "secret": WEBHOOK_SECRET})
    channel = registry.build_channel(propel, tenant.id, "webhook")
    assert isinstance(channel, WebhookChannel) and channel.dedupes
    # Settings stored by an older version that no longer validate are named, not crashed on.
    propel.db.write(lambda conn: conn.execute(insert(channel_configs).values(
        account_id=tenant.id, channel="sms", config='{"account_sid": "bogus"}',
        updated_at=utcnow())))
    with pytest.raises(ChannelError, match="sms settings are no longer valid: sms.auth_token"):
        registry.build_channel(propel, tenant.id, "sms")


async def test_send_test_through_the_registry(propel: Propel, tenant: Any, smtp_peer: SmtpPeer,
                                              webhook_peer: WebhookReceiver) -> None:
    registry.set_config(propel.db, tenant.id, "email", {
        "host": smtp_peer.host, "port": smtp_peer.port, "security": "none",
        "from_address": "Shop <news@shop.test>"})
    outcome = await registry.send_test(propel, tenant.id, "email", "owner@shop.test")
    assert outcome.delivered
    assert smtp_peer.received[0].message["Subject"] == "Propel test message"
    registry.set_config(propel.db, tenant.id, "webhook",
                        {"url": webhook_peer.endpoint, "secret": WEBHOOK_SECRET})
    assert (await registry.send_test(propel, tenant.id, "webhook", None)).delivered
    assert webhook_peer.deliveries[0].json["data"] == {"propel_test": "1"}
    assert (await registry.send_test(propel, tenant.id, "inbox", "owner")).delivered
    assert [r.identity for r in inbox_rows(propel)] == ["owner"]
    with pytest.raises(ChannelError, match="a sms test needs 'to'"):
        await registry.send_test(propel, tenant.id, "sms", None)
    with pytest.raises(ChannelError, match="push is not configured"):
        await registry.send_test(propel, tenant.id, "push", "token")


# -- the interface itself -------------------------------------------------------------


async def test_every_channel_speaks_the_interface(propel: Propel, fcm_peer: FcmPeer) -> None:
    channels = [
        EmailChannel(EmailConfig(host="127.0.0.1", from_address="a@b.test")),
        WebhookChannel(WebhookConfig(url="https://x.test", secret=WEBHOOK_SECRET)),
        InboxChannel(propel),
        PushChannel(PushConfig(service_account=fcm_peer.service_account())),
        SmsChannel(SmsConfig(account_sid="AC" + "0" * 32, auth_token="t",
                             from_number="+15005550006")),
        FakeChannel(),
    ]
    assert {c.name: c.dedupes for c in channels} == {
        "email": True, "webhook": True, "inbox": True, "push": False, "sms": False,
        "fake": True}
    assert tuple(c.name for c in channels[:5]) == ("email", "webhook", "inbox", "push", "sms")
    assert set(registry.CHANNELS) == {c.name for c in channels[:5]}
    for c in channels:
        assert await c.send([]) == []
        await c.aclose()


async def test_fake_channel_records_and_misbehaves_on_request() -> None:
    import asyncio

    fake = FakeChannel(name="push", dedupes=False)
    fake.fail("t", "transient", times=1)
    fake.fail("p", "permanent")
    fake.fail("b", "bounce")
    batch = [outbound(k) for k in "tpbo"]
    assert [kind(o) for o in await fake.send(batch)] == ["retryable", "failed", "bounced",
                                                         "delivered"]
    assert [kind(o) for o in await fake.send(batch[:1])] == ["delivered"]  # once only
    assert fake.keys == list("tpbot") and fake.attempts["t"] == 2
    fake.hang("h")
    task = asyncio.create_task(fake.send([outbound("h")]))
    await asyncio.sleep(0.05)
    assert not task.done()
    fake.release()
    assert (await task)[0].delivered
    fake.crash(ConnectionResetError("boom"))
    with pytest.raises(ConnectionResetError):
        await fake.send([outbound("z")])
    await fake.aclose()
    assert fake.closed
    with pytest.raises(RuntimeError):
        await fake.send([outbound("y")])
