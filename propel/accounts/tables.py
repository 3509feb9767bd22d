from sqlalchemy import Column, ForeignKey, String, Table

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
