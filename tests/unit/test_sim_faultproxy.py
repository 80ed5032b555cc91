"""FaultProxy against a local byte server: exact forwarding, cut after N bytes, delay, latency."""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from rhvfs.sim.faultproxy import FaultProxy, _Turns

PAYLOAD = random.Random(1).randbytes(300_000)


class _PayloadServer:
    """Answers every connection with ``payload`` (after the client's first bytes when
    ``after_request``), then closes it."""

    def __init__(self, payload: bytes, *, after_request: bool) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._payload = payload
        self._after_request = after_request
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                if self._after_request:
                    conn.recv(100)
                try:
                    conn.sendall(self._payload)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        self.sock.close()
        self._thread.join(timeout=5)


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    """A proxy in front of a server that answers every connection with PAYLOAD after a request."""
    server = _PayloadServer(PAYLOAD, after_request=True)
    p = FaultProxy(host="127.0.0.1", port=0, target_host="127.0.0.1", target_port=server.port)
    p.start()
    yield p
    p.close()
    server.close()


def _fetch(port: int) -> tuple[bytes, float]:
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET")
        chunks = []
        while True:
            try:
                data = s.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks), time.monotonic() - start


def test_forwards_exact_bytes(proxy: FaultProxy) -> None:
    data, _ = _fetch(proxy.port)
    assert data == PAYLOAD
    assert proxy.stats().accepted == 1


def test_drop_after_cuts_next_connections_only(proxy: FaultProxy) -> None:
    proxy.drop_after(100_000, times=2)
    assert proxy.pending() == 2
    first, _ = _fetch(proxy.port)
    second, _ = _fetch(proxy.port)
    third, _ = _fetch(proxy.port)
    assert first == second == PAYLOAD[:100_000]
    assert third == PAYLOAD
    assert proxy.stats().dropped == 2
    assert proxy.pending() == 0


def test_delay_and_clear(proxy: FaultProxy) -> None:
    proxy.delay(0.3, times=1)
    data, elapsed = _fetch(proxy.port)
    assert data == PAYLOAD
    assert elapsed >= 0.3
    proxy.drop_after(10, times=3)
    proxy.clear()
    data, _ = _fetch(proxy.port)
    assert data == PAYLOAD


def test_latency_holds_back_every_client_turn() -> None:
    """Three request/answer round trips on one connection: each waits the latency."""
    server = socket.create_server(("127.0.0.1", 0))

    def echo() -> None:
        conn, _ = server.accept()
        with conn, conn.makefile("rb") as lines:
            for line in lines:
                conn.sendall(line.upper())

    t = threading.Thread(target=echo, daemon=True)
    t.start()
    p = FaultProxy(
        host="127.0.0.1", port=0, target_host="127.0.0.1", target_port=server.getsockname()[1]
    )
    p.start()
    p.set_latency(0.05)
    try:
        with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
            for word in (b"one\n", b"two\n", b"three\n"):
                start = time.monotonic()
                s.sendall(word)
                got = b""
                while not got.endswith(b"\n"):
                    got += s.recv(100)
                assert got == word.upper()
                assert time.monotonic() - start >= 0.05
        p.clear()  # faults only: the latency stays
        assert p.latency_s == 0.05
        with pytest.raises(ValueError):
            p.set_latency(-1)
    finally:
        p.close()
        server.close()
        t.join(timeout=5)


def test_a_turn_is_a_change_of_speaker() -> None:
    turns = _Turns()
    assert turns.speaks(True)  # the first bytes of a connection
    assert not turns.speaks(True)  # more of the same request
    assert turns.speaks(False)  # the answer
    assert not turns.speaks(False)
    assert turns.speaks(True)  # the next request


def test_a_slow_reader_gets_every_byte_of_a_large_answer() -> None:
    """Backpressure: the client first reads 4 KiB at a time with pauses while
    the server pushes 24 MiB, more than the sockets and the proxy's pipe hold;
    the kernel-side forwarding must neither lose nor reorder bytes while the
    client's window is full."""
    payload = random.Random(2).randbytes(24 * 1024 * 1024)
    server = _PayloadServer(payload, after_request=False)
    p = FaultProxy(host="127.0.0.1", port=0, target_host="127.0.0.1", target_port=server.port)
    p.start()
    try:
        got = bytearray()
        with socket.create_connection(("127.0.0.1", p.port), timeout=30) as s:
            while True:
                data = s.recv(4096 if len(got) < 1024 * 1024 else 1024 * 1024)
                if not data:
                    break
                got += data
                if len(got) < 1024 * 1024 and len(got) % (256 * 1024) < 4096:
                    time.sleep(0.05)  # a pause while the proxy's pipe and buffers fill
        assert bytes(got) == payload
    finally:
        p.close()
        server.close()


def test_close_ends_connections_blocked_in_forwarding() -> None:
    """A client that stops reading leaves the pump blocked writing to it; close()
    must still cut the connection and end its threads."""
    payload = random.Random(3).randbytes(16 * 1024 * 1024)
    server = _PayloadServer(payload, after_request=False)
    p = FaultProxy(host="127.0.0.1", port=0, target_host="127.0.0.1", target_port=server.port)
    p.start()
    s = socket.create_connection(("127.0.0.1", p.port), timeout=10)
    try:
        assert s.recv(1024)  # the forwarding has started, then the client stalls
        time.sleep(0.2)
        p.close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(
            th.name.startswith("faultproxy") for th in threading.enumerate()
        ):
            time.sleep(0.05)
        assert not [th.name for th in threading.enumerate() if th.name.startswith("faultproxy")]
        with pytest.raises((ConnectionResetError, TimeoutError)):
            while s.recv(1024 * 1024):  # what was in flight, then the cut
                pass
            raise TimeoutError("closed cleanly instead of cut")
    finally:
        s.close()
        server.close()
