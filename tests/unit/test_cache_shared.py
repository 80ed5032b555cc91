"""The read-ahead budget shared by several block readers: bounded together, split fairly."""

from __future__ import annotations

import trio
import trio.testing

from rhvfs.cache import ImageReader, SharedBudget
from rhvfs.imageio import Extent
from tests.unit.test_cache_reader import FAST, FakeSource, make_image

KiB = 1024
CHUNK = 64 * KiB


def test_prefetch_stays_within_the_total_and_the_fair_share() -> None:
    shared = SharedBudget(8 * CHUNK)
    shared.register()
    assert shared.may_prefetch(0, 8 * CHUNK)  # alone: the whole budget
    shared.register()
    shared.add(4 * CHUNK)
    assert shared.may_prefetch(3 * CHUNK, CHUNK)  # within half
    assert not shared.may_prefetch(4 * CHUNK, CHUNK)  # beyond its half
    shared.add(4 * CHUNK)
    assert not shared.may_prefetch(0, CHUNK)  # the total is full
    shared.unregister(4 * CHUNK)
    assert shared.readers == 1 and shared.held == 4 * CHUNK
    assert shared.may_prefetch(4 * CHUNK, 4 * CHUNK)


def reader_on(src: FakeSource, shared: SharedBudget) -> ImageReader:
    extents = [Extent(s, e - s, zero=z) for s, e, z in src.map.segments(0, len(src.data))]
    return ImageReader(
        src,
        size=len(src.data),
        extents=extents,
        memory_budget=16 * CHUNK,
        streams=4,
        chunk_size=CHUNK,
        retry=FAST,
        shared=shared,
    )


async def test_parallel_readers_share_the_budget_fairly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    shared = SharedBudget(12 * CHUNK)
    images = [make_image([(48 * CHUNK, True)], seed=n) for n in range(3)]
    sources = [FakeSource(data, extents, delay_s=0.02) for data, extents in images]
    readers = [reader_on(src, shared) for src in sources]
    peak = 0
    done_at: list[float] = []

    async def copy(n: int) -> None:
        nonlocal peak
        data = images[n][0]
        for off in range(0, len(data), 16 * KiB):
            assert await readers[n].read(off, 16 * KiB, handle_id=1) == data[off : off + 16 * KiB]
            peak = max(peak, shared.held)
            # the readers hold at most the shared budget plus a chunk each being read
            assert shared.held <= 12 * CHUNK + 3 * CHUNK
            await trio.sleep(0.0005)
        done_at.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        for r in readers:
            await nursery.start(r.run)
        async with trio.open_nursery() as copies:
            for n in range(3):
                copies.start_soon(copy, n)
        for r in readers:
            await r.aclose()
    assert shared.held == 0 and shared.readers == 0
    # every reader prefetched (none was starved by the others) ...
    assert all(r.statistics().chunks_prefetched >= 40 for r in readers)
    # ... and they finished close together: a fair split, not one after the other
    assert max(done_at) - min(done_at) < 0.25 * max(done_at)
    assert peak > 6 * CHUNK  # the budget was used, not left idle


async def test_a_reader_alone_may_use_the_whole_shared_budget(
    autojump_clock: trio.testing.MockClock,
) -> None:
    shared = SharedBudget(12 * CHUNK)
    data, extents = make_image([(48 * CHUNK, True)])
    other = reader_on(FakeSource(data, extents), shared)
    await other.aclose()  # a reader that came and went leaves nothing counted
    assert shared.readers == 0 and shared.held == 0
    src = FakeSource(data, extents, delay_s=0.5)  # a slow link: deep read-ahead pays
    reader = reader_on(src, shared)
    async with trio.open_nursery() as nursery:
        await nursery.start(reader.run)
        for off in range(0, len(data), 16 * KiB):
            assert await reader.read(off, 16 * KiB, handle_id=1) == data[off : off + 16 * KiB]
        assert src.max_active == 4  # all streams busy
        await reader.aclose()
    assert shared.held == 0


async def test_parallel_readers_share_the_get_slots(
    autojump_clock: trio.testing.MockClock,
) -> None:
    shared = SharedBudget(24 * CHUNK, streams=4)
    images = [make_image([(24 * CHUNK, True)], seed=n) for n in range(3)]
    sources = [FakeSource(data, extents, delay_s=0.01) for data, extents in images]
    readers = [reader_on(src, shared) for src in sources]
    active = peak = 0
    served = [0, 0, 0]

    def counting(src: FakeSource, n: int) -> None:
        inner = src.read_into

        async def read_into(offset: int, buf: memoryview) -> None:
            nonlocal active, peak
            active += 1
            peak = max(peak, active)
            try:
                await inner(offset, buf)
                served[n] += 1
            finally:
                active -= 1

        src.read_into = read_into  # type: ignore[method-assign]

    for n, src in enumerate(sources):
        counting(src, n)

    async def copy(n: int) -> None:
        data = images[n][0]
        for off in range(0, len(data), 16 * KiB):
            assert await readers[n].read(off, 16 * KiB, handle_id=1) == data[off : off + 16 * KiB]

    async with trio.open_nursery() as nursery:
        for r in readers:
            await nursery.start(r.run)
        async with trio.open_nursery() as copies:
            for n in range(3):
                copies.start_soon(copy, n)
        for r in readers:
            await r.aclose()
    # three readers of 4 streams each, but never more than 4 GETs at once in all
    assert peak == 4
    assert served == [24, 24, 24]
    assert max(s.max_active for s in sources) >= 2  # each still ran GETs in parallel
