"""The read-ahead pacer: windows from GET durations and consumption rates, on a fake clock.

Times are plain floats the test advances itself; nothing here sleeps or reads a
real clock. The last tests run the block reader on trio's ``MockClock`` against a
source whose GETs take a fixed virtual time, to see the window follow the link.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from rhvfs.cache._pace import Pacer, Window
from tests.unit.test_cache_reader import FakeSource, make_image, make_reader

KiB = 1024
MiB = 1024 * KiB
CHUNK = 8 * MiB


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def stream(
    pacer: Pacer,
    window: Window,
    clock: Clock,
    *,
    rate: float,
    reads: int,
    read_size: int = 1 * MiB,
    stall_every: int = 0,
) -> list[int]:
    """``reads`` sequential reads consumed at ``rate`` bytes/s; the windows after each."""
    out = []
    for i in range(reads):
        clock.now += read_size / rate
        stalled = bool(stall_every) and i % stall_every == 0
        out.append(pacer.advance(window, read_size, clock.now, waited=stalled))
    return out


def test_window_covers_bandwidth_times_delay() -> None:
    clock = Clock()
    pacer = Pacer(chunk_size=CHUNK, max_window=32)
    for _ in range(10):
        pacer.get_done(CHUNK, 0.080)  # a chunk GET takes 80 ms
    window = Window()
    pacer.start(window, clock())
    windows = stream(pacer, window, clock, rate=400e6, reads=64)
    # 400 MB/s x 80 ms = 32 MB = 3.8 chunks in flight, plus the chunk being read
    assert windows[-1] == 5
    assert window.rate == pytest.approx(400e6, rel=0.01)


def test_slower_link_gets_a_deeper_window() -> None:
    windows = {}
    for delay in (0.020, 0.100, 0.400):
        clock = Clock()
        pacer = Pacer(chunk_size=CHUNK, max_window=64)
        for _ in range(10):
            pacer.get_done(CHUNK, delay)
        window = Window()
        pacer.start(window, clock())
        windows[delay] = stream(pacer, window, clock, rate=200e6, reads=64)[-1]
    assert windows[0.020] < windows[0.100] < windows[0.400]
    assert windows[0.400] == 11  # 200 MB/s x 0.4 s = 80 MB = 9.5 chunks, + 1


def test_slow_consumer_keeps_a_small_window() -> None:
    clock = Clock()
    pacer = Pacer(chunk_size=CHUNK, max_window=14)
    for _ in range(10):
        pacer.get_done(CHUNK, 0.050)
    window = Window()
    pacer.start(window, clock())
    # a tape drive at 40 MB/s needs 2 MB ahead: the chunk being read and one more
    assert stream(pacer, window, clock, rate=40e6, reads=64)[-1] == 2


def test_window_never_exceeds_the_budget() -> None:
    clock = Clock()
    pacer = Pacer(chunk_size=CHUNK, max_window=6)
    for _ in range(10):
        pacer.get_done(CHUNK, 2.0)  # a very slow link
    window = Window()
    pacer.start(window, clock())
    windows = stream(pacer, window, clock, rate=500e6, reads=64, stall_every=3)
    assert max(windows) == 6
    assert windows[-1] == 6


def test_stalls_double_the_window_and_calm_reads_shrink_it_back() -> None:
    clock = Clock()
    pacer = Pacer(chunk_size=CHUNK, max_window=32)
    for _ in range(10):
        pacer.get_done(CHUNK, 0.050)
    window = Window()
    pacer.start(window, clock())
    base = stream(pacer, window, clock, rate=200e6, reads=32)[-1]
    assert base == 3  # 200 MB/s x 50 ms = 10 MB = 1.2 chunks, + 1 being read
    # the link got slower than measured: reads wait, the window doubles per stall
    stalled = [pacer.advance(window, MiB, clock.now, waited=True) for _ in range(3)]
    assert stalled == [6, 12, 24]
    # data is ready again: the stall bonus decays, one chunk per 16 calm reads
    calm = stream(pacer, window, clock, rate=200e6, reads=16 * 8)
    assert calm[-1] == base + window.bonus
    assert window.bonus == 0
    assert calm == sorted(calm, reverse=True)


def test_random_access_drops_the_window_and_sequential_reads_resume_it() -> None:
    clock = Clock()
    pacer = Pacer(chunk_size=CHUNK, max_window=32)
    for _ in range(10):
        pacer.get_done(CHUNK, 0.080)
    window = Window()
    pacer.start(window, clock())
    steady = stream(pacer, window, clock, rate=400e6, reads=64)[-1]
    pacer.stop(window)
    assert window.chunks == 0
    # back to sequential: the learnt rate gives the steady window at once
    assert pacer.start(window, clock()) == steady


def test_short_gets_do_not_count_and_the_first_window_doubles() -> None:
    clock = Clock()
    pacer = Pacer(chunk_size=CHUNK, max_window=16)
    pacer.get_done(64 * KiB, 0.5)  # a short GET (between zero extents): round trip only
    assert pacer.delay == 0.0
    window = Window()
    assert pacer.start(window, clock()) == 1
    # nothing measured yet: the window doubles per read, as a new copy ramps up
    assert stream(pacer, window, clock, rate=100e6, reads=4) == [2, 4, 8, 16]
    pacer.get_done(CHUNK // 2, 0.030)  # half a chunk counts, scaled to a whole one
    assert pacer.delay == 0.060


# -- the reader follows the link ---------------------------------------------------------


async def read_through(delay_s: float) -> tuple[int, FakeSource]:
    """Read a 64-chunk image sequentially with a consumer spending 1 ms per 16 KiB read;
    return the reader's largest read-ahead window and the source."""
    data, extents = make_image([(64 * 64 * KiB, True)])
    src = FakeSource(data, extents, delay_s=delay_s)
    reader = make_reader(src, chunk_size=64 * KiB, budget_chunks=40, streams=16)
    largest = 0
    async with trio.open_nursery() as nursery:
        await nursery.start(reader.run)
        for off in range(0, len(data), 16 * KiB):
            assert await reader.read(off, 16 * KiB, handle_id=1) == data[off : off + 16 * KiB]
            largest = max(largest, reader._handles[1].window.chunks)
            await trio.sleep(0.001)
        await reader.aclose()
    assert sorted(src.requests) == [(i * 64 * KiB, 64 * KiB) for i in range(64)]
    return largest, src


async def test_reader_window_grows_with_link_delay(autojump_clock: trio.testing.MockClock) -> None:
    fast, fast_src = await read_through(0.002)
    slow, slow_src = await read_through(0.050)
    # 16 MB/s consumption: 2 ms GETs need one chunk ahead, 50 ms GETs about 13
    assert fast <= 3
    assert slow >= 12
    assert slow_src.max_active > fast_src.max_active
