"""Nodes of the tree: plain values, and the ``Attributes`` value ``stat`` shows for one.

A ``Node`` is a directory (``lister`` produces its children), a symlink
(``target``), a generated file (``content`` made when the node was listed and
kept with its attributes until the listing expires; an open handle keeps its
own snapshot) or a backup-set file (``data`` names the owner and set key; the
bytes come from the sessions layer). Nodes below ``restore/`` are
``RestoreNode``s (``rhvfs.vfs.restore``) with permissions and owners of their
own. ``Vfs.attributes`` turns a node into ``Attributes``; ``rhvfs.fs`` copies
those into pyfuse3's type.

Must not: call the engine or know about FUSE.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from enum import Enum
from typing import Any

#: mtime of entities without an engine timestamp: fixed, so stable across mounts.
FIXED_MTIME_NS = 1_577_836_800 * 1_000_000_000  # 2020-01-01T00:00:00Z


class Kind(Enum):
    DIR = "dir"
    FILE = "file"
    LINK = "link"


@dataclasses.dataclass(frozen=True)
class DataRef:
    """Where a backup-set file's bytes come from: ``BackupSets.open(owner, key)``."""

    owner: Any
    key: str


@dataclasses.dataclass(eq=False)
class Node:
    ino: int
    kind: Kind
    name: str
    mtime_ns: int = FIXED_MTIME_NS
    size: int = 0
    blocks: int = 0
    target: str | None = None
    content: bytes | None = None
    data: DataRef | None = None
    lister: Callable[[], Awaitable[list[Node]]] | None = None
    #: Regenerated at every lookup/getattr (``/.rhvfs/status.json``): no attribute caching.
    refresh: Callable[[], bytes] | None = None
    parent_ino: int = 0
    #: Listing this directory does something on the engine (starts an engine backup):
    #: tools that walk the tree for inspection (``rhvfs ls -R``) must not descend.
    lists_with_side_effects: bool = False
    #: Left out of directory listings but found by name (lookup). Directories whose
    #: listing starts an engine backup are hidden, so that tree walks (``find``,
    #: ``restic backup /mnt/vms/x``, ``du``) never start backups by accident.
    hidden: bool = False
    #: For a set directory: a counter the backend moves when the set's files may have
    #: changed (a read of it ended); a cached listing taken at another value is stale.
    generation: Callable[[], int] | None = None
    #: Permission bits before the mount's umask (``Vfs.attributes``); None: ``DEFAULT_PERM``.
    perm: int | None = None
    #: Owner shown; None (or 0, see ``Vfs.attributes``): the mounting user.
    uid: int | None = None
    gid: int | None = None

    @property
    def volatile(self) -> bool:
        return self.refresh is not None

    def set_content(self, content: bytes, *, base_mtime_ns: int) -> None:
        self.content = content
        self.size = len(content)
        self.blocks = (len(content) + 511) // 512
        self.mtime_ns = content_mtime_ns(content, base_mtime_ns=base_mtime_ns)


#: Permission bits of read-only nodes, by kind (before the mount's ``umask``).
DEFAULT_PERM = {Kind.DIR: 0o555, Kind.FILE: 0o444, Kind.LINK: 0o777}
#: Cleared from ``restore/`` and below when the mount has no ``restore_umask`` of its own:
#: only the owner may start a restore unless the mount asks for more.
RESTORE_UMASK_FLOOR = 0o022
#: st_blksize of every node: the size cp, cat and other tools that ask give each read
#: and write. 1 MiB is the most libfuse and the kernel pass in one FUSE request by
#: default (256 pages), and NFS's usual wsize. A restore copied in with cp then arrives
#: in 1 MiB WRITEs, eight times fewer round trips than at 128 KiB
#: (bench/bench_restore.py went from about 1.2x to 1.5x ``ovirt-img upload-disk``).
IO_BLOCK_SIZE = 1024 * 1024


def read_only_bits(kind: Kind, umask: int) -> int:
    """The permission bits a read-only node of ``kind`` may show under ``umask``.

    A class (user, group, others) either reads -- ``r-x`` on directories,
    ``r--`` on files -- or gets nothing: its ``x`` bit on directories goes
    with its ``r`` bit, because looking a name up in a set directory lists it,
    and listing an incremental set starts an engine backup, as reading an
    image starts a snapshot. The ``w`` and ``x`` bits of ``umask`` don't
    matter here. Symlinks keep ``rwxrwxrwx`` (the kernel ignores them).
    """
    if kind is Kind.LINK:
        return 0o777
    readers = 0o444 & ~umask
    return readers | readers >> 2 if kind is Kind.DIR else readers


@dataclasses.dataclass(frozen=True)
class Attributes:
    """What ``stat`` shows for a node, and how long the kernel may cache it (seconds)."""

    ino: int
    mode: int  # file type and permission bits, as st_mode
    nlink: int
    uid: int
    gid: int
    size: int  # bytes
    blocks: int  # 512-byte units
    blksize: int  # bytes
    mtime_ns: int  # also shown as atime and ctime
    entry_timeout_s: float
    attr_timeout_s: float


def content_mtime_ns(content: bytes, *, base_mtime_ns: int) -> int:
    """A stable mtime that still changes when the content does.

    Generated files have no modification time of their own; tools that skip
    unchanged files (restic, rsync) compare mtime and size. Keeping the
    second of the entity's engine timestamp and deriving the nanoseconds
    from the content makes both properties hold.
    """
    second = base_mtime_ns - base_mtime_ns % 1_000_000_000
    nanos = int.from_bytes(hashlib.sha256(content).digest()[:4], "big") % 1_000_000_000
    return second + nanos


def time_ns(when: datetime | None) -> int:
    if when is None:
        return FIXED_MTIME_NS
    return int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000


def render_json(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True, default=str) + "\n").encode("utf-8")
