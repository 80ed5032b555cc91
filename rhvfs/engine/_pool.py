"""A small pool of blocking ``ovirtsdk4.Connection`` objects, used from worker threads.

Owns connection lifetime: lazy creation (SSO happens on first use), reuse, and
dropping a connection after a transport failure (its libcurl state is then
suspect). It never retries and never logs the password; the SDK is built with
``debug=False`` and no logger so it cannot print credentials either.

Thread rules: ``acquire``/``release`` are called from worker threads; one
connection is used by exactly one thread at a time. The caller bounds
concurrency with a ``trio.CapacityLimiter`` of the same size.
"""

from __future__ import annotations

import logging
import math
import threading

import ovirtsdk4

from rhvfs.config import Config

log = logging.getLogger(__name__)


class ConnectionPool:
    """Up to ``size`` SDK connections to one engine."""

    def __init__(self, config: Config, *, size: int, request_timeout_s: float) -> None:
        self._config = config
        self._size = size
        self._timeout = max(1, math.ceil(request_timeout_s))
        self._lock = threading.Lock()
        self._idle: list[ovirtsdk4.Connection] = []
        self._all: set[ovirtsdk4.Connection] = set()
        self._closed = False
        self.created = 0  # statistics: connections opened so far

    def _new(self) -> ovirtsdk4.Connection:
        cfg = self._config
        conn = ovirtsdk4.Connection(
            url=cfg.api_url,
            username=cfg.username,
            password=cfg.password,
            ca_file=cfg.cafile,
            insecure=not cfg.secure,
            debug=False,
            log=None,
            timeout=self._timeout,
            connections=1,
        )
        log.debug("opened SDK connection to %s as %s", cfg.api_url, cfg.username)
        return conn

    def acquire(self) -> ovirtsdk4.Connection:
        """Take an idle connection or open a new one (called in a worker thread)."""
        with self._lock:
            if self._closed:
                raise ovirtsdk4.Error("engine connection pool is closed")
            if self._idle:
                return self._idle.pop()
            self.created += 1
        conn = self._new()
        with self._lock:
            self._all.add(conn)
        return conn

    def release(self, conn: ovirtsdk4.Connection, *, broken: bool = False) -> None:
        """Give ``conn`` back; a broken one is closed without logout and forgotten."""
        with self._lock:
            keep = not broken and not self._closed
            if keep:
                self._idle.append(conn)
                return
            self._all.discard(conn)
        self._close_one(conn, logout=not broken)

    @staticmethod
    def _close_one(conn: ovirtsdk4.Connection, *, logout: bool) -> None:
        try:
            conn.close(logout=logout)
        except Exception as exc:  # closing is best effort; the token expires anyway
            log.debug("closing SDK connection failed: %s", exc)

    def close(self) -> None:
        """Log out and close every connection (blocking; call in a worker thread)."""
        with self._lock:
            self._closed = True
            # Connections in use are closed by their thread's release().
            conns = list(self._idle)
            self._idle.clear()
            self._all.difference_update(conns)
        for conn in conns:
            self._close_one(conn, logout=True)
