"""The restore staging area: written ranges and the byte budget."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rhvfs.errors import StagingFull
from rhvfs.sessions.restore._staging import StagingArea


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 200), st.integers(1, 40)), max_size=25))
def test_staging_ranges_and_budget(
    tmp_path_factory: pytest.TempPathFactory, writes: list[tuple[int, int]]
) -> None:
    area = StagingArea(tmp_path_factory.mktemp("stage"), limit_bytes=1 << 20)
    f = area.open_file("x")
    model = bytearray(300)
    covered = [False] * 300
    for i, (off, n) in enumerate(writes):
        data = bytes([i % 251 + 1]) * n
        f.write(off, data)
        model[off : off + n] = data
        for j in range(off, off + n):
            covered[j] = True
    ranges = f.ranges()
    assert [j for s, e in ranges for j in range(s, e)] == [j for j in range(300) if covered[j]]
    assert all(e1 < s2 for (_, e1), (s2, _) in zip(ranges, ranges[1:], strict=False))
    assert area.used_bytes == sum(covered)
    for s, e in ranges:
        assert f.read(s, e - s) == bytes(model[s:e])
    f.close()
    assert area.used_bytes == 0


def test_staging_limit(tmp_path: Path) -> None:
    area = StagingArea(tmp_path, limit_bytes=100)
    f = area.open_file("img")
    f.write(0, b"x" * 60)
    f.write(0, b"y" * 60)  # a rewrite costs nothing more
    with pytest.raises(StagingFull, match="staging_limit 100"):
        f.write(60, b"z" * 41)
    assert area.used_bytes == 60
