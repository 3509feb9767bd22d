"""A recording fake of the channel interface, for unit tests of what sits above it.

The outbox, delivery workers and crash recovery must be tested against every answer a
channel can give — delivered, retryable, failed, bounced, no answer at all, an
exception — without a network. Tests that need the wire itself use the real peers in
``tests/peers`` and the real channels instead.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

from propel.channels.base import Outbound, Outcome

KINDS = ("transient", "permanent", "bounce")


@dataclass
class _Script:
    kind: str
    times: int | None  # None: every time
    error: str


@dataclass
class FakeChannel:
    """Records every batch; answers delivered unless told otherwise per key.

    ``fail(key, kind)`` makes a key fail (``transient`` → retryable, ``permanent`` →
    failed, ``bounce`` → bounced), for ``times`` sends or forever; ``hang(key)`` makes
    any batch holding the key wait until ``release()``; ``crash(exc)`` makes the next
    ``send`` raise, as a channel with a bug would.
    """

    name: str = "fake"
    dedupes: bool = True
    delay: float = 0.0  # seconds each send takes, to widen race windows in tests
    batches: list[list[Outbound]] = field(default_factory=list, init=False)
    attempts: Counter[str] = field(default_factory=Counter, init=False)
    closed: bool = field(default=False, init=False)
    _scripts: dict[str, _Script] = field(default_factory=dict, init=False, repr=False)
    _hung: set[str] = field(default_factory=set, init=False, repr=False)
    _release: asyncio.Event | None = field(default=None, init=False, repr=False)
    _crash: BaseException | None = field(default=None, init=False, repr=False)

    # -- what happened ---------------------------------------------------------------

    @property
    def sent(self) -> list[Outbound]:
        """Every message handed to the channel, in order, repeats included."""
        return [ob for batch in self.batches for ob in batch]

    @property
    def keys(self) -> list[str]:
        return [ob.key for ob in self.sent]

    # -- what to do ------------------------------------------------------------------

    def fail(self, key: str, kind: str = "transient", *, times: int | None = None,
             error: str | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")
        self._scripts[key] = _Script(kind, times, error or f"fake {kind} failure")

    def hang(self, *keys: str) -> None:
        self._hung.update(keys)

    def release(self) -> None:
        self._hung.clear()
        if self._release is not None:
            self._release.set()

    def crash(self, exc: BaseException | None = None) -> None:
        self._crash = exc or RuntimeError("fake channel crashed")

    # -- the interface -----------------------------------------------------------------

    async def send(self, batch: list[Outbound]) -> list[Outcome]:
        if self.closed:
            raise RuntimeError("send on a closed channel")
        self.batches.append(list(batch))
        if self._crash is not None:
            exc, self._crash = self._crash, None
            raise exc
        if self.delay:
            await asyncio.sleep(self.delay)
        if any(ob.key in self._hung for ob in batch):
            if self._release is None or self._release.is_set():
                self._release = asyncio.Event()
            await self._release.wait()
        return [self._answer(ob) for ob in batch]

    async def aclose(self) -> None:
        self.closed = True

    def _answer(self, ob: Outbound) -> Outcome:
        self.attempts[ob.key] += 1
        script = self._scripts.get(ob.key)
        if script is None or script.times == 0:
            return Outcome(ob.key, delivered=True, provider_ref=f"fake-{ob.key}")
        if script.times is not None:
            script.times -= 1
        if script.kind == "transient":
            return Outcome(ob.key, delivered=False, retryable=True, error=script.error)
        if script.kind == "bounce":
            return Outcome(ob.key, delivered=False, bounced=True, error=script.error)
        return Outcome(ob.key, delivered=False, error=script.error)
