"""ImageReader: serves reads of one image from zero extents, a chunk cache and prefetch.

Owns the chunk cache of one transfer: which chunks are held or in flight,
per-handle sequential detection, the read-ahead window, the memory budget and
retries of transient fetch errors. It does not know about the engine or HTTP:
bytes come from a ``BlockSource`` (the imageio client, wrapped by the backup
session). It never returns bytes it did not receive in full.

Design note — invariants that hold between ``await``s:

- ``_chunks`` maps a key to a ``_Chunk`` that is either in flight
  (``done`` not set) or ready (``done`` set, ``buf`` complete). A failed or
  aborted chunk is removed from ``_chunks`` before ``done`` is set, so it is
  never served and the next reader starts a fresh fetch.
- ``_reserved`` is the sum of the buffer sizes of the chunks in ``_chunks``, of
  dropped chunks a read still holds (``users`` > 0) and of the spare buffers,
  and never exceeds ``memory_budget``: a reservation is taken before a chunk
  is inserted and given back when it fails, or when its buffer is neither
  pinned nor kept as a spare. Only ready chunks are evicted (spares first,
  then consumed chunks, then least recently used); demand reads wait for
  space, prefetches are skipped when there is none (backpressure) or when the
  ``SharedBudget`` of all readers refuses (their total, this reader's share).
- A dropped chunk's buffer is reused by a new chunk only once no read holds it
  (``_pin``/``_unpin`` around every await between getting a chunk and copying
  from it), so a late copy can never see another chunk's bytes; a reused buffer
  is zeroed first unless one GET fills all of it. A chunk read through by the
  only handle is dropped at once, so memory follows the read-ahead window.
- A read inside one ready chunk returns a read-only view of the chunk's buffer,
  not a copy (the FUSE reply copies it to the kernel before anything else runs).
  Before that buffer is reused, every view handed out is released: a caller that
  kept one across an ``await`` gets ``ValueError`` on use, never another chunk's
  bytes; a buffer whose view is still exported (held by C code) is not reused.
- The read-ahead window of a sequential handle is the ``Pacer``'s: measured
  bandwidth x delay, doubled on stalls, capped by the budget (``_pace.py``).
- Keys: ``i >= 0`` is the ``chunk_size`` chunk number ``i`` (sequential reads and
  read-ahead); ``-(j + 1)`` is the ``random_read_size`` block number ``j`` (reads
  of handles in random mode, so a random 4 KiB read does not cost a whole chunk).
  A random read uses a big chunk instead when one covering it is held or in flight.
- A key is fetched by at most one task at a time: the lookup and the
  insert happen without an ``await`` in between, and readers of an in-flight
  chunk wait on its ``done`` event.
- Only data parts of a chunk go over HTTP (one ranged GET per data range, small
  zero gaps bridged within ``max_zero_fetch_ratio`` of the chunk's data bytes);
  the rest of the buffer reads as zero. ``bytes_fetched`` counts exactly
  the bytes of successful GETs.
"""

from __future__ import annotations

import array
import collections
import dataclasses
import itertools
import logging
from collections.abc import Sequence
from typing import Protocol

import trio

from rhvfs.cache._extents import ExtentMap
from rhvfs.cache._pace import Pacer, Window
from rhvfs.cache._shared import SharedBudget
from rhvfs.errors import SessionClosed, TicketGone
from rhvfs.imageio.types import Extent
from rhvfs.retry import RetryPolicy, retry

log = logging.getLogger(__name__)

MiB = 1024 * 1024
_MAX_HANDLES = 4096
_ZERO_SCAN_LIMIT = 256  # chunks of zeroes the prefetcher looks across for the next data
_SPARE_BUFFERS = 2  # buffers of dropped chunks kept for reuse (within the budget)


class BlockSource(Protocol):
    """Where image bytes come from: one ranged read filling all of ``buf``, or raise."""

    async def read_into(self, offset: int, buf: memoryview) -> None: ...


