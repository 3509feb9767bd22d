"""Mobile and web push through Firebase Cloud Messaging's HTTP v1 API.

One ``POST {base_url}/v1/projects/{project}/messages:send`` per message (FCM v1 has no
batch call), ``concurrency`` at a time over a pooled client. Authorisation is an OAuth 2
access token: either given as ``access_token`` (short-lived; for tests and for setups
that refresh it elsewhere) or minted here from a ``service_account`` key file with the
JWT-bearer grant Google documents, cached until a minute before it expires and
refreshed once on a 401.

Outcomes: 200 ``{"name": ...}`` → delivered (``provider_ref`` = name). A token FCM says
is gone (``UNREGISTERED``), belongs to another project (``SENDER_ID_MISMATCH``) or is not
a token at all (``INVALID_ARGUMENT`` on ``message.token``) → bounced. A bare 404 without
FCM's error details is *not* a bounce: a wrong base URL answers that for every message,
and treating it as one would revoke push consent for the whole audience. 429 and 5xx →
retryable; rejected credentials → retryable (fixing the settings should let the outbox
finish the job); anything else → failed. FCM does not deduplicate on our key, so
``dedupes = False``.
"""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import orjson

from propel.channels.base import ChannelError, Outbound, Outcome
from propel.channels.http import (
    FORM,
    HttpClient,
    HttpError,
    HttpResponse,
    bounded_map,
    check_http_url,
    form_body,
    snippet,
    transport_outcome,
)

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
_BOUNCE_CODES = {"UNREGISTERED", "SENDER_ID_MISMATCH"}


@dataclass(frozen=True)
class PushConfig:
    """FCM project and credentials; ``registry`` validates and stores them per account."""

    SECRETS: ClassVar[tuple[str, ...]] = ("access_token", "service_account")

    project_id: str | None = field(
        default=None, metadata={"help": "Firebase project id; default the service "
                                        "account's project_id."})
    service_account: dict[str, Any] | None = field(
        default=None, repr=False, metadata={"help": "The service-account key file (JSON) with the "
                                        "Firebase Cloud Messaging API Admin role."})
    access_token: str | None = field(
        default=None, repr=False, metadata={"help": "A ready OAuth 2 access token instead of a "
                                        "service account (expires within the hour)."})
    base_url: str = field(default="https://fcm.googleapis.com",
                          metadata={"help": "FCM API root (change only for a proxy)."})
    timeout: float = field(default=10.0, metadata={"min": 0.1, "max": 120,
                                                   "help": "Seconds per request."})
    concurrency: int = field(default=10, metadata={"min": 1, "max": 200,
                                                   "help": "Requests in flight."})

    def __post_init__(self) -> None:
        check_http_url("push", "base_url", self.base_url)
        if not self.service_account and not self.access_token:
            raise ChannelError("push.service_account is required (or push.access_token)")
        if self.service_account:
            sa = self.service_account
            for key in ("client_email", "private_key"):
                if not isinstance(sa.get(key), str) or not sa[key]:
                    raise ChannelError(f"push.service_account.{key} is missing: paste the "
                                       "whole key file downloaded from the Firebase console")
            if "token_uri" in sa:
                check_http_url("push", "service_account.token_uri", sa["token_uri"])
            _private_key(sa["private_key"])  # fail now, not at the first send
        if not self.resolved_project_id:
            raise ChannelError("push.project_id is required")

    @property
    def resolved_project_id(self) -> str | None:
        return self.project_id or (self.service_account or {}).get("project_id")


