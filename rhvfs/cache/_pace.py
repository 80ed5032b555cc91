"""How far ahead a sequential reader prefetches: bandwidth x delay of the link, measured.

``Pacer`` is pure bookkeeping (no I/O, no trio): the block reader tells it when
GETs finish (their duration inside the stream limiter, so queueing behind other
GETs is not mistaken for a slow link), how fast a handle consumes bytes, and when
a sequential read had to wait for data; it answers with the read-ahead window of a
handle, in chunks. Times are plain floats from the caller's clock (trio's clock in
the reader, so tests run on a fake clock).

The window covers the bandwidth-delay product: a chunk requested now arrives
``delay`` seconds later (the EWMA of chunk GET durations), during which the reader
consumes ``rate x delay`` bytes (``rate``: the EWMA of the handle's consumption rate),
so that many bytes must already be requested, plus one chunk being read. A read
that had to wait for data while the handle was sequential means the estimate is
short (a jump in latency, a burst of consumption): the window doubles at once (slow
start), and the extra decays again while reads find their data ready. Random
access has no window at all (the caller drops it). The window never exceeds
``max_window`` (the chunks the memory budget leaves for read-ahead); how many GETs
run at once is the stream limiter's business (``max_readers``), not this module's.

Must not: do I/O, read the clock itself, or know about chunks' contents.
"""

from __future__ import annotations

import dataclasses
import math

#: weight of a new sample in the moving averages
_ALPHA = 0.25
#: sequential reads served from ready data after which the stall bonus shrinks by one
_CALM_READS = 16
#: consumption samples shorter than this are merged with the next one (timer jitter)
_MIN_SAMPLE_S = 0.002


@dataclasses.dataclass
class Window:
    """The read-ahead state of one sequential handle."""

    chunks: int = 0  # the current window; 0: random access, no read-ahead
    bonus: int = 0  # chunks added by stalls, on top of the bandwidth-delay product
    calm: int = 0  # sequential reads since the last stall
    rate: float = 0.0  # EWMA of bytes consumed per second
    _since: float | None = None  # start of the pending consumption sample
    _pending: int = 0  # bytes consumed since ``_since``


class Pacer:
    """Read-ahead windows from measured GET durations and consumption rates."""

    def __init__(self, *, chunk_size: int, max_window: int, initial_window: int = 1) -> None:
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        if max_window < 0:
            raise ValueError("max_window must not be negative")
        self.chunk_size = chunk_size
        self.max_window = max_window
        self.initial_window = min(max(1, initial_window), max_window)
        self.delay = 0.0  # EWMA of the seconds one chunk GET takes (0: none measured yet)
        self.gets = 0

    # -- observations --------------------------------------------------------------

    def get_done(self, nbytes: int, seconds: float) -> None:
        """A GET of ``nbytes`` took ``seconds`` while holding a stream.

        Only GETs of at least half a chunk count (scaled to a whole chunk): a short
        GET (a range between zero extents) is mostly round trip, and scaling that up
        would overstate the delay.
        """
        if nbytes * 2 < self.chunk_size or seconds < 0:
            return
        per_chunk = seconds * self.chunk_size / nbytes
        self.delay = per_chunk if self.gets == 0 else self.delay + _ALPHA * (per_chunk - self.delay)
        self.gets += 1

    def start(self, window: Window, now: float) -> int:
        """A handle turned sequential (again): its first window.

        What the handle learnt before (rate, stall bonus) is kept: one read out of
        order (the kernel's concurrent requests arrive shuffled) must not send a
        fast stream back to a window of one chunk.
        """
        window.chunks = min(
            max(self.initial_window, self.target(window) if window.rate else 0), self.max_window
        )
        window._since = now
        window._pending = 0
        return window.chunks

    def stop(self, window: Window) -> None:
        """The handle read out of sequence: no read-ahead until it is sequential again."""
        window.chunks = 0
        window._since = None
        window._pending = 0

    def advance(self, window: Window, nbytes: int, now: float, *, waited: bool) -> int:
        """A sequential read of ``nbytes`` was served (``waited``: it had to wait for a
        GET); returns the handle's new window in chunks."""
        if window._since is None:
            window._since = now
        window._pending += nbytes
        elapsed = now - window._since
        if elapsed >= _MIN_SAMPLE_S:
            sample = window._pending / elapsed
            window.rate = (
                sample if window.rate == 0 else window.rate + _ALPHA * (sample - window.rate)
            )
            window._since = now
            window._pending = 0
        if waited:
            window.calm = 0
            window.bonus = min(max(1, window.bonus * 2), self.max_window)
        else:
            window.calm += 1
            if window.calm >= _CALM_READS and window.bonus:
                window.bonus -= 1
                window.calm = 0
        target = self.target(window)
        if waited:
            # Slow start: a stalled handle at least doubles its window.
            target = max(target, 2 * max(1, window.chunks))
        elif self.delay == 0:
            # Nothing measured yet: grow by doubling, as a new handle did before.
            target = max(target, 2 * max(1, window.chunks))
        window.chunks = max(1, min(target, self.max_window)) if self.max_window else 0
        return window.chunks

    # -- the answer ----------------------------------------------------------------

    def target(self, window: Window) -> int:
        """Chunks ahead that cover ``rate x delay``, one chunk being read, and the bonus."""
        in_flight = window.rate * self.delay / self.chunk_size
        return math.ceil(in_flight) + 1 + window.bonus
