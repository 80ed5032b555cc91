"""Values that cross the VFS <-> sessions boundary: ``Owner`` and ``SetEntry``.

The names and keys of a set's files are ``rhvfs.backupset``'s. Must not: talk
to the engine or imageio, know about inodes or pyfuse3.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from rhvfs.errors import NotFound


@dataclasses.dataclass(frozen=True)
class Owner:
    """Whose backup set: a VM or a template."""

    kind: Literal["vm", "template"]
    id: str
    name: str


@dataclasses.dataclass(frozen=True)
class SetEntry:
    """One file of a backup set (or of ``vms/<vm>/disks/``).

    ``key`` is stable within the owner (a ``rhvfs.backupset.FileKey``, encoded);
    ``size`` and ``blocks`` (512-byte units, never 0 when size > 0) stay true
    when the file is read; ``mtime_ns`` is stable while the owner is unchanged.
    """

    name: str
    key: str
    size: int
    blocks: int
    mtime_ns: int
    disk_id: str | None = None


def blocks_for(size_bytes: int) -> int:
    """st_blocks (512-byte units) for ``size_bytes`` allocated bytes; at least 1 when non-empty."""
    if size_bytes <= 0:
        return 0
    return max(1, -(-size_bytes // 512))


def clip_read(entry: SetEntry | None, key: str, offset: int, size: int, *, where: str) -> int:
    """How many bytes a read of ``key`` at ``offset`` returns: ``size`` clipped to the file
    (0 at or past its end); ``NotFound`` when ``key`` is no file of ``where``."""
    if entry is None:
        raise NotFound(f"{key} is not part of {where}")
    if offset >= entry.size or size <= 0:
        return 0
    return min(size, entry.size - offset)