def _private_key(pem: str) -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
    except ImportError as exc:  # pragma: no cover - cryptography ships with Propel
        raise ChannelError("push.service_account needs the 'cryptography' package") from exc
    try:
        return serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise ChannelError("push.service_account.private_key is not a PEM private key") from exc


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def service_account_assertion(info: dict[str, Any], now: float | None = None) -> str:
    """The signed JWT (RS256) a service account trades for an access token."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    now = int(now if now is not None else time.time())
    header = {"alg": "RS256", "typ": "JWT"}
    if info.get("private_key_id"):
        header["kid"] = info["private_key_id"]
    claims = {"iss": info["client_email"], "scope": FCM_SCOPE,
              "aud": info.get("token_uri") or GOOGLE_TOKEN_URI, "iat": now, "exp": now + 3600}
    signing_input = f"{_b64url(orjson.dumps(header))}.{_b64url(orjson.dumps(claims))}"
    signature = _private_key(info["private_key"]).sign(
        signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{_b64url(signature)}"


class _Credentials:
    """The bearer token for FCM: fixed, or minted from the service account and cached."""

    def __init__(self, config: PushConfig, client: HttpClient) -> None:
        self._config = config
        self._client = client
        self._token: str | None = config.access_token if not config.service_account else None
        self._expires = float("inf") if self._token else 0.0
        self._lock = asyncio.Lock()

    @property
    def refreshable(self) -> bool:
        return bool(self._config.service_account)

    async def token(self) -> str:
        if self._token and time.time() < self._expires - 60:
            return self._token
        async with self._lock:  # one refresh for all concurrent senders
            if self._token and time.time() < self._expires - 60:
                return self._token
            sa = self._config.service_account or {}
            response = await self._client.post(
                sa.get("token_uri") or GOOGLE_TOKEN_URI,
                form_body({"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                           "assertion": service_account_assertion(sa)}),
                {"Content-Type": FORM})
            if response.status_code != 200:
                raise ChannelError(f"access token refused: HTTP {response.status_code}: "
                                   f"{snippet(response)}")
            body = response.json()
            self._token = body["access_token"]
            self._expires = time.time() + float(body.get("expires_in", 3600))
            return self._token

    def invalidate(self) -> None:
        if self.refreshable:
            self._token, self._expires = None, 0.0


def fcm_message(ob: Outbound) -> dict[str, Any]:
    """FCM v1 ``message``: data values must be strings, so others are sent as JSON."""
    data = {str(k): v if isinstance(v, str) else orjson.dumps(v, default=str).decode()
            for k, v in ob.data.items()}
    if ob.url:
        data.setdefault("url", ob.url)
    data.setdefault("propel_key", ob.key)  # lets the app report opens against the send
    message: dict[str, Any] = {"token": ob.to, "data": data}
    title, body = ob.title or ob.subject, ob.body or ob.text
    if title or body:
        message["notification"] = {"title": title, "body": body}
    return message


def _fcm_error(response: HttpResponse) -> tuple[str | None, str | None, bool, str]:
    """(FCM errorCode, google.rpc status, is-about-the-token, message) of an error."""
    try:
        error = response.json().get("error") or {}
    except ValueError:
        return None, None, False, snippet(response)
    if not isinstance(error, dict):
        return None, None, False, snippet(response)
    code = None
    about_token = False
    for detail in error.get("details") or []:
        kind = str(detail.get("@type", ""))
        if kind.endswith("google.firebase.fcm.v1.FcmError"):
            code = detail.get("errorCode")
        elif kind.endswith("google.rpc.BadRequest"):
            about_token |= any(v.get("field") == "message.token"
                               for v in detail.get("fieldViolations") or [])
    message = str(error.get("message") or "")
    about_token |= "registration token" in message.lower()
    return code, error.get("status"), about_token, message


class PushChannel:
    """Sends each message to FCM HTTP v1."""

    name = "push"
    dedupes = False

    def __init__(self, config: PushConfig) -> None:
        self.config = config
        self._client = HttpClient(config.timeout, config.concurrency)
        self._credentials = _Credentials(config, self._client)
        self._url = (f"{config.base_url.rstrip('/')}/v1/projects/"
                     f"{config.resolved_project_id}/messages:send")

    async def send(self, batch: list[Outbound]) -> list[Outcome]:
        return await bounded_map(batch, self._send_one, self.config.concurrency)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _send_one(self, ob: Outbound) -> Outcome:
        if not ob.to:
            return Outcome(ob.key, delivered=False, error="no push token")
        try:
            body = orjson.dumps({"message": fcm_message(ob)})
        except TypeError as exc:
            return Outcome(ob.key, delivered=False, error=f"invalid message: {exc}")
        for attempt in (1, 2):
            try:
                token = await self._credentials.token()
            except (ChannelError, HttpError, KeyError, ValueError) as exc:
                return Outcome(ob.key, delivered=False, retryable=True,
                               error=f"not sent: no FCM access token: {exc}")
            try:
                response = await self._client.post(
                    self._url, body,
                    {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
            except HttpError as exc:
                return transport_outcome(ob.key, exc)
            if response.status_code == 401 and attempt == 1 and self._credentials.refreshable:
                self._credentials.invalidate()  # expired or revoked: mint a new one once
                continue
            break
        return self._outcome(ob, response)

    @staticmethod
    def _outcome(ob: Outbound, response: HttpResponse) -> Outcome:
        status = response.status_code
        if status == 200:
            try:
                name = response.json().get("name")
            except ValueError:
                name = None
            return Outcome(ob.key, delivered=True, provider_ref=name)
        code, rpc_status, about_token, message = _fcm_error(response)
        error = f"HTTP {status} {code or rpc_status or ''}: {message}".replace(" :", ":")
        if code in _BOUNCE_CODES or (
                rpc_status == "INVALID_ARGUMENT" and about_token and status == 400):
            return Outcome(ob.key, delivered=False, bounced=True, error=error)
        if status in (401, 403) or status == 429 or status >= 500:
            return Outcome(ob.key, delivered=False, retryable=True, error=error)
        return Outcome(ob.key, delivered=False, error=error)
