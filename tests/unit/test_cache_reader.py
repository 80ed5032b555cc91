"""ImageReader against a fake in-memory BlockSource: exact bytes, request accounting, retries.

The fake source counts requests, tracks concurrency, checks that only data
extents are ever requested, and injects failures. Timing tests run on
``MockClock(autojump_threshold=0)`` (pytest-trio's ``autojump_clock``).
"""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rhvfs.cache import ExtentMap, ImageReader
from rhvfs.errors import DataIntegrityError, ImageioUnavailable, SessionClosed, TicketGone
from rhvfs.imageio import Extent
from rhvfs.retry import RetryPolicy

KiB = 1024
MiB = 1024 * KiB
FAST = RetryPolicy(tries=3, interval_s=0.0, timeout_s=10.0)


class FakeSource:
    """An image in memory; records every request; can fail on demand."""

    def __init__(self, data: bytes, extents: list[Extent], *, delay_s: float = 0.0) -> None:
        self.data = data
        self.map = ExtentMap(extents, size=len(data))
        self.delay_s = delay_s
        self.requests: list[tuple[int, int]] = []
        self.failures: list[Exception] = []  # raised by the next requests, in order
        self.active = 0
        self.max_active = 0
        self.reader: ImageReader | None = None
        self.max_reserved = 0
        self.in_flight: set[int] = set()
        self.allow_zero = False
        self.rnd = random.Random(len(data))
        self.random_delay_s = 0.0

    async def read_into(self, offset: int, buf: memoryview) -> None:
        self.requests.append((offset, len(buf)))
        assert offset >= 0 and offset + len(buf) <= len(self.data)
        # The reader must never ask for bytes of a zero or hole extent (unless allowed to).
        if not self.allow_zero:
            assert not any(z for _, _, z in self.map.segments(offset, offset + len(buf)))
        if self.reader is not None:
            self.max_reserved = max(self.max_reserved, self.reader.statistics().memory_reserved)
        # never two GETs of the same range at once: readers share in-flight fetches
        assert offset not in self.in_flight
        self.in_flight.add(offset)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.random_delay_s:
                await trio.sleep(self.rnd.random() * self.random_delay_s)
            elif self.delay_s:
                await trio.sleep(self.delay_s)
            else:
                await trio.lowlevel.checkpoint()
            if self.failures:
                raise self.failures.pop(0)
            buf[:] = self.data[offset : offset + len(buf)]
        finally:
            self.active -= 1
            self.in_flight.discard(offset)

    @property
    def bytes_requested(self) -> int:
        return sum(n for _, n in self.requests)


def make_image(layout: list[tuple[int, bool]], *, seed: int = 0) -> tuple[bytes, list[Extent]]:
    """``layout``: (length, is_data) runs. Data runs get random bytes (which may include zeroes)."""
    rnd = random.Random(seed)
    out = bytearray()
    extents = []
    for length, is_data in layout:
        extents.append(Extent(len(out), length, zero=not is_data))
        out += rnd.randbytes(length) if is_data else bytes(length)
    return bytes(out), extents


def make_reader(
    src: FakeSource,
    *,
    chunk_size: int,
    budget_chunks: int = 4,
    streams: int = 2,
    retry: RetryPolicy = FAST,
    zero_ratio: float = 0.0,
    random_read_size: int | None = None,
) -> ImageReader:
    extents = [Extent(s, e - s, zero=z) for s, e, z in src.map.segments(0, len(src.data))]
    reader = ImageReader(
        src,
        size=len(src.data),
        extents=extents,
        memory_budget=budget_chunks * chunk_size,
        streams=streams,
        chunk_size=chunk_size,
        retry=retry,
        max_zero_fetch_ratio=zero_ratio,
        random_read_size=random_read_size or chunk_size,
    )
    src.reader = reader
    return reader


# -- property: any read returns exactly the reference bytes ----------------------------

