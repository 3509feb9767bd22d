"""WebhookReceiver: a customer's webhook endpoint as the docs tell them to write it.

It verifies ``X-Propel-Signature`` (HMAC-SHA256 of the raw body with the shared
secret, compared in constant time) before reading the body, answers 401 when it does
not match, and processes each ``Idempotency-Key`` once: a repeat is acknowledged (200)
without being processed again and counted in ``duplicates``. It can be scripted to
answer a key with given statuses first (503, 429 with Retry-After, 400 …) or to hang.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .http import HttpPeer

WEBHOOK_SECRET = "whsec-propel-test-0123456789"  # what the webhook_peer fixture verifies


@dataclass
class Delivery:
    """One request as received (retries included)."""

    key: str | None
    headers: dict[str, str]
    body: bytes
    signature_ok: bool
    at: float = field(default_factory=time.monotonic)

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Reply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None


class WebhookReceiver(HttpPeer):
    def __init__(self, secret: str, path: str = "/hooks/propel") -> None:
        super().__init__(self._app)
        self.secret = secret
        self.path = path
        self.endpoint = f"{self.url}{path}"
        self.deliveries: list[Delivery] = []
        self.processed: dict[str, Any] = {}  # idempotency key -> payload, first time only
        self.duplicates: Counter[str] = Counter()
        self.bad_signatures = 0
        self._scripts: dict[str, list[Reply]] = {}
        self._hung: set[str] = set()

    # -- behaviour -----------------------------------------------------------------------

    def script(self, key: str, *replies: Reply) -> None:
        """Answer the next requests for ``key`` with these replies, then normally."""
        self._scripts.setdefault(key, []).extend(replies)

    def hang(self, *keys: str) -> None:
        self._hung.update(keys)

    def attempts(self, key: str) -> list[Delivery]:
        return [d for d in self.deliveries if d.key == key]

    @property
    def unique_keys(self) -> int:
        return len(self.processed)

    # -- the endpoint --------------------------------------------------------------------

    def verify(self, body: bytes, signature: str | None, timestamp: str | None) -> bool:
        """As a receiver should: the HMAC over ``timestamp.body``, and a fresh timestamp
        (a replayed request is refused)."""
        if not signature or not timestamp or not timestamp.isdigit():
            return False
        if abs(time.time() - int(timestamp)) > 300:
            return False
        signed = timestamp.encode() + b"." + body
        expected = "sha256=" + hmac.new(self.secret.encode(), signed, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, signature)

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        request = Request(scope, receive)
        response = await self._handle(request)
        await response(scope, receive, send)

    async def _handle(self, request: Request) -> Response:
        if request.method != "POST" or request.url.path != self.path:
            return JSONResponse({"error": "not found"}, status_code=404)
        body = await request.body()
        key = request.headers.get("idempotency-key")
        ok = self.verify(body, request.headers.get("x-propel-signature"),
                         request.headers.get("x-propel-timestamp"))
        self.deliveries.append(Delivery(key, dict(request.headers), body, ok))
        if not ok:
            self.bad_signatures += 1
            return JSONResponse({"error": "bad signature"}, status_code=401)
        if key in self._hung:
            await self.hold()
            return Response(status_code=504)
        script = self._scripts.get(key or "")
        if script:
            reply = script.pop(0)
            return JSONResponse(reply.body or {"error": f"scripted {reply.status}"},
                                status_code=reply.status, headers=reply.headers)
        if key is None:
            return JSONResponse({"error": "Idempotency-Key header is required"}, 400)
        if key in self.processed:
            self.duplicates[key] += 1
            return JSONResponse({"ok": True, "duplicate": True})
        self.processed[key] = orjson.loads(body)
        return JSONResponse({"ok": True}, headers={"X-Request-Id": f"req-{len(self.processed)}"})
