"""The raw bulk GET path against a scripted fake HTTP server, over plain TCP and over TLS:
strict validation, keep-alive, errors, cancellation."""

from __future__ import annotations

import dataclasses
import functools
import os
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from rhvfs.errors import DataIntegrityError, ImageioError, ImageioUnavailable, TicketGone
from rhvfs.imageio._bulk import BulkPool
from rhvfs.sim.pki import ensure_pki

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


class Requests:
    """The GETs a client sends on one connection, read one at a time."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self._buf = b""

    async def next_range(self) -> tuple[int, int] | None:
        """The (first, last) byte of the next GET's Range header; None once the client closed."""
        while b"\r\n\r\n" not in self._buf:
            data = await self._stream.receive_some(65536)
            if not data:
                return None
            self._buf += data
        head, _, self._buf = self._buf.partition(b"\r\n\r\n")
        rng = next(x for x in head.decode().split("\r\n") if x.lower().startswith("range:"))
        first, last = (int(x) for x in rng.split("=")[1].split("-"))
        return first, last


@dataclasses.dataclass
class FakeServer:
    script: list[tuple[Responder, bool]]  # per request: responder, close the connection after it
    connections: int = 0
    requests: int = 0

    async def handle(self, stream: trio.abc.Stream) -> None:
        self.connections += 1
        requests = Requests(stream)
        try:
            while asked := await requests.next_range():
                first, last = asked
                responder, close = self.script[min(self.requests, len(self.script) - 1)]
                self.requests += 1
                await stream.send_all(responder(first, last))
                if close:
                    return
        except trio.BrokenResourceError:
            pass  # the client cut the connection (over TLS: without a close_notify)
        finally:
            await trio.aclose_forcefully(stream)


@dataclasses.dataclass(frozen=True)
class Transport:
    """How the fake server is reached: plain HTTP, or HTTPS with a certificate of a test CA."""

    server_context: ssl.SSLContext | None
    client_context: ssl.SSLContext | None

    @property
    def scheme(self) -> str:
        return "https" if self.server_context else "http"

    def wrap(
        self, handler: Callable[[trio.abc.Stream], Awaitable[None]]
    ) -> Callable[[trio.SocketStream], Awaitable[None]]:
        context = self.server_context
        if context is None:
            return handler

        async def tls(stream: trio.SocketStream) -> None:
            await handler(trio.SSLStream(stream, context, server_side=True))

        return tls


PLAIN = Transport(None, None)


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pki")


@pytest.fixture(params=["http", "https"])
def transport(request: pytest.FixtureRequest, test_ca: Path) -> Transport:
    if request.param == "http":
        return PLAIN
    pki = ensure_pki(test_ca, [])
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(pki.cert_file, pki.key_file)
    return Transport(server, ssl.create_default_context(cafile=pki.ca_file))


def new_pool(
    url: str, transport: Transport, *, connections: int = 2, timeout_s: float = 10.0
) -> BulkPool:
    context = transport.client_context
    return BulkPool(url, ssl_context=context, connections=connections, timeout_s=timeout_s)


async def serve(
    nursery: trio.Nursery,
    transport: Transport,
    handler: Callable[[trio.abc.Stream], Awaitable[None]],
) -> str:
    """Serve ``handler`` on a new port; the ticket URL of it."""
    listeners = await nursery.start(
        functools.partial(trio.serve_tcp, host="127.0.0.1"), transport.wrap(handler), 0
    )
    port = listeners[0].socket.getsockname()[1]
    return f"{transport.scheme}://127.0.0.1:{port}/images/ticket-1"


async def read(
    url: str,
    offset: int,
    size: int,
    *,
    transport: Transport = PLAIN,
    timeout_s: float = 10.0,
    pool: BulkPool | None = None,
) -> bytes:
    own = pool is None
    pool = pool or new_pool(url, transport, timeout_s=timeout_s)
    try:
        buf = bytearray(size)
        await pool.read_into(offset, memoryview(buf))
        return bytes(buf)
    finally:
        if own:
            await pool.aclose()


async def test_ranged_reads_fill_the_buffer_and_reuse_the_connection(transport: Transport) -> None:
    server = FakeServer([(good, False)])
    async with trio.open_nursery() as nursery:
        url = await serve(nursery, transport, server.handle)
        pool = new_pool(url, transport, connections=2)
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
    responder: Responder,
    close: bool,
    exc: type[Exception],
    status: int | None,
    transport: Transport,
) -> None:
    server = FakeServer([(responder, close)])
    async with trio.open_nursery() as nursery:
        url = await serve(nursery, transport, server.handle)
        with pytest.raises(exc) as info:
            await read(url, 1000, 5000, transport=transport)
        nursery.cancel_scope.cancel()
    assert type(info.value) is exc
    assert getattr(info.value, "status", None) == status
    if status is not None:
        assert str(status) in str(info.value) or "not allowed" in str(info.value)