reads = st.lists(
    st.tuples(st.integers(0, 5000), st.integers(0, 3000), st.integers(0, 2)),
    min_size=1,
    max_size=25,
)
layouts = st.lists(st.tuples(st.integers(1, 2000), st.booleans()), min_size=1, max_size=10)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    layouts,
    reads,
    st.sampled_from([512, 1000, 4096]),
    st.booleans(),
    st.booleans(),
    st.sampled_from([0.0, 0.5]),
    st.sampled_from([1, 2, 4]),
)
def test_any_read_returns_the_reference_bytes(
    layout: list[tuple[int, bool]],
    ops: list[tuple[int, int, int]],
    chunk_size: int,
    with_workers: bool,
    sequential: bool,
    zero_ratio: float,
    blocks_per_chunk: int,
) -> None:
    data, extents = make_image(layout)
    size = len(data)

    async def main() -> None:
        src = FakeSource(data, extents)
        src.allow_zero = zero_ratio > 0
        reader = make_reader(
            src,
            chunk_size=chunk_size,
            budget_chunks=3,
            zero_ratio=zero_ratio,
            random_read_size=chunk_size // blocks_per_chunk
            if chunk_size % blocks_per_chunk == 0
            else chunk_size,
        )
        with trio.fail_after(10):  # a deadlock fails the example instead of hanging
            await run_ops(reader, src)

    async def run_ops(reader: ImageReader, src: FakeSource) -> None:
        async with trio.open_nursery() as nursery:
            if with_workers:
                await nursery.start(reader.run)
            pos = 0
            for offset, length, handle in ops:
                if sequential:
                    offset = pos
                    pos += length
                got = await reader.read(offset, length, handle_id=handle)
                assert got == data[offset : offset + length]
                assert reader.statistics().memory_reserved <= 3 * chunk_size
            await reader.aclose()
        assert src.max_reserved <= 3 * chunk_size
        assert size >= 0

    trio.run(main)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    layouts,
    st.lists(reads, min_size=2, max_size=4),
    st.sampled_from([512, 1000, 4096]),
    st.integers(1, 4),
)
def test_concurrent_readers_get_the_reference_bytes(
    layout: list[tuple[int, bool]],
    per_reader_ops: list[list[tuple[int, int, int]]],
    chunk_size: int,
    budget_chunks: int,
) -> None:
    data, extents = make_image(layout)

    async def main() -> None:
        src = FakeSource(data, extents)
        src.random_delay_s = 0.01
        block = chunk_size // 4 if chunk_size % 4 == 0 else chunk_size
        reader = make_reader(
            src,
            chunk_size=chunk_size,
            budget_chunks=budget_chunks,
            streams=3,
            random_read_size=block,
        )

        async def one(n: int, ops: list[tuple[int, int, int]]) -> None:
            pos = 0
            for k, (offset, length, _) in enumerate(ops):
                if n % 2 == 0:  # even readers go sequentially, odd ones jump around
                    offset = pos
                    pos += length
                got = await reader.read(offset, length, handle_id=n)
                assert got == data[offset : offset + length], (n, k, offset, length)

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                await nursery.start(reader.run)
                async with trio.open_nursery() as readers:
                    for n, ops in enumerate(per_reader_ops):
                        readers.start_soon(one, n, ops)
                assert reader.statistics().memory_reserved <= budget_chunks * chunk_size
                await reader.aclose()
        assert src.max_reserved <= budget_chunks * chunk_size
        assert src.max_active <= 3

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


# -- zero extents ----------------------------------------------------------------------


async def test_zero_extents_are_served_without_requests() -> None:
    data, extents = make_image([(64 * KiB, True), (1 * MiB, False), (64 * KiB, True)])
    src = FakeSource(data, extents)
    reader = make_reader(src, chunk_size=64 * KiB)
    got = await reader.read(64 * KiB, 1 * MiB, handle_id=1)
    assert got == bytes(1 * MiB)
    assert src.requests == []
    assert reader.statistics().zero_bytes_served == 1 * MiB


async def test_holes_read_as_zero_without_requests() -> None:
    data = bytes(8192)
    extents = [Extent(0, 4096, zero=True, hole=True), Extent(4096, 4096, zero=False, hole=True)]
    reader = ImageReader(
        FakeSource(data, [Extent(0, 8192, zero=True)]),
        size=8192,
        extents=extents,
        memory_budget=8192,
        streams=1,
        chunk_size=4096,
        retry=FAST,
    )
    assert await reader.read(0, 8192, handle_id=1) == bytes(8192)
    assert reader.statistics().requests == 0


