"""The changes of a single snapshot layer (a shallow export's extents) and the delta cluster
size that keeps every data cluster inside the layer's allocation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rhvfs.backupset import Qcow2Delta
from rhvfs.imageio.types import Extent
from rhvfs.sessions.incremental._delta import changes_from_layer, layer_cluster_size

K = 1024


def extents(*runs: tuple[int, str]) -> list[Extent]:
    """Consecutive extents from (length, kind): ``d`` data, ``z`` zero in the layer,
    ``h`` hole (not in the layer)."""
    out, pos = [], 0
    for length, kind in runs:
        out.append(Extent(pos, length, zero=kind in "zh", hole=kind == "h"))
        pos += length
    return out


def test_changes_are_what_the_layer_holds_zeroes_included() -> None:
    ext = extents((64 * K, "h"), (128 * K, "d"), (64 * K, "z"), (64 * K, "h"))
    assert [(c.start, c.length, c.zero) for c in changes_from_layer(ext)] == [
        (64 * K, 128 * K, False),
        (192 * K, 64 * K, True),
    ]
    assert layer_cluster_size(ext) == 64 * K


def test_a_finer_layer_gets_smaller_delta_clusters() -> None:
    # a layer with 4 KiB allocation (say a qcow2 image with small clusters)
    ext = extents((4 * K, "h"), (8 * K, "d"), (52 * K, "h"), (64 * K, "d"))
    assert layer_cluster_size(ext) == 4 * K
    # data/zero boundaries inside the layer do not matter, only holes do
    assert layer_cluster_size(extents((64 * K, "d"), (4 * K, "z"), (60 * K, "d"))) == 64 * K
    # the end of the disk need not be aligned
    assert layer_cluster_size(extents((64 * K, "h"), (1000, "d"))) == 64 * K


def test_allocation_finer_than_a_sector_is_refused() -> None:
    with pytest.raises(ValueError, match="not aligned to 512"):
        layer_cluster_size(extents((256, "h"), (64 * K, "d")))


@given(
    st.lists(
        st.tuples(st.integers(1, 40), st.sampled_from("dzh")),
        min_size=1,
        max_size=12,
    ),
    st.sampled_from([512, 4 * K, 64 * K]),
)
def test_no_data_cluster_of_the_delta_covers_a_hole(
    runs: list[tuple[int, str]], grain: int
) -> None:
    ext = extents(*((n * grain, kind) for n, kind in runs))
    size = ext[-1].start + ext[-1].length
    delta = Qcow2Delta(
        virtual_size=size,
        changes=changes_from_layer(ext),
        backing_file="base.raw",
        backing_format="raw",
        cluster_size=layer_cluster_size(ext),
    )
    holes = [(e.start, e.start + e.length) for e in ext if e.hole]
    for a in delta.changed_ranges():
        for hs, he in holes:
            assert a.start + a.length <= hs or he <= a.start, (a, hs, he)
