"""The ``restore/`` directory: a writable little tree in front of the restore sessions.

``RestoreTree`` is the ``Subtree`` that owns names, directories, inodes and
open files under ``restore/`` (``Vfs`` hands it every call on an inode it
``owns``): ``mkdir restore/<name>`` starts a ``RestoreSession``; files
written anywhere below it (subdirectories are allowed, for ``mkdir -p`` and
Bacula's ``where=``; a file is recognised by its base name) are
``RestoreFile``s of that session; ``restore/<name>/.status`` is generated at
every read. The metadata calls restore tools make after writing (chmod,
chown, utimes, xattrs) are accepted and remembered, never refused. Symlinks
and hard links are refused as everywhere (``ReadOnlyFilesystem``).

Errors: the tree's own refusals are ``rhvfs.errors.FilesystemError``
subclasses (``NameExists``, ``GeneratedFile``, ``NotInRestoreSet``...) and
``NotFound``; what the session refuses passes through unchanged. Every call
into a session is contained (``_contained``): any other exception fails that
restore and reaches the caller as ``RestoreFailed`` (EIO), so one bad set never
takes other restores or the mount with it.

Must not: import pyfuse3 or know errno values, talk to the engine, or hold
restore logic (that is ``rhvfs.sessions.restore``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import os
import stat
import time
from typing import Any

from rhvfs.errors import (
    DirectoryNotEmpty,
    GeneratedFile,
    IsADirectory,
    NameExists,
    NoSuchAttribute,
    NotADirectory,
    NotFound,
    NotInRestoreSet,
    RenameAcrossSets,
    UnsupportedFileType,
)
from rhvfs.sessions.restore import (
    STATUS_FILE,
    RestoreFile,
    RestoreManager,
    RestoreSession,
    guard_session,
)
from rhvfs.vfs.names import ROOT_INODE, InodeTable
from rhvfs.vfs.nodes import Kind, Node
from rhvfs.vfs.subtree import OpenFile, Subtree

log = logging.getLogger(__name__)


def _contained(session: RestoreSession | None) -> contextlib.AbstractContextManager[None]:
    """Around a call into ``session``: an unexpected exception fails that restore only."""
    return guard_session(session)


@dataclasses.dataclass(eq=False)
class RestoreNode(Node):
    """A node under ``restore/``; ``perm`` are its permission bits before the mount's
    ``restore_umask`` (``Vfs.attributes``): 0666 files and 0777 directories until a tool
    chmods them, as a local filesystem creates them before the process umask."""

    perm: int | None = 0o666
    session: RestoreSession | None = None
    file: RestoreFile | None = None
    children: dict[str, RestoreNode] | None = None
    xattrs: dict[bytes, bytes] = dataclasses.field(default_factory=dict)

    @property
    def volatile(self) -> bool:
        return True  # sizes change while tools write: never let the kernel cache attributes


class RestoreHandle(OpenFile):
    """An open file under ``restore/``: a ``RestoreFile`` of its session, or a ``.status``
    snapshot taken at open."""

    #: Releasing a file tells its session the file is complete: never on its own at unmount.
    release_at_unmount = False

    def __init__(self, node: RestoreNode, content: bytes | None = None) -> None:
        super().__init__(node)
        self.rnode = node
        self.content = content
        self.direct_io = node.file is None  # generated: its size changes between reads

    async def read(self, offset: int, size: int) -> bytes | memoryview:
        if self.content is not None:
            return self.content[offset : offset + size]
        node = self.rnode
        assert node.session is not None and node.file is not None
        with _contained(node.session):
            return node.session.read(node.file, offset, size)

    async def write(self, offset: int, data: bytes) -> int:
        node = self.rnode
        if node.file is None or node.session is None:
            raise GeneratedFile(node.name)
        with _contained(node.session):
            return await node.session.write(node.file, offset, data)

    async def flush(self) -> None:
        node = self.rnode
        if node.file is not None and node.session is not None:
            with _contained(node.session):
                await node.session.flush(node.file)

    async def fsync(self) -> None:
        node = self.rnode
        if node.file is not None and node.session is not None:
            with _contained(node.session):
                await node.session.fsync(node.file)

    async def release(self) -> None:
        node = self.rnode
        if node.file is not None and node.session is not None:
            with _contained(node.session):
                await node.session.release(node.file)


class RestoreTree(Subtree):
    """Every node below ``restore/`` (the directory itself has inode ``root_ino``)."""

    def __init__(self, manager: RestoreManager, *, root_ino: int, table: InodeTable) -> None:
        self.manager = manager
        self.root_ino = root_ino
        self._table = table
        self._serial = itertools.count(1)
        self._nodes: dict[int, RestoreNode] = {}
        self._sessions: dict[str, RestoreNode] = {}

    # -- identity ------------------------------------------------------------

    def owns(self, ino: int) -> bool:
        """True for ``restore/`` itself and every node below it."""
        return ino == self.root_ino or ino in self._nodes

    def _new_ino(self) -> int:
        return self._table.inode("restore", str(next(self._serial)), "")

    def _make(self, kind: Kind, name: str, parent: int, **kw: Any) -> RestoreNode:
        node = RestoreNode(
            self._new_ino(), kind, name, mtime_ns=time.time_ns(), parent_ino=parent, **kw
        )
        if kind is Kind.DIR:
            node.perm = 0o777
            if node.children is None:
                node.children = {}
        self._nodes[node.ino] = node
        return node

    def root_node(self) -> RestoreNode:
        return RestoreNode(
            self.root_ino,
            Kind.DIR,
            "restore",
            perm=0o777,
            parent_ino=ROOT_INODE,
            children=self._sessions,
        )

    def node(self, ino: int) -> RestoreNode:
        if ino == self.root_ino:
            return self.root_node()
        try:
            return self._nodes[ino]
        except KeyError:
            raise NotFound(f"inode {ino}") from None

    def _refresh(self, node: RestoreNode) -> RestoreNode:
        if node.file is not None:
            node.size = node.file.size
            node.blocks = (node.file.size + 511) // 512
            node.mtime_ns = node.file.mtime_ns
        elif node.name == STATUS_FILE and node.session is not None and node.kind is Kind.FILE:
            content = node.session.status_json()
            node.size = len(content)
            node.blocks = (len(content) + 511) // 512
        return node

    def _dir(self, ino: int) -> RestoreNode:
        node = self.node(ino)
        if node.kind is not Kind.DIR:
            raise NotADirectory(node.name)
        assert node.children is not None
        return node

    def _session_of(self, node: RestoreNode) -> RestoreSession:
        if node.session is None:
            raise NotInRestoreSet("not inside a restore directory")
        return node.session

    # -- directories -----------------------------------------------------------

    async def listdir(self, ino: int) -> list[Node]:
        if ino == self.root_ino:
            for name in list(self._sessions):
                if name not in self.manager.sessions:
                    self._forget(self._sessions.pop(name))
            return [self._refresh(n) for n in self._sessions.values()]
        node = self._dir(ino)
        assert node.children is not None
        return [self._refresh(n) for n in node.children.values()]

    async def lookup(self, parent_ino: int, name: str) -> Node:
        for child in await self.listdir(parent_ino):
            if child.name == name:
                return child
        raise NotFound(name)

    async def getattr(self, ino: int) -> RestoreNode:
        return self._refresh(self.node(ino))

    def access(self, ino: int, mode: int) -> bool:
        self.node(ino)
        return True

    async def mkdir(self, parent_ino: int, name: str) -> RestoreNode:
        if parent_ino == self.root_ino:
            await self.listdir(self.root_ino)
            if name in self._sessions:
                raise NameExists(f"restore/{name}")
            session = self.manager.create(name)
            node = self._make(Kind.DIR, name, self.root_ino, session=session)
            assert node.children is not None
            node.children[STATUS_FILE] = self._make(
                Kind.FILE, STATUS_FILE, node.ino, session=session, perm=0o444
            )
            self._sessions[name] = node
            return node
        parent = self._dir(parent_ino)
        assert parent.children is not None
        if name in parent.children:
            raise NameExists(name)
        child = self._make(Kind.DIR, name, parent.ino, session=self._session_of(parent))
        parent.children[name] = child
        return child

    async def mknod(self, parent_ino: int, name: str) -> Node:
        raise UnsupportedFileType(name)

    async def rmdir(self, parent_ino: int, name: str) -> None:
        if parent_ino == self.root_ino:
            node = self._sessions.get(name)
            if node is None:
                raise NotFound(name)
            self.manager.remove(name)  # refuses (busy) while engine work runs
            del self._sessions[name]
            self._forget(node)
            return
        parent = self._dir(parent_ino)
        assert parent.children is not None
        node = parent.children.get(name)
        if node is None:
            raise NotFound(name)
        if node.kind is not Kind.DIR:
            raise NotADirectory(name)
        if node.children:
            raise DirectoryNotEmpty(name)
        del parent.children[name]
        self._forget(node)

    def _forget(self, node: RestoreNode) -> None:
        for child in (node.children or {}).values():
            self._forget(child)
        self._nodes.pop(node.ino, None)

    # -- files ---------------------------------------------------------------------

    async def create(self, parent_ino: int, name: str, flags: int) -> tuple[OpenFile, Node]:
        if parent_ino == self.root_ino:
            raise NotInRestoreSet(
                "create a directory restore/<name> first, then write the set into it"
            )
        parent = self._dir(parent_ino)
        assert parent.children is not None
        session = self._session_of(parent)
        existing = parent.children.get(name)
        if existing is not None:
            if flags & os.O_EXCL:
                raise NameExists(name)
            return await self.open(existing.ino, flags), existing
        if name == STATUS_FILE:
            raise GeneratedFile(f"{STATUS_FILE} is generated by rhvfs")
        with _contained(session):
            file = session.new_file(name)
        node = self._make(Kind.FILE, name, parent.ino, session=session, file=file)
        parent.children[name] = node
        return self._open_handle(node), node

    def _open_handle(self, node: RestoreNode) -> RestoreHandle:
        if node.file is not None:
            assert node.session is not None
            with _contained(node.session):
                node.session.open(node.file)
            return RestoreHandle(node)
        if node.session is not None:
            return RestoreHandle(node, node.session.status_json())
        return RestoreHandle(node)

    async def open(self, ino: int, flags: int, *, reader_pid: int = 0) -> RestoreHandle:
        node = self.node(ino)
        if node.kind is Kind.DIR:
            raise IsADirectory(node.name)
        if node.file is None and flags & os.O_ACCMODE != os.O_RDONLY:
            raise GeneratedFile(f"{node.name} is read-only")
        if node.file is not None and flags & os.O_TRUNC:
            assert node.session is not None
            with _contained(node.session):
                await node.session.truncate(node.file, 0)
        return self._open_handle(node)

    async def unlink(self, parent_ino: int, name: str) -> None:
        parent = self._dir(parent_ino)
        assert parent.children is not None
        node = parent.children.get(name)
        if node is None:
            raise NotFound(name)
        if node.kind is Kind.DIR:
            raise IsADirectory(name)
        if node.file is None:
            return  # .status: "removed" quietly (rm -r, rsync --delete); it is still generated
        assert node.session is not None
        with _contained(node.session):
            node.session.remove_file(node.file)
        del parent.children[name]
        self._nodes.pop(node.ino, None)

    async def rename(self, old_parent: int, old_name: str, new_parent: int, new_name: str) -> None:
        src_dir = self._dir(old_parent)
        dst_dir = self._dir(new_parent)
        assert src_dir.children is not None and dst_dir.children is not None
        node = src_dir.children.get(old_name)
        if node is None:
            raise NotFound(old_name)
        if src_dir.session is None or dst_dir.session is not src_dir.session:
            raise RenameAcrossSets("files cannot move between restore directories")
        if node.file is None and node.kind is Kind.FILE:
            raise GeneratedFile(f"{STATUS_FILE} is generated by rhvfs")
        target = dst_dir.children.get(new_name)
        if target is not None and target is not node:
            if target.kind is Kind.DIR or target.file is None:
                raise NameExists(f"{new_name} cannot be replaced")
            assert target.session is not None
            with _contained(target.session):
                target.session.remove_file(target.file)
            del dst_dir.children[new_name]
            self._nodes.pop(target.ino, None)
        del src_dir.children[old_name]
        node.name = new_name
        node.parent_ino = dst_dir.ino
        dst_dir.children[new_name] = node
        if node.file is not None:
            assert node.session is not None
            with _contained(node.session):
                await node.session.rename(node.file, new_name)

    async def setattr(
        self,
        ino: int,
        *,
        size: int | None = None,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        mtime_ns: int | None = None,
    ) -> RestoreNode:
        node = self.node(ino)
        if node.session is not None:
            node.session.outcome.raise_failure()  # a failed restore's files take no changes
        if size is not None:
            if node.file is None or node.session is None:
                raise GeneratedFile(f"{node.name} is read-only")
            with _contained(node.session):
                await node.session.truncate(node.file, size)
        if mode is not None and node.ino != self.root_ino:
            node.perm = stat.S_IMODE(mode)
        if uid is not None:
            node.uid = uid
        if gid is not None:
            node.gid = gid
        if mtime_ns is not None and node.file is not None:
            node.file.mtime_ns = mtime_ns
            assert node.session is not None
            with _contained(node.session):
                await node.session.set_times(node.file)  # tools set times when a file is done
        return self._refresh(node)

    # -- extended attributes: kept in memory, so tools that restore them succeed ----

    async def setxattr(self, ino: int, name: bytes, value: bytes) -> None:
        self.node(ino).xattrs[name] = value

    async def getxattr(self, ino: int, name: bytes) -> bytes:
        try:
            return self.node(ino).xattrs[name]
        except KeyError:
            raise NoSuchAttribute(repr(name)) from None

    async def listxattr(self, ino: int) -> list[bytes]:
        return list(self.node(ino).xattrs)

    async def removexattr(self, ino: int, name: bytes) -> None:
        if self.node(ino).xattrs.pop(name, None) is None:
            raise NoSuchAttribute(repr(name))
