"""Dashboard users: argon2 passwords, roles, sessions and sign-in throttling.

Roles are ordered: a viewer reads, a marketer also builds and publishes engagements,
an admin also manages keys, channels and users.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Connection, delete, func, insert, select, update

from propel.accounts import digest, get_account
from propel.accounts.tables import dashboard_sessions, dashboard_users, login_failures
from propel.db.engine import Database
from propel.db.meta import utcnow

ROLES = ("viewer", "marketer", "admin")
SESSION_DAYS = 7
MAX_FAILURES = 5  # within FAILURE_WINDOW, then the e-mail / address is locked
FAILURE_WINDOW = timedelta(minutes=15)
LOCKOUT = timedelta(minutes=15)
MIN_PASSWORD = 10
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")
_hasher = PasswordHasher()
# Verified against when the e-mail is unknown, so timing does not reveal which exist.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


class SignInError(Exception):
    """Wrong credentials or throttled; the message is safe to show."""


@dataclass(frozen=True)
class DashboardUser:
    id: str
    account_id: str
    email: str
    role: str
    created_at: datetime

    def can(self, role: str) -> bool:
        """Whether this user holds ``role`` or a stronger one."""
        return ROLES.index(self.role) >= ROLES.index(role)


@dataclass(frozen=True)
class Session:
    token: str  # goes into the cookie; only its digest is stored
    csrf_token: str
    user: DashboardUser


def _user_columns() -> list:
    return [getattr(dashboard_users.c, f) for f in DashboardUser.__dataclass_fields__]


def create_user(db: Database, account_id: str, email: str, password: str,
                role: str = "marketer") -> DashboardUser:
    email = email.strip().lower()
    if not _EMAIL.match(email) or len(email) > 254:
        raise ValueError(f"e-mail {email!r} is not a valid address")
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}; got {role!r}")
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"password must be at least {MIN_PASSWORD} characters")
    if get_account(db, account_id) is None:
        raise LookupError(f"no account {account_id!r}")
    user = DashboardUser("usr_" + secrets.token_hex(8), account_id, email, role, utcnow())
    password_hash = _hasher.hash(password)

    def _insert(conn: Connection) -> None:
        taken = conn.execute(select(dashboard_users.c.id).where(
            dashboard_users.c.email == email)).first()
        if taken:
            raise ValueError(f"a dashboard user {email!r} exists already")
        conn.execute(insert(dashboard_users).values(
            password_hash=password_hash, **user.__dict__))

    db.write(_insert)
    return user


def set_password(db: Database, email: str, password: str) -> None:
    """A new password; the user's open sessions end."""
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"password must be at least {MIN_PASSWORD} characters")
    email = email.strip().lower()
    password_hash = _hasher.hash(password)

    def _update(conn: Connection) -> None:
        user_id = conn.execute(select(dashboard_users.c.id).where(
            dashboard_users.c.email == email)).scalar()
        if user_id is None:
            raise LookupError(f"no dashboard user {email!r}")
        conn.execute(update(dashboard_users).where(dashboard_users.c.id == user_id).values(
            password_hash=password_hash))
        conn.execute(delete(dashboard_sessions).where(dashboard_sessions.c.user_id == user_id))

    db.write(_update)


def list_users(db: Database, account_id: str) -> list[DashboardUser]:
    with db.read() as conn:
        rows = conn.execute(select(*_user_columns()).where(
            dashboard_users.c.account_id == account_id,
            dashboard_users.c.disabled_at.is_(None)).order_by(dashboard_users.c.email)).all()
    return [DashboardUser(*row) for row in rows]


def count_users(db: Database) -> int:
    with db.read() as conn:
        return conn.execute(select(func.count()).select_from(dashboard_users)).scalar_one()


def sign_in(db: Database, email: str, password: str, client: str) -> Session:
    """A new session for valid credentials; raises SignInError otherwise.

    Failures count per e-mail and per client address, so neither guessing one
    password across many e-mails nor many passwords for one e-mail gets far.
    """
    email = email.strip().lower()
    keys = [f"email:{email}", f"client:{client}"]
    now = utcnow()
    if _locked(db, keys, now):
        raise SignInError("too many failed sign-ins; try again in 15 minutes")
    with db.read() as conn:
        row = conn.execute(select(dashboard_users.c.password_hash, *_user_columns()).where(
            dashboard_users.c.email == email,
            dashboard_users.c.disabled_at.is_(None))).first()
    if not _verify(row.password_hash if row else _DUMMY_HASH, password) or row is None:
        db.write(lambda conn: _record_failure(conn, keys, now))
        raise SignInError("e-mail or password is not correct")
    user = DashboardUser(*row[1:])
    session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), user)

    def _start(conn: Connection) -> None:
        conn.execute(delete(login_failures).where(login_failures.c.key == keys[0]))
        conn.execute(delete(dashboard_sessions).where(dashboard_sessions.c.expires_at < now))
        conn.execute(insert(dashboard_sessions).values(
            token_hash=digest(session.token), user_id=user.id, csrf_token=session.csrf_token,
            created_at=now, expires_at=now + timedelta(days=SESSION_DAYS)))

    db.write(_start)
    return session


def session_for(db: Database, token: str) -> Session | None:
    if not token:
        return None
    with db.read() as conn:
        row = conn.execute(
            select(dashboard_sessions.c.csrf_token, *_user_columns())
            .join(dashboard_users, dashboard_users.c.id == dashboard_sessions.c.user_id)
            .where(dashboard_sessions.c.token_hash == digest(token),
                   dashboard_sessions.c.expires_at > utcnow(),
                   dashboard_users.c.disabled_at.is_(None))).first()
    return Session(token, row.csrf_token, DashboardUser(*row[1:])) if row else None


def sign_out(db: Database, token: str) -> None:
    db.write(lambda conn: conn.execute(delete(dashboard_sessions).where(
        dashboard_sessions.c.token_hash == digest(token))))


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def _locked(db: Database, keys: list[str], now: datetime) -> bool:
    with db.read() as conn:
        found = conn.execute(select(login_failures.c.key).where(
            login_failures.c.key.in_(keys), login_failures.c.locked_until > now)).first()
    return found is not None


def _record_failure(conn: Connection, keys: list[str], now: datetime) -> None:
    for key in keys:
        row = conn.execute(select(login_failures).where(login_failures.c.key == key)).first()
        if row is None or row.first_failed_at < now - FAILURE_WINDOW:
            conn.execute(delete(login_failures).where(login_failures.c.key == key))
            conn.execute(insert(login_failures).values(key=key, failures=1,
                                                       first_failed_at=now))
            continue
        failures = row.failures + 1
        conn.execute(update(login_failures).where(login_failures.c.key == key).values(
            failures=failures, locked_until=now + LOCKOUT if failures >= MAX_FAILURES else None))
