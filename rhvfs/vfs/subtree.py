"""What ``Vfs`` asks of each part of the tree: ``Subtree`` and ``OpenFile``.

The tree has two parts, the read-only tree (``rhvfs.vfs.readonly``) and the
writable ``restore/`` (``rhvfs.vfs.restore``). ``Vfs`` (``rhvfs.vfs.tree``)
picks the part that owns an inode and calls the same method on it; it owns
the one handle table, so ``open`` and ``create`` here return ``OpenFile``
objects, never handle numbers. Every modifying call defaults to raising
``ReadOnlyFilesystem``: the read-only tree inherits those defaults, the
restore tree overrides what it accepts.

Errors are ``rhvfs.errors`` classes only (``rhvfs.fs`` maps them to errno).

Must not: import pyfuse3 or know errno values; hand out handle numbers.
"""

from __future__ import annotations

import abc
import os

from rhvfs.errors import AttributesUnsupported, NotASymlink, ReadOnlyFilesystem
from rhvfs.vfs.nodes import Kind, Node


class OpenFile(abc.ABC):
    """One open file; ``Vfs`` keeps it under its handle number until ``release``."""

    #: Bypass the kernel's page cache: the content (and size) may change between reads.
    direct_io: bool = False
    #: Released by ``Vfs.release_all`` when the mount stops with files still open.
    release_at_unmount: bool = True

    def __init__(self, node: Node) -> None:
        self.node = node

    @abc.abstractmethod
    async def read(self, offset: int, size: int) -> bytes | memoryview:
        """Up to ``size`` bytes at ``offset`` (fewer only at the end of the file)."""

    async def write(self, offset: int, data: bytes) -> int:
        """Write ``data`` at ``offset``; the number of bytes written."""
        raise ReadOnlyFilesystem(self.node.name)

    async def flush(self) -> None:
        """A ``close`` of one file descriptor of this handle (nothing to do by default)."""
        return None

    async def fsync(self) -> None:
        """``fsync``/``fdatasync`` (nothing to do by default)."""
        return None

    async def release(self) -> None:
        """The last file descriptor of this handle closed (nothing to do by default)."""
        return None


class Subtree(abc.ABC):
    """One part of the tree. Names are never ``.`` or ``..`` (``Vfs`` answers those)."""

    # -- reading: every subtree answers these ---------------------------------

    @abc.abstractmethod
    def node(self, ino: int) -> Node:
        """The node of ``ino``; ``NotFound`` when this subtree does not know it."""

    @abc.abstractmethod
    async def getattr(self, ino: int) -> Node:
        """The node of ``ino`` with fresh attributes."""

    @abc.abstractmethod
    async def lookup(self, parent_ino: int, name: str) -> Node:
        """The child ``name`` of directory ``parent_ino``; ``NotFound`` if there is none."""

    @abc.abstractmethod
    async def listdir(self, ino: int) -> list[Node]:
        """The children of directory ``ino``, in listing order."""

    @abc.abstractmethod
    async def open(self, ino: int, flags: int, *, reader_pid: int = 0) -> OpenFile:
        """Open file ``ino`` with ``open(2)`` ``flags``."""

    async def readlink(self, ino: int) -> str:
        node = self.node(ino)
        if node.kind is not Kind.LINK or node.target is None:
            raise NotASymlink(node.name)
        return node.target

    def access(self, ino: int, mode: int) -> bool:
        """``access(2)`` of ``ino`` for ``mode`` (``os.R_OK``...): no writing by default."""
        self.node(ino)
        return not (mode & os.W_OK)

    async def getxattr(self, ino: int, name: bytes) -> bytes:
        """No extended attributes by default (the read-only tree): not supported."""
        self.node(ino)
        raise AttributesUnsupported(repr(name))

    async def listxattr(self, ino: int) -> list[bytes]:
        self.node(ino)
        return []

    # -- modifying: read-only unless a subtree overrides ------------------------

    async def create(self, parent_ino: int, name: str, flags: int) -> tuple[OpenFile, Node]:
        """Create (or, without O_EXCL, open) file ``name`` in ``parent_ino``, open."""
        raise ReadOnlyFilesystem(name)

    async def mkdir(self, parent_ino: int, name: str) -> Node:
        raise ReadOnlyFilesystem(name)

    async def mknod(self, parent_ino: int, name: str) -> Node:
        raise ReadOnlyFilesystem(name)

    async def symlink(self, parent_ino: int, name: str, target: str) -> Node:
        raise ReadOnlyFilesystem(name)

    async def link(self, ino: int, new_parent_ino: int, new_name: str) -> Node:
        raise ReadOnlyFilesystem(new_name)

    async def unlink(self, parent_ino: int, name: str) -> None:
        raise ReadOnlyFilesystem(name)

    async def rmdir(self, parent_ino: int, name: str) -> None:
        raise ReadOnlyFilesystem(name)

    async def rename(self, old_parent: int, old_name: str, new_parent: int, new_name: str) -> None:
        """Rename within this subtree (``Vfs`` refuses renames between subtrees)."""
        raise ReadOnlyFilesystem(old_name)

    async def setattr(
        self,
        ino: int,
        *,
        size: int | None = None,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        mtime_ns: int | None = None,
    ) -> Node:
        """Change what is given (``size`` truncates); the node with fresh attributes."""
        raise ReadOnlyFilesystem(f"inode {ino}")

    async def setxattr(self, ino: int, name: bytes, value: bytes) -> None:
        raise ReadOnlyFilesystem(f"inode {ino}")

    async def removexattr(self, ino: int, name: bytes) -> None:
        raise ReadOnlyFilesystem(f"inode {ino}")
