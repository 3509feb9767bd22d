"""Channel settings per account, and building a channel from them.

Settings are validated *when they are saved*, field by field, with errors that name
the field (``email.port must be at most 65535``), so a mistake shows up in the Settings
form or the CLI rather than as failed messages hours later. Each channel declares its
settings as a dataclass (types, defaults, limits and help in field metadata);
:func:`describe` turns that into a form description.

Secrets (passwords, tokens, keys) are masked as ``MASK`` when read back unless asked
otherwise, and a form that sends ``MASK`` back keeps the stored secret, so editing the
port does not mean retyping the password. In ``channel_configs`` each secret is sealed
(:mod:`propel.channels.sealing`) under a key derived from the application's secret key,
so a dump or backup of the operational database alone does not reveal it; the other
settings stay readable JSON. A secret stored in plain text by an earlier version is
read as it is and sealed by the next save. A secret sealed under another secret key
cannot be opened: using it raises ChannelError asking for it to be entered again.
"""

from __future__ import annotations

import dataclasses
import types
import typing
import uuid
from typing import Any

import orjson
from sqlalchemy import Connection, delete, select

from propel.campaigns.tables import channel_configs
from propel.channels.base import Channel, ChannelError, Outbound, Outcome
from propel.channels.email import EmailChannel, EmailConfig
from propel.channels.inbox import InboxChannel, InboxConfig
from propel.channels.push import PushChannel, PushConfig
from propel.channels.sealing import Sealer, Unreadable
from propel.channels.sms import SmsChannel, SmsConfig
from propel.channels.webhook import WebhookChannel, WebhookConfig
from propel.core import Propel
from propel.db.engine import Database
from propel.db.meta import upsert_insert, utcnow

CHANNELS = ("email", "webhook", "inbox", "push", "sms")
MASK = "••••"
CONFIG_TYPES: dict[str, type] = {
    "email": EmailConfig,
    "webhook": WebhookConfig,
    "inbox": InboxConfig,
    "push": PushConfig,
    "sms": SmsConfig,
}
# Channels that work without any settings.
_NEEDS_NO_CONFIG = {"inbox"}
# What a test message is sent to, per channel: the error if ``to`` is missing.
_TEST_NEEDS_TO = {"email": "an e-mail address", "sms": "a phone number in E.164 (+15017122661)",
                  "push": "a device registration token"}
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _check_channel(channel: str) -> type:
    if channel not in CONFIG_TYPES:
        raise ChannelError(f"unknown channel {channel!r}: expected one of {', '.join(CHANNELS)}")
    return CONFIG_TYPES[channel]


def secret_fields(channel: str) -> tuple[str, ...]:
    return _check_channel(channel).SECRETS  # type: ignore[attr-defined]


# -- validation ---------------------------------------------------------------------


def _base_type(hint: Any) -> tuple[type, bool]:
    """(the type, whether None is allowed) of ``X`` or ``X | None``."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _base_type(args[0])[0], True
    origin = typing.get_origin(hint)
    return (origin or hint), False


def _coerce(where: str, kind: type, value: Any) -> Any:
    """Accept what forms and the CLI send (all strings) as well as real JSON types."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ChannelError(f"{where} must be true or false, got {value!r}")
    if kind in (int, float):
        if isinstance(value, bool):
            raise ChannelError(f"{where} must be a number, got {value!r}")
        try:
            number = float(value) if isinstance(value, str | int | float) else None
        except ValueError:
            number = None
        if number is None or number != number:  # None or NaN
            raise ChannelError(f"{where} must be a number, got {value!r}")
        if kind is int:
            if not number.is_integer():
                raise ChannelError(f"{where} must be a whole number, got {value!r}")
            return int(number)
        return number
    if kind is dict:
        if isinstance(value, str):
            try:
                value = orjson.loads(value)
            except orjson.JSONDecodeError as exc:
                raise ChannelError(f"{where} must be a JSON object: {exc}") from exc
        if not isinstance(value, dict):
            raise ChannelError(f"{where} must be a JSON object")
        return value
    if not isinstance(value, str):
        raise ChannelError(f"{where} must be text, got {value!r}")
    return value


def _limits(where: str, meta: typing.Mapping[str, Any], value: Any) -> None:
    if "choices" in meta and value not in meta["choices"]:
        raise ChannelError(f"{where} must be one of {', '.join(meta['choices'])}, got {value!r}")
    if "min" in meta and value < meta["min"]:
        raise ChannelError(f"{where} must be at least {meta['min']}, got {value!r}")
    if "max" in meta and value > meta["max"]:
        raise ChannelError(f"{where} must be at most {meta['max']}, got {value!r}")
    if "min_length" in meta and len(value) < meta["min_length"]:
        raise ChannelError(f"{where} must be at least {meta['min_length']} characters")


