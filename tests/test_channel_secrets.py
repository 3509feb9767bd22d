"""Channel secrets sealed at rest: what the database holds does not reveal them, the
code that sends gets them back, rows written before sealing still load, and a changed
secret key is a clear error (in the registry and on the Settings page), never a crash."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from peers.fcm import FcmPeer
from peers.webhook import WEBHOOK_SECRET, WebhookReceiver
from sqlalchemy import insert, select
from web_fixtures import Dashboard, Shop

from propel.app import create_app
from propel.campaigns.tables import channel_configs
from propel.channels import registry
from propel.channels.base import ChannelError
from propel.channels.sealing import PREFIX, Sealer, Unreadable
from propel.core import Propel
from propel.db.engine import Database
from propel.db.meta import utcnow

PASSWORD = "smtp-password-7d1f9a"
SMS_TOKEN = "twilio-auth-token-5c2e"
KEY_CHANGED = (r"cannot be read: PROPEL_SECRET_KEY \(or the secret_key file in the data "
               r"dir\) differs from the key that saved it; enter it again")


def raw_config(propel: Propel, account_id: str, channel: str) -> str:
    """The settings exactly as a dump of the database would show them."""
    with propel.db.read() as conn:
        return conn.execute(select(channel_configs.c.config).where(
            channel_configs.c.account_id == account_id,
            channel_configs.c.channel == channel)).scalar_one()


def email_settings(**extra: Any) -> dict[str, Any]:
    return {"host": "smtp.shop.test", "port": 2525, "from_address": "news@shop.test",
            "username": "news", "password": PASSWORD, **extra}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def rekeyed(propel: Propel) -> Iterator[Propel]:
    """The same database opened with another secret key, as after the key was lost."""
    other = Propel(propel.settings.model_copy(update={"secret_key": "another-secret"}))
    yield other
    other.close()


# -- the sealer -----------------------------------------------------------------------


def test_two_seals_of_one_value_differ_and_both_open() -> None:
    sealer = Sealer(lambda: "app-key")
    first, second = sealer.seal("hunter2"), sealer.seal("hunter2")
    assert first != second and first.startswith(PREFIX) and "hunter2" not in first
    assert sealer.open(first) == sealer.open(second) == "hunter2"
    # the key is derived from the app key, the same in every process
    assert Sealer(lambda: "app-key").open(first) == "hunter2"
    assert sealer.open(sealer.seal({"private_key": "pem"})) == {"private_key": "pem"}
    assert sealer.open("legacy plain text") == "legacy plain text"


def test_another_key_or_an_altered_token_cannot_open() -> None:
    sealed = Sealer(lambda: "app-key").seal("hunter2")
    with pytest.raises(Unreadable):
        Sealer(lambda: "another-key").open(sealed)
    with pytest.raises(Unreadable):
        Sealer(lambda: "app-key").open(sealed[:-6] + "AAAAAA")


def test_the_key_file_is_read_only_when_a_secret_is_used(tmp_path: Any) -> None:
    from propel.settings import Settings

    with Propel(Settings(data_dir=tmp_path / "data")) as propel:
        assert not (tmp_path / "data" / "secret_key").exists()
        assert propel.db.sealer is not None
        propel.db.sealer.seal("x")
        assert (tmp_path / "data" / "secret_key").exists()


# -- the registry, on both databases ------------------------------------------------------


@pytest.mark.anyio
async def test_secrets_are_sealed_in_the_database_and_revealed_to_senders(
        propel: Propel, tenant: Any, fcm_peer: FcmPeer, webhook_peer: WebhookReceiver
) -> None:
    account = fcm_peer.service_account()
    registry.set_config(propel.db, tenant.id, "email", email_settings())
    registry.set_config(propel.db, tenant.id, "push", {"service_account": account})
    registry.set_config(propel.db, tenant.id, "sms", {
        "account_sid": "AC" + "0" * 32, "auth_token": SMS_TOKEN, "from_number": "+15005550006"})
    registry.set_config(propel.db, tenant.id, "webhook",
                        {"url": webhook_peer.endpoint, "secret": WEBHOOK_SECRET})
    for channel, secret in [("email", PASSWORD), ("push", account["private_key"]),
                            ("push", account["client_email"]), ("sms", SMS_TOKEN),
                            ("webhook", WEBHOOK_SECRET)]:
        assert secret not in raw_config(propel, tenant.id, channel), channel
    stored = orjson.loads(raw_config(propel, tenant.id, "email"))
    assert stored["host"] == "smtp.shop.test" and stored["username"] == "news"
    assert stored["password"].startswith(PREFIX)

    assert registry.get_config(propel.db, tenant.id, "email",
                               reveal_secrets=True)["password"] == PASSWORD
    assert registry.get_config(propel.db, tenant.id, "push",
                               reveal_secrets=True)["service_account"] == account
    assert registry.get_config(propel.db, tenant.id, "email")["password"] == registry.MASK
    assert registry.list_configs(propel.db, tenant.id)["sms"]["auth_token"] == registry.MASK
    # the receiver checks the signature made with the opened secret
    assert (await registry.send_test(propel, tenant.id, "webhook", None)).delivered


def test_a_form_round_trip_with_the_mask_keeps_the_secret_sealed(propel: Propel,
                                                                 tenant: Any) -> None:
    registry.set_config(propel.db, tenant.id, "email", email_settings())
    before = raw_config(propel, tenant.id, "email")
    shown = registry.set_config(propel.db, tenant.id, "email",
                                email_settings(port=587, password=registry.MASK))
    assert shown["password"] == registry.MASK
    after = raw_config(propel, tenant.id, "email")
    assert PASSWORD not in after and after != before  # sealed again, with a fresh IV
    stored = registry.get_config(propel.db, tenant.id, "email", reveal_secrets=True)
    assert (stored["port"], stored["password"]) == (587, PASSWORD)


def test_a_plain_text_row_from_before_sealing_loads_and_is_sealed_on_save(
        propel: Propel, tenant: Any) -> None:
    legacy = orjson.dumps(email_settings()).decode()
    propel.db.write(lambda conn: conn.execute(insert(channel_configs).values(
        account_id=tenant.id, channel="email", config=legacy, updated_at=utcnow())))
    assert registry.get_config(propel.db, tenant.id, "email",
                               reveal_secrets=True)["password"] == PASSWORD
    assert registry.build_channel(propel, tenant.id, "email").config.password == PASSWORD
    registry.set_config(propel.db, tenant.id, "email",
                        email_settings(password=registry.MASK))
    assert PASSWORD not in raw_config(propel, tenant.id, "email")
    assert registry.get_config(propel.db, tenant.id, "email",
                               reveal_secrets=True)["password"] == PASSWORD


def test_a_database_opened_without_the_secret_key_refuses_secrets(propel: Propel,
                                                                 tenant: Any) -> None:
    registry.set_config(propel.db, tenant.id, "email", email_settings())
    bare = Database(propel.db.url)  # not through Propel: no key, so no sealer
    try:
        with pytest.raises(RuntimeError, match="no sealer for channel secrets"):
            registry.set_config(bare, tenant.id, "email", email_settings(password="other"))
        with pytest.raises(RuntimeError, match="no sealer for channel secrets"):
            registry.get_config(bare, tenant.id, "email", reveal_secrets=True)
    finally:
        bare.close()
    assert registry.get_config(propel.db, tenant.id, "email",
                               reveal_secrets=True)["password"] == PASSWORD


def test_another_secret_key_is_a_clear_error_until_the_secret_is_entered_again(
        propel: Propel, rekeyed: Propel, tenant: Any) -> None:
    registry.set_config(propel.db, tenant.id, "email", email_settings())
    with pytest.raises(ChannelError, match=rf"^email\.password {KEY_CHANGED} \(Settings"):
        registry.get_config(rekeyed.db, tenant.id, "email", reveal_secrets=True)
    with pytest.raises(ChannelError, match=KEY_CHANGED):
        registry.build_channel(rekeyed, tenant.id, "email")
    with pytest.raises(ChannelError, match=KEY_CHANGED):
        registry.set_config(rekeyed.db, tenant.id, "email",
                            email_settings(password=registry.MASK))
    # the masked views need no key; typing the secret again replaces it
    assert registry.get_config(rekeyed.db, tenant.id, "email")["password"] == registry.MASK
    assert registry.list_configs(rekeyed.db, tenant.id)["email"]["port"] == 2525
    registry.set_config(rekeyed.db, tenant.id, "email", email_settings(password="new-one"))
    assert registry.build_channel(rekeyed, tenant.id, "email").config.password == "new-one"


# -- the Settings page with another secret key ----------------------------------------------


@pytest.fixture
def rekeyed_dashboard(shop: Shop) -> Iterator[tuple[Dashboard, Propel]]:
    """The Settings page of the shop's second account, served by a Propel whose secret
    key is not the one that saved its channel settings."""
    registry.set_config(shop.propel.db, shop.other_account_id, "email", email_settings())
    other = Propel(shop.propel.settings.model_copy(update={"secret_key": "another-secret"}))
    try:
        with TestClient(create_app(propel=other, background=False),
                        headers={"accept": "text/html"}) as client:
            dashboard = Dashboard(client, shop)
            dashboard.sign_in(email=shop.other_admin)
            yield dashboard, other
    finally:
        other.close()
        registry.delete_config(shop.propel.db, shop.other_account_id, "email")


def _post(dashboard: Dashboard, path: str, data: dict[str, str]) -> Any:
    return dashboard.client.post(path, data={**data, "csrf_token": dashboard.csrf("/settings")},
                                 follow_redirects=False)


def _form(**extra: str) -> dict[str, str]:
    return {"host": "smtp.shop.test", "port": "2525", "security": "none",
            "from_address": "news@shop.test", "username": "news", "password": "", **extra}


def test_the_settings_page_shows_a_clear_error_not_a_crash(
        rekeyed_dashboard: tuple[Dashboard, Propel], shop: Shop) -> None:
    dashboard, other = rekeyed_dashboard
    page = dashboard.client.get("/settings")
    assert page.status_code == 200 and "Currently <strong>set</strong>" in page.text

    tested = _post(dashboard, "/settings/channels/email/test", {"to": "a@shop.test"})
    assert tested.status_code == 422
    assert re.search(KEY_CHANGED, tested.text) and PASSWORD not in tested.text

    # leaving the unreadable password blank cannot keep it: the field says why
    kept = _post(dashboard, "/settings/channels/email", _form(port="587"))
    assert kept.status_code == 422
    assert re.search(rf'id="email-password-error">Password {KEY_CHANGED}', kept.text)
    assert registry.get_config(shop.propel.db, shop.other_account_id, "email")["port"] == 2525

    retyped = _post(dashboard, "/settings/channels/email",
                    _form(port="587", password="typed-again"))
    assert retyped.status_code == 303
    assert "typed-again" not in raw_config(shop.propel, shop.other_account_id, "email")
    stored = registry.get_config(other.db, shop.other_account_id, "email", reveal_secrets=True)
    assert (stored["port"], stored["password"]) == (587, "typed-again")
