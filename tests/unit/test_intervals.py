"""``rhvfs.intervals.Intervals`` against a plain set of integers (hypothesis)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from rhvfs.intervals import Intervals

U = 80  # the universe [0, U): small, so ranges overlap and touch often

span = st.tuples(st.integers(-5, U), st.integers(-5, U))
spans = st.lists(span, max_size=12)


def ints(ranges: list[tuple[int, int]]) -> set[int]:
    return {x for s, e in ranges for x in range(s, e)}


def check_normal(iv: Intervals) -> None:
    """Sorted, non-empty, neither overlapping nor touching."""
    rs = iv.ranges()
    assert all(s < e for s, e in rs)
    assert all(rs[k][1] < rs[k + 1][0] for k in range(len(rs) - 1))
    assert len(iv) == len(rs) and bool(iv) == bool(rs)


@given(spans)
def test_construction_is_the_union(ranges: list[tuple[int, int]]) -> None:
    iv = Intervals(ranges)
    check_normal(iv)
    assert ints(iv.ranges()) == ints(ranges)
    assert iv.total == len(ints(ranges))
    assert iv.end == (max(ints(ranges)) + 1 if ints(ranges) else 0)


@given(spans, spans)
def test_add_and_discard_match_set_operations(
    first: list[tuple[int, int]], ops: list[tuple[int, int]]
) -> None:
    iv = Intervals(first)
    ref = ints(first)
    for k, (s, e) in enumerate(ops):
        if k % 2:
            iv.discard(s, e)
            ref -= set(range(s, e))
        else:
            iv.add(s, e)
            ref |= set(range(s, e))
        check_normal(iv)
        assert ints(iv.ranges()) == ref


@given(spans, spans)
def test_set_algebra(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> None:
    x, y = Intervals(a), Intervals(b)
    for result, expected in ((x | y, ints(a) | ints(b)), (x - y, ints(a) - ints(b))):
        check_normal(result)
        assert ints(result.ranges()) == expected
    both = x & y
    check_normal(both)
    assert ints(both.ranges()) == ints(a) & ints(b)
    assert x.ranges() == Intervals(a).ranges()  # operands unchanged


@given(spans, span)
def test_queries(ranges: list[tuple[int, int]], query: tuple[int, int]) -> None:
    iv = Intervals(ranges)
    s, e = query
    want = set(range(s, e))
    held = ints(ranges)
    assert iv.overlap(s, e) == len(want & held)
    assert iv.covers(s, e) == want.issubset(held)
    gaps = iv.gaps(s, e)
    assert ints(gaps) == want - held
    assert all(a < b for a, b in gaps) and gaps == sorted(gaps)
    assert all(gaps[k][1] < gaps[k + 1][0] for k in range(len(gaps) - 1))


@given(spans)
def test_equality_is_by_content(ranges: list[tuple[int, int]]) -> None:
    one = Intervals(ranges)
    other = Intervals()
    for s, e in reversed(ranges):
        other.add(s, e)
    assert one == other and one.copy() == one
    assert (one == Intervals([(0, U + 10)])) == (ints(ranges) == set(range(U + 10)))


def test_touching_ranges_merge() -> None:
    iv = Intervals([(4, 8), (0, 4)])
    assert iv.ranges() == [(0, 8)]
    iv.discard(2, 3)
    assert iv.ranges() == [(0, 2), (3, 8)]
    iv.add(2, 3)
    assert iv == Intervals([(0, 8)]) and repr(iv) == "Intervals([(0, 8)])"
