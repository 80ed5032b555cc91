"""The upload stream of one restored disk: tool writes in, ranged PUTs and PATCH zero out.

Owns the data path of a restore: the kernel's small writes are coalesced
into ``chunk_bytes`` runs, each run is split at ``zero_block_bytes``
granularity into data (``PUT``) and all-zero ranges (``PATCH zero``, merged
across chunks), and up to ``workers`` requests are in flight at once through
a zero-capacity channel, so a fast writer waits for the network instead of
filling memory (at most ``workers + 1`` chunks are held).

Invariants (between awaits): ``position`` is the end of the in-order data
accepted so far; bytes below it are either buffered, queued, in flight or
sent; two requests on overlapping ranges are never queued or in flight
together. A write beyond ``position`` leaves a hole; one below it is "out of
order": when it lies below the buffered data and clear of every queued
request and of the pending zero run, it is queued at once (restic writes
files blob by blob in any order); otherwise the stream drains and then sends
it directly. Ranges never written (holes left by sparse-aware tools) are not
sent while data flows; the stream keeps every range written (``Intervals``),
and ``zero_unwritten`` zeroes the rest when the disk's target does not read
zeros (the caller decides, ``_coverage.reads_zero``).

Errors: the first failed request breaks the stream; every later call raises
``RestoreFailed`` for it (the FUSE layer returns EIO). Transient imageio errors are retried.

Must not: talk to the engine, know file names or FUSE.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
from typing import Protocol

import trio

from rhvfs.errors import RestoreFailed, is_transient
from rhvfs.intervals import Intervals

log = logging.getLogger(__name__)

MiB = 1024 * 1024
DEFAULT_CHUNK_BYTES = 8 * MiB
DEFAULT_WORKERS = 4
ZERO_BLOCK_BYTES = 4096
#: Zero runs shorter than this between data are sent as data (fewer tiny requests).
MIN_ZERO_RUN_BYTES = 64 * 1024
_RETRIES = 4
#: A hole is zeroed in requests of at most this many bytes (each is one PATCH).
_MAX_ZERO_BYTES = 1024 * MiB


class UploadTarget(Protocol):
    """What the stream needs from an imageio client (``rhvfs.imageio.ImageioClient``)."""

    async def write(self, offset: int, data: bytes, *, flush: bool = False) -> None: ...
    async def zero(self, offset: int, size: int, *, flush: bool = False) -> None: ...
    async def flush(self) -> None: ...


@dataclasses.dataclass(frozen=True)
class UploadStats:
    """Counters of one stream, in bytes and requests."""

    bytes_received: int
    bytes_put: int
    bytes_zeroed: int
    put_requests: int
    zero_requests: int
    out_of_order_writes: int
    end: int  # highest byte written + 1
    holes_zeroed: int = 0  # bytes never written, zeroed by ``zero_unwritten``


@functools.lru_cache(maxsize=8)
def _zeros(n: int) -> bytes:
    return bytes(n)


def split_runs(
    buf: bytes | bytearray,
    *,
    block: int = ZERO_BLOCK_BYTES,
    min_zero_run: int = MIN_ZERO_RUN_BYTES,
) -> list[tuple[int, int, bool]]:
    """``buf`` as runs ``(start, length, is_zero)``, in order, covering it exactly.

    Zero detection works on ``block``-sized pieces; zero runs shorter than
    ``min_zero_run`` inside data become data (a leading or trailing zero run
    of a buffer is kept: it may continue in the neighbour chunk).
    """
    n = len(buf)
    if n == 0:
        return []
    zeros = _zeros(block)
    if buf == _zeros(n):
        return [(0, n, True)]
    runs: list[list[int]] = []  # [start, end, zero]
    for start in range(0, n, block):
        end = min(start + block, n)
        piece = buf[start:end]
        is_zero = piece == (zeros if end - start == block else _zeros(end - start))
        if runs and runs[-1][2] == is_zero:
            runs[-1][1] = end
        else:
            runs.append([start, end, int(is_zero)])
    merged: list[list[int]] = []
    for i, run in enumerate(runs):
        inner = 0 < i < len(runs) - 1
        if run[2] and inner and run[1] - run[0] < min_zero_run:
            run[2] = 0
        if merged and merged[-1][2] == run[2]:
            merged[-1][1] = run[1]
        else:
            merged.append(run)
    return [(s, e - s, bool(z)) for s, e, z in merged]


class UploadStream:
    """In-order writes of one disk image, streamed to an ``UploadTarget``."""

    def __init__(
        self,
        target: UploadTarget,
        *,
        size: int,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        workers: int = DEFAULT_WORKERS,
        zero_block_bytes: int = ZERO_BLOCK_BYTES,
        min_zero_run_bytes: int = MIN_ZERO_RUN_BYTES,
        retry_interval_s: float = 0.5,
    ) -> None:
        if chunk_bytes % zero_block_bytes:
            raise ValueError("chunk_bytes must be a multiple of zero_block_bytes")
        self._target = target
        self.size = size
        self._chunk = chunk_bytes
        self._workers = workers
        self._block = zero_block_bytes
        self._min_zero = min_zero_run_bytes
        self._retry_interval_s = retry_interval_s
        self._pieces: list[bytes] = []  # in-order data not sent yet, joined once per chunk
        self._buf_len = 0
        self._buf_offset = 0
        self.position = 0
        self._zero_start = 0
        self._zero_len = 0
        self._send, self._recv = trio.open_memory_channel[tuple[int, int, bytes | int]](0)
        self._inflight: dict[int, tuple[int, int]] = {}  # queued/in-flight request ranges
        self._keys = itertools.count()
        self._pending = 0
        self._idle = trio.Event()
        self._idle.set()
        self._error: BaseException | None = None
        self._started = False
        self._finished = False
        self._received = 0
        self._put = 0
        self._zeroed = 0
        self._put_requests = 0
        self._zero_requests = 0
        self._ooo = 0
        self._end = 0
        self._written = Intervals()
        self._holes_zeroed = 0

    # -- lifecycle --------------------------------------------------------------

    def start(self, nursery: trio.Nursery) -> None:
        """Start the request workers in ``nursery`` (they end when the stream finishes)."""
        self._started = True
        for _ in range(self._workers):
            nursery.start_soon(self._worker, self._recv.clone())
        self._recv.close()

    @property
    def error(self) -> BaseException | None:
        return self._error

    def statistics(self) -> UploadStats:
        return UploadStats(
            bytes_received=self._received,
            bytes_put=self._put,
            bytes_zeroed=self._zeroed,
            put_requests=self._put_requests,
            zero_requests=self._zero_requests,
            out_of_order_writes=self._ooo,
            end=self._end,
            holes_zeroed=self._holes_zeroed,
        )

    def _check(self) -> None:
        if self._error is not None:
            raise RestoreFailed(f"upload failed: {self._error}") from self._error
        if self._finished:
            raise RestoreFailed("upload already finished; the image cannot change any more")

    # -- the write path ---------------------------------------------------------

    async def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Accept ``data`` at ``offset``; returns once it is queued (or sent, if out of order)."""
        self._check()
        n = len(data)
        if n == 0:
            return
        if offset < 0 or offset + n > self.size:
            raise RestoreFailed(
                f"write at {offset}+{n} is beyond the disk's size of {self.size} bytes"
            )
        self._received += n
        self._end = max(self._end, offset + n)
        self._written.add(offset, offset + n)
        if offset > self.position:
            # A hole (sparse-aware writer): never written, reads as zero on the new disk.
            await self._emit_buffer()
            self.position = offset
            self._buf_offset = offset
        elif offset < self.position:
            self._ooo += 1
            if offset >= self._buf_offset and offset + n <= self._buf_offset + self._buf_len:
                rel = offset - self._buf_offset
                joined = bytearray(b"".join(self._pieces))
                joined[rel : rel + n] = data  # a rewrite of bytes not sent yet
                self._pieces = [bytes(joined)]
                return
            end = offset + n
            if end <= self._buf_offset and not self._overlaps_queued(offset, end):
                # below everything unsent and clear of every queued request: send it
                # concurrently (restic writes whole files this way, blob by blob)
                await self._send_runs(offset, bytes(data), direct=False, coalesce=False)
                return
            await self.drain()
            await self._send_runs(offset, bytes(data), direct=True)
            tail = offset + n - self.position
            if tail > 0:  # the rewrite also extended the in-order data
                self.position += tail
                self._buf_offset = self.position
            return
        self._pieces.append(data if isinstance(data, bytes) else bytes(data))
        self._buf_len += n
        self.position += n
        if self._buf_len >= self._chunk:
            await self._emit_buffer(full_chunks_only=True)

    async def _emit_buffer(self, *, full_chunks_only: bool = False) -> None:
        while self._buf_len and (self._buf_len >= self._chunk or not full_chunks_only):
            take = min(self._chunk, self._buf_len)
            joined = self._pieces[0] if len(self._pieces) == 1 else b"".join(self._pieces)
            piece = joined if take == len(joined) else joined[:take]
            rest = b"" if take == len(joined) else joined[take:]
            self._pieces = [rest] if rest else []
            self._buf_len -= take
            offset = self._buf_offset
            self._buf_offset += take
            await self._send_runs(offset, piece, direct=False)

    def _overlaps_queued(self, start: int, end: int) -> bool:
        """True when [start, end) meets a queued or in-flight request or the pending zero run."""
        if self._zero_len and start < self._zero_start + self._zero_len and self._zero_start < end:
            return True
        return any(s < end and start < e for s, e in self._inflight.values())

    async def _send_runs(
        self, offset: int, piece: bytes, *, direct: bool, coalesce: bool = True
    ) -> None:
        for start, length, is_zero in split_runs(
            piece, block=self._block, min_zero_run=self._min_zero
        ):
            at = offset + start
            if not coalesce:
                data = piece[start : start + length]
                await self._queue(at, length if is_zero else data)
                continue
            if is_zero and not direct:
                if self._zero_len and self._zero_start + self._zero_len == at:
                    self._zero_len += length
                    continue
                await self._emit_zero()
                self._zero_start, self._zero_len = at, length
                continue
            if not direct:
                await self._emit_zero()
            data = piece if (start == 0 and length == len(piece)) else piece[start : start + length]
            if direct:
                if is_zero:
                    await self._request(at, length)
                else:
                    await self._request(at, data)
            else:
                await self._queue(at, data)

    async def _emit_zero(self) -> None:
        if self._zero_len:
            start, length = self._zero_start, self._zero_len
            self._zero_len = 0
            await self._queue(start, length)

    async def _queue(self, offset: int, item: bytes | int) -> None:
        self._check()
        if not self._started:
            raise RuntimeError("UploadStream.start() was not called")
        self._pending += 1
        if self._idle.is_set():
            self._idle = trio.Event()
        key = next(self._keys)
        self._inflight[key] = (offset, offset + (item if isinstance(item, int) else len(item)))
        try:
            await self._send.send((key, offset, item))
        except BaseException:
            self._done_one(key)
            raise

    def _done_one(self, key: int) -> None:
        self._inflight.pop(key, None)
        self._pending -= 1
        if self._pending == 0:
            self._idle.set()

    async def _worker(self, recv: trio.MemoryReceiveChannel[tuple[int, int, bytes | int]]) -> None:
        async with recv:
            async for key, offset, item in recv:
                try:
                    if self._error is None:
                        await self._request(offset, item)
                except Exception as e:  # the stream is broken; the writer sees it
                    log.warning("upload request at %d failed: %s", offset, e)
                    self._error = e
                finally:
                    self._done_one(key)

    async def _request(self, offset: int, item: bytes | int) -> None:
        for attempt in range(_RETRIES):
            try:
                if isinstance(item, int):
                    await self._target.zero(offset, item)
                    self._zeroed += item
                    self._zero_requests += 1
                else:
                    await self._target.write(offset, item)
                    self._put += len(item)
                    self._put_requests += 1
                return
            except Exception as e:
                if not is_transient(e) or attempt == _RETRIES - 1:
                    raise
                log.info("upload request at %d: %s; retrying", offset, e)
                await trio.sleep(self._retry_interval_s * (2**attempt))

    async def drain(self) -> None:
        """Send everything accepted so far and wait for it; raises if a request failed."""
        await self._emit_buffer()
        await self._emit_zero()
        await self._idle.wait()
        self._check()

    async def zero_unwritten(self) -> int:
        """Zero every range of ``[0, size)`` never written (the target does not read zeros
        there: a raw preallocated disk on block storage); returns the bytes zeroed. The
        ranges count as written afterwards."""
        await self.drain()
        gaps = self._written.gaps(0, self.size)
        for start, end in gaps:
            for pos in range(start, end, _MAX_ZERO_BYTES):
                length = min(_MAX_ZERO_BYTES, end - pos)
                await self._queue(pos, length)
                self._holes_zeroed += length
            self._written.add(start, end)
        await self.drain()
        return sum(e - s for s, e in gaps)

    async def finish(self) -> UploadStats:
        """Drain, flush the target, stop the workers. The stream takes no writes afterwards."""
        await self.drain()
        await self._target.flush()
        self._finished = True
        await self._send.aclose()
        return self.statistics()

    async def abort(self) -> None:
        """Stop the workers without sending what is left (the upload is being cancelled)."""
        self._finished = True
        if self._error is None:
            self._error = RestoreFailed("upload aborted")
        await self._send.aclose()
