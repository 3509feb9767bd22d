"""Consent changes caused by messages (unsubscribe links, bounces): recorded through
ingest like any profile update, so they reach the lake as profile changes."""

from __future__ import annotations

from propel.core import Propel
from propel.ingest.records import IngestItem, ProfileUpdate, key_hash
from propel.ingest.service import ingest_sync


def revoke_consent(propel: Propel, account_id: str, identity: str, channel: str, cause: str,
                   ref: str = "") -> None:
    update = ProfileUpdate(identity=identity, consent={channel: False})
    message_id = f"consent:{cause}:{channel}:{identity}:{ref}"
    ingest_sync(propel.db, account_id,
                [IngestItem(key_hash(account_id, message_id), profile=update)], [], "system")
