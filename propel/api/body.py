"""Read a request body safely: size-capped, gzip-aware, JSON only."""

from __future__ import annotations

import zlib
from typing import Any

import orjson
from fastapi import Request

from propel.api.errors import ApiError
from propel.ingest import limits


async def read_bytes(request: Request, max_bytes: int = limits.MAX_BODY_BYTES) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, "too_large", f"body is larger than {max_bytes} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise ApiError(413, "too_large", f"body is larger than {max_bytes} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "").lower().strip()
    if encoding in ("", "identity"):
        return raw
    if encoding not in ("gzip", "deflate"):
        raise ApiError(415, "unsupported_encoding", f"Content-Encoding {encoding!r} is not "
                       "supported; use gzip or none")
    return _inflate(raw, encoding, max_bytes)


def _inflate(raw: bytes, encoding: str, max_bytes: int) -> bytes:
    """Decompress with a cap, so a small "zip bomb" cannot exhaust memory; gzip bodies
    may hold several members (RFC 1952), and must end where their data ends."""
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    out = bytearray()
    data = raw
    while True:
        inflater = zlib.decompressobj(wbits)
        try:
            out += inflater.decompress(data, max_bytes + 1 - len(out))
        except zlib.error:
            raise ApiError(400, "bad_encoding", f"body is not valid {encoding} data") from None
        if len(out) > max_bytes or inflater.unconsumed_tail:
            raise ApiError(413, "too_large",
                           f"decompressed body is larger than {max_bytes} bytes")
        if not inflater.eof:
            raise ApiError(400, "bad_encoding", f"{encoding} body is truncated")
        data = inflater.unused_data
        if not data:
            return bytes(out)
        if encoding != "gzip" or not data.startswith(b"\x1f\x8b"):
            raise ApiError(400, "bad_encoding", f"unexpected bytes after the {encoding} data")


async def read_json(request: Request, max_bytes: int = limits.MAX_BODY_BYTES,
                    require_content_type: bool = True) -> Any:
    ctype = request.headers.get("content-type", "")
    if require_content_type and ctype and "json" not in ctype.lower():
        raise ApiError(415, "unsupported_media_type",
                       f"Content-Type must be application/json, not {ctype!r}")
    raw = await read_bytes(request, max_bytes)
    if not raw.strip():
        raise ApiError(400, "empty_body", "request body is empty; send JSON")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "malformed_json", f"body is not valid JSON: {exc}") from None