async def test_only_data_parts_of_a_chunk_go_over_http() -> None:
    # One 64 KiB chunk holding data, zero, data: two GETs of exactly the data.
    data, extents = make_image([(4 * KiB, True), (48 * KiB, False), (12 * KiB, True)])
    src = FakeSource(data, extents)
    reader = make_reader(src, chunk_size=64 * KiB)
    assert await reader.read(0, 64 * KiB, handle_id=1) == data
    assert sorted(src.requests) == [(0, 4 * KiB), (52 * KiB, 12 * KiB)]
    assert reader.statistics().bytes_fetched == 16 * KiB


async def test_small_zero_gaps_are_bridged_within_the_ratio() -> None:
    # One 64 KiB chunk: 20 KiB data, 1 KiB zero, 20 KiB data, 8 KiB zero, 15 KiB data.
    data, extents = make_image(
        [(20 * KiB, True), (1 * KiB, False), (20 * KiB, True), (8 * KiB, False), (15 * KiB, True)]
    )
    src = FakeSource(data, extents)
    src.allow_zero = True
    reader = make_reader(src, chunk_size=64 * KiB, zero_ratio=0.05)  # 5 % of 55 KiB = 2.75 KiB
    assert await reader.read(0, 64 * KiB, handle_id=1) == data
    assert sorted(src.requests) == [(0, 41 * KiB), (49 * KiB, 15 * KiB)]
    assert reader.statistics().bytes_fetched == 56 * KiB <= 1.05 * reader.allocated_bytes


async def test_sequential_read_of_mostly_empty_disk_fetches_only_allocated_bytes() -> None:
    layout = [(256 * KiB, False)]
    for i in range(40):
        layout += [(4 * KiB * (i % 5 + 1), True), (200 * KiB, False)]
    data, extents = make_image(layout, seed=7)
    src = FakeSource(data, extents)
    reader = make_reader(src, chunk_size=64 * KiB, budget_chunks=8, streams=4)
    out = bytearray()
    async with trio.open_nursery() as nursery:
        await nursery.start(reader.run)
        while len(out) < len(data):
            out += await reader.read(len(out), 16 * KiB, handle_id=1)
        await reader.aclose()
    assert bytes(out) == data
    allocated = src.map.data_bytes
    assert reader.statistics().bytes_fetched == allocated == src.bytes_requested
    assert allocated == sum(4 * KiB * (i % 5 + 1) for i in range(40))


# -- prefetch, in-flight sharing, budget -----------------------------------------------


async def test_sequential_reads_prefetch_in_parallel_within_the_budget(
    autojump_clock: trio.testing.MockClock,
) -> None:
    data, extents = make_image([(64 * 64 * KiB, True)])
    src = FakeSource(data, extents, delay_s=0.01)
    reader = make_reader(src, chunk_size=64 * KiB, budget_chunks=6, streams=4)
    async with trio.open_nursery() as nursery:
        await nursery.start(reader.run)
        for off in range(0, len(data), 16 * KiB):
            assert await reader.read(off, 16 * KiB, handle_id=3) == data[off : off + 16 * KiB]
        await reader.aclose()
    stats = reader.statistics()
    assert src.max_active == 4  # streams
    assert src.max_reserved <= 6 * 64 * KiB
    assert stats.chunks_prefetched > 50
    # every chunk fetched exactly once, no waste
    assert sorted(src.requests) == [(i * 64 * KiB, 64 * KiB) for i in range(64)]
    assert stats.bytes_fetched == len(data)


async def test_first_read_at_zero_starts_read_ahead() -> None:
    data, extents = make_image([(4 * 64 * KiB, True)])
    src = FakeSource(data, extents)
    reader = make_reader(src, chunk_size=64 * KiB, budget_chunks=4)
    async with trio.open_nursery() as nursery:
        await nursery.start(reader.run)
        assert await reader.read(0, 4096, handle_id=1) == data[:4096]
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(src.requests) == [(0, 64 * KiB), (64 * KiB, 64 * KiB)]
        await reader.aclose()


