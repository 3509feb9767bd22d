"""The HTTP transport the webhook, push and SMS channels send through.

A thin layer over aiohttp's client: its C parser and connection pool cost about an
eighth of the CPU per request of httpx's (measured in ``docs/benchmarks.md``), and
delivery spends most of its time here. The channels see only :class:`HttpClient`,
:class:`HttpResponse` and three errors that say what matters for accounting:

- :class:`NotSent` — the request never left (no connection): a retry is safe;
- :class:`NoAnswer` — it left and no answer came within the timeout: it may have been
  acted on;
- :class:`HttpError` (the base) — anything else below HTTP after the request left.

The session is created on first use inside the running event loop (aiohttp binds a
session to its loop) and again if a later send runs on another loop.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlencode

import aiohttp
import orjson
import yarl

from propel.channels.base import ChannelError, Outbound, Outcome

log = logging.getLogger("propel.channels")
USER_AGENT = "Propel/0.1 (+https://github.com/propel)"


class HttpError(Exception):
    """The request left, and failed below HTTP: the receiver may have acted on it."""


class NotSent(HttpError):
    """No connection could be made: the request certainly did not arrive."""


class NoAnswer(HttpError):
    """No answer within the timeout."""


@dataclass
class HttpResponse:
    status_code: int
    headers: dict[str, str]  # names in lower case
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body as JSON; ``ValueError`` when it is not."""
        return orjson.loads(self.content)


def basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def form_body(fields: dict[str, str]) -> bytes:
    return urlencode(fields).encode()


FORM = "application/x-www-form-urlencoded"


class HttpClient:
    """A pooled client: at most ``concurrency`` connections, kept alive between
    batches, so a batch of N messages opens ``concurrency`` connections, not N."""

    def __init__(self, timeout: float, concurrency: int) -> None:
        self.timeout = timeout
        self.concurrency = concurrency
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _current(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._loop is not loop or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.concurrency, keepalive_timeout=30),
                # connect covers waiting for a pooled connection too
                timeout=aiohttp.ClientTimeout(total=None, connect=self.timeout,
                                              sock_read=self.timeout),
                headers={"User-Agent": USER_AGENT},
                auto_decompress=True,
            )
            self._loop = loop
        return self._session

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> HttpResponse:
        session = self._current()
        try:
            async with session.post(url, data=body, headers=headers,
                                    allow_redirects=False) as response:
                content = await response.read()
                return HttpResponse(response.status,
                                    {k.lower(): v for k, v in response.headers.items()},
                                    content)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError,
                aiohttp.InvalidURL) as exc:
            raise NotSent(f"cannot connect: {type(exc).__name__}: {exc}") from exc
        except (aiohttp.ServerTimeoutError, TimeoutError) as exc:
            raise NoAnswer(f"no answer within {self.timeout:g}s") from exc
        except aiohttp.ClientError as exc:
            raise HttpError(f"{type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            # RuntimeError: its loop is gone, nothing left to close politely
            with contextlib.suppress(RuntimeError):
                await session.close()


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


def transport_outcome(key: str, exc: HttpError) -> Outcome:
    """A request that failed below HTTP. Before the request left (connect failed) a
    retry is certainly safe; after it (no answer) the receiver may have acted on it,
    which the error says, so a caller can tell the two apart."""
    if isinstance(exc, NotSent):
        return Outcome(key, delivered=False, retryable=True, error=f"not sent: {exc}")
    return Outcome(key, delivered=False, retryable=True, error=f"outcome unknown: {exc}")


def retry_after_seconds(response: HttpResponse) -> float | None:
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


def snippet(response: HttpResponse, limit: int = 200) -> str:
    text = response.text.strip().replace("\n", " ")
    return text[:limit]


def http_error(response: HttpResponse) -> str:
    text = snippet(response)
    return f"HTTP {response.status_code}: {text}" if text else f"HTTP {response.status_code}"


def check_http_url(channel: str, name: str, url: str) -> None:
    problem = f"{channel}.{name} must be an http:// or https:// URL, got {url!r}"
    try:
        parsed = yarl.URL(url)
    except (ValueError, TypeError) as exc:
        detail = "its port is outside 1-65535" if "out of range" in str(exc) else str(exc)
        raise ChannelError(f"{problem}: {detail}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ChannelError(problem)
    if parsed.explicit_port == 0:
        raise ChannelError(f"{problem}: its port is outside 1-65535")
