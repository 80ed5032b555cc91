"""``Intervals``: a set of integers kept as sorted, disjoint half-open ranges ``[start, end)``.

The one implementation of range-set arithmetic (union, difference,
intersection, overlap and coverage counts, gaps) that every layer uses: the
qcow2 delta builder's cluster sets (``rhvfs.backupset``), the byte coverage of
an incremental set's files and the ranges a restore staged
(``rhvfs.sessions``), the data parts of a delta's extent map. It sits at the
bottom of the dependency graph next to ``rhvfs.errors``: it imports nothing
from rhvfs, so any package may use it without creating a cycle or an upward
import.

Normal form (an invariant between any two calls): ranges are non-empty,
sorted, and neither overlap nor touch (``[0, 4)`` and ``[4, 8)`` are kept as
``[0, 8)``), so two ``Intervals`` holding the same integers compare equal and
list the same ranges.

Must not: know what the integers mean (bytes, clusters), do I/O, or import
anything from rhvfs.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator

__all__ = ["Intervals"]


class Intervals:
    """A mutable set of integers as sorted, disjoint, non-touching ``[start, end)`` ranges.

    ``add``/``discard`` take ``O(log n + k)`` for ``k`` ranges merged or cut;
    ``overlap``/``covers`` ``O(log n + k)`` for ``k`` ranges inside the query.
    Empty ranges (``end <= start``) are ignored wherever a range is taken.
    """

    __slots__ = ("_ends", "_starts")

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        for start, end in sorted(r for r in ranges if r[1] > r[0]):
            if self._ends and start <= self._ends[-1]:
                if end > self._ends[-1]:
                    self._ends[-1] = end
            else:
                self._starts.append(start)
                self._ends.append(end)

    # -- reading ----------------------------------------------------------------

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return zip(self._starts, self._ends, strict=True)

    def ranges(self) -> list[tuple[int, int]]:
        """The ranges, sorted: ``[(start, end), ...]``."""
        return list(self)

    def __len__(self) -> int:
        """The number of ranges (not of integers: see ``total``)."""
        return len(self._starts)

    def __bool__(self) -> bool:
        return bool(self._starts)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Intervals):
            return NotImplemented
        return self._starts == other._starts and self._ends == other._ends

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"Intervals({self.ranges()!r})"

    def copy(self) -> Intervals:
        out = Intervals()
        out._starts = list(self._starts)
        out._ends = list(self._ends)
        return out

    @property
    def total(self) -> int:
        """How many integers the set holds (the sum of the ranges' lengths)."""
        return sum(self._ends) - sum(self._starts)

    @property
    def end(self) -> int:
        """The end of the last range; 0 for an empty set."""
        return self._ends[-1] if self._ends else 0

    def overlap(self, start: int, end: int) -> int:
        """How many integers of ``[start, end)`` the set holds."""
        i = bisect.bisect_right(self._ends, start)
        count = 0
        while i < len(self._starts) and self._starts[i] < end:
            count += min(end, self._ends[i]) - max(start, self._starts[i])
            i += 1
        return max(count, 0)

    def covers(self, start: int, end: int) -> bool:
        """True when the set holds all of ``[start, end)`` (an empty range is covered)."""
        if end <= start:
            return True
        i = bisect.bisect_right(self._starts, start) - 1
        return i >= 0 and self._ends[i] >= end

    def gaps(self, start: int, end: int) -> list[tuple[int, int]]:
        """The ranges of ``[start, end)`` the set does not hold, sorted."""
        out: list[tuple[int, int]] = []
        pos = start
        i = bisect.bisect_right(self._ends, start)
        while i < len(self._starts) and self._starts[i] < end and pos < end:
            if self._starts[i] > pos:
                out.append((pos, self._starts[i]))
            pos = max(pos, self._ends[i])
            i += 1
        if pos < end:
            out.append((pos, end))
        return out

    # -- changing ---------------------------------------------------------------

    def add(self, start: int, end: int) -> None:
        """Add ``[start, end)``, merging with every range it overlaps or touches."""
        if end <= start:
            return
        i = bisect.bisect_left(self._ends, start)
        j = i
        while j < len(self._starts) and self._starts[j] <= end:
            start = min(start, self._starts[j])
            end = max(end, self._ends[j])
            j += 1
        self._starts[i:j] = [start]
        self._ends[i:j] = [end]

    def discard(self, start: int, end: int) -> None:
        """Remove ``[start, end)``; ranges it cuts keep their parts outside it."""
        if end <= start:
            return
        i = bisect.bisect_right(self._ends, start)
        j = i
        while j < len(self._starts) and self._starts[j] < end:
            j += 1
        if i == j:
            return
        starts: list[int] = []
        ends: list[int] = []
        if self._starts[i] < start:
            starts.append(self._starts[i])
            ends.append(start)
        if self._ends[j - 1] > end:
            starts.append(end)
            ends.append(self._ends[j - 1])
        self._starts[i:j] = starts
        self._ends[i:j] = ends

    # -- set algebra (new sets) -------------------------------------------------

    def __or__(self, other: Intervals) -> Intervals:
        return Intervals([*self, *other])

    def __sub__(self, other: Intervals) -> Intervals:
        out = self.copy()
        for start, end in other:
            out.discard(start, end)
        return out

    def __and__(self, other: Intervals) -> Intervals:
        out: list[tuple[int, int]] = []
        a, b = self.ranges(), other.ranges()
        i = j = 0
        while i < len(a) and j < len(b):
            start, end = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
            if start < end:
                out.append((start, end))
            if a[i][1] < b[j][1]:
                i += 1
            else:
                j += 1
        return Intervals(out)
