"""Webhooks: a signed JSON POST per message to the account's own endpoint.

The receiver is the customer's server, so the request is built for them to trust and
deduplicate: ``X-Propel-Signature: sha256=<hex>`` is an HMAC-SHA256 of the exact body
bytes with the shared secret (verify before parsing), ``Idempotency-Key`` is the
message key (the same on every retry and after a crash, hence ``dedupes = True``), and
``X-Propel-Timestamp`` is the send time in epoch seconds.

A short outage should not cost a message a trip back through the outbox (minutes of
backoff), so connection errors, 5xx, 408 and 429 are retried here a few times with
exponential backoff, honouring ``Retry-After`` up to a cap. A longer ``Retry-After``,
or a request that got no answer within the timeout, ends the attempt at once as
retryable: waiting longer here would hold up the whole batch. Any other 4xx is the
receiver saying no, permanently.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from dataclasses import dataclass, field
from typing import ClassVar

import orjson

from propel.channels.base import Outbound, Outcome
from propel.channels.http import (
    HttpClient,
    HttpError,
    NoAnswer,
    bounded_map,
    check_http_url,
    http_error,
    retry_after_seconds,
    transport_outcome,
)

# -- the webhook channel --------------------------------------------------------------


@dataclass(frozen=True)
class WebhookConfig:
    """Endpoint and retry policy; ``registry`` validates and stores them per account."""

    SECRETS: ClassVar[tuple[str, ...]] = ("secret",)

    url: str = field(metadata={"help": "Endpoint that receives one POST per message."})
    secret: str = field(
        repr=False, metadata={"min_length": 16,
                  "help": "Shared secret for X-Propel-Signature (at least 16 characters)."})
    timeout: float = field(
        default=10.0, metadata={"min": 0.1, "max": 120, "help": "Seconds per request."})
    max_attempts: int = field(
        default=3, metadata={"min": 1, "max": 10,
                             "help": "Tries per message within one send, before it goes "
                                     "back to the outbox as retryable."})
    backoff: float = field(
        default=0.5, metadata={"min": 0, "max": 60,
                               "help": "Seconds before the 2nd try; doubles after that."})
    max_retry_after: float = field(
        default=10.0, metadata={"min": 0, "max": 300,
                                "help": "Longest Retry-After honoured in place; a longer "
                                        "one returns the message to the outbox."})
    concurrency: int = field(
        default=8, metadata={"min": 1, "max": 100,
                             "help": "Requests in flight (and pooled connections)."})

    def __post_init__(self) -> None:
        check_http_url("webhook", "url", self.url)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The X-Propel-Signature value: HMAC-SHA256 over ``<X-Propel-Timestamp>.<body>``.
    Covering the timestamp lets receivers refuse replays of an old request (compare
    with ``hmac.compare_digest`` and reject timestamps more than 5 minutes away)."""
    signed = timestamp.encode() + b"." + body
    return "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def payload(ob: Outbound) -> bytes:
    return orjson.dumps(
        {"key": ob.key, "campaign_id": ob.campaign_id, "identity": ob.identity,
         "title": ob.title, "body": ob.body, "url": ob.url, "data": ob.data},
        default=str,
    )


class WebhookChannel:
    """POSTs each message to one endpoint over a pooled client."""

    name = "webhook"
    dedupes = True

    def __init__(self, config: WebhookConfig) -> None:
        self.config = config
        self._client = HttpClient(config.timeout, config.concurrency)

    async def send(self, batch: list[Outbound]) -> list[Outcome]:
        return await bounded_map(batch, self._send_one, self.config.concurrency)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _send_one(self, ob: Outbound) -> Outcome:
        cfg = self.config
        try:
            body = payload(ob)
        except TypeError as exc:
            return Outcome(ob.key, delivered=False, error=f"invalid message: {exc}")
        outcome = Outcome(ob.key, delivered=False, retryable=True, error="not attempted")
        for attempt in range(1, cfg.max_attempts + 1):
            timestamp = str(int(time.time()))
            headers = {
                "Content-Type": "application/json",
                "X-Propel-Signature": sign(cfg.secret, timestamp, body),
                "X-Propel-Timestamp": timestamp,
                "Idempotency-Key": ob.key,
            }
            wait = cfg.backoff * 2 ** (attempt - 1)
            try:
                response = await self._client.post(cfg.url, body, headers)
            except NoAnswer as exc:
                # A receiver that hangs will not answer a second later either.
                return transport_outcome(ob.key, exc)
            except HttpError as exc:
                outcome = transport_outcome(ob.key, exc)
            else:
                status = response.status_code
                if 200 <= status < 300:
                    return Outcome(ob.key, delivered=True,
                                   provider_ref=response.headers.get("x-request-id"))
                error = http_error(response)
                if not (status >= 500 or status in (408, 425, 429)):
                    return Outcome(ob.key, delivered=False, error=error)
                outcome = Outcome(ob.key, delivered=False, retryable=True, error=error)
                asked = retry_after_seconds(response)
                if asked is not None:
                    if asked > cfg.max_retry_after:
                        outcome.error = f"{error} (Retry-After {asked:g}s)"
                        return outcome
                    wait = asked
            if attempt < cfg.max_attempts:
                await asyncio.sleep(wait)
        if outcome.error:
            outcome.error = f"{outcome.error} (after {cfg.max_attempts} tries)"
        return outcome
