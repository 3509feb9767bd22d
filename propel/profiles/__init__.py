"""Profiles: typed system fields plus free properties, upserted; identity merge.

Every change is also written as a profile-change record (kind "profile") beside the
events, so the lake can answer "what was this profile on a past date".
"""

from __future__ import annotations

import re
import uuid
import zoneinfo
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

import orjson
from sqlalchemy import Connection, insert, select, update

from propel.db.engine import Database
from propel.db.meta import upsert_insert, utcnow
from propel.ingest.records import (
    EventRecord,
    Invalid,
    ProfileUpdate,
    check_identity,
    check_properties,
)
from propel.mailbox import is_profile_mailbox
from propel.profiles.tables import identity_alias_history, identity_aliases, profiles

CHANNELS = ("email", "sms", "push", "whatsapp", "inbox", "webhook")
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
PROFILE_CHANGE = "$profile"


@dataclass(frozen=True)
class Profile:
    identity: str
    email: str | None
    phone: str | None
    timezone: str | None
    push_tokens: list[str]
    consent: dict[str, bool]
    properties: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    aliases: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "identity": self.identity,
            "email": self.email,
            "phone": self.phone,
            "timezone": self.timezone,
            "push_tokens": self.push_tokens,
            "consent": self.consent,
            "properties": self.properties,
            "aliases": list(self.aliases),
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


@lru_cache(maxsize=1024)
def _known_timezone(name: str) -> bool:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


def check_email(value: Any, field: str = "email") -> str:
    if not isinstance(value, str) or not is_profile_mailbox(value.strip()):
        raise Invalid(field, "is not an e-mail address (local-part@domain, without spaces, "
                             "angle brackets or stray quotes)")
    return value.strip().lower()


def check_phone(value: Any, field: str = "phone") -> str:
    text = re.sub(r"[\s\-().]", "", str(value)) if isinstance(value, str | int) else ""
    if not _E164.match(text):
        raise Invalid(field, "must be an E.164 number such as +14155550123")
    return text


def check_timezone(value: Any, field: str = "timezone") -> str:
    if not isinstance(value, str) or not _known_timezone(value):
        raise Invalid(field, "must be an IANA time zone such as Europe/Paris")
    return value


def check_push_tokens(value: Any, field: str = "push_tokens") -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(t, str) and 0 < len(t) <= 4096
                                              for t in value):
        raise Invalid(field, "must be a list of token strings")
    if len(value) > 20:
        raise Invalid(field, "holds more than 20 tokens")
    return value


def check_consent(value: Any, field: str = "consent") -> dict[str, bool]:
    if not isinstance(value, dict):
        raise Invalid(field, f"must be an object of channel -> true/false ({', '.join(CHANNELS)})")
    for channel, flag in value.items():
        if channel not in CHANNELS:
            raise Invalid(f"{field}.{channel}", f"unknown channel; one of {', '.join(CHANNELS)}")
        if not isinstance(flag, bool):
            raise Invalid(f"{field}.{channel}", "must be true or false")
    return value


def build_update(identity: Any, fields: dict[str, Any], identity_field: str = "identity"
                 ) -> ProfileUpdate:
    """Validate a profile payload: known system fields are typed, the rest are properties."""
    update_ = ProfileUpdate(identity=check_identity(identity, identity_field))
    rest = dict(fields)
    for name, check in (("email", check_email), ("phone", check_phone),
                        ("timezone", check_timezone)):
        value = rest.pop(name, None)
        if value not in (None, ""):
            setattr(update_, name, check(value))
    if (tokens := rest.pop("push_tokens", None)) is not None:
        update_.push_tokens = check_push_tokens(tokens)
    if (consent := rest.pop("consent", None)) is not None:
        update_.consent = check_consent(consent)
    nested = rest.pop("properties", None)
    if nested is not None:
        rest.update(check_properties(nested))
    update_.properties = check_properties(rest)
    return update_