async def test_random_reads_do_not_prefetch(autojump_clock: trio.testing.MockClock) -> None:
    data, extents = make_image([(64 * 64 * KiB, True)])
    src = FakeSource(data, extents, delay_s=0.01)
    reader = make_reader(src, chunk_size=64 * KiB, budget_chunks=6, streams=4)
    # chunk indices at least 3 apart from the previous read: never "sequential"
    order = [40, 0, 50, 5, 60, 10, 30, 15, 45, 20, 55, 25, 1, 35, 63, 8, 48, 12, 33, 3]
    async with trio.open_nursery() as nursery:
        await nursery.start(reader.run)
        for i, index in enumerate(order):
            off = index * 64 * KiB + (i * 997) % (60 * KiB)
            assert await reader.read(off, 4096, handle_id=9) == data[off : off + 4096]
        await reader.aclose()
    stats = reader.statistics()
    assert stats.chunks_prefetched == 0
    assert src.bytes_requested == stats.chunks_fetched * 64 * KiB


async def test_random_reads_fetch_small_blocks_and_reuse_held_chunks() -> None:
    data, extents = make_image([(8 * 64 * KiB, True)])
    src = FakeSource(data, extents)
    reader = make_reader(src, chunk_size=64 * KiB, budget_chunks=8, random_read_size=8 * KiB)
    async with trio.open_nursery() as nursery:
        await nursery.start(reader.run)
        # a random 4 KiB read costs one 8 KiB block, not a 64 KiB chunk
        assert (
            await reader.read(200 * KiB + 100, 4096, handle_id=1)
            == data[200 * KiB + 100 : 200 * KiB + 4196]
        )
        assert src.requests == [(200 * KiB, 8 * KiB)]
        # a read straddling two blocks fetches both
        assert (
            await reader.read(304 * KiB - 10, 20, handle_id=1)
            == data[304 * KiB - 10 : 304 * KiB + 10]
        )
        assert sorted(src.requests[1:]) == [(296 * KiB, 8 * KiB), (304 * KiB, 8 * KiB)]
        # sequential from 0 uses whole chunks; a random read inside a held chunk reuses it
        for off in range(0, 128 * KiB, 16 * KiB):
            assert await reader.read(off, 16 * KiB, handle_id=2) == data[off : off + 16 * KiB]
        await trio.testing.wait_all_tasks_blocked()
        before = len(src.requests)
        assert await reader.read(70 * KiB, 100, handle_id=3) == data[70 * KiB : 70 * KiB + 100]
        assert len(src.requests) == before
        await reader.aclose()
    assert (0, 64 * KiB) in src.requests and (64 * KiB, 64 * KiB) in src.requests


async def test_concurrent_readers_share_one_in_flight_fetch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    data, extents = make_image([(256 * KiB, True)])
    src = FakeSource(data, extents, delay_s=1.0)
    reader = make_reader(src, chunk_size=256 * KiB, budget_chunks=1, streams=4)
    results: dict[int, bytes] = {}

    async def read(i: int) -> None:
        results[i] = await reader.read(i * 1000, 5000, handle_id=100 + i)

    async with trio.open_nursery() as nursery:
        await nursery.start(reader.run)
        async with trio.open_nursery() as readers:
            for i in range(5):
                readers.start_soon(read, i)
        await reader.aclose()
    assert src.requests == [(0, 256 * KiB)]
    assert all(results[i] == data[i * 1000 : i * 1000 + 5000] for i in range(5))
    assert reader.statistics().cache_waits == 4


async def test_inline_reads_without_workers_share_fetches_too() -> None:
    data, extents = make_image([(256 * KiB, True)])
    src = FakeSource(data, extents)
    reader = make_reader(src, chunk_size=64 * KiB, budget_chunks=2)
    for off in range(0, 256 * KiB, 4096):
        assert await reader.read(off, 4096, handle_id=1) == data[off : off + 4096]
    assert len(src.requests) == 4
    assert reader.statistics().chunks_prefetched == 0


