"""The upload stream: coalescing, zero detection, ordering, errors, retries.

The async tests run on ``MockClock(autojump_threshold=0)``: the fake target's latency
and the retry back-off are trio sleeps that pass instantly.
"""

from __future__ import annotations

import hashlib
import random

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from trio.testing import MockClock

from rhvfs.errors import ImageioUnavailable, RestoreError, TicketGone
from rhvfs.sessions.restore._upload import UploadStream, split_runs

KiB = 1024
MiB = 1024 * KiB


class FakeTarget:
    """An image in memory that records every request."""

    def __init__(self, size: int, *, fail_at: int | None = None, transient: int = 0) -> None:
        self.image = bytearray(size)
        self.puts: list[tuple[int, int]] = []
        self.zeros: list[tuple[int, int]] = []
        self.flushes = 0
        self.fail_at = fail_at
        self.transient = transient
        self.in_flight = 0
        self.max_in_flight = 0

    async def write(self, offset: int, data: bytes, *, flush: bool = False) -> None:
        if self.transient:
            self.transient -= 1
            raise ImageioUnavailable("connection reset")
        if self.fail_at is not None and offset <= self.fail_at < offset + len(data):
            raise TicketGone("403")
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        await trio.sleep(0.001)
        self.in_flight -= 1
        self.image[offset : offset + len(data)] = data
        self.puts.append((offset, len(data)))

    async def zero(self, offset: int, size: int, *, flush: bool = False) -> None:
        self.image[offset : offset + size] = bytes(size)
        self.zeros.append((offset, size))

    async def flush(self) -> None:
        self.flushes += 1


def pattern(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


@given(
    st.lists(
        st.tuples(st.booleans(), st.integers(min_value=1, max_value=40)), min_size=1, max_size=12
    )
)
def test_split_runs_covers_buffer_and_classifies(blocks: list[tuple[bool, int]]) -> None:
    buf = b"".join(bytes(n * 512) if z else b"\x01" * (n * 512) for z, n in blocks)
    runs = split_runs(buf, block=4096, min_zero_run=8192)
    pos = 0
    for start, length, is_zero in runs:
        assert start == pos and length > 0
        if is_zero:
            assert buf[start : start + length] == bytes(length)
        pos += length
    assert pos == len(buf)
    for (_, _, a), (_, _, b) in zip(runs, runs[1:], strict=False):
        assert a != b  # adjacent runs differ, so nothing is split needlessly


def test_split_runs_merges_short_inner_zero_gaps() -> None:
    buf = b"\x01" * 4096 + bytes(8192) + b"\x01" * 4096 + bytes(1 * MiB)
    assert split_runs(buf, block=4096, min_zero_run=64 * KiB) == [
        (0, 16384, False),
        (16384, 1 * MiB, True),
    ]


async def run_stream(
    target: FakeTarget, writes: list[tuple[int, bytes]], size: int
) -> UploadStream:
    error: RestoreError | None = None
    async with trio.open_nursery() as nursery:
        stream = UploadStream(target, size=size, chunk_bytes=1 * MiB, workers=3, retry_interval_s=0)
        stream.start(nursery)
        try:
            for off, data in writes:
                await stream.write(off, data)
            await stream.finish()
        except RestoreError as e:
            await stream.abort()
            error = e
    if error is not None:
        raise error
    return stream


async def test_sequential_128k_writes_become_chunked_puts_and_zero_patches(
    autojump_clock: MockClock,
) -> None:
    size = 8 * MiB
    image = bytearray(size)
    image[0 : 3 * MiB] = pattern(3 * MiB, 1)
    image[6 * MiB + 4096 : 6 * MiB + 8192] = pattern(4096, 2)
    target = FakeTarget(size)
    writes = [(o, bytes(image[o : o + 128 * KiB])) for o in range(0, size, 128 * KiB)]
    stream = await run_stream(target, writes, size)
    assert hashlib.sha256(target.image).hexdigest() == hashlib.sha256(image).hexdigest()
    stats = stream.statistics()
    assert stats.bytes_received == size
    assert stats.bytes_put == 3 * MiB + 4096
    assert stats.bytes_put + stats.bytes_zeroed == size
    assert target.zeros == [(3 * MiB, 3 * MiB + 4096), (6 * MiB + 8192, 2 * MiB - 8192)]
    assert all(length <= 1 * MiB for _, length in target.puts)
    assert target.flushes == 1
    assert target.max_in_flight > 1


async def test_holes_are_not_sent_and_rewrites_land(autojump_clock: MockClock) -> None:
    size = 4 * MiB
    target = FakeTarget(size)
    a, b, c = pattern(64 * KiB, 3), pattern(64 * KiB, 4), pattern(4096, 5)
    writes = [(0, a), (2 * MiB, b), (4096, c)]  # hole, then an out-of-order rewrite
    stream = await run_stream(target, writes, size)
    expected = bytearray(size)
    expected[0 : len(a)] = a
    expected[2 * MiB : 2 * MiB + len(b)] = b
    expected[4096 : 4096 + len(c)] = c
    assert target.image == expected
    assert stream.statistics().out_of_order_writes == 1
    assert target.zeros == []


@pytest.mark.allow_log("rhvfs.sessions.restore._upload", "WARNING", match="failed")
async def test_failed_request_breaks_the_stream(autojump_clock: MockClock) -> None:
    size = 4 * MiB
    target = FakeTarget(size, fail_at=1 * MiB + 10)
    with pytest.raises(RestoreError, match="upload failed"):
        await run_stream(
            target, [(o, b"\x05" * (256 * KiB)) for o in range(0, size, 256 * KiB)], size
        )


async def test_transient_errors_are_retried(autojump_clock: MockClock) -> None:
    size = 2 * MiB
    target = FakeTarget(size, transient=2)
    data = pattern(size, 9)
    await run_stream(target, [(0, data)], size)
    assert target.image == data


async def test_write_beyond_size_is_refused(autojump_clock: MockClock) -> None:
    target = FakeTarget(1 * MiB)
    with pytest.raises(RestoreError, match="beyond the disk's size"):
        await run_stream(target, [(1 * MiB - 10, b"x" * 20)], 1 * MiB)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 63), st.integers(1, 8), st.booleans()), max_size=20))
def test_any_write_order_gives_the_same_image(ops: list[tuple[int, int, bool]]) -> None:
    size = 64 * 16 * KiB
    expected = bytearray(size)
    writes = []
    for i, (blk, nblk, zero) in enumerate(ops):
        off = blk * 16 * KiB
        n = min(nblk * 16 * KiB, size - off)
        data = bytes(n) if zero else pattern(n, i)
        expected[off : off + n] = data
        writes.append((off, data))
    target = FakeTarget(size)
    trio.run(run_stream, target, writes, size, clock=MockClock(autojump_threshold=0))
    assert target.image == expected


async def test_backward_writes_clear_of_queued_requests_go_out_concurrently(
    autojump_clock: MockClock,
) -> None:
    """restic writes a file blob by blob in any order: those PUTs need not wait for each other."""
    size = 4 * MiB
    image = pattern(size, 11)
    blocks = [(o, image[o : o + 256 * KiB]) for o in range(0, size, 256 * KiB)]
    target = FakeTarget(size)
    last = blocks.pop()
    stream = await run_stream(target, [last, *reversed(blocks)], size)
    assert target.image == image
    assert stream.statistics().out_of_order_writes == len(blocks)
    assert target.max_in_flight > 1
