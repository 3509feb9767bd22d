"""FcmPeer: Firebase Cloud Messaging HTTP v1 on loopback, plus Google's OAuth token
endpoint for service accounts.

``POST /v1/projects/{project}/messages:send`` checks what FCM checks — the bearer
token, the project, the JSON shape (unknown fields, exactly one target, string-only
data values, reserved data keys) — and answers with FCM's real success and error
bodies: ``{"name": "projects/…/messages/…"}``, 404 ``UNREGISTERED``, 400
``INVALID_ARGUMENT`` on ``message.token``, 403 ``SENDER_ID_MISMATCH``, 429
``QUOTA_EXCEEDED`` with Retry-After, 503 ``UNAVAILABLE``.

``POST /token`` implements the JWT-bearer grant: it verifies the RS256 signature with
the public half of the key in ``service_account()`` and the claims (iss, aud, scope,
exp) before issuing an access token, as oauth2.googleapis.com does.
"""

from __future__ import annotations

import base64
import itertools
import secrets
import time
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .http import HttpPeer

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
_MESSAGE_FIELDS = {"name", "data", "notification", "android", "webpush", "apns",
                   "fcm_options", "token", "topic", "condition"}
_NOTIFICATION_FIELDS = {"title", "body", "image"}
_RESERVED_DATA = {"from", "notification", "message_type"}


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def fcm_error(code: int, status: str, message: str, *, fcm_code: str | None = None,
              violations: list[dict[str, str]] | None = None,
              headers: dict[str, str] | None = None) -> JSONResponse:
    details: list[dict[str, Any]] = []
    if fcm_code:
        details.append({"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                        "errorCode": fcm_code})
    if violations:
        details.append({"@type": "type.googleapis.com/google.rpc.BadRequest",
                        "fieldViolations": violations})
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = details
    return JSONResponse({"error": error}, status_code=code, headers=headers)


class FcmPeer(HttpPeer):
    def __init__(self, project_id: str = "propel-test") -> None:
        super().__init__(self._app)
        self.project_id = project_id
        self.access_tokens: set[str] = {"static-test-token"}
        self.unregistered: set[str] = set()
        self.invalid: set[str] = set()
        self.other_project: set[str] = set()
        self.hung: set[str] = set()
        self.messages: list[dict[str, Any]] = []  # accepted ``message`` objects
        self.statuses: list[int] = []  # every answer to messages:send, in order
        self.tokens_issued = 0
        self.token_requests = 0
        self._overload: list[int] = []
        self._ids = itertools.count(1)
        self._key: Any = None
        self._client_email = "propel-sender@propel-test.iam.gserviceaccount.com"

    # -- behaviour -----------------------------------------------------------------------

    def overload(self, *statuses: int) -> None:
        """Answer the next requests with these statuses (429 or 503), then normally."""
        self._overload.extend(statuses)

    def revoke_tokens(self) -> None:
        """Every access token stops working (as when one expires)."""
        self.access_tokens.clear()

    def service_account(self) -> dict[str, Any]:
        """A service-account key file whose token_uri is this peer."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        if self._key is None:
            self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = self._key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()).decode()
        return {"type": "service_account", "project_id": self.project_id,
                "private_key_id": "k1", "private_key": pem, "client_email": self._client_email,
                "client_id": "1", "token_uri": f"{self.url}/token"}

    def to(self, token: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("token") == token]

    # -- HTTP --------------------------------------------------------------------------

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        request = Request(scope, receive)
        path = request.url.path
        prefix, suffix = "/v1/projects/", "/messages:send"
        if request.method == "POST" and path == "/token":
            response = await self._token(request)
        elif request.method == "POST" and path.startswith(prefix) and path.endswith(suffix):
            response = await self._send(request, path[len(prefix):-len(suffix)])
            self.statuses.append(response.status_code)
        else:
            response = fcm_error(404, "NOT_FOUND", f"Path {path} not found.")
        await response(scope, receive, send)

    async def _send(self, request: Request, project: str) -> Response:
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self.access_tokens:
            return fcm_error(401, "UNAUTHENTICATED",
                             "Request had invalid authentication credentials. Expected OAuth 2 "
                             "access token, login cookie or other valid authentication "
                             "credential.")
        if project != self.project_id:
            return fcm_error(403, "PERMISSION_DENIED",
                             f"Permission 'cloudmessaging.messages.create' denied on resource "
                             f"'//cloudresourcemanager.googleapis.com/projects/{project}' "
                             "(or it may not exist).")
        if self._overload:
            status = self._overload.pop(0)
            if status == 429:
                return fcm_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded.",
                                 fcm_code="QUOTA_EXCEEDED", headers={"Retry-After": "60"})
            return fcm_error(503, "UNAVAILABLE", "The service is currently unavailable.",
                             fcm_code="UNAVAILABLE")
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return fcm_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        problem = self._shape_problem(body)
        if problem is not None:
            return problem
        message = body["message"]
        token = message.get("token")
        if token in self.hung:
            await self.hold()
            return Response(status_code=504)
        if token is not None:
            if token in self.invalid or not token.strip() or " " in token:
                text = "The registration token is not a valid FCM registration token"
                return fcm_error(400, "INVALID_ARGUMENT", text, fcm_code="INVALID_ARGUMENT",
                                 violations=[{"field": "message.token", "description": text}])
            if token in self.unregistered:
                return fcm_error(404, "NOT_FOUND", "Requested entity was not found.",
                                 fcm_code="UNREGISTERED")
            if token in self.other_project:
                return fcm_error(403, "PERMISSION_DENIED", "SenderId mismatch",
                                 fcm_code="SENDER_ID_MISMATCH")
        self.messages.append(message)
        name = f"projects/{project}/messages/0:{int(time.time() * 1000)}%{next(self._ids):08x}"
        return JSONResponse({"name": name})

    def _shape_problem(self, body: Any) -> Response | None:
        def bad(text: str, field: str | None = None) -> Response:
            violations = [{"field": field, "description": text}] if field else None
            return fcm_error(400, "INVALID_ARGUMENT", text, violations=violations)

        if not isinstance(body, dict) or not isinstance(body.get("message"), dict):
            return bad("Invalid JSON payload received. 'message' is required.")
        for name in body:
            if name not in ("message", "validate_only"):
                return bad(f'Invalid JSON payload received. Unknown name "{name}": '
                           "Cannot find field.")
        message = body["message"]
        for name in message:
            if name not in _MESSAGE_FIELDS:
                return bad(f'Invalid JSON payload received. Unknown name "{name}" at '
                           "'message': Cannot find field.")
        if sum(1 for t in ("token", "topic", "condition") if message.get(t)) != 1:
            return bad("Exactly one of message.token, message.topic or message.condition "
                       "must be specified.", "message")
        data = message.get("data", {})
        if not isinstance(data, dict):
            return bad("Invalid value at 'message.data': must be a map.", "message.data")
        for i, (key, value) in enumerate(data.items()):
            if not isinstance(value, str):
                where = f"message.data[{i}].value"
                return bad(f"Invalid value at '{where}' (TYPE_STRING), {orjson.dumps(value)!r}",
                           where)
            if key in _RESERVED_DATA or key.startswith(("google", "gcm")):
                return bad(f"Invalid data payload key: {key}", "message.data")
        notification = message.get("notification", {})
        if not isinstance(notification, dict):
            return bad("Invalid value at 'message.notification'.", "message.notification")
        for key, value in notification.items():
            if key not in _NOTIFICATION_FIELDS:
                return bad(f'Invalid JSON payload received. Unknown name "{key}" at '
                           "'message.notification': Cannot find field.")
            if not isinstance(value, str):
                return bad(f"Invalid value at 'message.notification.{key}' (TYPE_STRING)",
                           f"message.notification.{key}")
        return None

    async def _token(self, request: Request) -> Response:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        self.token_requests += 1
        form = dict(parse_qsl((await request.body()).decode()))

        def refuse(text: str) -> Response:
            return JSONResponse({"error": "invalid_grant", "error_description": text}, 400)

        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return JSONResponse({"error": "unsupported_grant_type"}, 400)
        if self._key is None:
            return refuse("Invalid JWT Signature.")
        try:
            header_b64, claims_b64, sig_b64 = str(form.get("assertion", "")).split(".")
            header, claims = orjson.loads(_unb64(header_b64)), orjson.loads(_unb64(claims_b64))
            self._key.public_key().verify(_unb64(sig_b64), f"{header_b64}.{claims_b64}".encode(),
                                          padding.PKCS1v15(), hashes.SHA256())
        except (ValueError, orjson.JSONDecodeError, InvalidSignature):
            return refuse("Invalid JWT Signature.")
        now = time.time()
        if header.get("alg") != "RS256":
            return refuse("Invalid JWT: alg must be RS256.")
        if claims.get("iss") != self._client_email:
            return refuse("Invalid JWT: unknown issuer.")
        if claims.get("aud") != f"{self.url}/token":
            return refuse("Invalid JWT: Failed audience check.")
        if FCM_SCOPE not in str(claims.get("scope", "")).split():
            return refuse("Invalid JWT: scope does not allow Firebase Cloud Messaging.")
        if not (claims.get("iat", 0) - 300 <= now < claims.get("exp", 0)):
            return refuse("Invalid JWT: Token must be a short-lived token and in a "
                          "reasonable timeframe.")
        token = "ya29." + secrets.token_urlsafe(24)
        self.access_tokens.add(token)
        self.tokens_issued += 1
        return JSONResponse({"access_token": token, "expires_in": 3599, "token_type": "Bearer"})
