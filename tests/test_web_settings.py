"""The Settings page: API keys (shown once, working, revocable), channel settings with
per-field errors, write-only secrets and a real test send, dashboard users, delivery
and ingest rejections; roles, CSRF and account isolation."""

from __future__ import annotations

import html
import re
import secrets

import pytest
from peers import free_port
from sqlalchemy import func, select

from propel.accounts import create_api_key, list_api_keys
from propel.accounts.users import list_users
from propel.campaigns.tables import campaigns, dispatches, messages
from propel.channels.registry import get_config, set_config
from propel.db.meta import utcnow

ADMIN_POSTS = [
    ("/settings/api-keys", {"name": "role check"}),
    ("/settings/api-keys/key_000000000000/revoke", {}),
    ("/settings/channels/email", {"host": "smtp.example", "from_address": "a@shop.example"}),
    ("/settings/channels/email/test", {"to": "ops@shop.example"}),
    ("/settings/users", {"email": "role-check@shop.example", "role": "admin",
                         "password": "long enough password"}),
]


def _unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def _post(dashboard, path: str, data: dict, **kw):
    return dashboard.client.post(path, data={**data, "csrf_token": dashboard.csrf("/settings")},
                                 follow_redirects=kw.pop("follow_redirects", False), **kw)


def _section(page, section_id: str) -> str:
    return page.text.split(f'id="{section_id}"', 1)[1].split("\n</section>", 1)[0]


def _channel_section(page, channel: str) -> str:
    return page.text.split(f'id="channel-{channel}"', 1)[1].split("</section>", 1)[0]


def _email_settings(port: int, **extra) -> dict:
    return {"host": "127.0.0.1", "port": str(port), "security": "none",
            "from_address": "Shop <news@shop.example>", "timeout": "5", **extra}


# -- reading --------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["viewer", "marketer"])
def test_non_admins_see_every_section_but_no_change_controls(dashboard, shop, role):
    key_id, _ = create_api_key(shop.propel.db, shop.account_id, _unique("visible"))
    page = dashboard.sign_in(role).get("/settings")
    assert page.status_code == 200
    assert "<h1>Settings</h1>" in page.text
    for heading in ("API keys", "Channels", "Dashboard users", "Delivery rejections",
                    "Ingest rejections", "Email (SMTP)", "Webhook", "Push (FCM)",
                    "SMS (Twilio)", "App inbox"):
        assert f">{heading}</h" in page.text, heading
    assert key_id in page.text
    assert shop.emails["admin"] in page.text
    for control in ("Create key", ">Save<", ">Send test<", ">Revoke<", "Add user",
                    'method="post" action="/settings'):
        assert control not in page.text, control
    assert "needs the admin role" in page.text
    assert "inbox-signing-secret" not in page.text  # the inbox secret is for admins


@pytest.mark.parametrize("role", ["viewer", "marketer"])
@pytest.mark.parametrize(("path", "data"), ADMIN_POSTS)
def test_non_admin_posts_are_refused(dashboard, shop, role, path, data):
    dashboard.sign_in(role)
    keys_before = len(list_api_keys(shop.propel.db, shop.account_id))
    response = _post(dashboard, path, data)
    assert response.status_code == 403
    assert "admin role" in response.text
    assert len(list_api_keys(shop.propel.db, shop.account_id)) == keys_before
    assert "role-check@shop.example" not in [u.email for u in list_users(
        shop.propel.db, shop.account_id)]


def test_non_admins_cannot_open_the_revoke_confirmation(dashboard, shop):
    key_id, _ = create_api_key(shop.propel.db, shop.account_id, _unique("confirm"))
    page = dashboard.sign_in("viewer").get(f"/settings/api-keys/{key_id}/revoke")
    assert page.status_code == 403


