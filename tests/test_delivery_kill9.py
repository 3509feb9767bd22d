"""kill -9 during a large send, on SQLite and PostgreSQL.

``propel serve`` delivers two campaigns in the background — SMS through a local server
speaking Twilio's API (a receiver that does NOT deduplicate) and a webhook (a receiver
that deduplicates on the Idempotency-Key) — while crash points in delivery SIGKILL it
and the harness SIGKILLs it from outside. Afterwards:
- every targeted user is in exactly one state, nobody is lost;
- no phone got two texts; every user recorded ``sent`` got theirs;
- a text that arrived without being recorded is ``in_doubt``, and ``in_doubt`` exists
  only because of crashes (a calm run has none);
- webhook resends after a crash carry the same key, so the receiver saw each user once.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter

import pytest
from killloop import KillLoop, ServerConfig, ServerProcess, cli, random_faults
from peers.twilio import TwilioPeer
from peers.webhook import WebhookReceiver
from sqlalchemy import create_engine, func, select, text

from propel.accounts import create_account
from propel.campaigns import service
from propel.campaigns.tables import messages
from propel.channels.registry import set_config
from propel.core import Propel
from propel.ingest.records import IngestItem, ProfileUpdate, key_hash
from propel.ingest.service import ingest_sync
from propel.settings import Settings

USERS = 600
POINTS = ["deliver.after_claim", "deliver.after_send"]


def _schema_url(base: str) -> tuple[str, str]:
    schema = f"k9d_{uuid.uuid4().hex[:10]}"
    with create_engine(base).begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in base else "?"
    return schema, f"{base}{sep}options=-csearch_path%3D{schema}"


def _setup(settings: Settings, twilio: TwilioPeer, hook: WebhookReceiver) -> tuple[str, list]:
    propel = Propel(settings)
    try:
        propel.migrate()
        account = create_account(propel.db, "Kill").account_id
        items = [IngestItem(key_hash(account, f"p{i}"), profile=ProfileUpdate(
            identity=f"u{i:04d}", phone=f"+1415{i:07d}", consent={"sms": True}))
            for i in range(USERS)]
        ingest_sync(propel.db, account, items, [], "test")
        set_config(propel.db, account, "sms", {
            "account_sid": twilio.account_sid, "auth_token": twilio.auth_token,
            "from_number": "+15005550006", "base_url": twilio.url, "timeout": 5})
        set_config(propel.db, account, "webhook", {
            "url": hook.endpoint, "secret": hook.secret, "timeout": 5})
        ids = []
        for channel, content in (("sms", {"body": "Hi {{ user.identity }}"}),
                                 ("webhook", {"title": "Hi", "body": "b"})):
            c = service.create_campaign(
                propel, account, name=channel, channel=channel,
                audience={"property": "phone", "op": "is set"}, holdout_pct=0.1,
                content={"variants": [{"name": "A", "split": 100, **content}]},
                rate_per_second=150)
            ids.append(service.publish(propel, account, c.id).id)
        return account, ids
    finally:
        propel.close()


@pytest.mark.slow
@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgres",
                                                             marks=pytest.mark.postgres)])
def test_kill9_during_a_large_send(tmp_path, database):
    import os

    base = os.environ.get("PROPEL_TEST_POSTGRES_URL")
    if database == "postgres" and not base:
        pytest.skip("PROPEL_TEST_POSTGRES_URL is not set")
    schema, url = _schema_url(base) if database == "postgres" else (None, None)
    with TwilioPeer() as twilio, WebhookReceiver("k9-webhook-secret-123") as hook:
        settings = Settings(data_dir=tmp_path / "data", database_url=url,
                            secret_key="k9", log_format="text")
        account, (sms_id, hook_id) = _setup(settings, twilio, hook)
        config = ServerConfig(data_dir=settings.data_dir, database_url=url,
                              secret_key="k9",
                              extra_env={"PROPEL_DELIVERY_LEASE_SECONDS": "5"})
        server = ServerProcess(config, tmp_path / "serve.log")
        loop = KillLoop(server, load=[], max_seconds=25, min_cycles=3, hard_seconds=90,
                        faults=random_faults(POINTS, {"deliver.after_claim": 0.05,
                                                      "deliver.after_send": 0.1}),
                        kill_every=(1.0, 3.0), seed=11, final="kill")
        stats = loop.run()
        assert stats.cycles >= 3, stats.describe()
        # a calm finish: no faults, let delivery drain, then stop
        server.start_ready()
        deadline = time.monotonic() + 120
        propel = Propel(settings)
        try:
            while time.monotonic() < deadline:
                with propel.db.read() as conn:
                    busy = conn.execute(select(func.count()).select_from(messages).where(
                        messages.c.state.in_(("queued", "pending_retry", "sending")))).scalar()
                if not busy:
                    break
                time.sleep(1)
            server.stop()
            cli(config, "lake", "flush")  # nothing to do with delivery; leaves it tidy
            with propel.db.read() as conn:
                rows = conn.execute(select(messages.c.campaign_id, messages.c.identity,
                                           messages.c.state, messages.c.key)).all()
        finally:
            propel.close()
            server.kill9()
        sms = {r.identity: r.state for r in rows if r.campaign_id == sms_id}
        webhook = {r.identity: r.state for r in rows if r.campaign_id == hook_id}
        assert len(sms) == USERS and len(webhook) == USERS  # nobody lost
        assert not {"queued", "pending_retry", "sending"} & set(sms.values()), Counter(
            sms.values())
        texts = Counter(m["to"] for m in twilio.messages)
        assert max(texts.values(), default=0) <= 1, "a phone got two texts"
        phone = {f"u{i:04d}": f"+1415{i:07d}" for i in range(USERS)}
        for ident, state in sms.items():
            arrived = texts.get(phone[ident], 0)
            if state == "sent":
                assert arrived == 1, ident
            elif state in ("holdout", "suppressed", "failed"):
                assert arrived == 0, (ident, state)
            else:
                assert state == "in_doubt", (ident, state)
        crashes = stats.crashes + stats.kills
        assert crashes > 0
        keys = set(hook.processed)
        assert all(state in ("sent", "holdout", "failed", "in_doubt")
                   for state in webhook.values()), Counter(webhook.values())
        assert keys == {r.key for r in rows if r.campaign_id == hook_id
                        and r.state == "sent"}
        assert "in_doubt" not in set(webhook.values())  # the receiver dedupes: resent
    if schema:
        with create_engine(base).begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
