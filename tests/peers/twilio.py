"""TwilioPeer: Twilio's Programmable Messaging ``Messages.json`` on loopback.

``POST /2010-04-01/Accounts/{AccountSid}/Messages.json`` checks HTTP Basic auth
(AccountSid:AuthToken, or an API key SID:secret), the form fields Twilio requires
(To, Body, From or MessagingServiceSid), that From is one of the account's numbers and
that To is E.164, and answers with Twilio's real shapes: 201 with the Message resource
(``sid`` SM…), and errors as ``{"code", "message", "more_info", "status"}`` — 21211
invalid To, 21610 unsubscribed recipient, 20003 authentication, 20429 too many
requests, 20500 internal error.
"""

from __future__ import annotations

import base64
import re
import secrets
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .http import HttpPeer

_E164 = re.compile(r"^\+[1-9]\d{6,14}$")


def twilio_error(status: int, code: int, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message,
                         "more_info": f"https://www.twilio.com/docs/errors/{code}",
                         "status": status}, status_code=status)


class TwilioPeer(HttpPeer):
    def __init__(self) -> None:
        super().__init__(self._app)
        self.account_sid = "AC" + secrets.token_hex(16)
        self.auth_token = secrets.token_hex(16)
        self.api_keys: dict[str, str] = {}
        self.numbers: set[str] = {"+15005550006"}
        self.invalid: set[str] = set()
        self.unsubscribed: set[str] = set()
        self.hung: set[str] = set()
        self.messages: list[dict[str, Any]] = []  # created Message resources
        self.forms: list[dict[str, str]] = []  # every form received, rejected ones too
        self._overload: list[int] = []

    # -- behaviour -----------------------------------------------------------------------

    def add_api_key(self) -> tuple[str, str]:
        sid, secret = "SK" + secrets.token_hex(16), secrets.token_urlsafe(24)
        self.api_keys[sid] = secret
        return sid, secret

    def overload(self, *statuses: int) -> None:
        """Answer the next requests with these statuses (429, 500, 503), then normally."""
        self._overload.extend(statuses)

    def to(self, number: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["to"] == number]

    # -- HTTP --------------------------------------------------------------------------

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        request = Request(scope, receive)
        response = await self._handle(request)
        await response(scope, receive, send)

    def _authorised(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        if user == self.account_sid:
            return secrets.compare_digest(password, self.auth_token)
        return user in self.api_keys and secrets.compare_digest(password, self.api_keys[user])

    async def _handle(self, request: Request) -> Response:
        path = request.url.path
        prefix = "/2010-04-01/Accounts/"
        if not (request.method == "POST" and path.startswith(prefix)
                and path.endswith("/Messages.json")):
            return twilio_error(404, 20404, f"The requested resource {path} was not found")
        if not self._authorised(request):
            return twilio_error(401, 20003, "Authenticate")
        if path[len(prefix):-len("/Messages.json")] != self.account_sid:
            return twilio_error(404, 20404, f"The requested resource {path} was not found")
        if not request.headers.get("content-type", "").startswith(
                "application/x-www-form-urlencoded"):
            return twilio_error(400, 20001, "Parameters must be form-encoded")
        form = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
        self.forms.append(form)
        if self._overload:
            status = self._overload.pop(0)
            if status == 429:
                return twilio_error(429, 20429, "Too Many Requests")
            return twilio_error(status, 20500, "An internal server error has occurred")
        to, body = form.get("To", ""), form.get("Body", "")
        sender, service = form.get("From", ""), form.get("MessagingServiceSid", "")
        if not to:
            return twilio_error(400, 21604, "A 'To' phone number is required.")
        if not body:
            return twilio_error(400, 21602, "Message body is required.")
        if not sender and not service:
            return twilio_error(400, 21603, "A 'From' phone number is required.")
        if sender and sender not in self.numbers:
            return twilio_error(400, 21606, f"The From phone number {sender} is not a valid, "
                                            "SMS-capable inbound phone number or short code "
                                            "for your account.")
        if len(body) > 1600:
            return twilio_error(400, 21617, "The concatenated message body exceeds the 1600 "
                                            "character limit.")
        if to in self.hung:
            await self.hold()
            return Response(status_code=504)
        if not _E164.match(to) or to in self.invalid:
            return twilio_error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        if to in self.unsubscribed:
            return twilio_error(400, 21610, "Attempt to send to unsubscribed recipient")
        now = format_datetime(datetime.now(UTC), usegmt=True)
        sid = "SM" + secrets.token_hex(16)
        resource = {
            "sid": sid, "account_sid": self.account_sid, "api_version": "2010-04-01",
            "to": to, "from": sender or None, "messaging_service_sid": service or None,
            "body": body, "status": "accepted" if service else "queued",
            "num_segments": str(max(1, -(-len(body) // 153))), "num_media": "0",
            "direction": "outbound-api", "date_created": now, "date_updated": now,
            "date_sent": None, "price": None, "price_unit": "USD", "error_code": None,
            "error_message": None, "status_callback": form.get("StatusCallback"),
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}.json",
        }
        self.messages.append(resource)
        return JSONResponse({k: v for k, v in resource.items() if k != "status_callback"},
                            status_code=201)
