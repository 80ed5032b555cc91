"""The raw bulk GET path against a scripted fake HTTP server: strict validation, keep-alive, errors."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import pytest
import trio

from rhvfs.errors import DataIntegrityError, ImageioError, ImageioUnavailable, TicketGone
from rhvfs.imageio._bulk import BulkPool

IMAGE = os.urandom(256 * 1024)

Responder = Callable[[int, int], bytes]  # (first, last) -> full response bytes


def good(first: int, last: int) -> bytes:
    body = IMAGE[first : last + 1]
    head = (
        f"HTTP/1.1 206 Partial Content\r\nServer: imageio/2.5.1\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Range: bytes {first}-{last}/{len(IMAGE)}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def error(status: int, text: str, *, close: bool = False) -> Responder:
    def respond(first: int, last: int) -> bytes:
        body = (text + "\n").encode()
        extra = "Connection: close\r\n" if close else ""
        return (
            f"HTTP/1.1 {status} X\r\nContent-Type: text/plain; charset=UTF-8\r\n{extra}Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )

    return respond


@dataclasses.dataclass
class FakeServer:
    script: list[tuple[Responder, bool]]  # per request: responder, close the connection after it
    connections: int = 0
    requests: int = 0
    port: int = 0

    async def handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                rng = next(
                    line
                    for line in head.decode().split("\r\n")
                    if line.lower().startswith("range:")
                )
                first, last = (int(x) for x in rng.split("=")[1].split("-"))
                responder, close = self.script[min(self.requests, len(self.script) - 1)]
                self.requests += 1
                await stream.send_all(responder(first, last))
                if close:
                    return
        finally:
            await stream.aclose()


async def start(nursery: trio.Nursery, server: FakeServer) -> str:
    listeners = await nursery.start(trio.serve_tcp, server.handle, 0)
    server.port = listeners[0].socket.getsockname()[1]
    return f"http://127.0.0.1:{server.port}/images/ticket-1"


async def read(
    url: str, offset: int, size: int, *, timeout_s: float = 10.0, pool: BulkPool | None = None
) -> bytes:
    own = pool is None
    pool = pool or BulkPool(url, ssl_context=None, connections=2, timeout_s=timeout_s)
    try:
        buf = bytearray(size)
        await pool.read_into(offset, memoryview(buf))
        return bytes(buf)
    finally:
        if own:
            await pool.aclose()


async def test_ranged_reads_fill_the_buffer_and_reuse_the_connection() -> None:
    server = FakeServer([(good, False)])
    async with trio.open_nursery() as nursery:
        url = await start(nursery, server)
        pool = BulkPool(url, ssl_context=None, connections=2, timeout_s=10)
        for offset, size in [(0, 1), (100, 100_000), (len(IMAGE) - 7, 7)]:
            assert await read(url, offset, size, pool=pool) == IMAGE[offset : offset + size]
        await pool.aclose()
        nursery.cancel_scope.cancel()
    assert (server.connections, server.requests) == (1, 3)
    assert (pool.requests, pool.bytes_received) == (3, 100_008)


def wrong_range(first: int, last: int) -> bytes:
    return good(first + 1, last + 1)


def wrong_length(first: int, last: int) -> bytes:
    return good(first, last).replace(
        f"Content-Length: {last - first + 1}".encode(), f"Content-Length: {last - first}".encode()
    )


def ok_200(first: int, last: int) -> bytes:
    return good(first, last).replace(b"206 Partial Content", b"200 OK")


def short_body(first: int, last: int) -> bytes:
    return good(first, last)[:-10]


@pytest.mark.parametrize(
    ("responder", "close", "exc", "status"),
    [
        (wrong_range, False, DataIntegrityError, None),
        (wrong_length, False, DataIntegrityError, None),
        (ok_200, False, DataIntegrityError, None),
        (short_body, True, ImageioUnavailable, None),
        (
            error(
                403, "You are not allowed to access this resource: Ticket t not found", close=True
            ),
            True,
            TicketGone,
            403,
        ),
        (error(416, "Requested range out of allowed range"), False, ImageioError, 416),
        (error(500, "backend failure"), False, ImageioUnavailable, 500),
        (error(400, "bad request"), False, ImageioError, 400),
    ],
)
async def test_protocol_violations_and_statuses(
    responder: Responder, close: bool, exc: type[Exception], status: int | None
) -> None:
    server = FakeServer([(responder, close)])
    async with trio.open_nursery() as nursery:
        url = await start(nursery, server)
        with pytest.raises(exc) as info:
            await read(url, 1000, 5000)
        nursery.cancel_scope.cancel()
    assert type(info.value) is exc
    assert getattr(info.value, "status", None) == status
    if status is not None:
        assert str(status) in str(info.value) or "not allowed" in str(info.value)


async def test_error_response_keeps_the_connection_usable() -> None:
    server = FakeServer([(error(416, "out of range"), False), (good, False)])
    async with trio.open_nursery() as nursery:
        url = await start(nursery, server)
        pool = BulkPool(url, ssl_context=None, connections=1, timeout_s=10)
        with pytest.raises(ImageioError):
            await read(url, 0, 10, pool=pool)
        assert await read(url, 0, 10, pool=pool) == IMAGE[:10]
        await pool.aclose()
        nursery.cancel_scope.cancel()
    # the 416 connection was closed (we never reuse after an error), so two connections
    assert server.connections == 2


async def test_stale_keep_alive_connection_is_replaced_transparently() -> None:
    # The server silently closes after each response (like imageio's inactivity timeout).
    server = FakeServer([(good, True)])
    async with trio.open_nursery() as nursery:
        url = await start(nursery, server)
        pool = BulkPool(url, ssl_context=None, connections=1, timeout_s=10)
        for i in range(3):
            assert await read(url, i * 10, 10, pool=pool) == IMAGE[i * 10 : i * 10 + 10]
            await trio.sleep(0.05)  # let the close reach us
        await pool.aclose()
        nursery.cancel_scope.cancel()
    assert (server.connections, server.requests) == (3, 3)


async def test_silent_server_times_out_as_transient() -> None:
    async def never(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, never, 0)
        port = listeners[0].socket.getsockname()[1]
        with pytest.raises(ImageioUnavailable, match="timed out"):
            await read(f"http://127.0.0.1:{port}/images/t", 0, 10, timeout_s=0.2)
        nursery.cancel_scope.cancel()


async def test_refused_connection_is_transient() -> None:
    with trio.socket.socket() as s:
        await s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ImageioUnavailable):
        await read(f"http://127.0.0.1:{port}/images/t", 0, 10)
