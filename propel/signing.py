"""Compact signed tokens (URL-safe, no padding) for cursors and links."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import orjson


class BadToken(Exception):
    pass


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(secret: str, payload: Any, purpose: str) -> str:
    body = _b64(orjson.dumps(payload))
    mac = hmac.new(secret.encode(), f"{purpose}.{body}".encode(), hashlib.sha256).digest()
    return f"{body}.{_b64(mac[:16])}"


def unsign(secret: str, token: str, purpose: str) -> Any:
    body, _, mac = token.strip().partition(".")
    expected = hmac.new(secret.encode(), f"{purpose}.{body}".encode(), hashlib.sha256).digest()
    try:
        # compare the canonical text: base64 has several spellings of the same bytes
        if not mac or not hmac.compare_digest(mac.encode(), _b64(expected[:16]).encode()):
            raise BadToken("signature does not match")
        return orjson.loads(_unb64(body))
    except (ValueError, orjson.JSONDecodeError) as exc:
        raise BadToken("token is malformed") from exc