# -- retries and failures --------------------------------------------------------------


async def test_transient_errors_are_retried_with_exponential_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    data, extents = make_image([(8 * KiB, True)])
    src = FakeSource(data, extents)
    src.failures = [ImageioUnavailable("reset"), ImageioUnavailable("reset")]
    reader = make_reader(
        src,
        chunk_size=8 * KiB,
        budget_chunks=1,
        retry=RetryPolicy(tries=5, interval_s=1.0, timeout_s=60.0),
    )
    start = trio.current_time()
    assert await reader.read(0, 8 * KiB, handle_id=1) == data
    assert trio.current_time() - start == pytest.approx(3.0)  # 1 + 2
    assert len(src.requests) == 3
    assert reader.statistics().retries == 2
    assert reader.statistics().bytes_fetched == 8 * KiB


@pytest.mark.allow_log("rhvfs.cache", "WARNING", match="imageio unavailable")
@pytest.mark.allow_log("rhvfs.retry", "WARNING", match="giving up")
async def test_final_transient_failure_raises_and_a_later_read_refetches(
    autojump_clock: trio.testing.MockClock,
) -> None:
    data, extents = make_image([(8 * KiB, True)])
    src = FakeSource(data, extents)
    src.failures = [ImageioUnavailable(f"down {i}") for i in range(4)]
    reader = make_reader(
        src,
        chunk_size=8 * KiB,
        budget_chunks=1,
        retry=RetryPolicy(tries=3, interval_s=0.5, timeout_s=60.0),
    )
    start = trio.current_time()
    with pytest.raises(ImageioUnavailable, match="down 2"):
        await reader.read(0, 100, handle_id=1)
    assert trio.current_time() - start == pytest.approx(1.5)  # 0.5 + 1.0, then give up
    assert len(src.requests) == 3
    assert reader.statistics().failures == 1
    assert reader.statistics().memory_reserved == 0
    # the failed chunk was not cached: the next read fetches again (one failure left, then data)
    assert await reader.read(0, 100, handle_id=1) == data[:100]
    assert len(src.requests) == 5


@pytest.mark.allow_log("rhvfs.cache", "WARNING", match="imageio unavailable")
@pytest.mark.allow_log("rhvfs.retry", "WARNING", match="giving up")
async def test_retry_timeout_stops_retrying(autojump_clock: trio.testing.MockClock) -> None:
    data, extents = make_image([(8 * KiB, True)])
    src = FakeSource(data, extents)
    src.failures = [ImageioUnavailable(f"down {i}") for i in range(10)]
    reader = make_reader(
        src,
        chunk_size=8 * KiB,
        budget_chunks=1,
        retry=RetryPolicy(tries=10, interval_s=1.0, timeout_s=5.0),
    )
    with pytest.raises(ImageioUnavailable):
        await reader.read(0, 100, handle_id=1)
    # sleeps 1, 2 (t=3); the next sleep of 4 would end past the 5 s deadline
    assert trio.current_time() == pytest.approx(3.0)
    assert len(src.requests) == 3


@pytest.mark.allow_log("rhvfs.cache._reader", "WARNING", match="ticket gone")
async def test_ticket_gone_is_not_retried_and_replace_source_recovers() -> None:
    data, extents = make_image([(8 * KiB, True), (8 * KiB, False)])
    src = FakeSource(data, extents)
    src.failures = [TicketGone("expired", status=403)]
    reader = make_reader(src, chunk_size=8 * KiB, budget_chunks=2)
    with pytest.raises(TicketGone):
        await reader.read(0, 16 * KiB, handle_id=1)
    assert len(src.requests) == 1
    fresh = FakeSource(data, extents)
    reader.replace_source(fresh)
    assert await reader.read(0, 16 * KiB, handle_id=1) == data
    assert fresh.requests == [(0, 8 * KiB)]


@pytest.mark.allow_log("rhvfs.cache._reader", "WARNING", match="data integrity")
async def test_integrity_errors_are_not_retried() -> None:
    data, extents = make_image([(8 * KiB, True)])
    src = FakeSource(data, extents)
    src.failures = [DataIntegrityError("wrong Content-Range")]
    reader = make_reader(src, chunk_size=8 * KiB, budget_chunks=1)
    with pytest.raises(DataIntegrityError):
        await reader.read(0, 10, handle_id=1)
    assert len(src.requests) == 1


