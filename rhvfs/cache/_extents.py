"""Extent arithmetic for the block cache: which bytes of a range read as zero, which need HTTP.

Owns pure functions over a normalized extent map (no I/O, no trio). A range
is "zero" when its extents are ``zero`` or ``hole`` (a hole reads as zeroes
over a raw export). Everything here is property-tested against a reference
buffer (tests/unit/test_cache_extents.py).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from rhvfs.imageio.types import Extent

Segment = tuple[int, int, bool]  # (start, end, reads_as_zero), bytes, end exclusive


class ExtentMap:
    """The zero/data layout of an image of ``size`` bytes, adjacent runs of one kind merged."""

    def __init__(self, extents: Sequence[Extent], *, size: int) -> None:
        if size < 0:
            raise ValueError("negative size")
        starts: list[int] = []
        ends: list[int] = []
        zeros: list[bool] = []
        pos = 0
        for ext in extents:
            if ext.start != pos or ext.length <= 0:
                raise ValueError(f"extents must be contiguous from 0: {ext} at {pos}")
            pos = ext.end
            start, end = ext.start, min(ext.end, size)
            if start >= end:
                continue
            zero = ext.reads_as_zero
            if zeros and zeros[-1] == zero:
                ends[-1] = end
            else:
                starts.append(start)
                ends.append(end)
                zeros.append(zero)
        if pos < size:
            raise ValueError(f"extents cover {pos} bytes, image size is {size}")
        self.size = size
        self._starts = starts
        self._ends = ends
        self._zeros = zeros

    @property
    def data_bytes(self) -> int:
        """Bytes that do not read as zero (what a lean reader must fetch)."""
        return sum(
            e - s for s, e, z in zip(self._starts, self._ends, self._zeros, strict=True) if not z
        )

    def segments(self, start: int, end: int) -> list[Segment]:
        """The runs covering ``[start, end)`` (clipped to it and to the image), in order."""
        end = min(end, self.size)
        if start >= end:
            return []
        i = bisect.bisect_right(self._starts, start) - 1
        out: list[Segment] = []
        while i < len(self._starts) and self._starts[i] < end:
            out.append((max(self._starts[i], start), min(self._ends[i], end), self._zeros[i]))
            i += 1
        return out

    def is_zero(self, start: int, end: int) -> bool:
        """True when all of ``[start, end)`` reads as zero (an empty range is zero)."""
        return all(z for _, _, z in self.segments(start, end))

    def data_ranges(self, start: int, end: int, *, max_length: int) -> list[tuple[int, int]]:
        """The data parts of ``[start, end)`` as ``(offset, length)``, none longer than ``max_length``."""
        if max_length <= 0:
            raise ValueError("max_length must be positive")
        out: list[tuple[int, int]] = []
        for s, e, zero in self.segments(start, end):
            if zero:
                continue
            pos = s
            while pos < e:
                step = min(max_length, e - pos)
                out.append((pos, step))
                pos += step
        return out

    def fetch_ranges(
        self, start: int, end: int, *, max_length: int, max_zero_ratio: float = 0.0
    ) -> list[tuple[int, int]]:
        """The GETs that cover the data of ``[start, end)``, as ``(offset, length)``.

        Zero gaps between data ranges are bridged, smallest first, while the
        bridged zero bytes stay within ``max_zero_ratio`` of the data bytes:
        fewer requests at a bounded cost in HTTP bytes (0.0: data bytes only).
        """
        if max_length <= 0:
            raise ValueError("max_length must be positive")
        spans = [(s, e) for s, e, zero in self.segments(start, end) if not zero]
        if max_zero_ratio > 0 and len(spans) > 1:
            allowance = max_zero_ratio * sum(e - s for s, e in spans)
            gaps = sorted((spans[i + 1][0] - spans[i][1], i) for i in range(len(spans) - 1))
            bridge: set[int] = set()
            for gap, i in gaps:
                if gap > allowance:
                    break
                allowance -= gap
                bridge.add(i)
            merged = [spans[0]]
            for i in range(1, len(spans)):
                if i - 1 in bridge:
                    merged[-1] = (merged[-1][0], spans[i][1])
                else:
                    merged.append(spans[i])
            spans = merged
        out: list[tuple[int, int]] = []
        for s, e in spans:
            pos = s
            while pos < e:
                step = min(max_length, e - pos)
                out.append((pos, step))
                pos += step
        return out