def apply_update(conn: Connection, account_id: str, upd: ProfileUpdate, now_us: int
                 ) -> EventRecord | None:
    """Upsert inside the caller's transaction; returns the change record, or None if
    nothing changed."""
    now = utcnow()
    conn.execute(
        upsert_insert(conn.dialect.name, profiles)
        .values(account_id=account_id, identity=upd.identity, push_tokens="[]", consent="{}",
                properties="{}", created_at=now, updated_at=now)
        .on_conflict_do_nothing()
    )
    row = conn.execute(
        select(profiles).where(profiles.c.account_id == account_id,
                               profiles.c.identity == upd.identity).with_for_update()
    ).one()
    changes: dict[str, Any] = {}
    values: dict[str, Any] = {}
    for name in ("email", "phone", "timezone"):
        new = getattr(upd, name)
        if new is not None and new != getattr(row, name):
            values[name] = changes[name] = new
    if upd.push_tokens is not None:
        tokens = orjson.loads(row.push_tokens)
        merged = tokens + [t for t in upd.push_tokens if t not in tokens]
        if merged != tokens:
            values["push_tokens"] = orjson.dumps(merged).decode()
            changes["push_tokens"] = merged
    if upd.consent:
        consent = orjson.loads(row.consent)
        if any(consent.get(k) != v for k, v in upd.consent.items()):
            consent.update(upd.consent)
            values["consent"] = orjson.dumps(consent).decode()
            changes["consent"] = upd.consent
    props = orjson.loads(row.properties)
    changed_props = {k: v for k, v in upd.properties.items() if props.get(k, object()) != v}
    if changed_props:
        props.update(changed_props)
        values["properties"] = orjson.dumps(props).decode()
        changes.update(changed_props)
    if not changes:
        return None
    conn.execute(
        update(profiles)
        .where(profiles.c.account_id == account_id, profiles.c.identity == upd.identity)
        .values(updated_at=now, **values)
    )
    return EventRecord(
        message_id=f"p:{uuid.uuid4().hex}", identity=upd.identity, name=PROFILE_CHANGE,
        ts=upd.ts or now_us, properties=orjson.dumps(changes).decode(), kind="profile",
    )


def resolve(conn: Connection, account_id: str, identity: str) -> str:
    found = conn.execute(
        select(identity_aliases.c.identity).where(
            identity_aliases.c.account_id == account_id, identity_aliases.c.alias == identity
        )
    ).scalar()
    return found or identity


def resolve_many(conn: Connection, account_id: str, identities: list[str]) -> dict[str, str]:
    """``resolve`` for many ids at once: alias -> the identity it points to now, for
    those of ``identities`` that are aliases."""
    return _alias_rows(conn, account_id, identity_aliases.c.alias, identities)


def aliases_of_many(conn: Connection, account_id: str, identities: list[str]
                    ) -> dict[str, str]:
    """``aliases_of`` for many identities at once: alias -> identity it points to."""
    return _alias_rows(conn, account_id, identity_aliases.c.identity, identities)


def _alias_rows(conn: Connection, account_id: str, column: Any, values: list[str],
                chunk: int = 500) -> dict[str, str]:
    found: dict[str, str] = {}
    for start in range(0, len(values), chunk):
        found.update(conn.execute(
            select(identity_aliases.c.alias, identity_aliases.c.identity).where(
                identity_aliases.c.account_id == account_id,
                column.in_(values[start : start + chunk]))).all())
    return found