@pytest.mark.parametrize(("path", "data"), ADMIN_POSTS)
def test_posts_without_the_csrf_token_are_refused(dashboard, shop, path, data):
    client = dashboard.sign_in("admin")
    keys_before = len(list_api_keys(shop.propel.db, shop.account_id))
    response = client.post(path, data=data, follow_redirects=False)
    assert response.status_code == 403 and "security token" in response.text
    response = client.post(path, data={**data, "csrf_token": "forged"}, follow_redirects=False)
    assert response.status_code == 403
    assert len(list_api_keys(shop.propel.db, shop.account_id)) == keys_before


def test_settings_need_sign_in(dashboard):
    dashboard.client.cookies.clear()
    response = dashboard.client.get("/settings", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == (
        "/login?next=/settings")


# -- API keys -------------------------------------------------------------------------


def test_api_key_is_shown_once_works_and_stops_working_when_revoked(dashboard, shop):
    client = dashboard.sign_in("admin")
    name = _unique("Mobile app")
    page = _post(dashboard, "/settings/api-keys", {"name": name})
    assert page.status_code == 200
    token = re.search(r'<code id="new-token-code">([^<]+)</code>', page.text).group(1)
    assert "shown only this once" in page.text
    [key] = [k for k in list_api_keys(shop.propel.db, shop.account_id) if k.name == name]
    assert token.startswith("pk_") and key.id in page.text

    api = {"Authorization": f"Bearer {token}", "accept": "application/json"}
    answer = client.get("/api/v1/rejections?limit=1", headers=api)
    assert answer.status_code == 200 and "rejections" in answer.json()

    again = client.get("/settings")
    assert token not in again.text and key.id in again.text  # listed, never shown again

    confirm = client.get(f"/settings/api-keys/{key.id}/revoke")
    assert confirm.status_code == 200 and "cannot be undone" in confirm.text
    assert ">Revoke key</button>" in confirm.text
    done = _post(dashboard, f"/settings/api-keys/{key.id}/revoke", {})
    assert done.status_code == 303
    assert done.headers["location"].startswith(f"/settings?revoked={key.id}")
    shown = client.get(done.headers["location"])
    assert f"API key {key.id} was revoked." in shown.text
    assert client.get("/api/v1/rejections?limit=1", headers=api).status_code == 401
    [key] = [k for k in list_api_keys(shop.propel.db, shop.account_id) if k.name == name]
    assert key.revoked_at is not None


@pytest.mark.parametrize(("name", "message"), [
    ("   ", "Give the key a name"), ("x" * 201, "at most 200 characters")])
def test_bad_key_name_is_refused_and_nothing_is_created(dashboard, shop, name, message):
    dashboard.sign_in("admin")
    before = len(list_api_keys(shop.propel.db, shop.account_id))
    page = _post(dashboard, "/settings/api-keys", {"name": name})
    assert page.status_code == 422
    assert message in page.text and 'role="alert"' in page.text
    assert 'aria-describedby="key-name-error"' in page.text
    assert len(list_api_keys(shop.propel.db, shop.account_id)) == before


def test_unknown_or_other_accounts_keys_cannot_be_revoked(dashboard, shop):
    other_key, _ = create_api_key(shop.propel.db, shop.other_account_id, _unique("theirs"))
    dashboard.sign_in("admin")
    for key_id in (other_key, "key_nope", "../etc"):
        response = _post(dashboard, f"/settings/api-keys/{key_id}/revoke", {})
        assert response.status_code == 404, key_id
        assert dashboard.client.get(f"/settings/api-keys/{key_id}/revoke").status_code == 404
    [theirs] = [k for k in list_api_keys(shop.propel.db, shop.other_account_id)
                if k.id == other_key]
    assert theirs.revoked_at is None


def test_other_accounts_settings_are_not_shown(dashboard, shop):
    mine, _ = create_api_key(shop.propel.db, shop.account_id, _unique("mine"))
    page = dashboard.sign_in(email=shop.other_admin).get("/settings")
    assert page.status_code == 200
    assert mine not in page.text and shop.emails["admin"] not in page.text
    assert shop.other_admin in page.text


# -- channels -------------------------------------------------------------------------


@pytest.mark.parametrize(("channel", "data", "field", "message"), [
    ("email", _email_settings(0), "port", "Port must be at least 1"),
    ("email", _email_settings(25, security="ssl"), "security", "must be one of"),
    ("email", _email_settings(25, from_address="nobody"), "from_address", "must contain"),
    ("webhook", {"url": "ftp://hooks.example/x", "secret": "s" * 20}, "url",
     "must be an http:// or https:// URL"),
    ("webhook", {"url": "https://hooks.example/x", "secret": "short"}, "secret",
     "at least 16 characters"),
    ("sms", {"account_sid": "nope", "auth_token": "t", "from_number": "+15017122661"},
     "account_sid", "must look like AC"),
    ("push", {"service_account": "{not json"}, "service_account", "JSON object"),
])
def test_bad_channel_settings_are_refused_per_field_and_nothing_changes(
        dashboard, shop, channel, data, field, message):
    before = get_config(shop.propel.db, shop.account_id, channel, reveal_secrets=True)
    dashboard.sign_in("admin")
    page = _post(dashboard, f"/settings/channels/{channel}", data)
    assert page.status_code == 422
    section = _channel_section(page, channel)
    assert 'role="alert"' in section
    error = re.search(rf'<p class="field-error" id="{channel}-{field}-error">([^<]*)</p>',
                      section)
    assert error and message in html.unescape(error.group(1)), section
    assert re.search(rf'id="{channel}-{field}"[^>]*aria-describedby="[^"]*'
                     rf'{channel}-{field}-error', section, re.S)
    assert get_config(shop.propel.db, shop.account_id, channel, reveal_secrets=True) == before
    # the values typed are kept (except secrets)
    if channel == "email":
        assert 'value="127.0.0.1"' in section


def test_every_bad_field_is_reported_at_once(dashboard, shop):
    dashboard.sign_in("admin")
    page = _post(dashboard, "/settings/channels/email",
                 _email_settings(70000, timeout="0", validate_certs="maybe"))
    assert page.status_code == 422
    section = _channel_section(page, "email")
    for field in ("port", "timeout", "validate_certs"):
        assert f'id="email-{field}-error"' in section, field


def test_a_broken_url_is_a_clear_error_not_a_crash(dashboard, shop):
    dashboard.sign_in("admin")
    page = _post(dashboard, "/settings/channels/webhook",
                 {"url": "http://[::1", "secret": "s" * 20})
    assert page.status_code == 422 and "must be an http:// or https:// URL" in page.text
    assert "Invalid IPv6 URL" in page.text


def test_unknown_channel_is_404(dashboard):
    dashboard.sign_in("admin")
    assert _post(dashboard, "/settings/channels/pigeon", {}).status_code == 404
    assert _post(dashboard, "/settings/channels/pigeon/test", {}).status_code == 404


def test_secrets_are_write_only_and_a_blank_secret_keeps_the_stored_one(dashboard, shop):
    client = dashboard.sign_in("admin")
    secret = "whsec-" + secrets.token_hex(12)
    saved = _post(dashboard, "/settings/channels/webhook",
                  {"url": "https://hooks.example/propel", "secret": secret})
    assert saved.status_code == 303
    assert saved.headers["location"] == "/settings?saved=webhook#channel-webhook"
    page = client.get(saved.headers["location"])
    assert "Webhook settings saved." in page.text
    section = _channel_section(page, "webhook")
    assert secret not in page.text
    assert "https://hooks.example/propel" in section
    assert re.search(r"Currently <strong>set</strong>", section)

    # change another setting, leave the secret blank: the secret stays
    assert _post(dashboard, "/settings/channels/webhook",
                 {"url": "https://hooks.example/v2", "secret": "", "timeout": "3"}
                 ).status_code == 303
    stored = get_config(shop.propel.db, shop.account_id, "webhook", reveal_secrets=True)
    assert stored == {"url": "https://hooks.example/v2", "secret": secret, "timeout": 3.0}

    # a refused save never repeats a newly typed secret
    typed = "new-secret-" + secrets.token_hex(8)
    refused = _post(dashboard, "/settings/channels/webhook",
                    {"url": "gopher://x", "secret": typed})
    assert refused.status_code == 422
    assert typed not in refused.text and secret not in refused.text
    assert get_config(shop.propel.db, shop.account_id, "webhook",
                      reveal_secrets=True)["secret"] == secret


def test_an_optional_secret_can_be_removed(dashboard, shop):
    set_config(shop.propel.db, shop.account_id, "email",
               {**_email_settings(2525), "username": "u", "password": "pw-to-remove"})
    dashboard.sign_in("admin")
    page = dashboard.client.get("/settings")
    assert "pw-to-remove" not in page.text
    assert 'name="clear_password"' in _channel_section(page, "email")
    response = _post(dashboard, "/settings/channels/email",
                     {**_email_settings(2525), "username": "", "clear_password": "1"})
    assert response.status_code == 303
    stored = get_config(shop.propel.db, shop.account_id, "email", reveal_secrets=True)
    assert "password" not in stored and "username" not in stored


def test_send_test_email_reaches_a_real_smtp_server(dashboard, shop, smtp_peer):
    dashboard.sign_in("admin")
    saved = _post(dashboard, "/settings/channels/email", _email_settings(smtp_peer.port))
    assert saved.status_code == 303
    page = _post(dashboard, "/settings/channels/email/test", {"to": "ops@shop.example"})
    assert page.status_code == 200
    result = re.search(r'id="email-test-result">(.*?)</', page.text, re.S).group(1)
    assert "delivered to ops@shop.example" in result
    [mail] = smtp_peer.to("ops@shop.example")
    assert mail.message["Subject"] == "Propel test message"
    assert "news@shop.example" in mail.message["From"]


def test_send_test_to_a_dead_relay_shows_the_failure(dashboard, shop):
    dashboard.sign_in("admin")
    assert _post(dashboard, "/settings/channels/email",
                 _email_settings(free_port())).status_code == 303
    page = _post(dashboard, "/settings/channels/email/test", {"to": "ops@shop.example"})
    assert page.status_code == 200
    section = _channel_section(page, "email")
    assert "Test message not delivered to ops@shop.example" in section
    assert 'role="alert"' in section
    assert "cannot connect" in section


def test_send_test_needs_a_recipient_and_a_configured_channel(dashboard, shop):
    dashboard.sign_in("admin")
    page = _post(dashboard, "/settings/channels/email/test", {"to": ""})
    assert page.status_code == 422 and "needs &#39;to&#39;" in page.text
    page = _post(dashboard, "/settings/channels/sms/test", {"to": "+15017122661"})
    assert page.status_code == 422 and "sms is not configured" in page.text


def test_send_test_to_the_app_inbox(dashboard, shop):
    identity = _unique("inbox-test")
    dashboard.sign_in("admin")
    page = _post(dashboard, "/settings/channels/inbox/test", {"to": identity})
    assert page.status_code == 200
    assert f"Test message delivered to {identity}" in page.text
    user = dashboard.client.get(f"/users/{identity}")
    assert user.status_code in (200, 404)  # an inbox message alone does not make a user


def test_inbox_shows_the_client_key_and_explains_the_signature(dashboard, shop):
    from propel.accounts import inbox_credentials, user_signature

    creds = inbox_credentials(shop.propel.db, shop.account_id)
    page = dashboard.sign_in("admin").get("/settings")
    section = _channel_section(page, "inbox")
    assert creds.client_key in section
    assert "HMAC-SHA256" in section and "X-Propel-User-Signature" in section
    assert creds.signing_secret in section  # admins only, inside a disclosure
    assert user_signature(creds.signing_secret, "user-123") in section
    viewer = dashboard.sign_in("viewer").get("/settings")
    assert creds.client_key in viewer.text and creds.signing_secret not in viewer.text


# -- dashboard users ------------------------------------------------------------------


def test_admin_adds_a_dashboard_user(dashboard, shop):
    email = f"{_unique('new')}@shop.example"
    dashboard.sign_in("admin")
    response = _post(dashboard, "/settings/users",
                     {"email": email, "role": "viewer", "password": "a long password"})
    assert response.status_code == 303
    page = dashboard.client.get(response.headers["location"])
    assert f"Dashboard user {email} added." in page.text
    assert [u.role for u in list_users(shop.propel.db, shop.account_id)
            if u.email == email] == ["viewer"]
    assert email not in dashboard.sign_in(email=shop.other_admin).get("/settings").text


@pytest.mark.parametrize(("email", "role", "password", "field", "message"), [
    ("not-an-email", "viewer", "a long password", "email", "not a valid address"),
    ("admin@shop.example", "viewer", "a long password", "email", "exists already"),
    ("fresh-role@shop.example", "owner", "a long password", "role", "role must be one of"),
    ("fresh-pw@shop.example", "viewer", "short", "password", "at least 10 characters"),
])
def test_bad_user_input_is_refused_per_field(dashboard, shop, email, role, password, field,
                                             message):
    dashboard.sign_in("admin")
    before = list_users(shop.propel.db, shop.account_id)
    page = _post(dashboard, "/settings/users", {"email": email, "role": role,
                                                "password": password})
    assert page.status_code == 422
    error = re.search(rf'id="user-{field}-error">([^<]*)<', page.text)
    assert error and message in html.unescape(error.group(1))
    assert f'value="{password}"' not in page.text
    assert list_users(shop.propel.db, shop.account_id) == before


# -- rejections -----------------------------------------------------------------------


def test_ingest_rejections_appear_after_a_bad_event(dashboard, shop):
    _, token = create_api_key(shop.propel.db, shop.account_id, _unique("ingest"))
    client = dashboard.sign_in("viewer")
    marker = _unique("bad-event-user")
    answer = client.post("/api/v1/events", headers={"Authorization": f"Bearer {token}",
                                                    "accept": "application/json"},
                         json={"events": [{"identity": marker, "ts": "not a time",
                                           "name": "Viewed"}]})
    assert answer.status_code == 200, answer.text
    [rejected] = answer.json()["rejected"]
    page = client.get("/settings")
    section = _section(page, "ingest-rejections")
    assert marker in section
    assert f"<code>{rejected['field']}</code>" in section
    assert html.escape(rejected["reason"], quote=False) in html.unescape(section) or \
        rejected["reason"] in html.unescape(section)


def test_delivery_rejections_list_failed_and_in_doubt_messages(dashboard, shop):
    with shop.propel.db.read() as conn:
        campaign = conn.execute(select(campaigns.c.id, campaigns.c.name).where(
            campaigns.c.account_id == shop.account_id).limit(1)).first()
        dispatch_id = conn.execute(select(func.min(dispatches.c.id)).where(
            dispatches.c.campaign_id == campaign.id)).scalar()
    rows = [(_unique("bounced"), "failed", "bounced: 550 5.1.1 No such user"),
            (_unique("lost"), "in_doubt", "outcome unknown: connection reset")]

    def _insert(conn):
        for identity, state, reason in rows:
            conn.execute(messages.insert().values(
                account_id=shop.account_id, campaign_id=campaign.id, dispatch_id=dispatch_id,
                identity=identity, key=_unique("k"), state=state, reason=reason, attempts=1,
                created_at=utcnow()))

    shop.propel.db.write(_insert)
    page = dashboard.sign_in("viewer").get("/settings")
    section = html.unescape(_section(page, "delivery-rejections"))
    for identity, state, reason in rows:
        assert identity in section and reason in section
        assert state.replace("_", " ") in section
    assert f'href="/campaigns/{campaign.id}"' in section
    other = dashboard.sign_in(email=shop.other_admin).get("/settings")
    assert rows[0][0] not in other.text
