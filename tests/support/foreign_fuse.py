"""A FUSE file system that is not rhvfs but serves ``/.rhvfs/status.json`` (for umount tests).

Usage: ``python -m tests.support.foreign_fuse MOUNTPOINT NAME STATUS_JSON`` (the
repository root on ``sys.path``). It mounts with ``fsname=NAME,subtype=NAME``
(NAME ``rhvfs`` makes an impostor that looks like rhvfs in mountinfo) and
answers ``/.rhvfs/status.json`` with the bytes STATUS_JSON, e.g. a pid that
``rhvfs umount`` must not signal. Prints ``READY`` once mounted; stops when the
mount is unmounted (``fusermount3 -u``). Must not: depend on rhvfs (it stands in
for any other FUSE file system).
"""

from __future__ import annotations

import errno
import os
import stat
import sys

import pyfuse3
import trio

DIR_NAME = b".rhvfs"
FILE_NAME = b"status.json"
DIR_INODE: pyfuse3.InodeT = pyfuse3.ROOT_INODE + 1
FILE_INODE: pyfuse3.InodeT = pyfuse3.ROOT_INODE + 2


class Foreign(pyfuse3.Operations):
    def __init__(self, status: bytes) -> None:
        super().__init__()
        self.status = status

    def _attr(self, inode: pyfuse3.InodeT) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = inode
        if inode == FILE_INODE:
            attr.st_mode = stat.S_IFREG | 0o444
            attr.st_nlink = 1
            attr.st_size = len(self.status)
        else:
            attr.st_mode = stat.S_IFDIR | 0o555
            attr.st_nlink = 2
            attr.st_size = 0
        attr.st_uid = os.getuid()
        attr.st_gid = os.getgid()
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = 1_700_000_000 * 10**9
        return attr

    async def getattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        if inode not in (pyfuse3.ROOT_INODE, DIR_INODE, FILE_INODE):
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(inode)

    async def lookup(
        self, parent_inode: pyfuse3.InodeT, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if parent_inode == pyfuse3.ROOT_INODE and name == DIR_NAME:
            return self._attr(DIR_INODE)
        if parent_inode == DIR_INODE and name == FILE_NAME:
            return self._attr(FILE_INODE)
        raise pyfuse3.FUSEError(errno.ENOENT)

    async def opendir(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileHandleT:
        if inode not in (pyfuse3.ROOT_INODE, DIR_INODE):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return pyfuse3.FileHandleT(inode)

    async def readdir(
        self, fh: pyfuse3.FileHandleT, start_id: int, token: pyfuse3.ReaddirToken
    ) -> None:
        if start_id != 0:
            return
        if fh == pyfuse3.ROOT_INODE:
            pyfuse3.readdir_reply(token, DIR_NAME, self._attr(DIR_INODE), 1)
        else:
            pyfuse3.readdir_reply(token, FILE_NAME, self._attr(FILE_INODE), 1)

    async def open(
        self, inode: pyfuse3.InodeT, flags: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileInfo:
        if inode != FILE_INODE:
            raise pyfuse3.FUSEError(errno.EISDIR)
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(inode))

    async def read(self, fh: pyfuse3.FileHandleT, off: int, size: int) -> bytes:
        return self.status[off : off + size]


def main() -> int:
    mountpoint, name, status = sys.argv[1], sys.argv[2], sys.argv[3].encode()
    options = set(pyfuse3.default_options)
    options |= {f"fsname={name}", f"subtype={name}", "ro"}
    pyfuse3.init(Foreign(status), mountpoint, options)
    print("READY", flush=True)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
