"""The lean bulk GET path: ranged GETs on pooled keep-alive trio connections.

Owns raw HTTP/1.1 ranged GETs whose bodies are received straight into the
caller's buffer (plain TCP: ``recv_into``; TLS: ``SSLObject.read`` into it
through a ``MemoryBIO``). design.md §4 measured httpx at ~60-70 % of a raw
socket on this path; bench/bench_imageio.py measures both (raw ~2x httpx).
It validates strictly (status 206, ``Content-Length`` equal to the request,
``Content-Range`` naming exactly the requested bytes) and must not retry
anything except a request on a stale keep-alive connection that the server
closed before answering. Control requests (OPTIONS, extents, PUT, PATCH) stay
on httpx in ``_client.py``.

Invariant: a connection goes back to the idle pool only after a complete,
valid response; any error or cancellation mid-response closes it.
"""

from __future__ import annotations

import logging
import ssl
import urllib.parse
from typing import cast

import trio

from rhvfs.errors import DataIntegrityError, ImageioError, ImageioUnavailable
from rhvfs.imageio._translate import status_error, translate_errors
from rhvfs.redact import redact

log = logging.getLogger(__name__)

_HEADER_LIMIT = 64 * 1024
_ERROR_BODY_LIMIT = 64 * 1024


class _StaleConnection(Exception):
    """The server closed an idle keep-alive connection before answering."""


