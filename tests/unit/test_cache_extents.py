"""Extent arithmetic of the block cache, checked byte by byte against a reference layout."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rhvfs.cache import ExtentMap
from rhvfs.imageio import Extent

# (length, kind) with kind 0 = data, 1 = zero, 2 = hole (reads as zero)
layouts = st.lists(st.tuples(st.integers(1, 300), st.integers(0, 2)), min_size=1, max_size=12)


def build(layout: list[tuple[int, int]]) -> tuple[list[Extent], list[bool]]:
    extents: list[Extent] = []
    zero_bytes: list[bool] = []
    pos = 0
    for length, kind in layout:
        extents.append(Extent(pos, length, zero=kind != 0, hole=kind == 2))
        zero_bytes.extend([kind != 0] * length)
        pos += length
    return extents, zero_bytes


@given(layouts, st.data())
def test_segments_cover_the_range_with_the_right_kinds(
    layout: list[tuple[int, int]], data: st.DataObject
) -> None:
    extents, ref = build(layout)
    size = len(ref)
    emap = ExtentMap(extents, size=size)
    a = data.draw(st.integers(0, size))
    b = data.draw(st.integers(a, size + 50))
    segs = emap.segments(a, b)
    pos = a
    for s, e, zero in segs:
        assert s == pos and e > s
        assert all(ref[i] == zero for i in range(s, e))
        pos = e
    assert pos == max(a, min(b, size))
    # adjacent segments differ in kind (runs are merged)
    assert all(x[2] != y[2] for x, y in zip(segs, segs[1:], strict=False))
    assert emap.is_zero(a, b) == all(ref[a : min(b, size)])


@given(layouts, st.data())
def test_data_ranges_are_exactly_the_data_bytes(
    layout: list[tuple[int, int]], data: st.DataObject
) -> None:
    extents, ref = build(layout)
    size = len(ref)
    emap = ExtentMap(extents, size=size)
    a = data.draw(st.integers(0, size))
    b = data.draw(st.integers(a, size))
    max_length = data.draw(st.integers(1, 100))
    covered = [False] * size
    for off, length in emap.data_ranges(a, b, max_length=max_length):
        assert 0 < length <= max_length
        for i in range(off, off + length):
            assert not covered[i]
            covered[i] = True
    assert covered == [a <= i < b and not ref[i] for i in range(size)]
    assert emap.data_bytes == ref.count(False)


@given(layouts, st.data())
def test_fetch_ranges_cover_the_data_and_bound_the_zero_bytes(
    layout: list[tuple[int, int]], data: st.DataObject
) -> None:
    extents, ref = build(layout)
    size = len(ref)
    emap = ExtentMap(extents, size=size)
    a = data.draw(st.integers(0, size))
    b = data.draw(st.integers(a, size))
    ratio = data.draw(st.sampled_from([0.0, 0.05, 0.5]))
    max_length = data.draw(st.integers(1, 400))
    ranges = emap.fetch_ranges(a, b, max_length=max_length, max_zero_ratio=ratio)
    covered = [False] * size
    for off, length in ranges:
        assert 0 < length <= max_length and a <= off and off + length <= b
        for i in range(off, off + length):
            assert not covered[i]
            covered[i] = True
    data_bytes = sum(1 for i in range(a, b) if not ref[i])
    assert all(covered[i] for i in range(a, b) if not ref[i])  # every data byte
    zero_fetched = sum(1 for i in range(size) if covered[i] and ref[i])
    assert zero_fetched <= ratio * data_bytes
    if ratio == 0.0:
        assert ranges == emap.data_ranges(a, b, max_length=max_length)


def test_rejects_gaps_and_short_maps() -> None:
    with pytest.raises(ValueError, match="contiguous"):
        ExtentMap([Extent(0, 10, False), Extent(11, 5, True)], size=16)
    with pytest.raises(ValueError, match="cover"):
        ExtentMap([Extent(0, 10, False)], size=16)


def test_extents_longer_than_the_image_are_clipped() -> None:
    emap = ExtentMap([Extent(0, 4096, False), Extent(4096, 8192, True)], size=6000)
    assert emap.segments(0, 10_000) == [(0, 4096, False), (4096, 6000, True)]
    assert emap.data_bytes == 4096
