"""SmtpPeer: a real SMTP server (aiosmtpd) on 127.0.0.1 that records what it receives.

It offers PIPELINING (RFC 2920) as production relays do, or not (``pipelining=False``):
aiosmtpd reads commands in order from a buffered stream, so it serves a pipelining
client correctly, but does not say so unless told; ``envelopes`` records for each MAIL
whether RCPT and DATA came with it. It can be told to answer chosen recipients with
any reply (``reject`` → 550, ``defer`` → 451), to refuse every MAIL or DATA, to drop
the line after taking a message's content, to close the connection after every N
messages, to require STARTTLS or implicit TLS, and to require AUTH. It counts TCP
connections, so a test can check that a batch travelled over one.
"""

from __future__ import annotations

import asyncio
import itertools
import warnings
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from . import Certificate, free_port

SMTP_LOGIN = ("propel", "s3cret-pass")  # what the TLS fixtures require


@dataclass
class ReceivedMail:
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes
    tls: bool
    login: str | None
    mail_options: list[str]

    @property
    def message(self) -> EmailMessage:
        return message_from_bytes(self.raw, policy=policy.default)  # type: ignore[return-value]

    @property
    def message_id(self) -> str:
        return str(self.message["Message-ID"])


class _Handler:
    def __init__(self, peer: SmtpPeer) -> None:
        self.peer = peer

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        if not self.peer.pipelining:
            return responses
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        # Whether RCPT and DATA came in the same write as MAIL, already waiting unread.
        waiting = bytes(getattr(server._reader, "_buffer", b""))
        if self.peer.mail_reply:
            return self.peer.mail_reply
        self.peer.envelopes.append("pipelined" if b"\r\nDATA\r\n" in waiting else "one by one")
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        reply = self.peer.rcpt_replies.get(address.lower())
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        peer = self.peer
        if peer.data_reply:
            return peer.data_reply
        if peer.vanish_in_data:  # took the content, then the line broke before the reply
            server.transport.abort()
            return "250 never heard"
        content = envelope.original_content or envelope.content or b""
        login = session.auth_data
        peer.received.append(ReceivedMail(
            mail_from=envelope.mail_from or "", rcpt_tos=list(envelope.rcpt_tos),
            raw=content if isinstance(content, bytes) else content.encode(),
            tls=server.transport.get_extra_info("ssl_object") is not None,
            login=login.login.decode() if isinstance(login, LoginPassword) else None,
            mail_options=list(envelope.mail_options)))
        queued = next(peer._ids)
        if peer.drop_after and len(peer.received) % peer.drop_after == 0:
            # Like a relay that ends the session after N messages: answer, then hang up.
            asyncio.get_running_loop().call_soon(server.transport.close)
        return f"250 2.0.0 Ok: queued as Q{queued:06d}"


class _CountingSMTP(SMTP):
    def __init__(self, peer: SmtpPeer, *args: Any, **kwargs: Any) -> None:
        with warnings.catch_warnings():
            # Implicit TLS is encrypted, but aiosmtpd cannot tell and warns about AUTH.
            warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS")
            super().__init__(*args, **kwargs)
        self._peer = peer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The controller's start-up probe connects before counting begins; its hang-up
        # may come later, so each connection remembers whether it counts.
        self._counted = self._peer.counting
        if self._counted:
            self._peer.connections += 1
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._counted:
            self._peer.disconnections += 1
        super().connection_lost(exc)

    async def smtp_EHLO(self, arg: str) -> None:  # noqa: N802
        if self._peer.refuse_greeting:
            await self.push("502 5.5.1 Not today")
            return
        await super().smtp_EHLO(arg)

    async def smtp_HELO(self, arg: str) -> None:  # noqa: N802
        if self._peer.refuse_greeting:
            await self.push("502 5.5.1 Not today")
            return
        await super().smtp_HELO(arg)


class _Controller(Controller):
    def __init__(self, peer: SmtpPeer, **kwargs: Any) -> None:
        self._peer = peer
        super().__init__(**kwargs)

    def factory(self) -> SMTP:
        return _CountingSMTP(self._peer, self.handler, **self.SMTP_kwargs)


class SmtpPeer:
    """``mode``: "plain", "starttls" (STARTTLS required) or "tls" (implicit TLS);
    ``credentials`` (user, password) makes AUTH required."""

    def __init__(self, *, mode: str = "plain", cert: Certificate | None = None,
                 credentials: tuple[str, str] | None = None, pipelining: bool = True) -> None:
        if mode != "plain" and cert is None:
            raise ValueError(f"mode {mode!r} needs a certificate")
        self.port = free_port()
        self.host = "127.0.0.1"
        self.received: list[ReceivedMail] = []
        self.pipelining = pipelining
        self.envelopes: list[str] = []  # per MAIL: "pipelined" or "one by one"
        self.rcpt_replies: dict[str, str] = {}
        self.data_reply: str | None = None
        self.mail_reply: str | None = None  # the answer to every MAIL FROM, if set
        self.vanish_in_data = False
        self.drop_after: int | None = None
        self.connections = 0
        self.disconnections = 0
        self.counting = False
        self.refuse_greeting = False  # answer EHLO and HELO with 502
        self.auth_failures = 0
        self._ids = itertools.count(1)
        self._credentials = credentials
        kwargs: dict[str, Any] = {"hostname": self.host, "port": self.port,
                                  "server_hostname": "peer.test", "ready_timeout": 10}
        if mode == "starttls":
            kwargs.update(tls_context=cert.server_context(), require_starttls=True)
        elif mode == "tls":
            kwargs["ssl_context"] = cert.server_context()
        if credentials:
            # aiosmtpd only knows about STARTTLS sessions being encrypted, so "require
            # TLS for AUTH" is left to the STARTTLS mode (implicit TLS always is).
            kwargs.update(authenticator=self._authenticate, auth_required=True,
                          auth_require_tls=mode == "starttls")
        self._controller = _Controller(self, handler=_Handler(self), **kwargs)

    def _authenticate(self, server: SMTP, session: Session, envelope: Envelope,
                      mechanism: str, auth_data: Any) -> AuthResult:
        ok = (isinstance(auth_data, LoginPassword) and self._credentials is not None
              and (auth_data.login.decode(), auth_data.password.decode()) == self._credentials)
        if not ok:
            self.auth_failures += 1
        # handled=False: aiosmtpd answers 235 or 535 itself.
        return AuthResult(success=ok, handled=False, auth_data=auth_data)

    # -- behaviour ---------------------------------------------------------------------

    def reject(self, address: str, reply: str = "550 5.1.1 No such user") -> None:
        self.rcpt_replies[address.lower()] = reply

    def defer(self, address: str, reply: str = "451 4.3.0 Try again later") -> None:
        self.rcpt_replies[address.lower()] = reply

    def to(self, address: str) -> list[ReceivedMail]:
        return [m for m in self.received if address in m.rcpt_tos]

    # -- life --------------------------------------------------------------------------

    def start(self) -> SmtpPeer:
        self._controller.start()
        self.counting = True  # the controller's own start-up probe is not a client
        return self

    def stop(self) -> None:
        self._controller.stop()

    def __enter__(self) -> SmtpPeer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
