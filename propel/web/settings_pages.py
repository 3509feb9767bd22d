"""Dashboard pages: Settings — API keys, channels (with a real test send), dashboard
users, delivery rejections and ingest rejections.

Everyone signed in may read the page; every change needs the admin role. Channel
secrets are write-only: the page says whether one is set, never what it is, and a
blank secret field keeps the stored value.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import RedirectResponse, Response

from propel.accounts import (
    create_api_key,
    inbox_credentials,
    list_api_keys,
    revoke_api_key,
    user_signature,
)
from propel.accounts.users import ROLES, Session, create_user, list_users
from propel.api.auth import propel_of
from propel.campaigns.outbox import delivery_problems
from propel.channels.base import ChannelError
from propel.channels.registry import (
    CHANNELS,
    describe,
    get_config,
    list_configs,
    send_test,
    set_config,
    validate_config,
)
from propel.db.engine import Database
from propel.ingest.service import list_rejections
from propel.web.auth import signed_in
from propel.web.templating import render

router = APIRouter(include_in_schema=False)
RECENT_PROBLEMS = 50
RECENT_REJECTIONS = 50
MAX_KEY_NAME = 200  # api_keys.name
CHANNEL_NAMES = {"email": "Email (SMTP)", "webhook": "Webhook", "push": "Push (FCM)",
                 "sms": "SMS (Twilio)", "inbox": "App inbox"}
# The order the page shows channels in.
CHANNEL_ORDER = ("email", "webhook", "push", "sms", "inbox")
TEST_RECIPIENT_HELP = {
    "email": "An e-mail address.", "sms": "A phone number in E.164, e.g. +15017122661.",
    "push": "A device registration token.", "webhook": "Not needed: the test goes to the URL.",
    "inbox": "The identity whose inbox receives the test (default propel-test)."}
# Setting names whose plain "snake case → words" label would hide an acronym.
LABELS = {"url": "URL", "base_url": "Base URL", "ca_file": "CA file",
          "account_sid": "Account SID", "messaging_service_sid": "Messaging service SID",
          "api_key": "API key SID", "project_id": "Project ID",
          "message_id_domain": "Message-ID domain", "status_callback": "Status callback URL",
          "local_hostname": "EHLO host name", "validate_certs": "Verify TLS certificates",
          "max_retry_after": "Longest Retry-After", "service_account": "Service account (JSON)",
          "host": "SMTP host", "from_address": "From address", "return_path": "Return path"}
NOTICES = {"revoked": "API key {} was revoked.", "saved": "{} settings saved.",
           "added": "Dashboard user {} added."}
SAMPLE_IDENTITY = "user-123"


def _label(name: str) -> str:
    return LABELS.get(name) or name.replace("_", " ").capitalize()


# -- the page ------------------------------------------------------------------------


def _channel_forms(request: Request, account_id: str, values: dict[str, dict[str, Any]],
                   errors: dict[str, dict[str, str]]) -> list[dict[str, Any]]:
    """Per channel: its settings (from the registry's description), what is stored
    (secrets only as set / not set), and any errors of a rejected save."""
    stored = list_configs(propel_of(request).db, account_id)
    forms = []
    for channel in CHANNEL_ORDER:
        saved = stored.get(channel)
        typed = values.get(channel, {})
        fields = []
        for f in describe(channel):
            name = f["name"]
            current = typed.get(name, (saved or {}).get(name)) if not f["secret"] else None
            fields.append({**f, "label": _label(name), "id": f"{channel}-{name}",
                           "value": "" if current is None else current,
                           "is_set": bool(saved and name in saved) if f["secret"] else None,
                           "error": errors.get(channel, {}).get(name)})
        forms.append({"channel": channel, "title": CHANNEL_NAMES[channel], "fields": fields,
                      "configured": saved is not None, "errors": errors.get(channel, {}),
                      "test_help": TEST_RECIPIENT_HELP[channel]})
    return forms


def _page(request: Request, session: Session, status_code: int = 200,
          **context: Any) -> Response:
    """The whole Settings page; ``context`` carries a rejected form's values and errors,
    a just-created token or a test outcome."""
    propel = propel_of(request)
    account_id = session.user.account_id
    inbox = inbox_credentials(propel.db, account_id)
    context.setdefault("notice", _notice(request))
    return render(
        request, "settings/settings.html", status_code=status_code, section="settings",
        title="Settings", is_admin=session.user.can("admin"),
        keys=list_api_keys(propel.db, account_id),
        channels=_channel_forms(request, account_id, context.pop("channel_values", {}),
                                context.pop("channel_errors", {})),
        inbox_client_key=inbox.client_key,
        inbox_secret=inbox.signing_secret if session.user.can("admin") else None,
        sample_identity=SAMPLE_IDENTITY,
        sample_signature=user_signature(inbox.signing_secret, SAMPLE_IDENTITY)
        if session.user.can("admin") else None,
        users=list_users(propel.db, account_id), roles=ROLES,
        problems=delivery_problems(propel.db, account_id, RECENT_PROBLEMS),
        rejections=list_rejections(propel.db, account_id, limit=RECENT_REJECTIONS),
        **context)


def _notice(request: Request) -> str | None:
    """The one-line message after a redirect, from a fixed set of templates."""
    for key, template in NOTICES.items():
        value = request.query_params.get(key)
        if value:
            shown = CHANNEL_NAMES.get(value, value) if key == "saved" else value
            return template.format(shown[:200])
    return None


@router.get("/settings")
def settings_page(request: Request, session: Session = Depends(signed_in())) -> Response:
    return _page(request, session)


# -- API keys ------------------------------------------------------------------------


@router.post("/settings/api-keys")
async def create_key(request: Request, session: Session = Depends(signed_in("admin"))
                     ) -> Response:
    form = await request.form()
    name = str(form.get("name", "")).strip()
    problem = ("Give the key a name, e.g. the app that will use it." if not name else
               f"The name must be at most {MAX_KEY_NAME} characters." if len(name) > MAX_KEY_NAME
               else None)
    if problem:
        return _page(request, session, status_code=422, key_name=name, key_error=problem)
    key_id, token = create_api_key(propel_of(request).db, session.user.account_id, name)
    # Answered directly rather than redirected: the token is stored nowhere but in this
    # one response, so it can be shown once and never put in a URL.
    return _page(request, session, new_key={"id": key_id, "name": name, "token": token})


def _key_of(request: Request, session: Session, key_id: str) -> Any:
    for key in list_api_keys(propel_of(request).db, session.user.account_id):
        if key.id == key_id:
            return key
    raise HTTPException(404, f"No API key {key_id} in this account.")


@router.get("/settings/api-keys/{key_id}/revoke")
def confirm_revoke(request: Request, key_id: str,
                   session: Session = Depends(signed_in("admin"))) -> Response:
    """Revoking cannot be undone, so the button first asks; this page works without
    JavaScript and by keyboard alone."""
    key = _key_of(request, session, key_id)
    if key.revoked_at is not None:
        return RedirectResponse(f"/settings?revoked={quote(key.id)}#api-keys", status_code=303)
    return render(request, "settings/revoke.html", section="settings", title="Revoke API key",
                  key=key)


@router.post("/settings/api-keys/{key_id}/revoke")
def revoke_key(request: Request, key_id: str,
               session: Session = Depends(signed_in("admin"))) -> Response:
    key = _key_of(request, session, key_id)
    revoke_api_key(propel_of(request).db, session.user.account_id, key.id)
    return RedirectResponse(f"/settings?revoked={quote(key.id)}#api-keys", status_code=303)


# -- channels ------------------------------------------------------------------------


def _channel(channel: str) -> str:
    if channel not in CHANNELS:
        raise HTTPException(404, f"No channel {channel}: the channels are "
                                 f"{', '.join(CHANNEL_ORDER)}.")
    return channel


def _submitted(channel: str, form: Any, stored: dict[str, Any]) -> tuple[dict, dict]:
    """(settings to validate and save, non-secret values to show again on error).
    A blank secret keeps the stored one unless its "remove" box is ticked."""
    raw: dict[str, Any] = {}
    shown: dict[str, Any] = {}
    for f in describe(channel):
        name = f["name"]
        value = str(form.get(name, ""))
        if f["secret"]:
            if form.get(f"clear_{name}"):
                continue
            if value.strip():
                raw[name] = value
            elif name in stored:
                raw[name] = stored[name]
            continue
        shown[name] = value
        if value.strip():
            raw[name] = value
    return raw, shown


def _field_of(channel: str, message: str, names: set[str]) -> str | None:
    match = re.match(rf"{channel}\.([a-z_]+)", message)
    return match.group(1) if match and match.group(1) in names else None


def _friendly(channel: str, name: str, message: str, secret: bool) -> str:
    """"email.port must be …" → "Port must be …"; a secret's value is never repeated."""
    text = re.sub(rf"^{channel}\.{name}", _label(name), message)
    return re.sub(r", got .*$", "", text) if secret else text


def channel_errors(channel: str, raw: dict[str, Any]) -> dict[str, str]:
    """Every field the registry refuses, not only the first: a refused optional setting
    is set aside (its default then applies) and the rest checked again. Errors that
    name no field are keyed by ""."""
    fields = {f["name"]: f for f in describe(channel)}
    errors: dict[str, str] = {}
    probe = dict(raw)
    for _ in range(len(fields) + 1):
        try:
            validate_config(channel, probe)
            return errors
        except ChannelError as exc:
            name = _field_of(channel, str(exc), set(fields))
            if name is None or name in errors:
                errors.setdefault("", str(exc))
                return errors
            errors[name] = _friendly(channel, name, str(exc), fields[name]["secret"])
            if fields[name]["required"] or name not in probe:
                return errors
            probe.pop(name)
    return errors


def _stored_for_form(db: Database, account_id: str, channel: str,
                     form: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """(the stored settings, secrets revealed; errors). A secret sealed under another
    secret key cannot be kept, only typed again, so leaving it blank is the error."""
    try:
        return get_config(db, account_id, channel, reveal_secrets=True) or {}, {}
    except ChannelError as exc:
        problem = str(exc)
    stored = get_config(db, account_id, channel) or {}
    secrets = {f["name"] for f in describe(channel) if f["secret"]}
    kept = [n for n in secrets & stored.keys()
            if not str(form.get(n, "")).strip() and not form.get(f"clear_{n}")]
    readable = {k: v for k, v in stored.items() if k not in secrets}
    if not kept:
        return readable, {}
    name = sorted(kept)[0]
    return readable, {name: _friendly(channel, name, problem, secret=True)}


@router.post("/settings/channels/{channel}")
async def save_channel(request: Request, channel: str,
                       session: Session = Depends(signed_in("admin"))) -> Response:
    channel = _channel(channel)
    db = propel_of(request).db
    account_id = session.user.account_id
    form = await request.form()
    stored, errors = _stored_for_form(db, account_id, channel, form)
    raw, shown = _submitted(channel, form, stored)
    errors = errors or channel_errors(channel, raw)
    if not errors:
        try:
            set_config(db, account_id, channel, raw)
        except ChannelError as exc:
            errors = {"": str(exc)}
    if errors:
        return _page(request, session, status_code=422, channel_values={channel: shown},
                     channel_errors={channel: errors}, focus=channel)
    return RedirectResponse(f"/settings?saved={channel}#channel-{channel}", status_code=303)


@router.post("/settings/channels/{channel}/test")
async def test_channel(request: Request, channel: str,
                       session: Session = Depends(signed_in("admin"))) -> Response:
    """Send one real message through the saved settings and show what happened."""
    channel = _channel(channel)
    form = await request.form()
    to = str(form.get("to", "")).strip() or None
    try:
        outcome = await send_test(propel_of(request), session.user.account_id, channel, to)
    except ChannelError as exc:
        result = {"channel": channel, "to": to or "", "delivered": False, "error": str(exc)}
        return _page(request, session, status_code=422, test=result, focus=channel)
    result = {"channel": channel, "to": to or "", "delivered": outcome.delivered,
              "error": outcome.error, "ref": outcome.provider_ref}
    return _page(request, session, test=result, focus=channel)


# -- dashboard users -----------------------------------------------------------------


def _user_error_field(message: str) -> str:
    lowered = message.lower()
    if "password" in lowered:
        return "password"
    if "role" in lowered:
        return "role"
    return "email"


@router.post("/settings/users")
async def add_user(request: Request, session: Session = Depends(signed_in("admin"))
                   ) -> Response:
    form = await request.form()
    email = str(form.get("email", "")).strip()
    role = str(form.get("role", ""))
    password = str(form.get("password", ""))
    try:
        create_user(propel_of(request).db, session.user.account_id, email, password, role)
    except ValueError as exc:
        # the password is never sent back into the page
        return _page(request, session, status_code=422,
                     user_form={"email": email, "role": role},
                     user_errors={_user_error_field(str(exc)): str(exc)})
    return RedirectResponse(f"/settings?added={quote(email.lower())}#dashboard-users",
                            status_code=303)
