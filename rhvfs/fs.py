"""The thin pyfuse3 adapter: ``Operations`` over ``rhvfs.vfs.tree.Vfs``.

Owns exactly two things: converting between pyfuse3's types and the VFS's
(bytes names, ``EntryAttributes``, ``FileInfo``, ``SetattrFields``), and the
ONE table mapping rhvfs errors to errno (``ERRNO``, read by ``errno_for``).
Anything not in the table is logged with its traceback and becomes EIO.
Every call goes to the one ``Vfs`` unchanged: which part of the tree
answers, what is read-only and which handle is which are the VFS's business.

Must not: hold logic of its own (names, routing, caching, sessions live in
``rhvfs.vfs`` and ``rhvfs.sessions``), or let an exception other than
``FUSEError`` reach pyfuse3.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, ParamSpec, TypeVar

import pyfuse3

from rhvfs import errors
from rhvfs.vfs.names import NAME_MAX
from rhvfs.vfs.nodes import IO_BLOCK_SIZE, Node
from rhvfs.vfs.tree import Vfs

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

# ---------------------------------------------------------------------------------------
# THE error -> errno table. One entry per class; for an exception, the entry of the most
# specific class in its MRO wins (so entry order does not matter). Add new classes here.
# ---------------------------------------------------------------------------------------
ERRNO: dict[type[BaseException], int] = {
    # engine
    errors.NotFound: errno.ENOENT,  # also the VFS's missing name or inode
    errors.AuthenticationError: errno.EACCES,
    errors.Conflict: errno.EBUSY,
    errors.EngineError: errno.EIO,
    # configuration
    errors.ConfigError: errno.EINVAL,
    # data plane
    errors.ImageioError: errno.EIO,
    errors.DataIntegrityError: errno.EIO,
    # sessions
    errors.VmStateError: errno.EBUSY,
    errors.PointInTimeLost: errno.ESTALE,
    errors.SetBusy: errno.EBUSY,
    errors.SessionError: errno.EIO,  # SessionClosed too: a reader's fd is valid, EBADF misleads
    errors.RestoreError: errno.EIO,
    errors.RestoreInputError: errno.EINVAL,
    errors.RestoreNameClash: errno.EEXIST,
    errors.RestoreNoSpace: errno.ENOSPC,  # StagingFull too
    errors.RestoreMemoryFull: errno.ENOSPC,
    errors.RestoreTooLarge: errno.EFBIG,
    errors.RestoreBusy: errno.EBUSY,
    errors.RestoreUnsupported: errno.ENOTSUP,
    errors.RestoreWriteOnly: errno.EACCES,
    errors.RestoreFinished: errno.EROFS,
    errors.RestoreImageSealed: errno.EROFS,
    errors.RestoreCancelled: errno.ECANCELED,
    errors.RestoreFailed: errno.EIO,
    # the VFS's own refusals
    errors.ReadOnlyFilesystem: errno.EROFS,
    errors.NotADirectory: errno.ENOTDIR,
    errors.IsADirectory: errno.EISDIR,
    errors.NotASymlink: errno.EINVAL,
    errors.NotARegularFile: errno.EINVAL,
    errors.SymlinkLoop: errno.ELOOP,
    errors.SymlinkOutsideTree: errno.EXDEV,
    errors.BadHandle: errno.EBADF,
    errors.NoSuchAttribute: pyfuse3.ENOATTR,
    errors.AttributesUnsupported: errno.ENOTSUP,  # never ENOSYS: the kernel would stop asking
    errors.NameExists: errno.EEXIST,
    errors.DirectoryNotEmpty: errno.ENOTEMPTY,
    errors.GeneratedFile: errno.EACCES,
    errors.NotInRestoreSet: errno.EPERM,
    errors.UnsupportedFileType: errno.EPERM,
    errors.RenameAcrossSets: errno.EXDEV,
}
# ---------------------------------------------------------------------------------------

#: Expected in normal operation (a missing name, a refused write): logged at debug only.
_QUIET = (errors.NotFound, errors.FilesystemError, OSError)


def errno_for(exc: BaseException) -> int:
    """The errno a failed filesystem call returns for ``exc`` (EIO when unknown)."""
    for cls in type(exc).__mro__:
        number = ERRNO.get(cls)
        if number is not None:
            return number
    if isinstance(exc, OSError) and exc.errno:  # e.g. the local disk under restore staging
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
            if isinstance(exc, _QUIET):
                log.debug("%s: %s -> %s", fn.__name__, exc, name)
            elif isinstance(exc, errors.RhvfsError):
                log.warning(
                    "%s: %s -> %s", fn.__name__, exc, name, extra={"what": f"fs {fn.__name__}"}
                )
            else:  # a bug: keep its traceback
                log.exception("%s failed unexpectedly", fn.__name__)
            raise pyfuse3.FUSEError(number) from exc

    return wrapper


class Operations(pyfuse3.Operations):
    """pyfuse3 request handlers; every one delegates to ``Vfs``."""

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, vfs: Vfs) -> None:
        super().__init__()
        self.vfs = vfs

    def attributes(self, node: Node) -> pyfuse3.EntryAttributes:
        a = self.vfs.attributes(node)
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = a.ino
        attr.generation = 0
        attr.entry_timeout = a.entry_timeout_s
        attr.attr_timeout = a.attr_timeout_s
        attr.st_mode = a.mode
        attr.st_nlink = a.nlink
        attr.st_uid = a.uid
        attr.st_gid = a.gid
        attr.st_rdev = 0
        attr.st_size = a.size
        attr.st_blocks = a.blocks
        attr.st_blksize = a.blksize
        attr.st_atime_ns = a.mtime_ns
        attr.st_mtime_ns = a.mtime_ns
        attr.st_ctime_ns = a.mtime_ns
        return attr

    def _file_info(self, fh: int) -> pyfuse3.FileInfo:
        return pyfuse3.FileInfo(fh=fh, direct_io=self.vfs.direct_io(fh), keep_cache=False)

    # -- lookups and attributes --------------------------------------------------

    @_translate
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return self.attributes(await self.vfs.lookup(parent_inode, os.fsdecode(name)))

    @_translate
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self.attributes(await self.vfs.getattr(inode))

    @_translate
    async def setattr(
        self, inode: int, attr: Any, fields: Any, fh: Any, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        node = await self.vfs.setattr(
            inode,
            size=attr.st_size if fields.update_size else None,
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
        )
        return self.attributes(node)

    @_translate
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return os.fsencode(await self.vfs.readlink(inode))

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        self.vfs.forget(inode for inode, _ in inode_list)

    @_translate
    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        return self.vfs.access(inode, mode)

    @_translate
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = IO_BLOCK_SIZE
        data.f_frsize = 512
        data.f_blocks = 0
        data.f_bfree = 0
        data.f_bavail = 0
        data.f_files = self.vfs.inode_count
        data.f_ffree = 0
        data.f_favail = 0
        data.f_namemax = NAME_MAX
        return data

    # -- directories ------------------------------------------------------------

    @_translate
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        return await self.vfs.opendir(inode)

    @_translate
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        children = self.vfs.readdir(fh)
        for index in range(start_id, len(children)):
            node = children[index]
            if not pyfuse3.readdir_reply(
                token, os.fsencode(node.name), self.attributes(node), index + 1
            ):
                break

    async def releasedir(self, fh: int) -> None:
        self.vfs.releasedir(fh)

    @_translate
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return self.attributes(await self.vfs.mkdir(parent_inode, os.fsdecode(name)))

    @_translate
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.vfs.rmdir(parent_inode, os.fsdecode(name))

    # -- names --------------------------------------------------------------------

    @_translate
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return self.attributes(await self.vfs.mknod(parent_inode, os.fsdecode(name)))

    @_translate
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        node = await self.vfs.symlink(parent_inode, os.fsdecode(name), os.fsdecode(target))
        return self.attributes(node)

    @_translate
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        node = await self.vfs.link(inode, new_parent_inode, os.fsdecode(new_name))
        return self.attributes(node)

    @_translate
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.vfs.unlink(parent_inode, os.fsdecode(name))

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
        await self.vfs.rename(
            parent_inode_old, os.fsdecode(name_old), parent_inode_new, os.fsdecode(name_new)
        )

    # -- files ------------------------------------------------------------------

    @_translate
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        pid = int(getattr(ctx, "pid", 0) or 0)  # the FS API tests call without a context
        return self._file_info(await self.vfs.open(inode, flags, reader_pid=pid))

    @_translate
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        fh, node = await self.vfs.create(parent_inode, os.fsdecode(name), flags)
        return self._file_info(fh), self.attributes(node)

    @_translate
    async def read(  # type: ignore[override]  # pyfuse3 takes any buffer (its stub says bytes)
        self, fh: int, off: int, size: int
    ) -> bytes | memoryview:
        # A view of a cache buffer is handed to pyfuse3 as it is (no copy): its read
        # handler replies with it (PyObject_GetBuffer, fuse_reply_buf) before anything
        # else runs.
        return await self.vfs.read(fh, off, size)

    @_translate
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return await self.vfs.write(fh, off, buf)

    @_translate
    async def flush(self, fh: int) -> None:
        await self.vfs.flush(fh)

    @_translate
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.vfs.fsync(fh)

    async def release(self, fh: int) -> None:
        try:
            await self.vfs.release(fh)
        except Exception:  # the kernel has closed the file already: nobody to tell
            log.exception("release of handle %d failed", fh)

    # -- extended attributes ------------------------------------------------------

    @_translate
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        return await self.vfs.getxattr(inode, name)

    @_translate
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        return await self.vfs.listxattr(inode)

    @_translate
    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        await self.vfs.setxattr(inode, name, value)

    @_translate
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.vfs.removexattr(inode, name)
