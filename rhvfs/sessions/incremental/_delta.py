"""Where a set's disk data comes from: dirty extents, delta extent maps, ``DeltaSource``.

Pure mapping between a disk's dirty extents (imageio ``context=dirty``) or the
allocated extents of a single snapshot layer (a shallow export), the
qcow2 delta layout (``Qcow2Delta``) and the zero-context extent maps the block
cache's reader works from, plus ``DeltaSource``, the ``BlockSource`` that
serves delta-file offsets from guest offsets of a disk.

Must not: start transfers, talk to the engine or decide a disk's mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rhvfs.backupset import CLUSTER_SIZE, Change, Qcow2Delta
from rhvfs.imageio.types import Extent
from rhvfs.intervals import Intervals
from rhvfs.sessions.core._ports import BlockSource


def changes_from_dirty(extents: Sequence[Any]) -> list[Change]:
    """The dirty extents of ``context=dirty`` as changes (dirty zero extents stay zero)."""
    return [Change(e.start, e.length, zero=bool(e.zero)) for e in extents if e.dirty]


def changes_from_layer(extents: Sequence[Any]) -> list[Change]:
    """The ranges allocated in a single layer (``context=zero`` of a shallow export: what
    is not a hole was written after the layer's snapshot) as changes; ranges allocated as
    zero stay zero, so they hide the backing file's data."""
    return [Change(e.start, e.length, zero=bool(e.zero)) for e in extents if not e.hole]


#: The smallest cluster a qcow2 image can have, bytes.
MIN_CLUSTER_SIZE = 512


def layer_cluster_size(extents: Sequence[Any], *, preferred: int = CLUSTER_SIZE) -> int:
    """The delta cluster size for a layer's changes: ``preferred``, or smaller when the
    layer's allocation is finer, so that no data cluster of the delta holds part of a hole.

    A shallow export reads a hole as zeroes, not as the backing file's bytes: a delta
    cluster that covered a hole partly would store zeroes over unchanged data. Hence the
    largest power of two up to ``preferred`` dividing every boundary between allocated and
    unallocated ranges (the disk's end excepted); ``ValueError`` below 512 bytes.
    """
    size = preferred
    end = extents[-1].start + extents[-1].length if extents else 0
    for prev, cur in zip(extents, extents[1:], strict=False):
        if bool(prev.hole) == bool(cur.hole) or cur.start == end:
            continue
        while cur.start % size:
            size //= 2
    if size < MIN_CLUSTER_SIZE:
        raise ValueError(f"layer allocation is not aligned to {MIN_CLUSTER_SIZE} bytes")
    return size


def reader_extents(
    size: int, wanted: Sequence[tuple[int, int]], extents: Sequence[Any]
) -> list[Extent]:
    """A zero-context extent map for a delta's reader: data only where the delta reads.

    ``wanted`` are the guest ranges of the delta's data clusters; ``extents``
    the disk's real zero map. Everything else is marked zero, so the reader
    never fetches (or prefetches) a byte the delta does not serve, and real
    zero parts of dirty clusters are served from memory.
    """
    nonzero = Intervals((e.start, e.start + e.length) for e in extents if not (e.zero or e.hole))
    return _extent_map(size, Intervals(wanted) & nonzero)


def _extent_map(size: int, data: Intervals) -> list[Extent]:
    """A zero-context extent map of ``size`` bytes: ``data`` is data, the rest zero."""
    out = [Extent(s, e - s, zero=False) for s, e in data]
    out += [Extent(s, e - s, zero=True) for s, e in data.gaps(0, size)]
    out.sort(key=lambda x: x.start)
    return out


def delta_file_extents(delta: Qcow2Delta, extents: Sequence[Any]) -> list[Extent]:
    """A zero-context extent map of a delta FILE for its reader: data where a data
    cluster holds non-zero guest bytes, zero elsewhere (metadata, zero parts of
    dirty clusters, the tail past the virtual size), so only those go over HTTP."""
    wanted = [(a.start, a.start + a.length) for a in delta.changed_ranges() if a.kind == "data"]
    guest = [
        (e.start, e.start + e.length)
        for e in reader_extents(delta.virtual_size, wanted, extents)
        if not e.zero
    ]
    data = Intervals()
    runs = [a for a in delta.changed_ranges() if a.kind == "data"]
    i = 0
    for gs, ge in guest:  # each lies inside one run: runs are separated by non-data
        while runs[i].start + runs[i].length <= gs:
            i += 1
        run = runs[i]
        assert run.file_offset is not None and run.start <= gs and ge <= run.start + run.length
        fs = run.file_offset + (gs - run.start)
        data.add(fs, fs + ge - gs)
    return _extent_map(delta.size, data)


class DeltaSource:
    """``BlockSource`` in delta-file offsets: data clusters map back to guest offsets.

    The reader of a delta works in file offsets, where the data is dense and
    sequential, while the guest ranges behind it are scattered.
    """

    def __init__(self, delta: Qcow2Delta, channel: BlockSource) -> None:
        self.delta = delta
        self.channel = channel

    async def read_into(self, offset: int, buf: memoryview) -> None:
        end = offset + len(buf)
        covered = max(offset, self.delta.metadata_size)
        if covered > offset:  # never asked for (zero in the reader's map); stay exact
            buf[: covered - offset] = bytes(covered - offset)
        for file_off, guest, n in self.delta.data_ranges(offset, len(buf)):
            view = buf[file_off - offset : file_off - offset + n]
            want = max(0, min(n, self.delta.virtual_size - guest))
            if want:
                await self.channel.read_into(guest, view[:want])
            if want < n:
                view[want:] = bytes(n - want)
        if end > self.delta.size:
            raise ValueError(f"read past the end of the delta: {offset}+{len(buf)}")
