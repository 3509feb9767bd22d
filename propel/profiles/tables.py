from sqlalchemy import Column, Index, String, Table, Text

from propel.db.meta import BigId, UTCDateTime, metadata

profiles = Table(
    "profiles",
    metadata,
    Column("account_id", String(32), primary_key=True),
    Column("identity", String(256), primary_key=True),
    Column("email", String(320)),
    Column("phone", String(20)),
    Column("timezone", String(64)),
    Column("push_tokens", Text, nullable=False, default="[]"),
    Column("consent", Text, nullable=False, default="{}"),
    Column("properties", Text, nullable=False, default="{}"),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Index("ix_profiles_account_email", "account_id", "email"),
)

# An anonymous id (or a previous id) that now belongs to another identity.
identity_aliases = Table(
    "identity_aliases",
    metadata,
    Column("account_id", String(32), primary_key=True),
    Column("alias", String(256), primary_key=True),
    Column("identity", String(256), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Index("ix_identity_aliases_identity", "account_id", "identity"),
)

# Every (re)pointing of an alias, never updated: identity_aliases holds only where each
# alias points now, and a merge re-points older aliases in place; readers that need the
# aliases as they were at a past date (features, training labels) read this.
identity_alias_history = Table(
    "identity_alias_history",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("account_id", String(32), nullable=False),
    Column("alias", String(256), nullable=False),
    Column("identity", String(256), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Index("ix_identity_alias_history_account", "account_id", "alias"),
)
