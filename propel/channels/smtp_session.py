"""An open SMTP session's transactions, pipelined (RFC 2920) where the relay offers it.

aiosmtplib opens the session (TLS or STARTTLS, EHLO, AUTH); then ``SmtpSession``
takes over its transport and carries the messages. aiosmtplib reads exactly one reply
per command it awaited, and drops bytes that arrive while a parsed reply waits to be
picked up, so it cannot read the three replies of a pipelined MAIL, RCPT, DATA. Here
every reply is parsed into a queue as it arrives, in order; a transaction either
writes its envelope in one go and reads the three replies (relays with PIPELINING:
Postfix, Exim, the large sending services) or waits for each reply before the next
command. Either way the content goes out only after DATA's 354, so up to that reply
the relay has nothing of the message and a lost connection means "not sent".
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from dataclasses import dataclass
from typing import Any

MAX_REPLY = 64 * 1024  # bytes of one reply, well above any real relay's longest


class ConnectionLost(ConnectionError):
    """The relay closed the connection, or it broke."""


class BadReply(ConnectionError):
    """The relay answered something that is not an SMTP reply; the session is unusable."""


@dataclass(frozen=True)
class Reply:
    code: int
    message: str


def data_block(message: bytes) -> bytes:
    """The content as it follows DATA: dot-stuffed, CRLF-terminated, then ``.``."""
    stuffed = message.replace(b"\n.", b"\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    if not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    return stuffed + b".\r\n"


class SmtpSession(asyncio.Protocol):
    """The protocol of an SMTP connection after its greeting: ``send`` writes command
    lines, ``reply`` returns the next reply in order (waiting at most ``timeout``)."""

    def __init__(self, extensions: set[str], timeout: float) -> None:
        self.extensions = extensions
        self.timeout = timeout
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._replies: collections.deque[Reply] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._error: ConnectionError | None = None

    @classmethod
    def take_over(cls, smtp: Any, timeout: float) -> SmtpSession:
        """Move an open, greeted ``aiosmtplib.SMTP`` connection to a new session.
        ``smtp`` must not be used afterwards."""
        transport = smtp.transport
        session = cls(set(smtp.esmtp_extensions), timeout)
        transport.set_protocol(session)
        session.connection_made(transport)
        return session

    @property
    def pipelining(self) -> bool:
        return "pipelining" in self.extensions

    def supports(self, extension: str) -> bool:
        return extension in self.extensions

    @property
    def is_open(self) -> bool:
        return (self._error is None and self._transport is not None
                and not self._transport.is_closing())

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while (end := self._buffer.find(b"\n")) >= 0:
            if not self._take_reply(end):
                break
        if len(self._buffer) > MAX_REPLY:
            self._fail(BadReply("reply too long"))
        self._wake()

    def _take_reply(self, end: int) -> bool:
        """Move the complete reply at the start of the buffer to the queue, if there is
        one: lines ``250-...`` continue it, ``250 ...`` ends it."""
        lines: list[bytes] = []
        start = 0
        while end >= 0:
            line = bytes(self._buffer[start:end]).rstrip(b"\r")
            if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in (b"", b" ", b"-"):
                self._fail(BadReply(f"not an SMTP reply: {line[:80]!r}"))
                return False
            lines.append(line)
            start = end + 1
            if line[3:4] != b"-":
                text = b"\n".join(part[4:].strip() for part in lines)
                self._replies.append(Reply(int(line[:3]), text.decode("utf-8", "replace")))
                del self._buffer[:start]
                return True
            end = self._buffer.find(b"\n", start)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._error is None:
            reason = f": {type(exc).__name__}: {exc}" if exc else ""
            self._error = ConnectionLost(f"the relay closed the connection{reason}")
        self._wake()

    def eof_received(self) -> bool:
        return False  # close our side too

    def _fail(self, error: ConnectionError) -> None:
        self._error = error
        self._buffer.clear()
        if self._transport is not None:
            self._transport.close()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- the conversation --------------------------------------------------------------

    def send(self, *lines: bytes) -> None:
        """Write command lines (each ending in CRLF) or a data block, in one write."""
        if not self.is_open:
            raise self._error or ConnectionLost("the connection is closed")
        self._transport.write(b"".join(lines))  # type: ignore[union-attr]

    async def reply(self) -> Reply:
        """The next reply; ``TimeoutError`` after ``timeout`` seconds of silence,
        ``ConnectionError`` when the connection is gone."""
        while not self._replies:
            if self._error is not None:
                raise self._error
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(self.timeout):
                    await self._waiter
            finally:
                self._waiter = None
        return self._replies.popleft()

    async def command(self, line: bytes) -> Reply:
        self.send(line)
        return await self.reply()

    async def quit(self, timeout: float) -> None:
        """QUIT politely (waiting at most ``timeout``), then close."""
        with contextlib.suppress(ConnectionError, TimeoutError):
            self.send(b"QUIT\r\n")
            async with asyncio.timeout(timeout):
                await self.reply()
        self.close()

    def close(self) -> None:
        if self._error is None:
            self._error = ConnectionLost("the connection is closed")
        if self._transport is not None:
            self._transport.close()
