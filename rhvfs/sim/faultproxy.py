"""A byte-forwarding TCP proxy in front of the imageio daemon, for fault injection.

Owns a listening socket on the data plane's public port and one pair of pump
threads per client connection, forwarding to the daemon's internal port. TLS
passes through untouched (the client still verifies the daemon's certificate).
Faults apply to the next N accepted connections: ``drop_after`` cuts a
connection after that many daemon-to-client bytes; ``delay`` holds back the
first daemon-to-client bytes. ``latency`` emulates a remote data plane on
every connection: each time the client speaks after the daemon did (a new
request on a keep-alive connection, a TLS handshake step), its bytes are held
back that long before they are forwarded — one round trip per request,
however many bytes it carries. It must not parse or alter the bytes.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

_BUF_SIZE = 256 * 1024


@dataclass(frozen=True)
class _ConnFault:
    drop_after_bytes: int | None = None
    delay_s: float = 0.0


@dataclass(frozen=True)
class ProxyStats:
    """Counters since start: connections accepted, connections cut by a fault."""

    accepted: int
    dropped: int


class FaultProxy:
    """Listen on ``(host, port)`` (port 0 picks one) and forward to ``(target_host, target_port)``."""

    def __init__(self, *, host: str, port: int, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(addr)
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pending: list[_ConnFault] = []
        self._conns: set[socket.socket] = set()
        self._accepted = 0
        self._dropped = 0
        self._closed = False
        self._latency_s = 0.0
        self._thread = threading.Thread(
            target=self._accept_loop, name=f"faultproxy-{self.port}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()
        log.info("fault proxy on port %d -> %s:%d", self.port, *self._target)

    def close(self) -> None:
        """Stop accepting and cut every open connection (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            conns = list(self._conns)
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        for s in conns:
            _abort(s)
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)

    # --- faults --------------------------------------------------------------

    def drop_after(self, bytes_count: int, times: int = 1) -> None:
        """Cut each of the next ``times`` connections after ``bytes_count`` bytes to the client.

        Bytes are counted on the wire: with TLS they include the handshake
        (about 2 KB for the simulator's certificate) and record overhead.
        ``bytes_count=0`` cuts the connection before the server's first byte.
        """
        with self._lock:
            self._pending.extend([_ConnFault(drop_after_bytes=bytes_count)] * times)

    def delay(self, seconds: float, times: int = 1) -> None:
        """Hold back the first response bytes of the next ``times`` connections by ``seconds``."""
        with self._lock:
            self._pending.extend([_ConnFault(delay_s=seconds)] * times)

    def set_latency(self, seconds: float) -> None:
        """Hold back each client turn by ``seconds`` from now on (0: forward at once).

        A turn is the client's bytes after the daemon's (or the connection's
        first bytes): a request on a keep-alive connection, a TLS handshake
        step. Not a fault: ``clear`` keeps it."""
        if seconds < 0:
            raise ValueError("latency must not be negative")
        with self._lock:
            self._latency_s = seconds

    @property
    def latency_s(self) -> float:
        with self._lock:
            return self._latency_s

    def clear(self) -> None:
        """Forget faults not yet applied to a connection."""
        with self._lock:
            self._pending.clear()

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def stats(self) -> ProxyStats:
        with self._lock:
            return ProxyStats(accepted=self._accepted, dropped=self._dropped)

    # --- forwarding ------------------------------------------------------------

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if self._closed:
                    _abort(client)
                    return
                self._accepted += 1
                fault = self._pending.pop(0) if self._pending else _ConnFault()
            threading.Thread(
                target=self._serve, args=(client, fault), name="faultproxy-conn", daemon=True
            ).start()

    def _serve(self, client: socket.socket, fault: _ConnFault) -> None:
        try:
            upstream = socket.create_connection(self._target, timeout=10)
        except OSError as e:
            log.warning("fault proxy: cannot reach %s:%d: %s", *self._target, e)
            _abort(client)
            return
        upstream.settimeout(None)
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            if self._closed:
                _abort(client)
                _abort(upstream)
                return
            self._conns.update((client, upstream))
        turns = _Turns()
        up = threading.Thread(
            target=self._pump,
            args=(client, upstream, None, 0.0, turns, True),
            name="faultproxy-up",
            daemon=True,
        )
        up.start()
        self._pump(upstream, client, fault.drop_after_bytes, fault.delay_s, turns, False)
        up.join()
        with self._lock:
            self._conns.discard(client)
            self._conns.discard(upstream)
        client.close()
        upstream.close()

    def _pump(
        self,
        src: socket.socket,
        dst: socket.socket,
        limit: int | None,
        delay_s: float,
        turns: _Turns,
        from_client: bool,
    ) -> None:
        """Forward ``src`` to ``dst`` until EOF, applying the connection's faults.

        Bytes move socket -> pipe -> socket with ``splice``, inside the kernel:
        the proxy must not cost the host the CPU of a copy through Python (the
        benchmarks share their cores with it)."""
        sent = 0
        rfd, wfd = os.pipe()
        try:
            _grow_pipe(wfd)
            while True:
                got = os.splice(src.fileno(), wfd, _BUF_SIZE)
                if not got:
                    try:
                        dst.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    return
                if turns.speaks(from_client) and from_client:
                    latency = self.latency_s
                    if latency:
                        time.sleep(latency)
                if delay_s:
                    time.sleep(delay_s)
                    delay_s = 0.0
                if limit is not None and sent + got >= limit:
                    _drain(rfd, dst, limit - sent)
                    with self._lock:
                        self._dropped += 1
                    log.info("fault proxy: dropping connection after %d bytes", limit)
                    _abort(dst)
                    _abort(src)
                    return
                _drain(rfd, dst, got)
                sent += got
        except OSError:
            _abort(dst)
            _abort(src)
        finally:
            os.close(rfd)
            os.close(wfd)


def _grow_pipe(fd: int) -> None:
    """Let one splice carry up to ``_BUF_SIZE`` (the default pipe holds 64 KiB)."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _BUF_SIZE)
    except OSError:  # above /proc/sys/fs/pipe-max-size for an unprivileged user
        pass


def _drain(rfd: int, dst: socket.socket, count: int) -> None:
    """Move ``count`` bytes waiting in the pipe to ``dst`` (at most ``count``: the rest
    stays in the pipe and is dropped with it)."""
    while count > 0:
        moved = os.splice(rfd, dst.fileno(), count)
        if not moved:
            raise OSError("fault proxy: pipe emptied early")
        count -= moved


class _Turns:
    """Who spoke last on one proxied connection (the two pump threads share it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._client_last: bool | None = None

    def speaks(self, client: bool) -> bool:
        """Record bytes from one side; True when that side did not speak last."""
        with self._lock:
            turn = self._client_last is not client
            self._client_last = client
            return turn


def _abort(s: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), waking any thread blocked on the socket."""
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