class _Conn:
    """One plain HTTP/1.1 connection; bodies are received with ``recv_into``."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.sock = stream.socket
        self.reused = False

    async def send_all(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def recv_into(self, view: memoryview) -> int:
        return await self.sock.recv_into(view)

    async def close(self) -> None:
        await trio.aclose_forcefully(self.stream)


class _TlsConn(_Conn):
    """One HTTPS connection driven through ``ssl.MemoryBIO``.

    trio's SSLStream returns one TLS record (<= 16 KiB) per ``receive_some``
    as new bytes; here ``SSLObject.read`` decrypts straight into the caller's
    buffer and one receive feeds many records, which the bulk path needs.
    Requests on a connection are strictly sequential, so no locking is needed.
    """

    _RECV_SIZE = 256 * 1024

    def __init__(self, stream: trio.SocketStream, context: ssl.SSLContext, hostname: str) -> None:
        super().__init__(stream)
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_hostname=hostname)
        self._rbuf = bytearray(self._RECV_SIZE)

    async def _flush(self) -> None:
        data = self._outgoing.read()
        if data:
            await self.stream.send_all(data)

    async def _fill(self) -> bool:
        n = await self.sock.recv_into(self._rbuf)
        if n == 0:
            self._incoming.write_eof()
            return False
        self._incoming.write(memoryview(self._rbuf)[:n])
        return True

    async def handshake(self) -> None:
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush()
                if not await self._fill():
                    raise ConnectionResetError("connection closed during TLS handshake") from None
        await self._flush()

    async def send_all(self, data: bytes) -> None:
        self._tls.write(data)
        await self._flush()

    async def recv_into(self, view: memoryview) -> int:
        want = len(view)
        got = 0
        while True:
            try:
                while got < want:
                    n = cast(int, self._tls.read(want - got, view[got:]))  # with a buffer: a count
                    if n == 0:
                        return got
                    got += n
                return got
            except ssl.SSLWantReadError:
                if got:
                    return got
                await self._flush()
                if not await self._fill():
                    continue  # the next read reports EOF (or what is left)
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return got


class BulkPool:
    """Up to ``connections`` keep-alive connections to one imageio ticket URL."""

    def __init__(
        self,
        url: str,
        *,
        ssl_context: ssl.SSLContext | None,
        connections: int,
        timeout_s: float,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"unsupported imageio url {redact(url)!r}")
        self._tls = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._tls else 80)
        self._path = parts.path or "/"
        if parts.query:
            self._path += "?" + parts.query
        host_header = parts.netloc.rsplit("@", 1)[-1]
        self._host_header = host_header.encode("ascii")
        self._ssl_context = ssl_context
        self._timeout_s = timeout_s
        self._limiter = trio.CapacityLimiter(max(1, connections))
        self._idle: list[_Conn] = []
        self._closed = False
        self.requests = 0
        self.bytes_received = 0

    async def _connect(self) -> _Conn:
        stream = await trio.open_tcp_stream(self._host, self._port)
        if not self._tls:
            return _Conn(stream)
        assert self._ssl_context is not None
        conn = _TlsConn(stream, self._ssl_context, self._host)
        try:
            await conn.handshake()
        except BaseException:
            await conn.close()
            raise
        return conn

    async def read_into(self, offset: int, buf: memoryview) -> None:
        """One ranged GET of ``len(buf)`` bytes at ``offset``; fills all of ``buf`` or raises."""
        if self._closed:
            raise ImageioError("imageio client is closed")
        size = len(buf)
        if size == 0:
            return
        what = f"GET {offset}+{size}"
        request = (
            b"GET %s HTTP/1.1\r\nHost: %s\r\nRange: bytes=%d-%d\r\nUser-Agent: rhvfs\r\n\r\n"
            % (
                self._path.encode("ascii"),
                self._host_header,
                offset,
                offset + size - 1,
            )
        )
        async with self._limiter:
            with translate_errors(what):
                with trio.fail_after(self._timeout_s):
                    for _ in range(2):
                        conn = self._idle.pop() if self._idle else await self._connect()
                        try:
                            await self._exchange(conn, request, offset, buf, what)
                            break
                        except _StaleConnection:
                            # Idle connections age together (the server's inactivity
                            # timeout): drop them all and reconnect.
                            log.debug("%s: stale keep-alive connection, reconnecting", what)
                            idle, self._idle = self._idle, []
                            for old in idle:
                                await old.close()
                    else:
                        raise ImageioUnavailable(f"{what}: server keeps closing connections")
        self.requests += 1
        self.bytes_received += size

    async def _exchange(
        self, conn: _Conn, request: bytes, offset: int, buf: memoryview, what: str
    ) -> None:
        ok = False
        try:
            keep = await self._exchange_on(conn, request, offset, buf, what)
            ok = True
        finally:
            if ok and keep and not self._closed:
                conn.reused = True
                self._idle.append(conn)
            else:
                await conn.close()

    async def _exchange_on(
        self, conn: _Conn, request: bytes, offset: int, buf: memoryview, what: str
    ) -> bool:
        reused = conn.reused
        try:
            await conn.send_all(request)
        except (trio.BrokenResourceError, OSError):
            if reused:
                raise _StaleConnection() from None
            raise
        head = bytearray(_HEADER_LIMIT)
        hview = memoryview(head)
        got = 0
        end = -1
        while end < 0:
            try:
                n = await conn.recv_into(hview[got:])
            except (trio.BrokenResourceError, ConnectionResetError):
                if reused and got == 0:
                    raise _StaleConnection() from None
                raise
            if n == 0:
                if reused and got == 0:
                    raise _StaleConnection()
                raise ImageioUnavailable(f"{what}: connection closed in response headers")
            # Look back 3 bytes so a terminator split across receives is found.
            end = head.find(b"\r\n\r\n", max(0, got - 3), got + n)
            got += n
            if end < 0 and got >= _HEADER_LIMIT:
                raise DataIntegrityError(f"{what}: response headers too large")
        status, headers = _parse_head(bytes(head[:end]), what)
        rest = hview[end + 4 : got]
        keep = headers.get("connection", "").lower() != "close"
        if status != 206:
            if 200 <= status < 300:
                raise DataIntegrityError(f"{what}: HTTP {status} instead of 206 Partial Content")
            body = await self._read_error_body(conn, headers, rest)
            raise status_error(status, body, what)
        size = len(buf)
        first, last = offset, offset + size - 1
        length = headers.get("content-length")
        if length is None or not length.isdigit() or int(length) != size:
            raise DataIntegrityError(f"{what}: Content-Length {length!r}, expected {size}")
        crange = headers.get("content-range", "")
        if not crange.startswith(f"bytes {first}-{last}/"):
            raise DataIntegrityError(
                f"{what}: Content-Range {crange!r}, expected bytes {first}-{last}/*"
            )
        pos = len(rest)
        if pos > size:
            raise DataIntegrityError(f"{what}: {pos - size} bytes past Content-Length")
        buf[:pos] = rest
        while pos < size:
            n = await conn.recv_into(buf[pos:])
            if n == 0:
                raise ImageioUnavailable(f"{what}: connection closed after {pos} of {size} bytes")
            pos += n
        return keep

    async def _read_error_body(self, conn: _Conn, headers: dict[str, str], rest: memoryview) -> str:
        length = headers.get("content-length", "")
        if not length.isdigit() or int(length) > _ERROR_BODY_LIMIT:
            return bytes(rest[:300]).decode("utf-8", "replace")
        want = int(length)
        body = bytearray(rest[:want])
        chunk = bytearray(4096)
        while len(body) < want:
            n = await conn.recv_into(memoryview(chunk))
            if n == 0:
                break
            body += chunk[:n]
        return body[:want].decode("utf-8", "replace")

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.close()


def _parse_head(head: bytes, what: str) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise DataIntegrityError(f"{what}: malformed status line {lines[0][:100]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise DataIntegrityError(f"{what}: malformed header line {line[:100]!r}")
        key = name.strip().lower()
        if key in headers and key in ("content-length", "content-range"):
            raise DataIntegrityError(f"{what}: duplicate {key} header")
        headers[key] = value.strip()
    return int(parts[1]), headers