def _parse(channel: str, raw: Any) -> tuple[Any, dict[str, Any]]:
    """(config object, the normalised settings to store) or ChannelError."""
    cls = _check_channel(channel)
    if not isinstance(raw, dict):
        raise ChannelError(f"{channel} settings must be a JSON object")
    known = {f.name: f for f in dataclasses.fields(cls)}
    for name in raw:
        if name not in known:
            expected = ", ".join(known) or "none"
            raise ChannelError(f"{channel}.{name} is not a setting (settings: {expected})")
    hints = typing.get_type_hints(cls)
    secrets = cls.SECRETS  # type: ignore[attr-defined]
    values: dict[str, Any] = {}
    for name, f in known.items():
        where = f"{channel}.{name}"
        value = raw.get(name)
        if isinstance(value, str) and name not in secrets:
            value = value.strip()
        if value is None or value == "":
            required = (f.default is dataclasses.MISSING
                        and f.default_factory is dataclasses.MISSING)
            if required:
                raise ChannelError(f"{where} is required")
            continue
        kind, _optional = _base_type(hints[name])
        value = _coerce(where, kind, value)
        _limits(where, f.metadata, value)
        values[name] = value
    return cls(**values), values


def validate_config(channel: str, config: dict[str, Any]) -> Any:
    """The channel's config object for these settings, or ChannelError naming the field."""
    return _parse(channel, config)[0]


def describe(channel: str) -> list[dict[str, Any]]:
    """The settings of a channel, for building a form or CLI help."""
    cls = _check_channel(channel)
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        kind, optional = _base_type(hints[f.name])
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        out.append({
            "name": f.name,
            "type": {bool: "boolean", int: "integer", float: "number", dict: "object"}.get(
                kind, "string"),
            "required": required,
            "default": None if required else f.default,
            "secret": f.name in cls.SECRETS,  # type: ignore[attr-defined]
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in f.metadata.items()},
        })
    return out


# -- storage ------------------------------------------------------------------------


def _load(db: Database, account_id: str, channel: str) -> dict[str, Any] | None:
    """The stored settings as they are in the database: secrets still sealed."""
    with db.read() as conn:
        text = conn.execute(select(channel_configs.c.config).where(
            channel_configs.c.account_id == account_id,
            channel_configs.c.channel == channel)).scalar()
    return None if text is None else orjson.loads(text)


def _sealer(db: Database) -> Sealer:
    if db.sealer is None:
        raise RuntimeError("this Database has no sealer for channel secrets: open it "
                           "through Propel, which sets one from the secret key")
    return db.sealer


def _sealed(db: Database, channel: str, stored: dict[str, Any]) -> dict[str, Any]:
    secrets = secret_fields(channel)
    return {k: (_sealer(db).seal(v) if k in secrets else v) for k, v in stored.items()}


def _open(db: Database, channel: str, name: str, value: Any) -> Any:
    try:
        return _sealer(db).open(value)
    except Unreadable:
        # Short enough to survive in a message's recorded reason (180 characters).
        raise ChannelError(
            f"{channel}.{name} cannot be read: PROPEL_SECRET_KEY (or the secret_key file "
            "in the data dir) differs from the key that saved it; enter it again "
            "(Settings, propel channels set)") from None


def _opened(db: Database, channel: str, stored: dict[str, Any]) -> dict[str, Any]:
    """``stored`` with its secrets in plain text (ChannelError if one cannot be)."""
    secrets = secret_fields(channel)
    return {k: (_open(db, channel, k, v) if k in secrets else v) for k, v in stored.items()}


def _masked(channel: str, stored: dict[str, Any]) -> dict[str, Any]:
    secrets = secret_fields(channel)
    return {k: (MASK if k in secrets else v) for k, v in stored.items()}


