"""What each byte of one image file is, by the tool's own calls: the evidence of completeness.

``ImageCoverage`` follows one image file through its writes, truncates and
the tool's "finished" signal (times set on it) and sorts ``[0, size)`` into:

- **written**: bytes the tool wrote (data or zeros; the upload stream sends
  zeros as ``PATCH zero``);
- **holes**: ranges the tool deliberately left sparse: a write past the
  current end (the gap before it: ``tar -S``, ``cp --sparse``,
  ``dd conv=sparse``, ``rsync --sparse`` seek over zeros), ``ftruncate``
  extending a file that already holds data (the trailing hole of those same
  tools), and, once the tool says the file is finished, everything still owed;
- **owed**: preallocated but not written yet: ``ftruncate``/``O_TRUNC``-then-
  extend to a size *before* any data (restic ``--sparse``, a tool pre-sizing
  its output). The tool still owes those bytes until it writes them or says
  it is finished.

A write that lands in a hole proves the hole was only "not written yet" (a
tool writing out of order, restic blob by blob): from then on the file's
holes, present and future, count as owed.

rhvfs has no ``fallocate`` handler (pyfuse3 offers none): the kernel answers
``EOPNOTSUPP``; restic then goes on without preallocating, and glibc's
``posix_fallocate`` emulation writes one zero byte per block, which shows here
as writes past the end (so its blocks are written or holes until data lands
in them, which makes the file out of order).

**Complete** means: the file's size is the target size and every byte of it
is written or a hole. Closing the file is no evidence by itself, and no timer
is; the caller decides when to look (the last handle closed, times set).

``reads_zero`` is ovirt-imageio's client rule for a new disk: a qcow2 disk, a
sparse one, or any disk on file storage reads zeros where nothing was
written; a raw preallocated disk on block storage (an LV) shows its old
contents, so its holes must be zeroed explicitly.

Must not: do I/O, know about disks, uploads, FUSE or trio.
"""

from __future__ import annotations

from rhvfs.intervals import Intervals

#: Storage types whose new volumes are files (read zeros where nothing was written).
FILE_STORAGE_TYPES = frozenset({"nfs", "glusterfs", "posixfs", "localfs"})


def reads_zero(*, fmt: str, sparse: bool, storage_type: str | None) -> bool:
    """True when a new disk reads zeros where nothing was written (no need to zero holes).

    ovirt-imageio's upload client skips zeroing for qcow2 or sparse disks
    (``is_zero = qcow2 or sparse``: file storage always, block storage only with
    qcow2); knowing the storage domain's type, a preallocated raw disk on file
    storage (a fallocated file) reads zeros too. An unknown storage type is
    treated as block (zeroing is always correct, only slower).
    """
    if fmt == "cow" or sparse:
        return True
    return storage_type is not None and storage_type.lower() in FILE_STORAGE_TYPES


class ImageCoverage:
    """The written, hole and owed ranges of one image file (see the module docstring)."""

    __slots__ = ("end", "holes", "out_of_order", "owed", "written")

    def __init__(self) -> None:
        self.written = Intervals()
        self.holes = Intervals()
        self.owed = Intervals()
        self.end = 0  # the file's current size
        self.out_of_order = False  # a write landed in a hole: holes are owed from now on

    def __repr__(self) -> str:
        return (
            f"ImageCoverage(end={self.end}, written={self.written.ranges()}, "
            f"holes={self.holes.ranges()}, owed={self.owed.ranges()})"
        )

    def _left_open(self, start: int, end: int, *, hole: bool) -> None:
        """``[start, end)`` became part of the file without data: a hole or owed."""
        if end <= start:
            return
        if hole and not self.out_of_order:
            self.holes.add(start, end)
        else:
            self.owed.add(start, end)

    def write(self, offset: int, length: int) -> None:
        """The tool wrote ``length`` bytes at ``offset``."""
        if length <= 0:
            return
        end = offset + length
        if self.holes.overlap(offset, end) and not self.out_of_order:
            # written into a gap it left: the tool writes out of order, its gaps are owed
            self.out_of_order = True
            for s, e in self.holes:
                self.owed.add(s, e)
            self.holes = Intervals()
        self._left_open(self.end, offset, hole=True)  # a write past the end leaves a gap
        self.written.add(offset, end)
        self.owed.discard(offset, end)
        self.holes.discard(offset, end)
        self.end = max(self.end, end)

    def truncate(self, size: int) -> None:
        """``ftruncate``/``O_TRUNC`` to ``size``: extending before any data preallocates
        (owed), extending after data leaves a trailing hole; shrinking forgets the rest."""
        if size < self.end:
            for ranges in (self.written, self.holes, self.owed):
                ranges.discard(size, self.end)
            if not self.written:
                self.out_of_order = False
        else:
            self._left_open(self.end, size, hole=bool(self.written))
        self.end = size

    def finished(self) -> None:
        """The tool says the file is finished (times set on the closed file): whatever it
        still owes is a hole (``tar -S`` of an all-zero image is one ``ftruncate``)."""
        for s, e in self.owed:
            self.holes.add(s, e)
        self.owed = Intervals()

    def unaccounted(self, size: int) -> Intervals:
        """The ranges of ``[0, size)`` that are neither written nor a hole."""
        known = self.written | self.holes
        return Intervals(known.gaps(0, size))

    def complete(self, size: int) -> bool:
        """True when the file is ``size`` bytes and each of them is written or a hole."""
        return self.end == size and (self.written | self.holes).covers(0, size)

    def unwritten(self, size: int) -> list[tuple[int, int]]:
        """The ranges of ``[0, size)`` the tool never wrote (to zero on a target that
        does not read zeros)."""
        return self.written.gaps(0, size)