async def test_error_response_keeps_the_connection_usable(transport: Transport) -> None:
    server = FakeServer([(error(416, "out of range"), False), (good, False)])
    async with trio.open_nursery() as nursery:
        url = await serve(nursery, transport, server.handle)
        pool = new_pool(url, transport, connections=1)
        with pytest.raises(ImageioError):
            await read(url, 0, 10, pool=pool)
        assert await read(url, 0, 10, pool=pool) == IMAGE[:10]
        await pool.aclose()
        nursery.cancel_scope.cancel()
    # the 416 connection was closed (we never reuse after an error), so two connections
    assert server.connections == 2


async def test_stale_keep_alive_connection_is_replaced_transparently(transport: Transport) -> None:
    # The server silently closes after each response (like imageio's inactivity timeout).
    server = FakeServer([(good, True)])
    async with trio.open_nursery() as nursery:
        url = await serve(nursery, transport, server.handle)
        pool = new_pool(url, transport, connections=1)
        for i in range(3):
            assert await read(url, i * 10, 10, pool=pool) == IMAGE[i * 10 : i * 10 + 10]
            await trio.sleep(0.05)  # let the close reach us
        await pool.aclose()
        nursery.cancel_scope.cancel()
    assert (server.connections, server.requests) == (3, 3)


async def test_silent_server_times_out_as_transient(transport: Transport) -> None:
    async def never(stream: trio.abc.Stream) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        url = await serve(nursery, transport, never)
        with pytest.raises(ImageioUnavailable, match="timed out"):
            await read(url, 0, 10, transport=transport, timeout_s=0.2)
        nursery.cancel_scope.cancel()


async def test_refused_connection_is_transient() -> None:
    with trio.socket.socket() as s:
        await s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ImageioUnavailable):
        await read(f"http://127.0.0.1:{port}/images/t", 0, 10)


class StallingServer:
    """Answers a GET with its headers and the first half of the body, then holds the rest
    until ``release`` is set (a data plane that stops in the middle of a response)."""

    def __init__(self) -> None:
        self.release = trio.Event()
        self.requests = 0

    async def handle(self, stream: trio.abc.Stream) -> None:
        requests = Requests(stream)
        try:
            while asked := await requests.next_range():
                first, last = asked
                self.requests += 1
                response = good(first, last)
                if self.requests > 1:
                    await stream.send_all(response)
                    continue
                half = len(response) - (last - first + 1) // 2
                await stream.send_all(response[:half])
                await self.release.wait()
                await stream.send_all(response[half:])
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)


async def test_a_read_cancelled_mid_body_returns_at_once_and_leaves_its_buffer_alone(
    transport: Transport,
) -> None:
    """The reader's buffer is recycled for other chunks once a cancelled read returns: no
    byte may land in it afterwards, even when the rest of the response arrives later."""
    server = StallingServer()
    size = 200_000
    async with trio.open_nursery() as nursery:
        url = await serve(nursery, transport, server.handle)
        pool = new_pool(url, transport, connections=1)
        buf = bytearray(size)
        started = trio.current_time()
        with trio.move_on_after(0.3) as scope:
            await pool.read_into(1000, memoryview(buf))
        assert scope.cancelled_caught
        assert trio.current_time() - started < 1.5
        at_return = bytes(buf)
        assert at_return[: size // 4] == IMAGE[1000 : 1000 + size // 4]  # the first half came
        assert at_return[-1000:] == bytes(1000)
        server.release.set()
        await trio.sleep(0.3)
        assert bytes(buf) == at_return
        # The cut connection is not reused: the next read gets a new one and all its bytes.
        assert await read(url, 5, size, pool=pool) == IMAGE[5 : 5 + size]
        assert server.requests == 2
        await pool.aclose()
        nursery.cancel_scope.cancel()


async def test_a_body_that_stops_arriving_times_out_as_transient(transport: Transport) -> None:
    server = StallingServer()
    async with trio.open_nursery() as nursery:
        url = await serve(nursery, transport, server.handle)
        started = trio.current_time()
        with pytest.raises(ImageioUnavailable, match="timed out"):
            await read(url, 0, 100_000, transport=transport, timeout_s=0.3)
        assert trio.current_time() - started < 1.5
        nursery.cancel_scope.cancel()
