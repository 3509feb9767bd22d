"""E-mail over SMTP: aiosmtplib opens each connection, ``SmtpSession`` carries the mail.

Connections stay open from batch to batch: opening a TLS session and logging in costs
more than sending a message, and relays throttle clients that reconnect for every
mail. A small batch travels over one connection; a large one is spread over up to
``connections`` (default 4) side by side, because each message waits on the relay's
replies, and one connection spends much of its time waiting. Where the relay offers
PIPELINING, MAIL, RCPT and DATA go out in one write (two round trips a message instead
of four). The content goes out only after DATA's 354, so when the connection drops it
is known whether the relay could have the message: before the content it cannot, and
the message is resent at once on a new connection; after it it may, and the message is
answered retryable ("outcome unknown"). If a connection cannot be (re)opened, the rest
of the batch is answered retryable at once instead of waiting out a timeout per
message.

Outcomes follow SMTP's own classes: 250 → delivered; 4xx (or no answer) → retryable;
5xx on RCPT for the *address* (550 / 5.1.x "no such user", 5.2.1 "mailbox disabled")
→ bounced, which revokes e-mail consent upstream; any other 5xx → failed. A 5xx that
is about *us* (5.7.1 relaying denied, 5.7.x policy) is not a bounce: treating it as one
would revoke consent for every recipient of a misconfigured relay.

The Message-ID is ``<{key}@{domain}>``: stable per message, so a resend after a crash
is recognisable as the same mail (``dedupes = True``).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from dataclasses import dataclass, field
from email.utils import formatdate, parseaddr
from functools import lru_cache
from typing import ClassVar

import aiosmtplib

from propel.channels.base import ChannelError, Outbound, Outcome
from propel.channels.html_text import html_to_text
from propel.channels.mime import message_bytes
from propel.channels.smtp_session import ConnectionLost, Reply, SmtpSession, data_block
from propel.mailbox import MAILBOX

SECURITY = ("starttls", "tls", "none")
_DEFAULT_PORTS = {"starttls": 587, "tls": 465, "none": 25}
# Set by the channel itself (or never sent); a caller's header of the same name is ignored.
LANE_MIN = 50  # messages a connection should carry before another one is opened
_STRUCTURAL = {"content-type", "content-transfer-encoding", "mime-version", "bcc"}
_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")


@dataclass(frozen=True)
class EmailConfig:
    """SMTP relay settings; ``registry`` validates and stores them per account."""

    SECRETS: ClassVar[tuple[str, ...]] = ("password",)

    host: str = field(metadata={"help": "SMTP relay host name or IP."})
    from_address: str = field(
        metadata={"help": 'From header, e.g. "Shop <news@shop.example>".'})
    port: int | None = field(
        default=None, metadata={"min": 1, "max": 65535,
                                "help": "Default 587 (starttls), 465 (tls), 25 (none)."})
    security: str = field(
        default="starttls",
        metadata={"choices": SECURITY,
                  "help": "starttls: upgrade a plain connection (required, never silently "
                          "skipped); tls: TLS from the first byte; none: plain text."})
    username: str | None = field(default=None, metadata={"help": "SMTP AUTH user."})
    password: str | None = field(default=None, repr=False, metadata={"help": "SMTP AUTH password."})
    reply_to: str | None = field(default=None, metadata={"help": "Reply-To header."})
    return_path: str | None = field(
        default=None,
        metadata={"help": "Envelope sender (MAIL FROM) that receives bounces; "
                          "default the From address."})
    message_id_domain: str | None = field(
        default=None, metadata={"help": "Domain of Message-IDs; default the From domain."})
    local_hostname: str | None = field(
        default=None, metadata={"help": "Name sent in EHLO; default the From domain."})
    timeout: float = field(
        default=30.0, metadata={"min": 0.1, "max": 600,
                                "help": "Seconds to wait for any one SMTP reply."})
    validate_certs: bool = field(
        default=True, metadata={"help": "Verify the relay's TLS certificate."})
    connections: int = field(
        default=4, metadata={"min": 1, "max": 32,
                             "help": "SMTP connections a large batch is spread over; a batch "
                                     "of fewer than 50 messages per connection uses fewer."})
    ca_file: str | None = field(
        default=None, metadata={"help": "PEM bundle to verify the relay with (private CA)."})

    def __post_init__(self) -> None:
        if "@" not in self.from_addr:
            raise ChannelError(
                f"email.from_address must contain an address like news@shop.example, "
                f"got {self.from_address!r}")
        if self.return_path is not None and "@" not in _bare_address(self.return_path):
            raise ChannelError("email.return_path must be an e-mail address")
        if self.username and not self.password:
            raise ChannelError("email.password is required when email.username is set")
        if self.password and not self.username:
            raise ChannelError("email.username is required when email.password is set")

    @property
    def from_addr(self) -> str:
        return _bare_address(self.from_address)

    @property
    def domain(self) -> str:
        return self.message_id_domain or self.from_addr.rpartition("@")[2]

    @property
    def resolved_port(self) -> int:
        return self.port or _DEFAULT_PORTS[self.security]


@lru_cache(maxsize=1)
def _date_at(second: int) -> str:
    return formatdate(second, usegmt=True)


def _date() -> str:
    """The Date header, formatted once a second rather than once a message."""
    return _date_at(int(time.time()))


def _is_address_bounce(code: int, message: str) -> bool:
    """A permanent failure about the recipient's address, not about us or the content."""
    if code < 500:
        return False
    enhanced = _ENHANCED.match(message or "")
    if enhanced:
        klass, subject, detail = enhanced.groups()
        # 5.1.x: bad mailbox / domain / syntax / moved; 5.2.1: mailbox disabled.
        return klass == "5" and (subject == "1" or (subject == "2" and detail == "1"))
    return code in (550, 551, 553)


