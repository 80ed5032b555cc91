"""``ImageCoverage``: completeness of an image by evidence, per tool pattern; ``reads_zero``."""

from __future__ import annotations

import random

import pytest

from rhvfs.sessions.restore._coverage import ImageCoverage, reads_zero

SIZE = 1 << 20
BLOCK = 64 * 1024


def test_sequential_write_of_every_byte_is_complete() -> None:
    c = ImageCoverage()
    for off in range(0, SIZE, BLOCK):
        assert not c.complete(SIZE)
        c.write(off, BLOCK)
    assert c.complete(SIZE)
    assert c.unwritten(SIZE) == []


def test_tar_sparse_gaps_and_trailing_ftruncate_are_holes() -> None:
    """tar -S / cp --sparse / dd conv=sparse: seek over zeros, ftruncate the final hole."""
    c = ImageCoverage()
    c.write(BLOCK, BLOCK)  # first data after a hole
    c.write(4 * BLOCK, BLOCK)
    assert not c.complete(SIZE)
    c.truncate(SIZE)  # the trailing hole
    assert c.complete(SIZE)
    assert c.unwritten(SIZE) == [(0, BLOCK), (2 * BLOCK, 4 * BLOCK), (5 * BLOCK, SIZE)]
    assert c.owed.ranges() == []


def test_presize_then_half_is_owed_until_the_rest_is_written() -> None:
    """The issue's case: ftruncate to full size first, write half, close, come back later."""
    c = ImageCoverage()
    c.truncate(SIZE)
    assert c.owed.ranges() == [(0, SIZE)]
    c.write(0, SIZE // 2)
    assert not c.complete(SIZE)  # closed here: nothing proves the rest is zero
    assert c.unaccounted(SIZE).ranges() == [(SIZE // 2, SIZE)]
    c.write(SIZE // 2, SIZE // 2)
    assert c.complete(SIZE)


def test_presize_then_times_set_makes_owed_ranges_holes() -> None:
    """tar -S of an all-zero image: one ftruncate, then the times."""
    c = ImageCoverage()
    c.truncate(SIZE)
    assert not c.complete(SIZE)
    c.finished()
    assert c.complete(SIZE)
    assert c.unwritten(SIZE) == [(0, SIZE)]


def test_restic_out_of_order_writes_turn_gaps_into_owed_ranges() -> None:
    """restic (no --sparse) writes blobs in any order, over many opens."""
    order = list(range(0, SIZE, BLOCK))
    random.Random(7).shuffle(order)
    order.remove(SIZE - BLOCK)
    c = ImageCoverage()
    c.write(SIZE - BLOCK, BLOCK)  # the last blob first: looks like a sparse file for now
    assert c.complete(SIZE)
    first_hole_fill = order.pop(0)
    c.write(first_hole_fill, BLOCK)  # ... until a write lands in the gap
    assert c.out_of_order
    assert not c.complete(SIZE)
    for off in order[:-1]:
        c.write(off, BLOCK)
        assert not c.complete(SIZE)
    c.write(order[-1], BLOCK)
    assert c.complete(SIZE)


def test_restic_sparse_presizes_skips_zero_blobs_and_sets_times() -> None:
    c = ImageCoverage()
    c.truncate(SIZE)
    for off in range(SIZE - BLOCK, -1, -2 * BLOCK):
        c.write(off, BLOCK)
    assert not c.complete(SIZE)
    c.finished()
    assert c.complete(SIZE)
    assert len(c.unwritten(SIZE)) == SIZE // BLOCK // 2


def test_short_file_is_never_complete_and_long_file_neither() -> None:
    c = ImageCoverage()
    c.write(0, SIZE // 2)
    c.finished()
    assert not c.complete(SIZE)
    c.write(SIZE // 2, SIZE // 2 + 1)
    assert not c.complete(SIZE)


def test_o_trunc_forgets_everything_and_restarts() -> None:
    c = ImageCoverage()
    c.write(BLOCK, BLOCK)
    c.write(0, BLOCK)  # into the gap: out of order
    assert c.out_of_order
    c.truncate(0)
    assert not c.out_of_order and c.end == 0
    assert c.written.ranges() == [] and c.holes.ranges() == [] and c.owed.ranges() == []
    c.write(BLOCK, SIZE - BLOCK)
    assert c.complete(SIZE)


def test_shrink_cuts_every_kind_of_range() -> None:
    c = ImageCoverage()
    c.truncate(SIZE)
    c.write(0, BLOCK)
    c.truncate(BLOCK // 2)
    assert c.written.ranges() == [(0, BLOCK // 2)]
    assert c.owed.ranges() == []
    c.truncate(SIZE)  # extended after data: a hole
    assert c.complete(SIZE)


def test_rewrite_of_written_bytes_changes_nothing() -> None:
    c = ImageCoverage()
    c.write(0, SIZE)
    c.write(BLOCK, BLOCK)
    assert c.complete(SIZE) and not c.out_of_order


@pytest.mark.parametrize(
    ("fmt", "sparse", "storage_type", "expected"),
    [
        ("cow", True, "iscsi", True),
        ("cow", False, "fcp", True),
        ("raw", True, "nfs", True),
        ("raw", False, "nfs", True),
        ("raw", False, "glusterfs", True),
        ("raw", False, "iscsi", False),
        ("raw", False, "fcp", False),
        ("raw", False, None, False),
    ],
)
def test_reads_zero_follows_the_imageio_client(
    fmt: str, sparse: bool, storage_type: str | None, expected: bool
) -> None:
    assert reads_zero(fmt=fmt, sparse=sparse, storage_type=storage_type) is expected