@pytest.mark.allow_log("rhvfs.cache", "WARNING", match="imageio unavailable: blip")
@pytest.mark.allow_log("rhvfs.retry", "WARNING", match="giving up")
async def test_failing_prefetch_does_not_break_later_reads(
    autojump_clock: trio.testing.MockClock,
) -> None:
    data, extents = make_image([(16 * 8 * KiB, True)])
    src = FakeSource(data, extents, delay_s=0.01)
    reader = make_reader(
        src,
        chunk_size=8 * KiB,
        budget_chunks=8,
        streams=2,
        retry=RetryPolicy(tries=1, interval_s=0, timeout_s=1),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(reader.run)
        assert await reader.read(0, 4096, handle_id=1) == data[:4096]
        src.failures = [ImageioUnavailable("blip")]
        assert (
            await reader.read(4096, 4096, handle_id=1) == data[4096:8192]
        )  # starts prefetch; one fails
        await trio.sleep(1)
        out = bytearray()
        for off in range(8192, len(data), 4096):
            out += await reader.read(off, 4096, handle_id=1)
        assert bytes(out) == data[8192:]
        await reader.aclose()
    assert reader.statistics().failures == 1


async def test_closed_reader_refuses_reads() -> None:
    data, extents = make_image([(8 * KiB, True)])
    reader = make_reader(FakeSource(data, extents), chunk_size=8 * KiB, budget_chunks=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(reader.run)
        await reader.aclose()
    with pytest.raises(SessionClosed):
        await reader.read(0, 1, handle_id=1)


async def test_reads_past_the_end_are_short() -> None:
    data, extents = make_image([(5000, True)])
    reader = make_reader(FakeSource(data, extents), chunk_size=4096, budget_chunks=2)
    assert await reader.read(4000, 4096, handle_id=1) == data[4000:]
    assert await reader.read(5000, 10, handle_id=1) == b""


def test_budget_must_hold_a_chunk() -> None:
    data, extents = make_image([(5000, True)])
    with pytest.raises(ValueError, match="at least one chunk"):
        ImageReader(
            FakeSource(data, extents),
            size=5000,
            extents=extents,
            memory_budget=100,
            streams=1,
            chunk_size=4096,
            retry=FAST,
        )


# -- cancellation and closing ----------------------------------------------------------


async def test_cancelled_inline_fetch_is_taken_over_by_a_waiting_reader(
    autojump_clock: trio.testing.MockClock,
) -> None:
    data, extents = make_image([(64 * KiB, True)])
    src = FakeSource(data, extents, delay_s=1.0)
    reader = make_reader(
        src, chunk_size=64 * KiB, budget_chunks=1
    )  # no workers: reads fetch inline
    got: list[bytes] = []

    async def second() -> None:
        got.append(await reader.read(1000, 1000, handle_id=2))

    async with trio.open_nursery() as nursery:
        with trio.move_on_after(0.5):  # the first reader gives up mid-fetch (a FUSE interrupt)
            nursery.start_soon(second)
            await reader.read(0, 1000, handle_id=1)
    assert got == [data[1000:2000]]
    assert len(src.requests) == 2  # the aborted GET, then the second reader's own
    assert reader.statistics().memory_reserved == 64 * KiB  # one ready chunk, nothing leaked
    assert reader.statistics().chunks_fetched == 1


async def test_aclose_with_fetches_in_flight_in_the_callers_nursery(
    autojump_clock: trio.testing.MockClock,
) -> None:
    data, extents = make_image([(256 * KiB, True)])
    src = FakeSource(data, extents, delay_s=10.0)
    reader = make_reader(src, chunk_size=64 * KiB, budget_chunks=4)
    errors: list[BaseException] = []

    async def waiter() -> None:
        try:
            await reader.read(64 * KiB, 100, handle_id=1)  # not at 0: no read-ahead
        except SessionClosed as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        await reader.run(nursery)  # fetch workers live in the caller's nursery
        nursery.start_soon(waiter)
        await trio.sleep(1)
        assert src.active == 1
        await reader.aclose()
    # the nursery exited promptly: the 10 s GET was cancelled, the waiter told why
    assert trio.current_time() < 2
    assert len(errors) == 1
    assert src.active == 0


async def test_out_of_order_parallel_reads_still_count_as_sequential(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # FUSE hands over several kernel read-ahead requests at once; they arrive shuffled.
    data, extents = make_image([(32 * 64 * KiB, True)])
    src = FakeSource(data, extents, delay_s=0.01)
    reader = make_reader(src, chunk_size=64 * KiB, budget_chunks=8, streams=4)
    rnd = random.Random(5)
    step = 16 * KiB
    async with trio.open_nursery() as nursery:
        await nursery.start(reader.run)
        for group in range(0, len(data), 8 * step):
            offsets = [group + i * step for i in range(8)]
            rnd.shuffle(offsets)
            results: dict[int, bytes] = {}

            async def one(off: int, results: dict[int, bytes] = results) -> None:
                results[off] = await reader.read(off, step, handle_id=1)

            async with trio.open_nursery() as batch:
                for off in offsets:
                    batch.start_soon(one, off)
            assert all(results[off] == data[off : off + step] for off in offsets)
        await reader.aclose()
    stats = reader.statistics()
    assert stats.chunks_prefetched >= 24
    assert sorted(src.requests) == [(i * 64 * KiB, 64 * KiB) for i in range(32)]


async def test_reused_buffers_read_as_zero_where_nothing_was_fetched(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Six data chunks, then chunks with data only in their first half: their buffers
    # come from dropped chunks full of random bytes, and the zero half must read as zero.
    chunk = 64 * KiB
    layout = [(6 * chunk, True)] + [(chunk // 2, True), (chunk // 2, False)] * 6
    data, extents = make_image(layout, seed=3)
    src = FakeSource(data, extents, delay_s=0.001)
    reader = make_reader(src, chunk_size=chunk, budget_chunks=8, streams=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(reader.run)
        step = 20 * KiB  # reads straddle the data/zero boundaries: copied from the buffer
        for off in range(0, len(data), step):
            assert await reader.read(off, step, handle_id=1) == data[off : off + step]
        assert reader.statistics().memory_reserved <= 8 * chunk
        await reader.aclose()
    stats = reader.statistics()
    assert stats.buffers_reused >= 4
    assert src.max_reserved <= 8 * chunk


async def test_a_view_kept_past_its_buffers_reuse_fails_and_never_shows_other_bytes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Reads inside one chunk return views of the cache buffer (no copy). A caller that
    # keeps one while the reader moves on (the buffer goes to another chunk) must get an
    # error on use, never the bytes of the chunk that reuses the buffer.
    chunk = 64 * KiB
    data, extents = make_image([(12 * chunk, True)], seed=5)
    src = FakeSource(data, extents, delay_s=0.001)
    reader = make_reader(src, chunk_size=chunk, budget_chunks=4, streams=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(reader.run)
        kept = await reader.read(0, 4096, handle_id=1)
        assert isinstance(kept, memoryview) and kept.readonly
        assert kept == data[:4096]  # used before the next await: the right bytes
        for off in range(4096, len(data), 16 * KiB):
            got = await reader.read(off, 16 * KiB, handle_id=1)
            assert got == data[off : off + 16 * KiB]
        assert reader.statistics().buffers_reused >= 1
        with pytest.raises(ValueError, match="released"):
            bytes(kept)
        await reader.aclose()


async def test_zero_reads_share_one_immutable_buffer() -> None:
    data, extents = make_image([(64 * KiB, False), (64 * KiB, True)])
    src = FakeSource(data, extents)
    reader = make_reader(src, chunk_size=64 * KiB)
    a = await reader.read(0, 4096, handle_id=1)
    b = await reader.read(8192, 8192, handle_id=1)
    assert a == bytes(4096) and b == bytes(8192) and src.requests == []
    assert isinstance(a, memoryview) and a.readonly and a.obj is getattr(b, "obj", None)