def merge_identities(conn: Connection, account_id: str, alias: str, identity: str, now_us: int
                     ) -> EventRecord | None:
    """``alias`` (an anonymous or previous id) now means ``identity``: record the alias,
    re-point older aliases, and fold the alias's profile into the identity's."""
    identity = resolve(conn, account_id, identity)
    if alias == identity:
        return None
    now = utcnow()
    repointed = conn.execute(
        select(identity_aliases.c.alias).where(identity_aliases.c.account_id == account_id,
                                               identity_aliases.c.identity == alias)
    ).scalars().all()
    if repointed:
        conn.execute(
            update(identity_aliases)
            .where(identity_aliases.c.account_id == account_id,
                   identity_aliases.c.identity == alias)
            .values(identity=identity)
        )
    exists = conn.execute(
        select(identity_aliases.c.identity).where(
            identity_aliases.c.account_id == account_id, identity_aliases.c.alias == alias)
    ).first()
    if exists is None:
        conn.execute(insert(identity_aliases).values(
            account_id=account_id, alias=alias, identity=identity, created_at=now))
    elif exists.identity != identity:
        conn.execute(update(identity_aliases).where(
            identity_aliases.c.account_id == account_id, identity_aliases.c.alias == alias
        ).values(identity=identity))
    changed = [*repointed, *([alias] if exists is None or exists.identity != identity else [])]
    if changed:
        conn.execute(insert(identity_alias_history), [
            {"account_id": account_id, "alias": a, "identity": identity, "created_at": now}
            for a in changed])
    old = conn.execute(
        select(profiles).where(profiles.c.account_id == account_id, profiles.c.identity == alias)
    ).first()
    if old is None:
        return None
    upd = ProfileUpdate(
        identity=identity, email=old.email, phone=old.phone, timezone=old.timezone,
        push_tokens=orjson.loads(old.push_tokens), consent=orjson.loads(old.consent) or None,
        properties=orjson.loads(old.properties),
    )
    # The identified profile wins where both have a value: it is the newer truth.
    current = conn.execute(
        select(profiles).where(profiles.c.account_id == account_id,
                               profiles.c.identity == identity)
    ).first()
    if current is not None:
        for name in ("email", "phone", "timezone"):
            if getattr(current, name):
                setattr(upd, name, None)
        mine = orjson.loads(current.properties)
        upd.properties = {k: v for k, v in upd.properties.items() if k not in mine}
    change = apply_update(conn, account_id, upd, now_us)
    conn.execute(profiles.delete().where(profiles.c.account_id == account_id,
                                         profiles.c.identity == alias))
    return change


def _row_to_profile(row: Any, aliases: tuple[str, ...]) -> Profile:
    return Profile(
        identity=row.identity, email=row.email, phone=row.phone, timezone=row.timezone,
        push_tokens=orjson.loads(row.push_tokens), consent=orjson.loads(row.consent),
        properties=orjson.loads(row.properties), created_at=row.created_at,
        updated_at=row.updated_at, aliases=aliases,
    )


def get_profile(db: Database, account_id: str, identity: str) -> Profile | None:
    with db.read() as conn:
        identity = resolve(conn, account_id, identity)
        row = conn.execute(
            select(profiles).where(profiles.c.account_id == account_id,
                                   profiles.c.identity == identity)
        ).first()
        if row is None:
            return None
        return _row_to_profile(row, aliases_of(conn, account_id, identity))


def get_profiles(db: Database, account_id: str, identities: list[str]
                 ) -> dict[str, Profile]:
    """Profiles (with aliases) of already-resolved identities, by identity; a chunk
    per query rather than one look-up per identity. Identities without a profile are
    left out."""
    found: dict[str, Profile] = {}
    with db.read() as conn:
        owners: dict[str, list[str]] = {}
        for alias, owner in sorted(aliases_of_many(conn, account_id, identities).items()):
            owners.setdefault(owner, []).append(alias)
        for start in range(0, len(identities), 500):
            for row in conn.execute(select(profiles).where(
                    profiles.c.account_id == account_id,
                    profiles.c.identity.in_(identities[start : start + 500]))):
                found[row.identity] = _row_to_profile(row, tuple(owners.get(row.identity, ())))
    return found


def find_by_email(db: Database, account_id: str, email: str) -> Profile | None:
    with db.read() as conn:
        row = conn.execute(
            select(profiles).where(profiles.c.account_id == account_id,
                                   profiles.c.email == email.strip().lower()).limit(1)
        ).first()
        if row is None:
            return None
        return _row_to_profile(row, aliases_of(conn, account_id, row.identity))


def aliases_of(conn: Connection, account_id: str, identity: str) -> tuple[str, ...]:
    rows = conn.execute(
        select(identity_aliases.c.alias).where(
            identity_aliases.c.account_id == account_id, identity_aliases.c.identity == identity
        ).order_by(identity_aliases.c.alias)
    ).scalars()
    return tuple(rows)


def list_profiles(db: Database, account_id: str, *, after: str = "", limit: int = 100
                  ) -> list[Profile]:
    with db.read() as conn:
        rows = conn.execute(
            select(profiles).where(profiles.c.account_id == account_id,
                                   profiles.c.identity > after)
            .order_by(profiles.c.identity).limit(limit)
        ).all()
    return [_row_to_profile(row, ()) for row in rows]