@dataclasses.dataclass(frozen=True)
class ReaderStats:
    """Counters of one reader. Bytes are image bytes."""

    bytes_fetched: int  # payload of successful GETs
    requests: int  # GET attempts, failed ones included
    cache_hits: int  # chunk lookups served from a ready chunk
    cache_waits: int  # chunk lookups that waited for an in-flight fetch
    zero_bytes_served: int  # bytes read that lie in zero/hole extents
    chunks_fetched: int
    chunks_prefetched: int
    evictions: int
    retries: int
    failures: int  # chunk fetches that failed for good
    memory_reserved: int  # bytes held or being fetched right now
    buffers_reused: int = 0  # chunks that got the buffer of a dropped chunk


class _Aborted(Exception):
    """The task fetching a chunk was cancelled; a waiter starts the fetch again."""


class _Chunk:
    __slots__ = (
        "index",
        "start",
        "end",
        "buf",
        "done",
        "error",
        "last_used",
        "consumed",
        "read",
        "scope",
        "started",
        "stalled",
        "served",
        "users",
        "dropped",
        "recycled",
        "views",
    )

    def __init__(self, index: int, start: int, end: int, buf: bytearray | None = None) -> None:
        self.index = index
        self.start = start
        self.end = end
        self.recycled = buf is not None  # holds another chunk's old bytes until filled
        self.buf = buf if buf is not None else bytearray(end - start)
        self.done = trio.Event()
        self.error: BaseException | None = None
        self.last_used = 0
        self.consumed = False
        self.read = False  # served a read at least once
        self.scope = trio.CancelScope()
        self.started = False
        self.stalled = False  # a sequential read had to wait for it
        self.served = 0  # bytes copied out of it to reads (overlapping reads count twice)
        self.users = 0  # reads (and borrowing fetches) holding it across an await
        self.dropped = False  # left the cache; its buffer is recycled once users is 0
        self.views: list[memoryview] = []  # views of ``buf`` returned by reads (zero-copy)


@dataclasses.dataclass
class _Handle:
    next_offset: int
    window: Window  # read-ahead window (chunks); 0 while the handle reads at random
    last_used: int = 0