def wire_message(config: EmailConfig, ob: Outbound, *, utf8: bool = False) -> bytes:
    """The message exactly as it goes on the wire. ``ValueError`` when a header value
    holds a line break."""
    headers = [("From", config.from_address), ("To", ob.to or ""), ("Subject", ob.subject),
               ("Date", _date()), ("Message-ID", f"<{ob.key}@{config.domain}>")]
    if config.reply_to:
        headers.append(("Reply-To", config.reply_to))
    fixed = {name.lower() for name, _ in headers}
    for name, value in ob.headers.items():
        lower = name.lower()
        if lower in _STRUCTURAL:
            continue
        if lower in fixed:  # the caller's value wins over ours
            headers = [(n, v) for n, v in headers if n.lower() != lower]
        headers.append((name, value))
    return message_bytes(ob.key, headers, ob.text or html_to_text(ob.html), ob.html,
                         utf8=utf8)


class EmailChannel:
    """Sends each batch over up to ``config.connections`` SMTP connections, kept open
    between batches: a large batch is split into contiguous runs, one per connection,
    sent side by side; a batch of fewer than ``LANE_MIN`` messages per connection uses
    fewer connections (a small one, a single connection)."""

    name = "email"
    dedupes = True

    def __init__(self, config: EmailConfig) -> None:
        self.config = config
        self._lanes = [_Lane(config) for _ in range(config.connections)]

    @property
    def connections(self) -> int:
        """Connections opened so far; tests and metrics read it."""
        return sum(lane.connections for lane in self._lanes)

    async def send(self, batch: list[Outbound]) -> list[Outcome]:
        if not batch:
            return []
        lanes = min(len(self._lanes), max(1, len(batch) // LANE_MIN))
        size = -(-len(batch) // lanes)
        runs = [batch[start:start + size] for start in range(0, len(batch), size)]
        results = await asyncio.gather(*(lane.send(run) for lane, run in zip(self._lanes, runs,
                                                                             strict=False)))
        return [outcome for result in results for outcome in result]

    async def aclose(self) -> None:
        for lane in self._lanes:
            await lane.close()


@lru_cache(maxsize=64)
def _bare_address(value: str) -> str:
    """The address part of ``Name <addr>``: parsed once per configured value, not once
    per message."""
    return parseaddr(value)[1]


def _envelope_address(address: str) -> str:
    """``<address>`` for MAIL FROM and RCPT TO; ``ValueError`` for anything else. Not
    the lenient parse of ``email.utils.parseaddr`` (aiosmtplib's): that turns
    ``a"b@shop.example`` into ``a`` and ``x<y@shop.example`` into ``y@shop.example``,
    another recipient than the profile names."""
    if MAILBOX.fullmatch(address):
        return f"<{address}>"
    raise ValueError(f"{address!r} is not a mailbox (local-part@domain) SMTP can carry")


async def _greet(smtp: aiosmtplib.SMTP) -> None:
    """EHLO (HELO if refused) unless connecting did: now, not at the first MAIL, so the
    first message of a connection already knows the relay's extensions (SIZE, 8BITMIME,
    SMTPUTF8)."""
    if smtp.is_ehlo_or_helo_needed:
        try:
            await smtp.ehlo()
        except aiosmtplib.SMTPHeloError:
            await smtp.helo()


class _Lane:
    """One SMTP connection and the conversation on it, one message at a time."""

    def __init__(self, config: EmailConfig) -> None:
        self.config = config
        self.connections = 0
        self._session: SmtpSession | None = None
        self._down: str | None = None
        self._lock = asyncio.Lock()

    async def send(self, batch: list[Outbound]) -> list[Outcome]:
        async with self._lock:  # one SMTP conversation at a time on the connection
            self._down = None  # every batch gets a fresh chance to connect
            return [await self._send_one(ob) for ob in batch]

    async def _send_one(self, ob: Outbound) -> Outcome:
        if not ob.to:
            return Outcome(ob.key, delivered=False, error="no e-mail address")
        for attempt in (1, 2):
            if self._down is not None:
                return Outcome(ob.key, delivered=False, retryable=True, error=self._down)
            try:
                session = await self._connection()
            except aiosmtplib.SMTPAuthenticationError as exc:
                self._down = f"SMTP login refused: {exc.code} {exc.message}"
                continue
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                cfg = self.config
                self._down = (f"cannot connect to {cfg.host}:{cfg.resolved_port}: "
                              f"{type(exc).__name__}: {exc}")
                continue
            stage = ["mail"]
            try:
                return await self._transaction(session, ob, stage)
            except ConnectionLost as exc:
                self.drop()
                if stage[-1] != "data" and attempt == 1:
                    # The server hung up before taking any of this message (an idle
                    # connection it had closed, a restart): resend on a new connection.
                    continue
                return self._lost(ob, stage[-1], exc)
            except (OSError, TimeoutError) as exc:
                self.drop()
                return self._lost(ob, stage[-1], exc)
        return Outcome(ob.key, delivered=False, retryable=True, error=self._down)

    async def _transaction(self, session: SmtpSession, ob: Outbound, stage: list[str]
                           ) -> Outcome:
        """MAIL, RCPT, DATA, then the content once DATA is answered 354, so a failure is
        known to be before or after the relay took the message (``stage`` records how
        far it got)."""
        sender = self.config.return_path or self.config.from_addr
        to = ob.to or ""
        utf8 = not (sender + to).isascii()
        if utf8 and not session.supports("smtputf8"):
            return Outcome(ob.key, delivered=False,
                           error="the relay cannot send to non-ASCII addresses (no SMTPUTF8)")
        try:
            mail_from, rcpt_to = _envelope_address(sender), _envelope_address(to)
        except ValueError as exc:
            return Outcome(ob.key, delivered=False, error=f"invalid address: {exc}")
        try:
            raw = wire_message(self.config, ob, utf8=utf8)
        except (ValueError, TypeError) as exc:  # e.g. a header value with a line break
            return Outcome(ob.key, delivered=False, error=f"invalid message: {exc}")
        encoding = "utf-8" if utf8 else "ascii"
        envelope = [b"MAIL FROM:" + mail_from.encode(encoding) + _mail_options(session, raw, utf8),
                    b"RCPT TO:" + rcpt_to.encode(encoding) + b"\r\n", b"DATA\r\n"]
        replies = await _envelope_replies(session, envelope)
        mail = replies[0]
        if mail.code != 250:
            return await self._rejected(session, ob, mail, replies, at_rcpt=False)
        stage.append("rcpt")
        rcpt = replies[1]
        if rcpt.code not in (250, 251):
            return await self._rejected(session, ob, rcpt, replies, at_rcpt=True)
        data = replies[2]
        if data.code != 354:
            return await self._rejected(session, ob, data, replies, at_rcpt=False)
        stage.append("data")
        session.send(data_block(raw))
        done = await session.reply()
        if done.code != 250:
            return self._refused(ob, done, at_rcpt=False)
        return Outcome(ob.key, delivered=True, provider_ref=done.message[:200] or None)

    @staticmethod
    def _lost(ob: Outbound, stage: str, exc: BaseException) -> Outcome:
        what = "outcome unknown" if stage == "data" else "not sent"
        # After DATA the relay may have the message; a resend keeps its Message-ID.
        return Outcome(ob.key, delivered=False, retryable=True,
                       error=f"{what}: connection lost at {stage.upper()}: "
                             f"{type(exc).__name__}: {exc}")

    async def _rejected(self, session: SmtpSession, ob: Outbound, reply: Reply,
                        replies: list[Reply], *, at_rcpt: bool) -> Outcome:
        """A refused envelope: end it cleanly so the connection carries the next one."""
        if reply.code == 421:  # the server is closing this connection
            self.drop()
        elif session.is_open:
            with contextlib.suppress(ConnectionError, TimeoutError):
                if len(replies) == 3 and replies[2].code == 354:
                    # A pipelined DATA the relay accepted without a recipient: an empty
                    # content ends it (RFC 2920 3.1), and RSET makes sure nothing is kept.
                    session.send(b".\r\n")
                    await session.reply()
                await session.command(b"RSET\r\n")
        return self._refused(ob, reply, at_rcpt=at_rcpt)

    @staticmethod
    def _refused(ob: Outbound, reply: Reply, *, at_rcpt: bool) -> Outcome:
        error = f"{reply.code} {reply.message}".strip()
        if 400 <= reply.code < 500 or reply.code < 200:
            return Outcome(ob.key, delivered=False, retryable=True, error=error)
        bounced = at_rcpt and _is_address_bounce(reply.code, reply.message)
        return Outcome(ob.key, delivered=False, bounced=bounced, error=error)

    # -- the connection ------------------------------------------------------------

    async def _connection(self) -> SmtpSession:
        if self._session is not None and self._session.is_open:
            return self._session
        self.drop()
        cfg = self.config
        smtp = aiosmtplib.SMTP(
            hostname=cfg.host,
            port=cfg.resolved_port,
            username=cfg.username,
            password=cfg.password,
            use_tls=cfg.security == "tls",
            start_tls=cfg.security == "starttls",
            validate_certs=cfg.validate_certs,
            cert_bundle=cfg.ca_file,
            timeout=cfg.timeout,
            # Without this aiosmtplib calls socket.getfqdn(), a blocking DNS lookup.
            local_hostname=cfg.local_hostname or cfg.domain,
        )
        await smtp.connect()
        try:
            await _greet(smtp)
        except BaseException:
            smtp.close()
            raise
        self.connections += 1
        self._session = SmtpSession.take_over(smtp, cfg.timeout)
        return self._session

    def drop(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.close()

    async def close(self) -> None:
        """QUIT and close."""
        session, self._session = self._session, None
        if session is not None:
            await session.quit(min(self.config.timeout, 5))


def _mail_options(session: SmtpSession, raw: bytes, utf8: bool) -> bytes:
    """MAIL FROM's parameters, with the CRLF: SIZE, SMTPUTF8 and BODY=8BITMIME as the
    relay offers them."""
    options = b""
    if session.supports("size"):
        options += b" SIZE=%d" % len(raw)
    if utf8:
        options += b" SMTPUTF8"
    if session.supports("8bitmime"):
        options += b" BODY=8BITMIME"
    return options + b"\r\n"


async def _envelope_replies(session: SmtpSession, envelope: list[bytes]) -> list[Reply]:
    """The replies to MAIL, RCPT and DATA: all three written at once where the relay
    pipelines, else one by one, stopping at the first refusal (a relay without
    PIPELINING must not see DATA after a refused RCPT)."""
    if session.pipelining:
        session.send(*envelope)
        return [await session.reply() for _ in envelope]
    replies: list[Reply] = []
    for line, accepted in zip(envelope, ((250,), (250, 251), (354,)), strict=True):
        replies.append(await session.command(line))
        if replies[-1].code not in accepted:
            break
    return replies
