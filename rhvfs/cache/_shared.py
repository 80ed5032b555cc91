"""One read-ahead budget shared by the block readers of a mount, split fairly among them.

Each ``ImageReader`` keeps its own budget for the chunks reads wait for; this
object bounds what they hold *together* for read-ahead, so several images read
at once (restic's parallel file readers, several Bacula jobs) neither multiply
the mount's memory nor let the first reader take the whole budget: a reader
may start a prefetch only while the readers' total stays within ``limit`` and
its own holding within its fair share (``limit`` / readers registered). With
``streams``, the readers' GETs also share that many connections' worth of
concurrency (trio's FIFO ``CapacityLimiter``: waiting GETs are served in
turn), so three images read at once put no more load on the data plane (the
imageio daemon's threads, TLS) than one does.

Must not: make anyone wait (prefetch is optional: a refused prefetch is simply
not started, and demand reads never consult this budget), or know about chunks.
"""

from __future__ import annotations

import trio


class SharedBudget:
    """Bytes held by all registered readers, against ``limit`` for prefetching."""

    def __init__(self, limit: int, *, streams: int | None = None) -> None:
        if limit <= 0:
            raise ValueError("limit must be positive")
        if streams is not None and streams < 1:
            raise ValueError("streams must be at least 1")
        self.limit = limit
        self.streams = streams
        self._limiter: trio.CapacityLimiter | None = None
        self.held = 0  # bytes all registered readers hold (ready, in flight, spare)
        self.readers = 0

    def register(self) -> None:
        self.readers += 1

    def unregister(self, held: int) -> None:
        """A reader closed, giving back the ``held`` bytes it still had counted."""
        self.readers = max(0, self.readers - 1)
        self.held -= held

    def add(self, delta: int) -> None:
        self.held += delta

    def may_prefetch(self, own: int, nbytes: int) -> bool:
        """May a reader holding ``own`` bytes take ``nbytes`` more for read-ahead?"""
        if self.held + nbytes > self.limit:
            return False
        share = self.limit // max(1, self.readers)
        return own + nbytes <= share

    def limiter(self) -> trio.CapacityLimiter | None:
        """The GET slots all readers share (None: unlimited). Created in the first trio run
        that asks, and used only from it."""
        if self.streams is not None and self._limiter is None:
            self._limiter = trio.CapacityLimiter(self.streams)
        return self._limiter
