"""SmtpSession's reply reader against a raw TCP server on loopback that answers in
awkward pieces, as a real network may deliver them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import pytest

from propel.channels.smtp_session import BadReply, ConnectionLost, SmtpSession, data_block

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def session_with(script: Script, timeout: float = 2) -> tuple[SmtpSession, asyncio.Server]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            await script(reader, writer)
            await writer.drain()
            await reader.read()  # until the client hangs up
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, session = await asyncio.get_running_loop().create_connection(
        lambda: SmtpSession({"pipelining"}, timeout), "127.0.0.1", port)
    return session, server


async def test_replies_split_anywhere_are_read_whole_and_in_order() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        for piece in (b"25", b"0-first line\r\n250-sec", b"ond\r\n250 last\r\n354 go",
                      b" ahead\r\n", b"550 5.1.1 no\n"):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.01)

    session, server = await session_with(script)
    session.send(b"MAIL FROM:<a@b.test>\r\n")
    first = await session.reply()
    assert (first.code, first.message) == (250, "first line\nsecond\nlast")
    assert [(r.code, r.message) for r in [await session.reply(), await session.reply()]] == [
        (354, "go ahead"), (550, "5.1.1 no")]
    session.close()
    server.close()


async def test_garbage_closes_the_session_with_a_clear_error() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\n")

    session, server = await session_with(script)
    with pytest.raises(BadReply, match="not an SMTP reply: b'HTTP/1.1 400"):
        await session.reply()
    assert not session.is_open
    server.close()


async def test_hang_up_and_silence() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    session, server = await session_with(hang_up)
    with pytest.raises(ConnectionLost):
        await session.reply()
    with pytest.raises(ConnectionLost):
        session.send(b"NOOP\r\n")
    server.close()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pass  # reads, never answers

    session, server = await session_with(silent, timeout=0.2)
    with pytest.raises(TimeoutError):
        await session.command(b"NOOP\r\n")
    session.close()
    server.close()


def test_data_block_stuffs_leading_dots_and_ends_the_content() -> None:
    assert data_block(b".a\r\nb\r\n.\r\n..c") == b"..a\r\nb\r\n..\r\n...c\r\n.\r\n"
    assert data_block(b"x\r\n") == b"x\r\n.\r\n"
