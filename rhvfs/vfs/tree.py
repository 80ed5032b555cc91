"""The VFS: the whole filesystem without FUSE, one object, one handle table.

``Vfs`` owns the two parts of the tree and dispatches every call to the
part that owns the inode: ``restore/`` and everything below it go to
``RestoreTree`` (``rhvfs.vfs.restore``, when the mount has restores), all
else to ``ReadOnlyTree`` (``rhvfs.vfs.readonly``), whose modifying calls are
refused. It answers ``.`` and ``..`` itself, refuses renames between the two
parts, and keeps the one table of open files and directories: handle
numbers are plain counters, the same space for both parts. ``attributes``
turns a node into what ``stat`` shows (permissions, owner, cache timeouts).

Permissions are the access control of a mount (the kernel enforces them:
``default_permissions``): every node is owned by ``uid``/``gid``; the
read-only tree shows 0555 directories and 0444 files less ``umask``, with a
class's ``x`` following its ``r`` (``read_only_bits``); ``restore/`` and
below show their own modes less ``restore_umask`` (default ``umask | 022``:
only the owner starts restores unless the mount asks for more).

``rhvfs.fs`` adapts it to pyfuse3; ``rhvfs ls`` and the fs_api tests use it
directly.

Errors are ``rhvfs.errors`` classes (``NotFound``, the ``FilesystemError``
family; engine and session errors pass through); ``rhvfs.fs`` owns the
errno table.

Must not: import pyfuse3 or know errno values; hold listing or restore logic
(the subtrees do).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import stat
from collections.abc import Callable, Iterable
from typing import Any

import trio

from rhvfs.errors import BadHandle, ReadOnlyFilesystem, SymlinkLoop, SymlinkOutsideTree
from rhvfs.selection import VmSelection
from rhvfs.sessions.restore import RestoreManager
from rhvfs.vfs.backend import BackupSets, EngineInventory, LocalOwner, OwnerFactory
from rhvfs.vfs.names import ROOT_INODE, InodeTable
from rhvfs.vfs.nodes import (
    DEFAULT_PERM,
    IO_BLOCK_SIZE,
    RESTORE_UMASK_FLOOR,
    Attributes,
    Kind,
    Node,
    read_only_bits,
)
from rhvfs.vfs.readonly import ReadOnlyTree
from rhvfs.vfs.restore import RestoreTree
from rhvfs.vfs.subtree import OpenFile, Subtree

log = logging.getLogger(__name__)

_MAX_SYMLINK_HOPS = 16
_FILE_TYPE = {Kind.DIR: stat.S_IFDIR, Kind.FILE: stat.S_IFREG, Kind.LINK: stat.S_IFLNK}


@dataclasses.dataclass
class _OpenDir:
    entries: list[Node]  # snapshot at opendir; readdir offsets index into it


class Vfs:
    """The rhvfs tree over an engine, the backup sessions and (optionally) the restores."""

    def __init__(
        self,
        engine: EngineInventory,
        backups: BackupSets,
        *,
        listing_ttl_s: float,
        owner_factory: OwnerFactory = LocalOwner,
        status_info: Callable[[], dict[str, Any]] | None = None,
        restores: RestoreManager | None = None,
        restore_dir: bool = True,
        uid: int | None = None,
        gid: int | None = None,
        umask: int = 0,
        restore_umask: int | None = None,
        selection: VmSelection | None = None,
    ) -> None:
        """``restores`` (running) makes ``restore/`` writable; without it it stays empty;
        without ``restore_dir`` (a read-only mount) there is no ``restore/`` at all.
        ``uid``/``gid`` own every node without an owner of its own (default: this process's).
        ``umask`` is cleared from the read-only tree's modes (``read_only_bits``),
        ``restore_umask`` from those of ``restore/`` (default: ``umask | 0o022``).
        ``selection``: the VMs the tree shows (default: all; ``rhvfs.selection``)."""
        self.listing_ttl_s = listing_ttl_s
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        self.umask = umask
        self.restore_umask = umask | RESTORE_UMASK_FLOOR if restore_umask is None else restore_umask
        self.table = InodeTable()
        self.readonly = ReadOnlyTree(
            engine,
            backups,
            table=self.table,
            listing_ttl_s=listing_ttl_s,
            owner_factory=owner_factory,
            status_info=status_info,
            restore_dir=restore_dir,
            selection=selection,
        )
        self.inventory = self.readonly.inventory
        self.restore: RestoreTree | None = None
        if restores is not None and restore_dir:
            root_ino = self.readonly.layout.top_ino("restore")
            self.restore = RestoreTree(restores, root_ino=root_ino, table=self.table)
        self._handles: dict[int, OpenFile | _OpenDir] = {}
        self._next_fh = itertools.count(1)

    # -- dispatch ---------------------------------------------------------------

    def _tree(self, ino: int) -> Subtree:
        if self.restore is not None and self.restore.owns(ino):
            return self.restore
        return self.readonly

    def _own(self, node: Node) -> Node:
        """``node`` as the subtree owning it has it: the read-only tree lists ``restore/``."""
        if self.restore is not None and node.ino == self.restore.root_ino:
            return self.restore.node(node.ino)
        return node

    # -- nodes and directories ------------------------------------------------

    def node(self, ino: int) -> Node:
        """The node of ``ino`` as last seen (no refresh); ``NotFound`` if unknown."""
        return self._tree(ino).node(ino)

    async def getattr(self, ino: int) -> Node:
        return await self._tree(ino).getattr(ino)

    async def lookup(self, parent_ino: int, name: str) -> Node:
        if name == ".":
            return await self.getattr(parent_ino)
        if name == "..":
            return await self.getattr(self.node(parent_ino).parent_ino)
        return self._own(await self._tree(parent_ino).lookup(parent_ino, name))

    async def listdir(self, ino: int) -> list[Node]:
        """The directory's children in listing order (configuration before images in @rhv).

        Hidden children (``Node.hidden``) are left out; ``lookup`` still finds them.
        """
        return [self._own(child) for child in await self._tree(ino).listdir(ino)]

    async def readlink(self, ino: int) -> str:
        return await self._tree(ino).readlink(ino)

    def access(self, ino: int, mode: int) -> bool:
        """``access(2)``: anything may be read; only below ``restore/`` may be written.
        Who may is the kernel's check of ``attributes`` (``default_permissions``)."""
        return self._tree(ino).access(ino, mode)

    async def resolve(self, path: str, *, follow_last: bool = True) -> Node:
        """The node at an absolute path inside the tree, following relative symlinks."""
        parts = [p for p in path.split("/") if p]
        node = self.node(ROOT_INODE)
        hops = 0
        while parts:
            part = parts.pop(0)
            node = await self.lookup(node.ino, part)
            if node.kind is Kind.LINK and (parts or follow_last):
                hops += 1
                if hops > _MAX_SYMLINK_HOPS:
                    raise SymlinkLoop(path)
                target = await self.readlink(node.ino)
                if target.startswith("/"):
                    raise SymlinkOutsideTree(target)
                parts = [p for p in target.split("/") if p] + parts
                node = self.node(node.parent_ino)
        return node

    async def path_of(self, ino: int) -> str:
        parts = []
        node = self.node(ino)
        while node.ino != ROOT_INODE:
            parts.append(node.name)
            node = self.node(node.parent_ino)
        return "/" + "/".join(reversed(parts))

    def forget(self, inodes: Iterable[int]) -> None:
        """The kernel dropped these inodes. Inode numbers are derived from engine ids and
        nodes are small: keep them all."""

    @property
    def inode_count(self) -> int:
        """Inodes handed out so far (the root included)."""
        return len(self.table) + 1

    # -- attributes ---------------------------------------------------------------

    def attributes(self, node: Node) -> Attributes:
        """What ``stat`` shows for ``node``; set files and changing files (status, restore/)
        keep no attributes in the kernel's cache, other nodes for the listing TTL."""
        ttl = self.listing_ttl_s
        # Generated files (vm.json...) get fresh content when their directory is re-listed;
        # with no attribute caching the kernel's size always matches the content it reads.
        generated = node.content is not None and node.data is None
        perm = DEFAULT_PERM[node.kind] if node.perm is None else node.perm
        if self.restore is not None and self.restore.owns(node.ino):
            perm &= ~self.restore_umask
        else:
            perm &= read_only_bits(node.kind, self.umask)
        return Attributes(
            ino=node.ino,
            mode=_FILE_TYPE[node.kind] | perm,
            nlink=2 if node.kind is Kind.DIR else 1,
            uid=node.uid or self.uid,  # 0 too: files chowned to root stay the mount owner's
            gid=node.gid or self.gid,
            size=node.size,
            blocks=node.blocks,
            blksize=IO_BLOCK_SIZE,
            mtime_ns=node.mtime_ns,
            entry_timeout_s=0.0 if node.volatile else ttl,
            attr_timeout_s=0.0 if node.volatile or generated or self._fresh_attrs(node) else ttl,
        )

    def _fresh_attrs(self, node: Node) -> bool:
        """A set file whose set no read is reading now: its attributes are not cached by the
        kernel, so a stat after a read ended sees the time it moved to (restic, borg and rsync
        decide on it what to read). While a read lives they are stable and cached, or the
        kernel would ask for them again before every read(2) of the data."""
        if node.data is None:
            return False
        reading = getattr(self.readonly.backups, "is_being_read", None)
        return reading is not None and not reading(node.data.owner)

    # -- the handle table -------------------------------------------------------

    def _add(self, handle: OpenFile | _OpenDir) -> int:
        fh = next(self._next_fh)
        self._handles[fh] = handle
        return fh

    def _file(self, fh: int) -> OpenFile:
        handle = self._handles.get(fh)
        if not isinstance(handle, OpenFile):
            raise BadHandle(str(fh))
        return handle

    async def opendir(self, ino: int) -> int:
        """A handle on the directory's listing as of now."""
        return self._add(_OpenDir(await self.listdir(ino)))

    def readdir(self, fh: int) -> list[Node]:
        """The entries of an open directory (none for a handle that is not one)."""
        handle = self._handles.get(fh)
        return handle.entries if isinstance(handle, _OpenDir) else []

    def releasedir(self, fh: int) -> None:
        if isinstance(self._handles.get(fh), _OpenDir):
            del self._handles[fh]

    # -- files ------------------------------------------------------------------------

    async def open(self, ino: int, flags: int = os.O_RDONLY, *, reader_pid: int = 0) -> int:
        """Open a file for process ``reader_pid`` (0: unknown); a backup-set file begins or
        joins a read of its owner's set."""
        return self._add(await self._tree(ino).open(ino, flags, reader_pid=reader_pid))

    async def create(self, parent_ino: int, name: str, flags: int) -> tuple[int, Node]:
        handle, node = await self._tree(parent_ino).create(parent_ino, name, flags)
        return self._add(handle), node

    def direct_io(self, fh: int) -> bool:
        """The open file bypasses the page cache (its content changes between reads)."""
        return self._file(fh).direct_io

    async def read(self, fh: int, offset: int, size: int) -> bytes | memoryview:
        return await self._file(fh).read(offset, size)

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        return await self._file(fh).write(offset, data)

    async def flush(self, fh: int) -> None:
        await self._file(fh).flush()

    async def fsync(self, fh: int) -> None:
        await self._file(fh).fsync()

    async def release(self, fh: int) -> None:
        handle = self._handles.get(fh)
        if isinstance(handle, OpenFile):
            del self._handles[fh]
            await handle.release()

    @property
    def open_handles(self) -> int:
        """Open files of the read-only tree (backup reads): ``open_files`` in status.json."""
        return sum(isinstance(h, OpenFile) and h.release_at_unmount for h in self._handles.values())

    async def release_all(self) -> None:
        """Release every read handle still open (unmount while files are open). Files below
        ``restore/`` stay: releasing one would tell its session the file is complete."""
        for fh, handle in list(self._handles.items()):
            if not (isinstance(handle, OpenFile) and handle.release_at_unmount):
                continue
            with trio.CancelScope(shield=True):
                try:
                    await self.release(fh)
                except Exception:
                    log.exception("releasing handle %d at shutdown", fh)

    # -- modifying calls: below restore/ only -------------------------------------

    async def mkdir(self, parent_ino: int, name: str) -> Node:
        return await self._tree(parent_ino).mkdir(parent_ino, name)

    async def mknod(self, parent_ino: int, name: str) -> Node:
        return await self._tree(parent_ino).mknod(parent_ino, name)

    async def symlink(self, parent_ino: int, name: str, target: str) -> Node:
        return await self._tree(parent_ino).symlink(parent_ino, name, target)

    async def link(self, ino: int, new_parent_ino: int, new_name: str) -> Node:
        return await self._tree(new_parent_ino).link(ino, new_parent_ino, new_name)

    async def unlink(self, parent_ino: int, name: str) -> None:
        await self._tree(parent_ino).unlink(parent_ino, name)

    async def rmdir(self, parent_ino: int, name: str) -> None:
        await self._tree(parent_ino).rmdir(parent_ino, name)

    async def rename(self, old_parent: int, old_name: str, new_parent: int, new_name: str) -> None:
        tree = self._tree(old_parent)
        if self._tree(new_parent) is not tree:  # one side is the read-only tree
            raise ReadOnlyFilesystem(f"{old_name} -> {new_name}")
        await tree.rename(old_parent, old_name, new_parent, new_name)

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
        return await self._tree(ino).setattr(
            ino, size=size, mode=mode, uid=uid, gid=gid, mtime_ns=mtime_ns
        )

    async def getxattr(self, ino: int, name: bytes) -> bytes:
        return await self._tree(ino).getxattr(ino, name)

    async def listxattr(self, ino: int) -> list[bytes]:
        return await self._tree(ino).listxattr(ino)

    async def setxattr(self, ino: int, name: bytes, value: bytes) -> None:
        await self._tree(ino).setxattr(ino, name, value)

    async def removexattr(self, ino: int, name: bytes) -> None:
        await self._tree(ino).removexattr(ino, name)
