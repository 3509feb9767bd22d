"""The one interface where messages leave Propel.

Every channel takes a batch of :class:`Outbound` messages and answers one
:class:`Outcome` per message. ``dedupes`` says whether the receiver deduplicates on
our stable message key (e-mail Message-ID, webhook idempotency key, inbox id): only
then may a message whose outcome is unknown after a crash be sent again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class Outbound:
    key: str  # stable per (dispatch, user): Message-ID, idempotency key, inbox id
    account_id: str
    campaign_id: str
    identity: str
    to: str | None  # e-mail address, E.164 phone, push token, or None
    subject: str = ""
    html: str = ""
    text: str = ""
    title: str = ""
    body: str = ""
    url: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Outcome:
    key: str
    delivered: bool  # SMTP 250, webhook 2xx, inbox stored, provider accepted
    retryable: bool = False  # a transient failure: try again later
    error: str | None = None
    provider_ref: str | None = None
    bounced: bool = False  # permanent address failure: update consent

    @property
    def unknown(self) -> bool:
        """The request went out but no answer came back: it may have arrived."""
        return not self.delivered and (self.error or "").startswith("outcome unknown")


class Channel(Protocol):
    name: str
    dedupes: bool

    async def send(self, batch: list[Outbound]) -> list[Outcome]: ...

    async def aclose(self) -> None: ...


class ChannelError(Exception):
    """A channel is misconfigured; the message says which setting."""
