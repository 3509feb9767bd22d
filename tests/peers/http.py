"""HttpPeer: an ASGI app served for real by uvicorn on 127.0.0.1 in a background thread.

It notes each TCP connection (by the client's source port) so tests can assert that a
channel reuses connections, and gives handlers ``hold()`` — wait until the peer stops —
to play a provider that accepted the request and never answered.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Self

import uvicorn

from . import free_port

ASGIApp = Any


class HttpPeer:
    def __init__(self, app: ASGIApp) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.client_ports: set[int] = set()  # one per TCP connection seen
        self.requests_seen = 0
        self._stopping = threading.Event()
        self._app = app
        config = uvicorn.Config(self._asgi, host="127.0.0.1", port=self.port, http="h11",
                                loop="asyncio", interface="asgi3", lifespan="off", log_config=None,
                                access_log=False, timeout_keep_alive=30)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name=f"peer-{self.port}",
                                        daemon=True)

    @property
    def connections(self) -> int:
        return len(self.client_ports)

    async def _asgi(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.client_ports.add(scope["client"][1])
            self.requests_seen += 1
        await self._app(scope, receive, send)

    async def hold(self, seconds: float = 3600) -> None:
        """Hold the request without answering until the peer stops (or ``seconds``)."""
        deadline = time.monotonic() + seconds
        while not self._stopping.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    def start(self) -> Self:
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"peer on port {self.port} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.should_exit = True
        self._thread.join(timeout=20)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
