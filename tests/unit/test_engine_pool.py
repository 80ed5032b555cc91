"""ConnectionPool: lazy creation, reuse, dropping broken connections, closing."""

from __future__ import annotations

from typing import Any

import pytest

from rhvfs.config import Config
from rhvfs.engine import _pool


class FakeConnection:
    made: list[FakeConnection] = []

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.closed: bool | None = None  # None = open, else the logout flag
        FakeConnection.made.append(self)

    def close(self, logout: bool = True) -> None:
        self.closed = logout


@pytest.fixture
def pool(monkeypatch: pytest.MonkeyPatch) -> _pool.ConnectionPool:
    FakeConnection.made = []
    monkeypatch.setattr(_pool.ovirtsdk4, "Connection", FakeConnection)
    config = Config(
        engine_url="https://e.example:8443",
        username="admin@internal",
        password="pw",
        cafile="/ca.pem",
        secure=False,
    )
    return _pool.ConnectionPool(config, size=2, request_timeout_s=2.5)


def test_connection_options(pool: _pool.ConnectionPool) -> None:
    conn = pool.acquire()
    assert conn.kwargs == {
        "url": "https://e.example:8443/ovirt-engine/api",
        "username": "admin@internal",
        "password": "pw",
        "ca_file": "/ca.pem",
        "insecure": True,
        "debug": False,
        "log": None,
        "timeout": 3,
        "connections": 1,
    }


def test_reuse_and_broken_connections_are_dropped(pool: _pool.ConnectionPool) -> None:
    a = pool.acquire()
    b = pool.acquire()
    assert a is not b and pool.created == 2
    pool.release(a)
    assert pool.acquire() is a  # reused, no new login
    pool.release(a, broken=True)
    assert a.closed is False  # closed without logout (its transport is suspect)
    c = pool.acquire()
    assert c is not a and pool.created == 3
    pool.release(b)
    pool.release(c)


def test_close_logs_out_idle_and_later_released_connections(pool: _pool.ConnectionPool) -> None:
    idle = pool.acquire()
    busy = pool.acquire()
    pool.release(idle)
    pool.close()
    assert idle.closed is True and busy.closed is None
    pool.release(busy)
    assert busy.closed is True
    with pytest.raises(_pool.ovirtsdk4.Error):
        pool.acquire()
