"""The thin pyfuse3 adapter: ``Operations`` over ``rhvfs.vfs.tree.Vfs``.

Owns exactly two things: turning ``Node`` values into ``EntryAttributes``, and
the ONE table mapping rhvfs errors to errno (``errno_for``). Anything not in
the table is logged with its traceback and becomes EIO. The tree is read-only
here: every modifying call answers EROFS, except below ``restore/``, whose
calls are dispatched unchanged to ``rhvfs.vfs.restore.RestoreTree``.

Must not: hold logic of its own (names, caching, sessions live in ``rhvfs.vfs``
and ``rhvfs.sessions``), or let an exception other than ``FUSEError`` reach
pyfuse3.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, ParamSpec, TypeVar

import pyfuse3

from rhvfs import errors
from rhvfs.vfs.nodes import Kind, Node
from rhvfs.vfs.restore import RestoreTree
from rhvfs.vfs.tree import Vfs

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

#: Checked in order: the first matching class wins (subclasses before their bases).
ERRNO_TABLE: tuple[tuple[type[BaseException], int], ...] = (
    (errors.NotFound, errno.ENOENT),
    (errors.AuthenticationError, errno.EACCES),
    (errors.VmStateError, errno.EBUSY),
    (errors.Conflict, errno.EBUSY),
    (errors.ConfigError, errno.EINVAL),
    (errors.EngineError, errno.EIO),
    (errors.ImageioError, errno.EIO),
    (errors.SessionError, errno.EIO),
    (errors.DataIntegrityError, errno.EIO),
    (errors.RestoreInputError, errno.EINVAL),
    (errors.RestoreNameClash, errno.EEXIST),
    (errors.RestoreNoSpace, errno.ENOSPC),  # StagingFull too
    (errors.RestoreTooLarge, errno.EFBIG),
    (errors.RestoreBusy, errno.EBUSY),
    (errors.RestoreUnsupported, errno.ENOTSUP),
    (errors.RestoreWriteOnly, errno.EACCES),
    (errors.RestoreFinished, errno.EROFS),
    (errors.RestoreCancelled, errno.ECANCELED),
    (errors.RestoreFailed, errno.EIO),
    (errors.RestoreError, errno.EIO),
)
#: Expected in normal operation: no log line for these.
_QUIET = (errors.NotFound,)

READ_BLOCK_SIZE = 128 * 1024  # st_blksize: what cp/tar size their reads by


def errno_for(exc: BaseException) -> int:
    """The errno a failed filesystem call returns for ``exc`` (EIO when unknown)."""
    chosen = getattr(exc, "errno", None)  # a restore error carries the errno its session chose
    if isinstance(exc, errors.RestoreError) and isinstance(chosen, int) and chosen > 0:
        return chosen
    for cls, number in ERRNO_TABLE:
        if isinstance(exc, cls):
            return number
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EIO


def _translate(fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:
            number = errno_for(exc)
            name = errno.errorcode.get(number, number)
            if isinstance(exc, (*_QUIET, OSError)):  # expected: a missing name, ENOTDIR...
                log.debug("%s: %s -> %s", fn.__name__, exc, name)
            elif isinstance(exc, errors.RhvfsError):
                log.warning("%s: %s -> %s", fn.__name__, exc, name)
            else:  # a bug: keep its traceback
                log.exception("%s failed unexpectedly", fn.__name__)
            raise pyfuse3.FUSEError(number) from exc

    return wrapper


def _erofs() -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(errno.EROFS)


class Operations(pyfuse3.Operations):
    """pyfuse3 request handlers; every one delegates to ``Vfs``."""

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self,
        vfs: Vfs,
        *,
        uid: int | None = None,
        gid: int | None = None,
        restore: RestoreTree | None = None,
    ) -> None:
        super().__init__()
        self.vfs = vfs
        self.restore = restore  # the writable restore/ subtree: its calls are dispatched to it
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        self._dir_handles: dict[int, list[Node]] = {}
        self._next_dir_fh = 1

    # -- attributes ---------------------------------------------------------

    def attributes(self, node: Node) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = node.ino
        attr.generation = 0
        ttl = self.vfs.listing_ttl_s
        # Generated files (vm.json...) get fresh content when their directory is re-listed;
        # with no attribute caching the kernel's size always matches the content it reads.
        generated = node.content is not None and node.data is None
        attr.entry_timeout = 0.0 if node.volatile else ttl
        attr.attr_timeout = 0.0 if node.volatile or generated else ttl
        if node.kind is Kind.DIR:
            attr.st_mode = stat.S_IFDIR | 0o555
            attr.st_nlink = 2
        elif node.kind is Kind.LINK:
            attr.st_mode = stat.S_IFLNK | 0o777
            attr.st_nlink = 1
        else:
            attr.st_mode = stat.S_IFREG | 0o444
            attr.st_nlink = 1
        perm = getattr(node, "perm", None)  # restore/ nodes are writable
        if perm is None and self.restore is not None and node.ino == self.restore.root_ino:
            perm = 0o755
        if perm is not None:
            attr.st_mode = stat.S_IFMT(attr.st_mode) | perm
        attr.st_uid = getattr(node, "uid", None) or self.uid
        attr.st_gid = getattr(node, "gid", None) or self.gid
        attr.st_rdev = 0
        attr.st_size = node.size
        attr.st_blocks = node.blocks
        attr.st_blksize = READ_BLOCK_SIZE
        attr.st_atime_ns = node.mtime_ns
        attr.st_mtime_ns = node.mtime_ns
        attr.st_ctime_ns = node.mtime_ns
        return attr

    # -- lookups --------------------------------------------------------------

    @_translate
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if self._r(parent_inode):
            return self.attributes(await self._rt.lookup(parent_inode, os.fsdecode(name)))
        return self.attributes(await self.vfs.lookup(parent_inode, os.fsdecode(name)))

    def _r(self, inode: int) -> bool:
        return self.restore is not None and self.restore.owns(inode)

    def _rfh(self, fh: int) -> bool:
        return self.restore is not None and self.restore.owns_fh(fh)

    @property
    def _rt(self) -> RestoreTree:
        assert self.restore is not None
        return self.restore

    @_translate
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if self._r(inode):
            return self.attributes(await self._rt.getattr(inode))
        return self.attributes(await self.vfs.getattr(inode))

    @_translate
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return os.fsencode(await self.vfs.readlink(inode))

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        # Inode numbers are derived from engine ids and nodes are small: keep them all.
        pass

    @_translate
    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        if self._r(inode):
            self._rt.node(inode)
            return True
        self.vfs.node(inode)
        return not (mode & os.W_OK)

    # -- directories ------------------------------------------------------------

    @_translate
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        children: list[Node]
        if self._r(inode):
            children = list(await self._rt.listdir(inode))
        else:
            children = await self.vfs.listdir(inode)
        fh = self._next_dir_fh
        self._next_dir_fh += 1
        self._dir_handles[fh] = children
        return fh

    @_translate
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        children = self._dir_handles.get(fh, [])
        for index in range(start_id, len(children)):
            node = children[index]
            if not pyfuse3.readdir_reply(
                token, os.fsencode(node.name), self.attributes(node), index + 1
            ):
                break

    async def releasedir(self, fh: int) -> None:
        self._dir_handles.pop(fh, None)

    # -- files ------------------------------------------------------------------

    @_translate
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if self._r(inode):
            fh = await self._rt.open(inode, flags)
            return pyfuse3.FileInfo(fh=fh, direct_io=self._rt.direct_io(fh), keep_cache=False)
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            raise _erofs()
        fh = await self.vfs.open(inode)
        node = self.vfs.handle_node(fh)
        # Volatile files (status.json) bypass the page cache: their size changes.
        return pyfuse3.FileInfo(fh=fh, direct_io=node.volatile, keep_cache=False)

    @_translate
    async def read(self, fh: int, off: int, size: int) -> bytes:
        if self._rfh(fh):
            return await self._rt.read(fh, off, size)
        return await self.vfs.read(fh, off, size)

    async def release(self, fh: int) -> None:
        try:
            if self._rfh(fh):
                await self._rt.release(fh)
            else:
                await self.vfs.release(fh)
        except Exception:
            log.exception("release of handle %d failed", fh)

    @_translate
    async def flush(self, fh: int) -> None:
        if self._rfh(fh):
            await self._rt.flush(fh)

    @_translate
    async def fsync(self, fh: int, datasync: bool) -> None:
        if self._rfh(fh):
            await self._rt.fsync(fh)

    @_translate
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = READ_BLOCK_SIZE
        data.f_frsize = 512
        data.f_blocks = 0
        data.f_bfree = 0
        data.f_bavail = 0
        data.f_files = len(self.vfs.table) + 1
        data.f_ffree = 0
        data.f_favail = 0
        data.f_namemax = 255
        return data

    @_translate
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if self._r(inode):
            return await self._rt.getxattr(inode, name)
        self.vfs.node(inode)
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    @_translate
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        if self._r(inode):
            return await self._rt.listxattr(inode)
        self.vfs.node(inode)
        return []

    # -- everything that would modify the tree: read-only -----------------------

    @_translate
    async def setattr(
        self, inode: int, attr: Any, fields: Any, fh: Any, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if not self._r(inode):
            raise _erofs()
        node = await self._rt.setattr(
            inode,
            size=attr.st_size if fields.update_size else None,
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
        )
        return self.attributes(node)

    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EPERM) if self._r(parent_inode) else _erofs()

    @_translate
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if not self._r(parent_inode):
            raise _erofs()
        return self.attributes(await self._rt.mkdir(parent_inode, os.fsdecode(name)))

    @_translate
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        if not self._r(parent_inode):
            raise _erofs()
        await self._rt.unlink(parent_inode, os.fsdecode(name))

    @_translate
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        if not self._r(parent_inode):
            raise _erofs()
        await self._rt.rmdir(parent_inode, os.fsdecode(name))

    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise _erofs()

    @_translate
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        if not (self._r(parent_inode_old) and self._r(parent_inode_new)):
            raise _erofs()
        await self._rt.rename(
            parent_inode_old, os.fsdecode(name_old), parent_inode_new, os.fsdecode(name_new)
        )

    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise _erofs()

    @_translate
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        if not self._rfh(fh):
            raise _erofs()
        return await self._rt.write(fh, off, buf)

    @_translate
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        if not self._r(parent_inode):
            raise _erofs()
        fh, node = await self._rt.create(parent_inode, os.fsdecode(name), flags)
        info = pyfuse3.FileInfo(fh=fh, direct_io=self._rt.direct_io(fh), keep_cache=False)
        return info, self.attributes(node)

    @_translate
    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        if not self._r(inode):
            raise _erofs()
        await self._rt.setxattr(inode, name, value)

    @_translate
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        if not self._r(inode):
            raise _erofs()
        await self._rt.removexattr(inode, name)