def set_config(db: Database, account_id: str, channel: str,
               config: dict[str, Any]) -> dict[str, Any]:
    """Validate and store an account's settings for a channel (replacing earlier ones);
    returns them as ``get_config`` would. A secret sent back as ``MASK`` keeps the
    stored value."""
    _check_channel(channel)
    if not isinstance(config, dict):
        raise ChannelError(f"{channel} settings must be a JSON object")
    raw = dict(config)
    masked = [k for k in secret_fields(channel) if raw.get(k) == MASK]
    if masked:
        existing = _load(db, account_id, channel) or {}
        for name in masked:
            if name not in existing:
                raise ChannelError(f"{channel}.{name} is required (no stored value to keep)")
            raw[name] = _open(db, channel, name, existing[name])
    _cfg, stored = _parse(channel, raw)
    text = orjson.dumps(_sealed(db, channel, stored)).decode()

    def _upsert(conn: Connection) -> None:
        stmt = upsert_insert(conn.dialect.name, channel_configs).values(
            account_id=account_id, channel=channel, config=text, updated_at=utcnow())
        conn.execute(stmt.on_conflict_do_update(
            index_elements=["account_id", "channel"],
            set_={"config": stmt.excluded.config, "updated_at": stmt.excluded.updated_at}))

    db.write(_upsert)
    return _masked(channel, stored)


def get_config(db: Database, account_id: str, channel: str,
               reveal_secrets: bool = False) -> dict[str, Any] | None:
    """The stored settings (secrets masked unless ``reveal_secrets``), or None if unset.
    Revealing raises ChannelError if a secret was sealed under another secret key."""
    _check_channel(channel)
    stored = _load(db, account_id, channel)
    if stored is None:
        return None
    return _opened(db, channel, stored) if reveal_secrets else _masked(channel, stored)


def delete_config(db: Database, account_id: str, channel: str) -> bool:
    """Forget a channel's settings; True if there were any."""
    _check_channel(channel)

    def _delete(conn: Connection) -> int:
        return conn.execute(delete(channel_configs).where(
            channel_configs.c.account_id == account_id,
            channel_configs.c.channel == channel)).rowcount

    return bool(db.write(_delete))


def list_configs(db: Database, account_id: str) -> dict[str, dict[str, Any] | None]:
    """Every channel with its masked settings (None where unset; inbox needs none)."""
    with db.read() as conn:
        rows = conn.execute(select(channel_configs.c.channel, channel_configs.c.config).where(
            channel_configs.c.account_id == account_id)).all()
    stored = {r.channel: orjson.loads(r.config) for r in rows if r.channel in CONFIG_TYPES}
    out: dict[str, dict[str, Any] | None] = {}
    for channel in CHANNELS:
        if channel in stored:
            out[channel] = _masked(channel, stored[channel])
        else:
            out[channel] = {} if channel in _NEEDS_NO_CONFIG else None
    return out


# -- building -----------------------------------------------------------------------


def build_channel(propel: Propel, account_id: str, channel: str) -> Channel:
    """The account's channel, ready to send; ChannelError if it is not (validly) set up.
    The caller owns it and must ``await channel.aclose()``."""
    _check_channel(channel)
    if channel == "inbox":
        return InboxChannel(propel)
    stored = _load(propel.db, account_id, channel)
    if stored is None:
        raise ChannelError(
            f"{channel} is not configured: set it in Settings or with propel channels set")
    opened = _opened(propel.db, channel, stored)
    try:
        config = validate_config(channel, opened)
    except ChannelError as exc:  # stored by an older version with other rules
        raise ChannelError(f"{channel} settings are no longer valid: {exc}") from exc
    factories: dict[str, Any] = {"email": EmailChannel, "webhook": WebhookChannel,
                                 "push": PushChannel, "sms": SmsChannel}
    return factories[channel](config)


def sample_message(account_id: str, channel: str, to: str | None) -> Outbound:
    """The message ``send_test`` sends: recognisable as a test in every channel."""
    text = f"This is a test message from Propel. If you can read it, {channel} works."
    return Outbound(
        key=f"test-{uuid.uuid4().hex}", account_id=account_id, campaign_id="",
        identity=to if channel == "inbox" and to else "propel-test", to=to,
        subject="Propel test message", text=text, html=f"<p>{text}</p>",
        title="Propel test message", body=text, data={"propel_test": "1"})


async def send_test(propel: Propel, account_id: str, channel: str, to: str | None) -> Outcome:
    """Send one test message through the account's channel and answer its outcome, so
    a Settings page can prove the settings work (or show the provider's error)."""
    _check_channel(channel)
    if channel in _TEST_NEEDS_TO and not to:
        raise ChannelError(f"a {channel} test needs 'to': {_TEST_NEEDS_TO[channel]}")
    ch = build_channel(propel, account_id, channel)
    try:
        [outcome] = await ch.send([sample_message(account_id, channel, to)])
    finally:
        await ch.aclose()
    return outcome
