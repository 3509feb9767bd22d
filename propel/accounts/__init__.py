"""Accounts (tenants) and their credentials.

Each credential works in one place only: API keys for ``/api/v1``, the write key for
the Segment routes, account id + passcode for the CleverTap routes. Secrets are random
and high-entropy, so a SHA-256 digest is a safe way to store them (passwords, which
people choose, use argon2 instead).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, insert, select, update

from propel.accounts.tables import accounts, api_keys
from propel.db.engine import Database
from propel.db.meta import utcnow

_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"


@dataclass(frozen=True)
class AccountCredentials:
    account_id: str
    passcode: str
    write_key: str


@dataclass(frozen=True)
class Account:
    id: str
    name: str
    created_at: datetime


@dataclass(frozen=True)
class ApiKey:
    id: str
    account_id: str
    name: str
    created_at: datetime
    revoked_at: datetime | None


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _new_account_id() -> str:
    chars = "".join(secrets.choice(_ALPHABET) for _ in range(10))
    return f"{chars[:3]}-{chars[3:6]}-{chars[6:]}"


def create_account(db: Database, name: str) -> AccountCredentials:
    name = name.strip()
    if not name or len(name) > 200:
        raise ValueError("account name must be 1 to 200 characters")
    creds = AccountCredentials(
        account_id=_new_account_id(),
        passcode=secrets.token_urlsafe(18),
        write_key=secrets.token_urlsafe(24),
    )

    def _insert(conn: Connection) -> None:
        conn.execute(
            insert(accounts).values(
                id=creds.account_id,
                name=name,
                passcode_hash=digest(creds.passcode),
                write_key_hash=digest(creds.write_key),
                created_at=utcnow(),
            )
        )

    db.write(_insert)
    return creds


def rotate_write_key(db: Database, account_id: str) -> str:
    """A new Segment write key for the account; the old one stops working (servers
    that remember keys drop it within ``propel.api.auth.WRITE_KEY_TTL_SECONDS``)."""
    return _rotate(db, account_id, "write_key_hash", secrets.token_urlsafe(24))


def rotate_passcode(db: Database, account_id: str) -> str:
    """A new CleverTap passcode for the account; the old one stops working at once."""
    return _rotate(db, account_id, "passcode_hash", secrets.token_urlsafe(18))


def _rotate(db: Database, account_id: str, column: str, secret: str) -> str:
    changed = db.write(lambda conn: conn.execute(
        update(accounts).where(accounts.c.id == account_id).values({column: digest(secret)})
    ).rowcount)
    if not changed:
        raise LookupError(f"no account {account_id!r}")
    return secret


def get_account(db: Database, account_id: str) -> Account | None:
    with db.read() as conn:
        row = conn.execute(
            select(accounts.c.id, accounts.c.name, accounts.c.created_at).where(
                accounts.c.id == account_id
            )
        ).first()
    return Account(*row) if row else None


def list_accounts(db: Database) -> list[Account]:
    with db.read() as conn:
        rows = conn.execute(
            select(accounts.c.id, accounts.c.name, accounts.c.created_at).order_by(
                accounts.c.created_at
            )
        ).all()
    return [Account(*row) for row in rows]


def create_api_key(db: Database, account_id: str, name: str = "default") -> tuple[str, str]:
    """Returns (key id, token). The token is shown once; only its digest is kept."""
    if get_account(db, account_id) is None:
        raise LookupError(f"no account {account_id!r}")
    key_id = "key_" + secrets.token_hex(6)
    token = f"pk_{key_id[4:]}_{secrets.token_urlsafe(24)}"

    def _insert(conn: Connection) -> None:
        conn.execute(
            insert(api_keys).values(
                id=key_id,
                account_id=account_id,
                name=name,
                secret_hash=digest(token),
                created_at=utcnow(),
            )
        )

    db.write(_insert)
    return key_id, token


def revoke_api_key(db: Database, account_id: str, key_id: str) -> bool:
    def _revoke(conn: Connection) -> bool:
        result = conn.execute(
            update(api_keys)
            .where(
                api_keys.c.id == key_id,
                api_keys.c.account_id == account_id,
                api_keys.c.revoked_at.is_(None),
            )
            .values(revoked_at=utcnow())
        )
        return result.rowcount == 1

    return db.write(_revoke)


def list_api_keys(db: Database, account_id: str) -> list[ApiKey]:
    cols = [getattr(api_keys.c, f) for f in ApiKey.__dataclass_fields__]
    with db.read() as conn:
        rows = conn.execute(
            select(*cols).where(api_keys.c.account_id == account_id).order_by(api_keys.c.created_at)
        ).all()
    return [ApiKey(*row) for row in rows]


def account_for_api_key(db: Database, token: str) -> str | None:
    parts = token.split("_")
    if len(parts) < 3 or parts[0] != "pk":
        return None
    key_id = "key_" + parts[1]
    with db.read() as conn:
        row = conn.execute(
            select(api_keys.c.account_id, api_keys.c.secret_hash, api_keys.c.revoked_at).where(
                api_keys.c.id == key_id
            )
        ).first()
    if row is None or row.revoked_at is not None:
        return None
    return row.account_id if hmac.compare_digest(row.secret_hash, digest(token)) else None


def account_for_write_key(db: Database, write_key: str) -> str | None:
    with db.read() as conn:
        return conn.execute(
            select(accounts.c.id).where(accounts.c.write_key_hash == digest(write_key))
        ).scalar()


def check_passcode(db: Database, account_id: str, passcode: str) -> bool:
    with db.read() as conn:
        stored = conn.execute(
            select(accounts.c.passcode_hash).where(accounts.c.id == account_id)
        ).scalar()
    return stored is not None and hmac.compare_digest(stored, digest(passcode))


@dataclass(frozen=True)
class InboxCredentials:
    client_key: str  # public: ships inside the app
    signing_secret: str  # private: the app's server signs identities with it


def inbox_credentials(db: Database, account_id: str) -> InboxCredentials:
    """The account's inbox keys, created on first use."""

    def _ensure(conn: Connection) -> InboxCredentials:
        row = conn.execute(select(accounts.c.client_key, accounts.c.inbox_secret).where(
            accounts.c.id == account_id)).first()
        if row is None:
            raise LookupError(f"no account {account_id!r}")
        if row.client_key:
            return InboxCredentials(row.client_key, row.inbox_secret)
        creds = InboxCredentials("ck_" + secrets.token_urlsafe(18), secrets.token_urlsafe(32))
        conn.execute(update(accounts).where(accounts.c.id == account_id).values(
            client_key=creds.client_key, inbox_secret=creds.signing_secret))
        return creds

    return db.write(_ensure)


def account_for_client_key(db: Database, client_key: str) -> tuple[str, str] | None:
    """(account id, inbox signing secret) for a public client key."""
    with db.read() as conn:
        row = conn.execute(select(accounts.c.id, accounts.c.inbox_secret).where(
            accounts.c.client_key == client_key)).first()
    return (row.id, row.inbox_secret) if row else None


def user_signature(signing_secret: str, identity: str) -> str:
    """What the app's server computes for a user: hex HMAC-SHA256 of the identity."""
    return hmac.new(signing_secret.encode(), identity.encode(), hashlib.sha256).hexdigest()