class ImageReader:
    """Reads of one image (``size`` bytes) through a bounded chunk cache with prefetch."""

    def __init__(
        self,
        source: BlockSource,
        *,
        size: int,
        extents: Sequence[Extent],
        memory_budget: int,
        streams: int,
        chunk_size: int = 8 * MiB,
        retry: RetryPolicy,
        max_zero_fetch_ratio: float = 0.05,
        random_read_size: int = 1 * MiB,
        shared: SharedBudget | None = None,
    ) -> None:
        """``max_zero_fetch_ratio``: zero bytes a chunk may fetch over HTTP to bridge gaps
        between its data ranges (fewer GETs), as a fraction of its data bytes.
        ``random_read_size``: the aligned block a read of a handle in random mode
        fetches (capped at ``chunk_size``; when it does not divide ``chunk_size``, random
        reads fetch whole chunks). ``shared``: the read-ahead budget of all the mount's
        readers (this reader prefetches only within its fair share of it)."""
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        if memory_budget < chunk_size:
            raise ValueError(
                f"memory_budget ({memory_budget}) must hold at least one chunk ({chunk_size})"
            )
        if streams < 1:
            raise ValueError("streams must be at least 1")
        self._source = source
        self._size = size
        self._map = ExtentMap(extents, size=size)
        self._budget = memory_budget
        self._chunk_size = chunk_size
        if random_read_size <= 0:
            raise ValueError("random_read_size must be positive")
        self._block_size = min(random_read_size, chunk_size)
        if chunk_size % self._block_size:
            self._block_size = chunk_size  # blocks must tile chunks; else random reads use chunks
        self._retry = retry
        if not 0 <= max_zero_fetch_ratio <= 1:
            raise ValueError("max_zero_fetch_ratio must be within [0, 1]")
        self._zero_ratio = max_zero_fetch_ratio
        self._limiter = trio.CapacityLimiter(streams)
        # Read-ahead leaves room for the chunk being read and the next demand read; more
        # than two chunks per stream would only wait for a stream.
        slots = memory_budget // chunk_size
        self._max_ahead = max(min(2 * streams, slots - 2), min(1, slots - 1))
        self._pacer = Pacer(chunk_size=chunk_size, max_window=self._max_ahead)
        nchunks = -(-size // chunk_size)
        self._has_data = bytearray(nchunks)
        for s, e, zero in self._map.segments(0, size):
            if not zero:
                self._has_data[s // chunk_size : (e - 1) // chunk_size + 1] = b"\x01" * (
                    (e - 1) // chunk_size + 1 - s // chunk_size
                )
        # _next_data[i]: the first chunk index >= i holding data (nchunks if none), so the
        # prefetcher skips runs of zero chunks in O(1).
        self._next_data = array.array("q", [nchunks]) * (nchunks + 1)
        for i in range(nchunks - 1, -1, -1):
            self._next_data[i] = i if self._has_data[i] else self._next_data[i + 1]
        self._chunks: dict[int, _Chunk] = {}
        # Buffers of dropped chunks, reused by new chunks: a fresh 8 MiB buffer costs
        # 2048 page faults and the kernel zeroing it. Counted in ``_reserved``.
        self._spare: list[bytearray] = []
        self._zeros: bytes | None = None
        self._handles: dict[int, _Handle] = {}
        self._shared = shared
        self._held = 0
        if shared is not None:
            shared.register()
        self._space = trio.Event()
        self._tick = itertools.count(1)
        self._nursery: trio.Nursery | None = None
        self._own_scope: trio.CancelScope | None = None
        self._closed = False
        # statistics
        self._bytes_fetched = 0
        self._requests = 0
        self._hits = 0
        self._waits = 0
        self._zero_served = 0
        self._chunks_fetched = 0
        self._chunks_prefetched = 0
        self._evictions = 0
        self._retries = 0
        self._failures = 0
        self._reused = 0

    @property
    def _reserved(self) -> int:
        return self._held

    @_reserved.setter
    def _reserved(self, value: int) -> None:
        # Every change of what this reader holds is also the shared budget's.
        if self._shared is not None:
            self._shared.add(value - self._held)
        self._held = value

    # -- lifecycle -------------------------------------------------------------------

    @property
    def size(self) -> int:
        """The image size in bytes."""
        return self._size

    @property
    def allocated_bytes(self) -> int:
        """Bytes outside zero/hole extents: what a full read fetches over HTTP."""
        return self._map.data_bytes

    async def run(
        self,
        nursery: trio.Nursery | None = None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Give the reader a nursery for its fetch workers.

        ``await reader.run(nursery)`` registers the caller's nursery and returns;
        ``await nursery.start(reader.run)`` runs a nursery of its own until
        ``aclose()`` or cancellation. Without either, reads fetch inline and
        nothing is prefetched.
        """
        if nursery is not None:
            self._nursery = nursery
            task_status.started()
            return
        async with trio.open_nursery() as own:
            self._nursery = own
            self._own_scope = own.cancel_scope
            task_status.started()
            await trio.sleep_forever()

    async def aclose(self) -> None:
        """Cancel fetches in flight, drop every buffer; later reads raise ``SessionClosed``."""
        self._closed = True
        for chunk in list(self._chunks.values()):
            chunk.scope.cancel()
        if self._own_scope is not None:
            self._own_scope.cancel()
        self._nursery = None
        self._chunks.clear()
        self._spare.clear()
        self._reserved = 0
        if self._shared is not None:
            self._shared.unregister(0)
            self._shared = None
        self._handles.clear()
        self._space.set()
        await trio.lowlevel.checkpoint()

    def replace_source(self, source: BlockSource) -> None:
        """Use ``source`` for every later GET (the transfer was recreated; the image is the same)."""
        self._source = source

    def forget_handle(self, handle_id: int) -> None:
        """Drop the sequential-access state of a released handle."""
        self._handles.pop(handle_id, None)

    def statistics(self) -> ReaderStats:
        return ReaderStats(
            bytes_fetched=self._bytes_fetched,
            requests=self._requests,
            cache_hits=self._hits,
            cache_waits=self._waits,
            zero_bytes_served=self._zero_served,
            chunks_fetched=self._chunks_fetched,
            chunks_prefetched=self._chunks_prefetched,
            evictions=self._evictions,
            retries=self._retries,
            failures=self._failures,
            memory_reserved=self._reserved,
            buffers_reused=self._reused,
        )

    # -- reading ---------------------------------------------------------------------

    async def read(self, offset: int, size: int, *, handle_id: int) -> bytes | memoryview:
        """The bytes at ``[offset, offset+size)``; short only at the end of the image.

        Often a read-only view of a cache buffer (no copy): use it (copy it, hand it to
        the kernel) before the next ``await``; later it may be released (see the
        module docstring), never changed.
        """
        if self._closed:
            raise SessionClosed("image reader is closed")
        if offset < 0 or size < 0:
            raise ValueError("offset and size must not be negative")
        end = min(offset + size, self._size)
        if offset >= end:
            await trio.lowlevel.checkpoint()
            return b""
        last = (end - 1) // self._chunk_size
        st = self._track(handle_id, offset, end)
        ahead = st.window.chunks

        # Which cache entries this read needs (zero-only parts are served without them).
        needed = self._needed_keys(offset, end, random=ahead == 0)
        if not needed:
            await trio.lowlevel.checkpoint()
            if ahead:
                self._prefetch(last + 1, ahead)
            self._pace(st, end - offset, stalled=False)
            return self._zero_view(end - offset)

        if len(needed) == 1:
            chunk = self._pin(await self._demand(needed[0]))
            try:
                if ahead:
                    self._prefetch(last + 1, ahead)
                stalled = self._stalls(chunk)
                chunk = await self._wait_ready(chunk)
                self._pace(st, end - offset, stalled=stalled)
                if chunk.start <= offset and end <= chunk.end:
                    chunk.served += end - offset
                    view = memoryview(chunk.buf).toreadonly()[
                        offset - chunk.start : end - chunk.start
                    ]
                    if chunk.dropped:  # recycled by the unpin below: a copy it is
                        return bytes(view)
                    chunk.views.append(view)
                    return view
                out = bytearray(end - offset)
                s, e = max(offset, chunk.start), min(end, chunk.end)
                chunk.served += e - s
                out[s - offset : e - offset] = memoryview(chunk.buf)[
                    s - chunk.start : e - chunk.start
                ]
                return memoryview(out).toreadonly()
            finally:
                self._unpin(chunk)

        # Several entries: start as many as the budget allows without waiting, then the
        # read-ahead; copy each out as it becomes ready, which frees room for the rest
        # (so a read larger than the budget still completes).
        out = bytearray(end - offset)
        pending = collections.deque(needed)
        started: collections.deque[_Chunk] = collections.deque()
        prefetched = False
        stalled = False
        try:
            while pending or started:
                while pending:
                    chunk_or_none = self._demand_nowait(pending[0])
                    if chunk_or_none is None:
                        break
                    pending.popleft()
                    started.append(self._pin(chunk_or_none))
                if not started:
                    started.append(self._pin(await self._demand(pending.popleft())))
                if ahead and not prefetched:
                    prefetched = True
                    self._prefetch(last + 1, ahead)
                stalled = self._stalls(started[0]) or stalled
                started[0] = await self._wait_ready(started[0])
                chunk = started.popleft()
                try:
                    s, e = max(offset, chunk.start), min(end, chunk.end)
                    chunk.served += e - s
                    out[s - offset : e - offset] = memoryview(chunk.buf)[
                        s - chunk.start : e - chunk.start
                    ]
                finally:
                    self._unpin(chunk)
        finally:
            for chunk in started:
                self._unpin(chunk)
        self._pace(st, end - offset, stalled=stalled)
        return memoryview(out).toreadonly()

    def _zero_view(self, n: int) -> bytes | memoryview:
        """``n`` zero bytes, from one immutable buffer when it is large enough."""
        if n > self._chunk_size:
            return bytes(n)
        if self._zeros is None:
            self._zeros = bytes(self._chunk_size)
        return memoryview(self._zeros)[:n]

    # -- buffers held across awaits ----------------------------------------------------

    @staticmethod
    def _pin(chunk: _Chunk) -> _Chunk:
        """Hold ``chunk``'s buffer: it is not recycled while a read may still copy from it."""
        chunk.users += 1
        return chunk

    def _unpin(self, chunk: _Chunk) -> None:
        chunk.users -= 1
        if chunk.users == 0 and chunk.dropped:
            self._recycle(chunk)

    def _drop(self, chunk: _Chunk) -> None:
        """``chunk`` (ready, fetched in full) left the cache: keep its buffer as a spare
        (its reservation stays, now the spare's) or give the reservation back."""
        chunk.dropped = True
        if chunk.users == 0:
            self._recycle(chunk)

    def _recycle(self, chunk: _Chunk) -> None:
        buf = chunk.buf
        chunk.buf = bytearray()  # a late copy from it would come out short, never wrong
        reusable = _revoke(chunk.views)
        if self._closed:
            return  # aclose() gave every reservation back already
        if reusable and len(buf) == self._chunk_size and len(self._spare) < _SPARE_BUFFERS:
            self._spare.append(buf)
            self._space.set()  # a reader waiting for memory may take it
        else:
            self._release(len(buf))

    @staticmethod
    def _stalls(chunk: _Chunk) -> bool:
        """True when this read is the first to wait for ``chunk`` (one stall per chunk:
        the kernel's concurrent reads of one chunk are one late chunk, not several)."""
        if chunk.done.is_set() or chunk.stalled:
            return False
        chunk.stalled = True
        return True

    def _pace(self, st: _Handle, nbytes: int, *, stalled: bool) -> None:
        """Let the pacer size the handle's next read-ahead window from this read."""
        if st.window.chunks:
            self._pacer.advance(st.window, nbytes, trio.current_time(), waited=stalled)

    def _needed_keys(self, offset: int, end: int, *, random: bool) -> list[int]:
        """Keys of the entries holding the data of ``[offset, end)``; counts zero bytes served."""
        for seg_s, seg_e, zero in self._map.segments(offset, end):
            if zero:
                self._zero_served += seg_e - seg_s
        cs, bs = self._chunk_size, self._block_size
        keys: list[int] = []
        if not random or bs == cs:
            for i in range(offset // cs, (end - 1) // cs + 1):
                s, e = max(offset, i * cs), min(end, (i + 1) * cs)
                if self._has_data[i] and not self._map.is_zero(s, e):
                    keys.append(i)
            return keys
        for j in range(offset // bs, (end - 1) // bs + 1):
            s, e = max(offset, j * bs), min(end, (j + 1) * bs)
            if self._map.is_zero(s, e):
                continue
            big = s // cs  # a block never straddles chunks: bs divides cs
            if big in self._chunks:
                if not keys or keys[-1] != big:
                    keys.append(big)
            else:
                keys.append(-(j + 1))
        return keys

    def _track(self, handle_id: int, offset: int, end: int) -> _Handle:
        """Update ``handle_id``'s access pattern; its ``window`` is the read-ahead in chunks."""
        tick = next(self._tick)
        st = self._handles.get(handle_id)
        if st is None:
            if len(self._handles) >= _MAX_HANDLES:
                oldest = min(self._handles, key=lambda h: self._handles[h].last_used)
                del self._handles[oldest]
            st = _Handle(next_offset=end, window=Window(), last_used=tick)
            self._handles[handle_id] = st
            # A handle that starts at offset 0 is most likely a whole-image copy.
            if offset == 0 and self._max_ahead:
                self._pacer.start(st.window, trio.current_time())
            return st
        st.last_used = tick
        cs = self._chunk_size
        # Kernel read-ahead and concurrent FUSE requests arrive slightly out of order.
        if st.next_offset - cs <= offset <= st.next_offset + cs:
            if not st.window.chunks and self._max_ahead:
                self._pacer.start(st.window, trio.current_time())
            done_until = min(offset, st.next_offset)
            st.next_offset = max(st.next_offset, end)
            alone = len(self._handles) == 1
            for i in range(max(0, done_until // cs - 2), done_until // cs):
                chunk = self._chunks.get(i)
                if chunk is None or chunk.end > done_until or not chunk.done.is_set():
                    continue
                through = chunk.served >= len(chunk.buf)
                if alone and through:
                    # Every byte served, to the only handle: free it now rather than when
                    # the budget runs out, so memory follows the read-ahead window.
                    del self._chunks[i]
                    self._drop(chunk)
                    self._evictions += 1
                elif through or chunk.end + cs <= done_until:
                    # Passed by a chunk's length (requests arrive a little out of order).
                    chunk.consumed = True
        else:
            self._pacer.stop(st.window)
            st.next_offset = end
        return st

    def _prefetch(self, start_index: int, ahead: int) -> None:
        """Start fetches of up to ``ahead`` data chunks from ``start_index``, as budget allows."""
        if self._nursery is None:
            return
        nchunks = len(self._has_data)
        limit = start_index + ahead + _ZERO_SCAN_LIMIT
        i = self._next_data[min(start_index, nchunks)]
        for _ in range(ahead):
            if i >= nchunks or i >= limit:
                return
            if i not in self._chunks:
                if not self._reserve_nowait(self._chunk_len(i), for_prefetch=True):
                    return
                self._chunks_prefetched += 1
                self._spawn(self._insert(i))
            i = self._next_data[i + 1]

    def _span(self, key: int) -> tuple[int, int]:
        """The byte range ``[start, end)`` of the entry ``key``."""
        if key >= 0:
            start, length = key * self._chunk_size, self._chunk_size
        else:
            start, length = (-key - 1) * self._block_size, self._block_size
        return start, min(start + length, self._size)

    def _chunk_len(self, key: int) -> int:
        start, end = self._span(key)
        return end - start

    def _insert(self, key: int) -> _Chunk:
        """A new entry for ``key``, whose bytes the caller has reserved."""
        start, end = self._span(key)
        buf = None
        if end - start == self._chunk_size and self._spare:
            buf = self._spare.pop()
            self._reserved -= len(buf)  # the spare's reservation; the caller made its own
            self._reused += 1
        chunk = _Chunk(key, start, end, buf)
        chunk.last_used = next(self._tick)
        self._chunks[key] = chunk
        return chunk

    def _lookup(self, key: int) -> _Chunk | None:
        chunk = self._chunks.get(key)
        if chunk is None and key < 0:
            # A chunk covering this block may have been started since the read chose keys.
            chunk = self._chunks.get(self._span(key)[0] // self._chunk_size)
        if chunk is not None:
            chunk.last_used = next(self._tick)
            if chunk.done.is_set():
                self._hits += 1
            else:
                self._waits += 1
        return chunk

    def _covered(self, key: int) -> bool:
        """True when an entry for ``key`` (or a chunk covering block ``key``) exists."""
        if key in self._chunks:
            return True
        return key < 0 and self._span(key)[0] // self._chunk_size in self._chunks

    def _demand_nowait(self, index: int) -> _Chunk | None:
        """Like ``_demand`` but returns None instead of waiting for memory."""
        chunk = self._lookup(index)
        if chunk is not None:
            return chunk
        if not self._reserve_nowait(self._chunk_len(index)):
            return None
        chunk = self._insert(index)
        if self._nursery is not None:
            self._spawn(chunk)
        return chunk

    async def _demand(self, index: int) -> _Chunk:
        """The chunk ``index``, ready or in flight; starts its fetch when nobody has."""
        while True:
            chunk = self._lookup(index)
            if chunk is not None:
                return chunk
            await self._reserve(self._chunk_len(index))
            if self._closed:
                raise SessionClosed("image reader is closed")
            if self._covered(index):  # someone started it while we waited for space
                self._release(self._chunk_len(index))
                continue
            chunk = self._insert(index)
            if self._nursery is not None:
                self._spawn(chunk)
            return chunk

    async def _wait_ready(self, chunk: _Chunk) -> _Chunk:
        """``chunk`` once fetched (fetched again if its fetch was aborted).

        The caller holds a pin on ``chunk``; it moves to the chunk returned. When this
        raises, the caller's pin is still the one on ``chunk``.
        """
        original = chunk
        try:
            while True:
                if not chunk.started:
                    # No workers: the first reader of a chunk fetches it in its own task.
                    await self._fetch_task(chunk)
                await chunk.done.wait()
                if chunk.error is None:
                    chunk.read = True
                    if chunk is not original:
                        self._unpin(original)
                    return chunk
                if isinstance(chunk.error, _Aborted):
                    if self._closed:
                        raise SessionClosed("image reader is closed")
                    fresh = self._pin(await self._demand(chunk.index))
                    if chunk is not original:
                        self._unpin(chunk)
                    chunk = fresh
                    continue
                raise chunk.error
        except BaseException:
            if chunk is not original:
                self._unpin(chunk)
            raise

    def _spawn(self, chunk: _Chunk) -> None:
        assert self._nursery is not None
        chunk.started = True
        self._nursery.start_soon(self._fetch_task, chunk, name=f"fetch-chunk-{chunk.index}")

    async def _fetch_task(self, chunk: _Chunk) -> None:
        """Fetch ``chunk``'s data ranges; on any outcome set ``done`` (never raises Exception)."""
        chunk.started = True
        failed: BaseException | None = _Aborted("fetch cancelled")
        try:
            with chunk.scope:
                await self._fetch(chunk)
                failed = None
        except Exception as exc:
            failed = _leaf_error(exc)
            self._failures += 1
            log.warning(
                "chunk %d (%d+%d): %s", chunk.index, chunk.start, chunk.end - chunk.start, exc
            )
        finally:
            if failed is not None:
                chunk.error = failed
                if self._chunks.get(chunk.index) is chunk:
                    del self._chunks[chunk.index]
                    self._release(len(chunk.buf))
            else:
                self._chunks_fetched += 1
                self._space.set()
            chunk.done.set()

    async def _fetch(self, chunk: _Chunk) -> None:
        """Fill ``chunk``: GET its data ranges, copy what blocks in flight or held already have."""
        spans = [(chunk.start, chunk.end)]
        borrowed: list[_Chunk] = []
        if chunk.index >= 0 and self._block_size < self._chunk_size:
            # Random reads may have fetched (or be fetching) blocks of this chunk: reuse
            # them instead of fetching the same bytes twice. Only started blocks: an
            # unstarted one may belong to a reader that is waiting for this chunk.
            spans = []
            pos = chunk.start
            bs = self._block_size
            for j in range(chunk.start // bs, (chunk.end - 1) // bs + 1):
                block = self._chunks.get(-(j + 1))
                if block is not None and block.started:
                    if pos < block.start:
                        spans.append((pos, block.start))
                    borrowed.append(block)
                    pos = block.end
            if pos < chunk.end:
                spans.append((pos, chunk.end))
        ranges = [
            r
            for s, e in spans
            for r in self._map.fetch_ranges(
                s, e, max_length=self._chunk_size, max_zero_ratio=self._zero_ratio
            )
        ]
        view = memoryview(chunk.buf)
        if chunk.recycled and not (
            not borrowed and len(ranges) == 1 and ranges[0] == (chunk.start, len(view))
        ):
            # Parts not fetched must read as zeroes, not as the old chunk's bytes.
            if self._zeros is None:
                self._zeros = bytes(self._chunk_size)
            view[:] = self._zeros
        if len(ranges) == 1 and not borrowed:
            off, length = ranges[0]
            await self._get(off, view[off - chunk.start : off - chunk.start + length])
            return
        async with trio.open_nursery() as nursery:
            for off, length in ranges:
                nursery.start_soon(
                    self._get, off, view[off - chunk.start : off - chunk.start + length]
                )
            for block in borrowed:
                nursery.start_soon(self._borrow, chunk, self._pin(block))

    async def _borrow(self, chunk: _Chunk, block: _Chunk) -> None:
        """Copy ``block``'s bytes into ``chunk`` once it is ready; fetch them if it failed.
        Takes over the pin the caller put on ``block``."""
        try:
            await block.done.wait()
            view = memoryview(chunk.buf)[block.start - chunk.start : block.end - chunk.start]
            if block.error is None:
                view[:] = block.buf
                return
        finally:
            self._unpin(block)
        for off, length in self._map.fetch_ranges(
            block.start, block.end, max_length=self._chunk_size, max_zero_ratio=self._zero_ratio
        ):
            await self._get(off, view[off - block.start : off - block.start + length])

    async def _get(self, offset: int, buf: memoryview) -> None:
        shared = self._shared.limiter() if self._shared is not None else None

        async def attempt(_n: int) -> None:
            async with self._limiter:
                if shared is not None:
                    await shared.acquire()
                try:
                    self._requests += 1
                    started = trio.current_time()
                    await self._source.read_into(offset, buf)
                    self._pacer.get_done(len(buf), trio.current_time() - started)
                finally:
                    if shared is not None:
                        shared.release()

        def count_retry(_: BaseException) -> None:
            self._retries += 1

        await retry(
            attempt, policy=self._retry, what=f"read {offset}+{len(buf)}", on_retry=count_retry
        )
        self._bytes_fetched += len(buf)

    # -- memory budget ---------------------------------------------------------------

    def _reserve_nowait(self, nbytes: int, *, for_prefetch: bool = False) -> bool:
        while True:
            # A new chunk takes a spare buffer when there is one (``_insert``), whose
            # reservation it inherits: then it needs no more memory.
            need = 0 if nbytes == self._chunk_size and self._spare else nbytes
            if self._reserved + need <= self._budget and (
                not for_prefetch
                or self._shared is None
                or self._shared.may_prefetch(self._reserved, need)
            ):
                break
            if not self._evict_one(for_prefetch=for_prefetch):
                return False
        self._reserved += nbytes
        return True

    async def _reserve(self, nbytes: int) -> None:
        while not self._reserve_nowait(nbytes):
            if self._closed:
                return
            if self._space.is_set():
                self._space = trio.Event()
            await self._space.wait()

    def _release(self, nbytes: int) -> None:
        self._reserved -= nbytes
        self._space.set()

    def _evict_one(self, *, for_prefetch: bool) -> bool:
        """Drop one ready chunk: consumed first, then already read (LRU), then unread prefetches.

        Read-ahead evicts only chunks read through (consumed, or every byte served):
        evicting a prefetched chunk nobody has read yet, or the one a sequential
        handle is in the middle of, would throw away work to do more of the same.
        Demand reads may evict any ready chunk.
        """
        if self._spare:
            self._reserved -= len(self._spare.pop())
            return True
        victim: _Chunk | None = None
        for chunk in self._chunks.values():
            if not chunk.done.is_set():
                continue
            if for_prefetch and not (chunk.consumed or chunk.served >= len(chunk.buf)):
                continue
            if victim is None or _eviction_key(chunk) < _eviction_key(victim):
                victim = chunk
        if victim is None:
            return False
        del self._chunks[victim.index]
        self._drop(victim)
        self._evictions += 1
        return True


def _revoke(views: list[memoryview]) -> bool:
    """Release the views reads returned of a buffer about to be reused; False when one is
    still exported (C code holds it: the buffer must not be reused)."""
    free = True
    for view in views:
        try:
            view.release()
        except BufferError:
            free = False
    views.clear()
    return free


def _eviction_key(chunk: _Chunk) -> tuple[bool, bool, int]:
    return (not chunk.consumed, not chunk.read, chunk.last_used)


def _leaf_error(exc: Exception) -> Exception:
    """The error to give readers: a ``TicketGone`` if any, else the first leaf of a group."""
    if not isinstance(exc, ExceptionGroup):
        return exc
    leaves: list[Exception] = []

    def walk(e: BaseException) -> None:
        if isinstance(e, BaseExceptionGroup):
            for sub in e.exceptions:
                walk(sub)
        elif isinstance(e, Exception):
            leaves.append(e)

    walk(exc)
    for leaf in leaves:
        if isinstance(leaf, TicketGone):
            return leaf
    return leaves[0] if leaves else exc
