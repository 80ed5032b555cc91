"""Reads of a backup set: begin, join, complete, expire, stale (rhvfs.sessions.core._setread).

Every timing rule runs on trio's MockClock, so pauses of hours take no time.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from rhvfs.sessions.core._setread import ReadState, SetReads, Verdict

SIZES = {"config:vm.ovf": 100, "disk:a": 1000, "disk:b": 500}
TAR1, TAR2, FD = (101, 1), (202, 2), (303, 3)


def read_whole(book: SetReads, reader: tuple[int, int], key: str) -> None:
    verdict, read, _ = book.verdict(key, reader)
    if verdict is Verdict.BEGIN:
        read = book.begin(SIZES)
    assert verdict is not Verdict.STALE and read is not None
    h = book.opened(read, key, reader)
    book.served(read, key, 0, SIZES[key])
    book.released(read, h)


async def test_back_to_back_runs_get_a_new_point_in_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    book = SetReads(idle_limit_s=3600)
    verdict, _, _ = book.verdict("config:vm.ovf", TAR1)
    assert verdict is Verdict.BEGIN
    first = book.begin(SIZES)
    for key in SIZES:
        assert book.verdict(key, TAR1)[:2] == (Verdict.JOIN, first)
        h = book.opened(first, key, TAR1)
        book.served(first, key, 0, SIZES[key])
        ended = book.released(first, h)
    assert ended and first.state is ReadState.COMPLETE and book.live is None
    # the next run, even a millisecond later and by the same process: a new read
    await trio.sleep(0.001)
    assert book.verdict("config:vm.ovf", TAR1)[0] is Verdict.BEGIN
    assert book.verdict("config:vm.ovf", TAR2)[0] is Verdict.BEGIN
    assert not book.tombstones  # a complete read leaves no tombstone


async def test_pauses_far_longer_than_grace_stay_on_one_point_in_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    book = SetReads(idle_limit_s=3600)
    read_whole(book, TAR1, "config:vm.ovf")
    first = book.live
    assert first is not None
    await trio.sleep(3000)  # a tape change
    verdict, read, _ = book.verdict("disk:a", TAR1)
    assert (verdict, read) == (Verdict.JOIN, first)
    assert book.next_expiry() == pytest.approx(first.last_activity + 3600)


async def test_idle_past_the_limit_is_stale_for_its_reader_never_mixed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    book = SetReads(idle_limit_s=60)
    read_whole(book, TAR1, "config:vm.ovf")
    read_whole(book, TAR1, "disk:a")
    first = book.live
    assert first is not None
    await trio.sleep(61)
    verdict, _, why = book.verdict("disk:b", TAR1)
    assert verdict is Verdict.STALE and first.read_id in why
    assert first.state is ReadState.EXPIRED
    # a file that process had finished is the start of its next run
    assert book.verdict("config:vm.ovf", TAR1)[0] is Verdict.BEGIN
    # another process begins a new read; the first process still may not mix into it
    second = book.begin(SIZES)
    h = book.opened(second, "config:vm.ovf", TAR2)
    assert book.verdict("disk:b", TAR1)[0] is Verdict.STALE
    assert book.verdict("disk:b", TAR2)[:2] == (Verdict.JOIN, second)
    book.released(second, h)


async def test_unknown_reader_is_never_refused(autojump_clock: trio.testing.MockClock) -> None:
    book = SetReads(idle_limit_s=60)
    read_whole(book, TAR1, "config:vm.ovf")
    await trio.sleep(61)
    assert book.verdict("disk:b", None)[0] is Verdict.BEGIN


async def test_parallel_readers_of_one_process_share_the_read(
    autojump_clock: trio.testing.MockClock,
) -> None:
    book = SetReads(idle_limit_s=3600)
    read = book.begin(SIZES)
    handles = [book.opened(read, k, FD) for k in SIZES]
    # pieces in any order, from several threads (same thread group)
    book.served(read, "disk:a", 500, 1000)
    book.served(read, "disk:b", 0, 500)
    book.served(read, "config:vm.ovf", 0, 100)
    book.served(read, "disk:a", 0, 499)
    assert not any(book.released(read, h) for h in handles)
    assert read.done == {"config:vm.ovf", "disk:b"}  # disk:a misses byte 499
    assert read.state is ReadState.LIVE
    h = book.opened(read, "disk:a", FD)
    book.served(read, "disk:a", 499, 500)
    assert book.released(read, h)
    assert read.state is ReadState.COMPLETE


async def test_a_second_tool_retires_the_first_which_then_never_mixes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    book = SetReads(idle_limit_s=3600)
    read_whole(book, TAR1, "config:vm.ovf")
    first = book.live
    assert first is not None
    h1 = book.opened(first, "disk:a", TAR1)  # TAR1 is in the middle of disk:a
    # TAR2 starts over: vm.ovf was read completely, so this is a new read
    verdict, _, _ = book.verdict("config:vm.ovf", TAR2)
    assert verdict is Verdict.BEGIN
    second = book.begin(SIZES)
    assert first.state is ReadState.RETIRED and book.live is second
    with pytest.raises(ValueError):
        book.opened(first, "disk:b", TAR1)  # a retired read takes no new handle
    # TAR1's open handle still reads its own point in time to the end
    book.served(first, "disk:a", 0, 1000)
    assert book.released(first, h1)
    assert first.state is ReadState.EXPIRED
    # ... and its next file would be of another point in time: refused
    assert book.verdict("disk:b", TAR1)[0] is Verdict.STALE
    assert book.verdict("disk:b", TAR2)[:2] == (Verdict.JOIN, second)


async def test_retired_read_refuses_its_readers_while_it_drains(
    autojump_clock: trio.testing.MockClock,
) -> None:
    book = SetReads(idle_limit_s=3600)
    read_whole(book, TAR1, "config:vm.ovf")
    first = book.live
    assert first is not None
    h = book.opened(first, "disk:a", FD)
    book.begin(SIZES)  # another run begins while FD still reads disk:a
    assert book.verdict("disk:b", TAR1)[0] is Verdict.STALE
    book.released(first, h)


async def test_lost_read_refuses_its_readers(autojump_clock: trio.testing.MockClock) -> None:
    book = SetReads(idle_limit_s=3600)
    read_whole(book, TAR1, "config:vm.ovf")
    read = book.live
    assert read is not None
    book.lose(read, "the snapshot was removed by someone else")
    verdict, _, why = book.verdict("disk:a", TAR1)
    assert verdict is Verdict.STALE and "removed by someone else" in why
    assert book.verdict("disk:a", TAR2)[0] is Verdict.BEGIN


async def test_optional_files_do_not_hold_completion(
    autojump_clock: trio.testing.MockClock,
) -> None:
    book = SetReads(idle_limit_s=3600)
    sizes = {**SIZES, "disks/disk:a": 1000}
    read = book.begin(sizes, required=SIZES)
    for key in SIZES:
        h = book.opened(read, key, TAR1)
        book.served(read, key, 0, sizes[key])
        book.released(read, h)
    assert read.state is ReadState.COMPLETE
    # a browsing read of disks/ alone never completes the set, but is fresh when re-read
    read2 = book.begin(sizes, required=SIZES)
    h = book.opened(read2, "disks/disk:a", TAR1)
    book.served(read2, "disks/disk:a", 0, 1000)
    assert not book.released(read2, h)
    assert book.verdict("disks/disk:a", TAR2)[0] is Verdict.BEGIN


def test_tombstones_are_bounded() -> None:
    async def main() -> None:
        book = SetReads(idle_limit_s=1)
        for i in range(20):
            read = book.begin(SIZES)
            h = book.opened(read, "disk:a", (i, i))
            book.released(read, h)
            await trio.sleep(2)
            book.expire_idle()
        assert len(book.tombstones) == 8

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
