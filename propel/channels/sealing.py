"""Channel secrets sealed at rest, so a copy of the operational database (a PostgreSQL
dump, a backup of the SQLite file) does not reveal them.

A sealed value is ``sealed:v1:`` + a Fernet token (AES-128-CBC with a random IV, then
HMAC-SHA256) of the value's JSON. The Fernet key is derived by HKDF-SHA256 from the
application's secret key (``PROPEL_SECRET_KEY``, or the ``secret_key`` file in the data
dir) with a label naming this purpose, so the secret key itself is never used as a
cipher key and other uses of it (signed tokens) yield unrelated keys. Whoever holds
both the database and the secret key can open the values: the key must be kept apart
from copies of the database.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Callable
from typing import Any

import orjson
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PREFIX = "sealed:v1:"
# Changing the label (or the version in PREFIX) makes every stored secret unreadable.
_HKDF_INFO = b"propel channel secrets at rest v1"


class Unreadable(Exception):
    """A sealed value this key cannot open: it was sealed under another secret key (or
    altered)."""


def is_sealed(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


class Sealer:
    """Seals and opens values under a key derived from the application's secret key.

    ``secret_key`` is called on first use, not here: opening Propel for a command that
    never touches a secret then neither reads nor creates the key file."""

    def __init__(self, secret_key: Callable[[], str]) -> None:
        self._secret_key = secret_key

    @functools.cached_property
    def _fernet(self) -> Fernet:
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO)
        derived = hkdf.derive(self._secret_key().encode())
        return Fernet(base64.urlsafe_b64encode(derived))

    def seal(self, value: Any) -> str:
        """``value`` (any JSON value) as a sealed string; a fresh IV every time."""
        return PREFIX + self._fernet.encrypt(orjson.dumps(value)).decode("ascii")

    def open(self, value: Any) -> Any:
        """The value ``seal`` was given; a value without the prefix is plain text written
        before secrets were sealed, and is answered as it is."""
        if not is_sealed(value):
            return value
        try:
            return orjson.loads(self._fernet.decrypt(value.removeprefix(PREFIX)))
        except InvalidToken as exc:
            raise Unreadable("sealed under another secret key") from exc
