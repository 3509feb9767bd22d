"""One credential per route family, each accepted only where it belongs."""

from __future__ import annotations

import base64
import binascii
import time

from fastapi import Request

from propel.accounts import account_for_api_key, account_for_write_key, check_passcode
from propel.api.errors import ApiError
from propel.core import Propel

WRITE_KEYS_REMEMBERED = 10_000
WRITE_KEY_TTL_SECONDS = 60.0


def propel_of(request: Request) -> Propel:
    return request.app.state.propel


def api_account(request: Request) -> str:
    """``Authorization: Bearer <API key>`` for /api/v1."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "send an API key as 'Authorization: Bearer <key>'",)
    account = account_for_api_key(propel_of(request).db, token.strip())
    if account is None:
        raise ApiError(401, "unauthorized", "API key is not valid or was revoked")
    return account


def segment_account(request: Request) -> str:
    """HTTP Basic with the write key as user name (password ignored), as Segment does."""
    header = request.headers.get("authorization", "")
    scheme, _, encoded = header.partition(" ")
    write_key = ""
    if scheme.lower() == "basic":
        try:
            write_key = base64.b64decode(encoded.strip()).decode().partition(":")[0]
        except (binascii.Error, UnicodeDecodeError):
            write_key = ""
    if not write_key:
        raise ApiError(401, "unauthorized", "send the write key as the HTTP Basic user name")
    # A key once found is remembered for a while, so a batch needs no database round
    # trip; a rotated key stops working in every server process when that while ends.
    # Unknown keys are not remembered (a new account or key works at once).
    known: dict[str, tuple[str, float]] = request.app.state.write_keys
    account, until = known.get(write_key, ("", 0.0))
    if until < time.monotonic():
        account = account_for_write_key(propel_of(request).db, write_key) or ""
        if len(known) >= WRITE_KEYS_REMEMBERED:
            known.clear()
        if account:
            known[write_key] = (account, time.monotonic() + WRITE_KEY_TTL_SECONDS)
    if not account:
        raise ApiError(401, "unauthorized", "write key is not valid")
    return account


def clevertap_account(request: Request) -> str:
    account_id = request.headers.get("x-clevertap-account-id", "").strip()
    passcode = request.headers.get("x-clevertap-passcode", "").strip()
    if not account_id or not passcode:
        raise ApiError(401, "unauthorized",
                       "send X-CleverTap-Account-Id and X-CleverTap-Passcode headers")
    if not check_passcode(propel_of(request).db, account_id, passcode):
        raise ApiError(401, "unauthorized", "account id or passcode is not valid")
    return account_id
