"""SMS through Twilio's Programmable Messaging API.

One ``POST {base_url}/2010-04-01/Accounts/{AccountSid}/Messages.json`` per message,
form-encoded ``To``, ``From`` (or ``MessagingServiceSid``) and ``Body``, with HTTP Basic
auth as ``AccountSid:AuthToken`` (or an API key ``SK…:secret``). Twilio answers 201 with
the message resource; its ``sid`` becomes ``provider_ref`` so delivery receipts
(``StatusCallback``) can be matched later.

Outcomes: 201 → delivered. 400 with an error code about the *recipient* (21211 invalid
'To', 21614 not a mobile number, 21612 not reachable by SMS, 21610 the recipient
replied STOP) → bounced, which revokes SMS consent upstream — for 21610 that is the law
in most places, not just hygiene. 429 and 5xx → retryable; rejected credentials →
retryable (fix the settings and the outbox finishes the job); any other 4xx → failed.
Twilio does not deduplicate on our key, so ``dedupes = False``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar

from propel.channels.base import ChannelError, Outbound, Outcome
from propel.channels.http import (
    FORM,
    HttpClient,
    HttpError,
    HttpResponse,
    basic_auth,
    bounded_map,
    check_http_url,
    form_body,
    snippet,
    transport_outcome,
)

# Twilio error codes that mean "this phone number cannot get our SMS".
BOUNCE_CODES = {21211, 21610, 21612, 21614}
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")


def _sid(prefix: str) -> re.Pattern[str]:
    return re.compile(rf"^{prefix}[0-9a-fA-F]{{32}}$")


@dataclass(frozen=True)
class SmsConfig:
    """Twilio account and sender; ``registry`` validates and stores them per account."""

    SECRETS: ClassVar[tuple[str, ...]] = ("auth_token",)

    account_sid: str = field(metadata={"help": "Twilio Account SID (AC…)."})
    auth_token: str = field(
        repr=False, metadata={"help": "Auth token of the account, or the secret of api_key."})
    from_number: str | None = field(
        default=None, metadata={"help": "Sender number in E.164 (+15017122661) or an "
                                        "alphanumeric sender id."})
    messaging_service_sid: str | None = field(
        default=None, metadata={"help": "Messaging Service SID (MG…) instead of "
                                        "from_number."})
    api_key: str | None = field(
        default=None, metadata={"help": "API key SID (SK…) to authenticate with instead "
                                        "of the account SID."})
    status_callback: str | None = field(
        default=None, metadata={"help": "URL Twilio posts delivery status to."})
    base_url: str = field(default="https://api.twilio.com",
                          metadata={"help": "Twilio API root (change only for a proxy)."})
    timeout: float = field(default=10.0, metadata={"min": 0.1, "max": 120,
                                                   "help": "Seconds per request."})
    concurrency: int = field(default=8, metadata={"min": 1, "max": 100,
                                                  "help": "Requests in flight."})

    def __post_init__(self) -> None:
        if not _sid("AC").match(self.account_sid):
            raise ChannelError("sms.account_sid must look like AC followed by 32 hex digits")
        if self.api_key is not None and not _sid("SK").match(self.api_key):
            raise ChannelError("sms.api_key must look like SK followed by 32 hex digits")
        if self.messaging_service_sid is not None and not _sid("MG").match(
                self.messaging_service_sid):
            raise ChannelError(
                "sms.messaging_service_sid must look like MG followed by 32 hex digits")
        if not self.from_number and not self.messaging_service_sid:
            raise ChannelError("sms.from_number is required (or sms.messaging_service_sid)")
        if (self.from_number and self.from_number.startswith("+")
                and not _E164.match(self.from_number)):
            raise ChannelError(f"sms.from_number must be E.164 like +15017122661, "
                               f"got {self.from_number!r}")
        check_http_url("sms", "base_url", self.base_url)
        if self.status_callback is not None:
            check_http_url("sms", "status_callback", self.status_callback)


def sms_text(ob: Outbound) -> str:
    """The SMS body: the rendered body (or text), with the link appended if the body
    does not already carry it."""
    text = ob.body or ob.text
    if ob.url and ob.url not in text:
        text = f"{text}\n{ob.url}" if text else ob.url
    return text


class SmsChannel:
    """Creates one Twilio Message resource per outbound message."""

    name = "sms"
    dedupes = False

    def __init__(self, config: SmsConfig) -> None:
        self.config = config
        self._client = HttpClient(config.timeout, config.concurrency)
        self._url = (f"{config.base_url.rstrip('/')}/2010-04-01/Accounts/"
                     f"{config.account_sid}/Messages.json")
        self._auth = basic_auth(config.api_key or config.account_sid, config.auth_token)

    async def send(self, batch: list[Outbound]) -> list[Outcome]:
        return await bounded_map(batch, self._send_one, self.config.concurrency)

    async def aclose(self) -> None:
        await self._client.aclose()

    def form(self, ob: Outbound) -> dict[str, str]:
        cfg = self.config
        form = {"To": ob.to or "", "Body": sms_text(ob)}
        if cfg.messaging_service_sid:
            form["MessagingServiceSid"] = cfg.messaging_service_sid
        else:
            form["From"] = cfg.from_number or ""
        if cfg.status_callback:
            form["StatusCallback"] = cfg.status_callback
        return form

    async def _send_one(self, ob: Outbound) -> Outcome:
        if not ob.to:
            return Outcome(ob.key, delivered=False, error="no phone number")
        try:
            response = await self._client.post(
                self._url, form_body(self.form(ob)),
                {"Authorization": self._auth, "Content-Type": FORM,
                 "Accept": "application/json"})
        except HttpError as exc:
            return transport_outcome(ob.key, exc)
        return self._outcome(ob, response)

    @staticmethod
    def _outcome(ob: Outbound, response: HttpResponse) -> Outcome:
        status = response.status_code
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            body = {}
        if status in (200, 201):
            return Outcome(ob.key, delivered=True, provider_ref=body.get("sid"))
        code = body.get("code")
        message = body.get("message") or snippet(response)
        error = f"HTTP {status} Twilio {code}: {message}" if code else f"HTTP {status}: {message}"
        if status == 400 and code in BOUNCE_CODES:
            return Outcome(ob.key, delivered=False, bounced=True, error=error)
        if status in (401, 403) or status == 429 or status >= 500:
            return Outcome(ob.key, delivered=False, retryable=True, error=error)
        return Outcome(ob.key, delivered=False, error=error)
