"""One read-ahead budget shared by the block readers of a mount, split fairly among them.

Each ``ImageReader`` keeps its own budget for the chunks reads wait for; this
object bounds what they hold *together* for read-ahead, so several images read
at once (restic's parallel file readers, several Bacula jobs) neither multiply
the mount's memory nor let the first reader take the whole budget: a reader
may start a prefetch only while the readers' total stays within ``limit`` and
its own holding within its fair share (``limit`` / readers registered).

Must not: make anyone wait (prefetch is optional: a refused prefetch is simply
not started, and demand reads never consult this budget), or know about chunks.
"""

from __future__ import annotations


class SharedBudget:
    """Bytes held by all registered readers, against ``limit`` for prefetching."""

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError("limit must be positive")
        self.limit = limit
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
