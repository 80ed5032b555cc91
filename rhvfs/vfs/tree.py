"""The VFS: inode table, lazy directories with a TTL, open handles.

``Vfs`` is the whole filesystem without FUSE: ``rhvfs ls`` and the fs_api
tests use it directly, ``rhvfs.fs`` adapts it to pyfuse3. Directory contents
come from ``Layout`` listers, are cached for ``listing_ttl_s`` and re-listed
on the next access after that; nodes keep their inode numbers (derived from
engine ids) across re-listings and across mounts. Generated files carry their
content from the listing; an open handle keeps its own snapshot of it.

Errors: a missing name or inode raises ``rhvfs.errors.NotFound``; using a
file as a directory raises ``NotADirectoryError`` (and the reverse
``IsADirectoryError``), which carry their errno. Engine and session errors
pass through unchanged; ``rhvfs.fs`` owns the errno table.

Invariant (between awaits): ``_nodes`` holds every node ever handed out, so
a ``getattr`` of any inode the kernel knows succeeds; a directory's cached
name map only refers to inodes in ``_nodes``.

Must not: import pyfuse3, or start sessions other than through ``open``.
"""

from __future__ import annotations

import dataclasses
import errno
import itertools
import logging
from collections.abc import Callable
from typing import Any

import trio

from rhvfs.errors import NotFound
from rhvfs.vfs.backend import BackupSets, EngineInventory, LocalOwner, OwnerFactory
from rhvfs.vfs.inventory import Inventory
from rhvfs.vfs.layout import Layout
from rhvfs.vfs.names import ROOT_INODE, InodeTable
from rhvfs.vfs.nodes import FIXED_MTIME_NS, Kind, Node

log = logging.getLogger(__name__)

_MAX_SYMLINK_HOPS = 16


@dataclasses.dataclass
class _Listing:
    expires: float
    children: dict[str, int]  # name -> inode, in listing order


@dataclasses.dataclass
class _Handle:
    node: Node
    content: bytes | None = None
    backup_handle: int | None = None


class Vfs:
    """The rhvfs tree over an engine and the backup sessions; no FUSE involved."""

    def __init__(
        self,
        engine: EngineInventory,
        backups: BackupSets,
        *,
        listing_ttl_s: float,
        owner_factory: OwnerFactory = LocalOwner,
        status_info: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.listing_ttl_s = listing_ttl_s
        self.inventory = Inventory(engine, ttl_s=listing_ttl_s)
        self.table = InodeTable()
        self.backups = backups
        self.layout = Layout(
            self.inventory,
            backups,
            self.table,
            owner_factory=owner_factory,
            status_info=status_info,
        )
        root = self.layout.root()
        root.parent_ino = ROOT_INODE
        self._nodes: dict[int, Node] = {ROOT_INODE: root}
        self._listings: dict[int, _Listing] = {}
        self._locks: dict[int, trio.Lock] = {}
        self._handles: dict[int, _Handle] = {}
        self._next_fh = itertools.count(1)

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
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", node.name)
        lock = self._locks.setdefault(ino, trio.Lock())
        async with lock:
            listing = self._listings.get(ino)
            if listing is not None and trio.current_time() < listing.expires:
                return listing.children
            children: dict[str, int] = {}
            for child in await node.lister():
                if child.name in children:
                    log.warning("duplicate name %r in directory inode %d; skipped", child.name, ino)
                    continue
                child.parent_ino = ino
                self._nodes[child.ino] = child
                children[child.name] = child.ino
            self._listings[ino] = _Listing(trio.current_time() + self.listing_ttl_s, children)
            return children

    async def lookup(self, parent_ino: int, name: str) -> Node:
        if name == ".":
            return await self.getattr(parent_ino)
        if name == "..":
            return await self.getattr(self.node(parent_ino).parent_ino)
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

    async def readlink(self, ino: int) -> str:
        node = self.node(ino)
        if node.kind is not Kind.LINK or node.target is None:
            raise OSError(errno.EINVAL, "not a symlink", node.name)
        return node.target

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
                    raise OSError(errno.ELOOP, "too many symlinks", path)
                target = await self.readlink(node.ino)
                if target.startswith("/"):
                    raise OSError(errno.EXDEV, "absolute symlink", target)
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

    # -- files ------------------------------------------------------------

    async def open(self, ino: int) -> int:
        """Open a file for reading; a backup-set file starts or joins its owner's session."""
        node = self.node(ino)
        if node.kind is Kind.DIR:
            raise IsADirectoryError(errno.EISDIR, "is a directory", node.name)
        if node.kind is not Kind.FILE:
            raise OSError(errno.EINVAL, "not a regular file", node.name)
        handle = _Handle(node)
        if node.data is not None:
            handle.backup_handle = await self.backups.open(node.data.owner, node.data.key)
        elif node.refresh is not None:
            handle.content = node.refresh()
        else:
            handle.content = node.content or b""
        fh = next(self._next_fh)
        self._handles[fh] = handle
        return fh

    def handle_node(self, fh: int) -> Node:
        return self._handle(fh).node

    def _handle(self, fh: int) -> _Handle:
        try:
            return self._handles[fh]
        except KeyError:
            raise OSError(errno.EBADF, "bad file handle") from None

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        handle = self._handle(fh)
        if handle.backup_handle is not None:
            return await self.backups.read(handle.backup_handle, offset, size)
        content = handle.content or b""
        return content[offset : offset + size]

    async def release(self, fh: int) -> None:
        handle = self._handles.pop(fh, None)
        if handle is not None and handle.backup_handle is not None:
            await self.backups.release(handle.backup_handle)

    @property
    def open_handles(self) -> int:
        return len(self._handles)

    async def release_all(self) -> None:
        """Release every handle still open (unmount while files are open)."""
        for fh in list(self._handles):
            with trio.CancelScope(shield=True):
                try:
                    await self.release(fh)
                except Exception:
                    log.exception("releasing handle %d at shutdown", fh)
