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

This module also holds the HTTP plumbing that the push and SMS channels share.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import ClassVar

import httpx
import orjson

from propel.channels.base import ChannelError, Outbound, Outcome

log = logging.getLogger("propel.channels")
USER_AGENT = "Propel/0.1 (+https://github.com/propel)"


# -- shared HTTP plumbing -------------------------------------------------------------


def http_client(timeout: float, concurrency: int) -> httpx.AsyncClient:
    """A pooled client: at most ``concurrency`` connections, kept alive between
    batches, so a batch of N messages opens ``concurrency`` connections, not N."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout),
        limits=httpx.Limits(max_connections=concurrency,
                            max_keepalive_connections=concurrency, keepalive_expiry=30),
        headers={"User-Agent": USER_AGENT},
        follow_redirects=False,
    )


async def bounded_map(batch: list[Outbound], fn: Callable[[Outbound], Awaitable[Outcome]],
                      limit: int) -> list[Outcome]:
    """Run ``fn`` over the batch, ``limit`` at a time, answering in batch order.

    A bug in ``fn`` becomes that message's retryable outcome rather than an exception
    that would lose the outcomes of the messages already sent.
    """
    gate = asyncio.Semaphore(limit)

    async def one(ob: Outbound) -> Outcome:
        async with gate:
            try:
                return await fn(ob)
            except Exception as exc:
                log.exception("channel failed on message %s", ob.key)
                return Outcome(ob.key, delivered=False, retryable=True,
                               error=f"internal error: {type(exc).__name__}: {exc}")

    return list(await asyncio.gather(*(one(ob) for ob in batch)))


def transport_outcome(key: str, exc: httpx.HTTPError, timeout: float) -> Outcome:
    """A request that failed below HTTP. Before the request left (connect failed) a
    retry is certainly safe; after it (no answer) the receiver may have acted on it,
    which the error says, so a caller can tell the two apart."""
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return Outcome(key, delivered=False, retryable=True,
                       error=f"not sent: cannot connect: {type(exc).__name__}: {exc}")
    if isinstance(exc, httpx.TimeoutException):
        return Outcome(key, delivered=False, retryable=True,
                       error=f"outcome unknown: no answer within {timeout:g}s")
    return Outcome(key, delivered=False, retryable=True,
                   error=f"outcome unknown: {type(exc).__name__}: {exc}")


def retry_after_seconds(response: httpx.Response) -> float | None:
    """``Retry-After`` as seconds (it may be a number or an HTTP date)."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def snippet(response: httpx.Response, limit: int = 200) -> str:
    text = response.text.strip().replace("\n", " ")
    return text[:limit]


def http_error(response: httpx.Response) -> str:
    text = snippet(response)
    return f"HTTP {response.status_code}: {text}" if text else f"HTTP {response.status_code}"


def check_http_url(channel: str, name: str, url: str) -> None:
    problem = f"{channel}.{name} must be an http:// or https:// URL, got {url!r}"
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ChannelError(f"{problem}: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ChannelError(problem)
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise ChannelError(f"{problem}: port {parsed.port} is outside 1-65535")


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
        self._client = http_client(config.timeout, config.concurrency)

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
                response = await self._client.post(cfg.url, content=body, headers=headers)
            except httpx.TimeoutException as exc:
                # A receiver that hangs will not answer a second later either.
                return transport_outcome(ob.key, exc, cfg.timeout)
            except httpx.HTTPError as exc:
                outcome = transport_outcome(ob.key, exc, cfg.timeout)
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
