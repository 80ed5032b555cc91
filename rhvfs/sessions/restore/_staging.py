"""Bounded local staging for restore data that cannot be streamed yet.

Used only when a file's bytes arrive before the disk they belong to can be
created: the image comes before ``manifest.json``, or under a name the
manifest does not (yet) explain. Each staged file is a sparse temporary file
in ``staging_dir`` plus the list of byte ranges written to it; the whole
area holds at most ``limit_bytes`` of distinct written bytes, beyond which a
write raises ``rhvfs.errors.StagingFull`` (the FUSE layer answers ENOSPC and
``.status`` says why). When the disk becomes known, the staged ranges are replayed into
its upload stream in offset order and the file is deleted.

Reads never reach past the staged bytes (a request for more is cut at the
written end: a crafted size cannot make a read allocate gigabytes);
``reading`` gives a reader that stays valid in a worker thread even if the
file is closed meanwhile (it reads through its own descriptor).

Must not: talk to the engine or imageio.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from rhvfs.errors import RestoreFailed, StagingFull
from rhvfs.intervals import Intervals
from rhvfs.private import private_dir

log = logging.getLogger(__name__)


class StagingArea:
    """All staged files of one mount; owns the byte budget and the directory."""

    def __init__(self, directory: str | os.PathLike[str] | None, *, limit_bytes: int) -> None:
        self._dir = Path(directory) if directory else None
        self._own_dir = directory is None
        self.limit_bytes = limit_bytes
        self.used_bytes = 0

    def _directory(self) -> Path:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="rhvfs-staging-"))
        private_dir(self._dir)  # staged files hold disk data: 0700 when created here
        return self._dir

    def open_file(self, label: str) -> StagedFile:
        fd, path = tempfile.mkstemp(prefix="restore-", suffix=".staged", dir=self._directory())
        os.unlink(path)  # anonymous: nothing to clean up after a crash
        log.debug("staging %s in %s", label, self._dir)
        return StagedFile(self, fd, label)

    def _charge(self, nbytes: int, label: str) -> None:
        if self.used_bytes + nbytes > self.limit_bytes:
            raise StagingFull(
                f"{label}: {self.used_bytes + nbytes} bytes would exceed staging_limit "
                f"{self.limit_bytes} (data arrived before manifest.json described it; copy "
                "manifest.json first, or raise staging_limit / set staging_dir)"
            )
        self.used_bytes += nbytes

    def close(self) -> None:
        if self._own_dir and self._dir is not None:
            try:
                self._dir.rmdir()
            except OSError:
                pass


class StagedFile:
    """One file's staged bytes; ``ranges`` are sorted, disjoint ``[start, end)``."""

    def __init__(self, area: StagingArea, fd: int, label: str) -> None:
        self._area = area
        self._fd: int | None = fd
        self.label = label
        self._written = Intervals()
        self.charged_bytes = 0

    def ranges(self) -> list[tuple[int, int]]:
        return self._written.ranges()

    @property
    def end(self) -> int:
        return self._written.end

    def write(self, offset: int, data: bytes | memoryview) -> None:
        if self._fd is None:
            raise RestoreFailed(f"{self.label}: staged file already closed")
        end = offset + len(data)
        new = len(data) - self._written.overlap(offset, end)
        self._area._charge(new, self.label)
        self.charged_bytes += new
        try:
            os.pwrite(self._fd, data, offset)
        except OSError as e:
            self._area.used_bytes -= new
            self.charged_bytes -= new
            raise RestoreFailed(f"{self.label}: cannot write staging file: {e.strerror}") from None
        self._written.add(offset, end)

    def read(self, offset: int, size: int) -> bytes:
        """Staged bytes ``[offset, offset+size)``, short at the written end (holes read as zero)."""
        if self._fd is None:
            raise RestoreFailed(f"{self.label}: staged file already closed")
        return _pread(self._fd, offset, size, self.end)

    @contextlib.contextmanager
    def reading(self, size: int) -> Iterator[Callable[[int, int], bytes]]:
        """A ``read_at(offset, length)`` of the file as ``size`` bytes long (the tool's size:
        past the written end it reads zeros), on a descriptor of its own, closed on exit."""
        if self._fd is None:
            raise RestoreFailed(f"{self.label}: staged file already closed")
        fd = os.dup(self._fd)
        end = min(self.end, size)

        def read_at(offset: int, length: int) -> bytes:
            want = max(0, min(length, size - offset))
            return _pread(fd, offset, want, end).ljust(want, b"\0")

        try:
            yield read_at
        finally:
            os.close(fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._area.used_bytes -= self.charged_bytes
            self.charged_bytes = 0


def _pread(fd: int, offset: int, size: int, end: int) -> bytes:
    """``pread`` of at most the bytes before ``end`` (never a buffer larger than those)."""
    size = max(0, min(size, end - offset))
    if size == 0 or offset < 0:
        return b""
    return os.pread(fd, size, offset)
