from sqlalchemy import Column, ForeignKey, Integer, String, Table

from propel.db.meta import UTCDateTime, metadata

accounts = Table(
    "accounts",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("passcode_hash", String(64), nullable=False),
    Column("write_key_hash", String(64), nullable=False, unique=True),
    Column("created_at", UTCDateTime(), nullable=False),
    # App inbox: the public client key ships in the app; the signing secret stays on the
    # app's server, which signs each user's identity (HMAC-SHA256) for the app to send.
    Column("client_key", String(64), unique=True),
    Column("inbox_secret", String(64)),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("account_id", String(32), ForeignKey("accounts.id"), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("secret_hash", String(64), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("revoked_at", UTCDateTime()),
)

# Dashboard sign-in. A dashboard user belongs to one account and has one role.
dashboard_users = Table(
    "dashboard_users",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("account_id", String(32), ForeignKey("accounts.id"), nullable=False, index=True),
    Column("email", String(254), nullable=False, unique=True),
    Column("password_hash", String(200), nullable=False),
    Column("role", String(16), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("disabled_at", UTCDateTime()),
)

# The cookie carries a random token; only its digest is stored, so a database leak
# yields no usable sessions.
dashboard_sessions = Table(
    "dashboard_sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("user_id", String(32), ForeignKey("dashboard_users.id"), nullable=False, index=True),
    Column("csrf_token", String(64), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
)

# Failed sign-ins per e-mail and per client address, for throttling.
login_failures = Table(
    "login_failures",
    metadata,
    Column("key", String(300), primary_key=True),
    Column("failures", Integer(), nullable=False),
    Column("first_failed_at", UTCDateTime(), nullable=False),
    Column("locked_until", UTCDateTime()),
)
