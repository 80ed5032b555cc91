"""The read-only tree: everything but ``restore/``'s contents, lazy directories with a TTL.

``ReadOnlyTree`` is the ``Subtree`` over an engine inventory and the backup
sessions. Directory contents come from ``Layout`` listers, are cached for
``listing_ttl_s`` and re-listed on the next access after that; nodes keep
their inode numbers (derived from engine ids) across re-listings and across
mounts. Generated files carry their content from the listing; an open
``ReadHandle`` keeps its own snapshot of it. A backup-set file's handle
begins or joins a read of its owner's set (``BackupSets.open``; the
router starts the read's session at an image's first read). Every modifying
call raises ``ReadOnlyFilesystem`` (the ``Subtree`` defaults).

Errors: a missing name or inode raises ``rhvfs.errors.NotFound``; using a
file as a directory raises ``NotADirectory`` (and the reverse
``IsADirectory``). Engine and session errors pass through unchanged.

Invariant (between awaits): ``_nodes`` holds every node ever handed out, so
a ``getattr`` of any inode the kernel knows succeeds; a directory's cached
name map only refers to inodes in ``_nodes``.

Must not: import pyfuse3 or know errno values, hand out handle numbers
(``Vfs`` does), or start sessions other than through ``open``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from typing import Any

import trio

from rhvfs.errors import IsADirectory, NotADirectory, NotARegularFile, NotFound, ReadOnlyFilesystem
from rhvfs.selection import VmSelection
from rhvfs.vfs.backend import BackupSets, EngineInventory, OwnerFactory
from rhvfs.vfs.inventory import Inventory
from rhvfs.vfs.layout import Layout
from rhvfs.vfs.names import ROOT_INODE, InodeTable
from rhvfs.vfs.nodes import FIXED_MTIME_NS, Kind, Node
from rhvfs.vfs.subtree import OpenFile, Subtree

log = logging.getLogger(__name__)


@dataclasses.dataclass
class _Listing:
    expires: float
    children: dict[str, int]  # name -> inode, in listing order
    generation: int | None = None  # the directory's ``Node.generation()`` when listed


class ReadHandle(OpenFile):
    """An open file of the read-only tree: a content snapshot, or a backup-set handle."""

    def __init__(
        self,
        node: Node,
        backups: BackupSets,
        *,
        content: bytes | None = None,
        backup_handle: int | None = None,
    ) -> None:
        super().__init__(node)
        self._backups = backups
        self.content = content
        self.backup_handle = backup_handle
        # Volatile files (status.json) bypass the page cache: their size changes.
        self.direct_io = node.volatile

    async def read(self, offset: int, size: int) -> bytes | memoryview:
        if self.backup_handle is not None:
            return await self._backups.read(self.backup_handle, offset, size)
        content = self.content or b""
        return content[offset : offset + size]

    async def release(self) -> None:
        if self.backup_handle is not None:
            await self._backups.release(self.backup_handle)


class ReadOnlyTree(Subtree):
    """The rhvfs tree over an engine and the backup sessions; nothing in it can change."""

    def __init__(
        self,
        engine: EngineInventory,
        backups: BackupSets,
        *,
        table: InodeTable,
        listing_ttl_s: float,
        owner_factory: OwnerFactory,
        status_info: Callable[[], dict[str, Any]] | None = None,
        restore_dir: bool = True,
        selection: VmSelection | None = None,
    ) -> None:
        """``restore_dir`` False: the root has no ``restore/`` (a read-only mount);
        ``selection``: the VMs the tree shows (default: all)."""
        self.listing_ttl_s = listing_ttl_s
        self.inventory = Inventory(engine, ttl_s=listing_ttl_s, selection=selection)
        self.table = table
        self.backups = backups
        self.layout = Layout(
            self.inventory,
            backups,
            self.table,
            owner_factory=owner_factory,
            status_info=status_info,
            restore_dir=restore_dir,
        )
        root = self.layout.root()
        root.parent_ino = ROOT_INODE
        self._nodes: dict[int, Node] = {ROOT_INODE: root}
        self._listings: dict[int, _Listing] = {}
        self._locks: dict[int, trio.Lock] = {}

    # -- nodes and directories -------------------------------------------

    def node(self, ino: int) -> Node:
        try:
            return self._nodes[ino]
        except KeyError:
            raise NotFound(f"inode {ino}") from None

    async def getattr(self, ino: int) -> Node:
        node = self.node(ino)
        if node.refresh is not None:
            node.set_content(node.refresh(), base_mtime_ns=FIXED_MTIME_NS)
        return node

    async def _children(self, ino: int) -> dict[str, int]:
        node = self.node(ino)
        if node.kind is not Kind.DIR or node.lister is None:
            raise NotADirectory(node.name)
        lock = self._locks.setdefault(ino, trio.Lock())
        async with lock:
            listing = self._listings.get(ino)
            # A set directory whose listing starts an engine backup is listed anew at every
            # access (its manager answers from the live set): a cached listing could name the
            # files of a set that has ended, and a new read must get the new set.
            generation = node.generation() if node.generation is not None else None
            fresh = (
                listing is not None
                and trio.current_time() < listing.expires
                and listing.generation == generation
            )
            if fresh and listing is not None and not node.lists_with_side_effects:
                return listing.children
            children: dict[str, int] = {}
            for child in await node.lister():
                if child.name in children:
                    log.warning("duplicate name %r in directory inode %d; skipped", child.name, ino)
                    continue
                child.parent_ino = ino
                self._nodes[child.ino] = child
                children[child.name] = child.ino
            self._listings[ino] = _Listing(
                trio.current_time() + self.listing_ttl_s, children, generation
            )
            return children

    async def lookup(self, parent_ino: int, name: str) -> Node:
        children = await self._children(parent_ino)
        ino = children.get(name)
        if ino is None:
            raise NotFound(name)
        return await self.getattr(ino)

    async def listdir(self, ino: int) -> list[Node]:
        """The directory's children in listing order (configuration before images in @rhv).

        Hidden children (``Node.hidden``) are left out; ``lookup`` still finds them.
        """
        children = await self._children(ino)
        nodes = (self._nodes[child] for child in children.values())
        return [node for node in nodes if not node.hidden]

    # -- files ------------------------------------------------------------

    async def open(self, ino: int, flags: int, *, reader_pid: int = 0) -> ReadHandle:
        """Open a file for reading; a backup-set file begins or joins a read of its set."""
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            raise ReadOnlyFilesystem(f"inode {ino} opened for writing")
        node = self.node(ino)
        if node.kind is Kind.DIR:
            raise IsADirectory(node.name)
        if node.kind is not Kind.FILE:
            raise NotARegularFile(node.name)
        if node.data is not None:
            handle = await self.backups.open(node.data.owner, node.data.key, reader_pid=reader_pid)
            return ReadHandle(node, self.backups, backup_handle=handle)
        if node.refresh is not None:
            return ReadHandle(node, self.backups, content=node.refresh())
        return ReadHandle(node, self.backups, content=node.content or b"")
