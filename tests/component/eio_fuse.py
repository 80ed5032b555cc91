"""A one-file FUSE filesystem whose file fails with EIO part-way through (for the Bacula rig test).

Usage: python eio_fuse.py MOUNTPOINT SIZE_BYTES FAIL_AT_BYTES. The root holds one
file, ``disk.img``, of SIZE_BYTES; a read of any byte at or past FAIL_AT_BYTES
fails with EIO, reads before it return ``pattern(offset, size)``. Prints
``READY`` once mounted; stops when the mount is unmounted (fusermount3 -u).
It must not depend on rhvfs: it stands in for any source that breaks mid-read.
"""

from __future__ import annotations

import errno
import os
import stat
import sys

import pyfuse3
import trio

FILE_NAME = b"disk.img"
FILE_INODE: pyfuse3.InodeT = pyfuse3.ROOT_INODE + 1


def pattern(offset: int, size: int) -> bytes:
    """The file's bytes at [offset, offset + size): each 8-byte word is its own offset."""
    first = offset - offset % 8
    words = b"".join((first + i).to_bytes(8, "little") for i in range(0, offset + size - first, 8))
    return words[offset - first : offset - first + size]


class EioFile(pyfuse3.Operations):
    def __init__(self, size: int, fail_at: int) -> None:
        super().__init__()
        self.size = size
        self.fail_at = fail_at

    def _attr(self, inode: pyfuse3.InodeT) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = inode
        if inode == pyfuse3.ROOT_INODE:
            attr.st_mode = stat.S_IFDIR | 0o755
            attr.st_nlink = 2
            attr.st_size = 0
        else:
            attr.st_mode = stat.S_IFREG | 0o644
            attr.st_nlink = 1
            attr.st_size = self.size
        attr.st_uid = os.getuid()
        attr.st_gid = os.getgid()
        attr.st_blksize = 4096
        attr.st_blocks = (attr.st_size + 511) // 512
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = 1_700_000_000 * 10**9
        attr.entry_timeout = 60
        attr.attr_timeout = 60
        return attr

    async def getattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        if inode not in (pyfuse3.ROOT_INODE, FILE_INODE):
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(inode)

    async def lookup(
        self, parent_inode: pyfuse3.InodeT, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if parent_inode != pyfuse3.ROOT_INODE or name != FILE_NAME:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(FILE_INODE)

    async def opendir(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileHandleT:
        if inode != pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(
        self, fh: pyfuse3.FileHandleT, start_id: int, token: pyfuse3.ReaddirToken
    ) -> None:
        if start_id == 0:
            pyfuse3.readdir_reply(token, FILE_NAME, self._attr(FILE_INODE), 1)

    async def open(
        self, inode: pyfuse3.InodeT, flags: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileInfo:
        if inode != FILE_INODE:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise pyfuse3.FUSEError(errno.EROFS)
        # direct_io: each read(2) reaches us as it is, so the error lands at a
        # known offset instead of somewhere in the kernel's read-ahead.
        return pyfuse3.FileInfo(fh=inode, direct_io=True)

    async def read(self, fh: pyfuse3.FileHandleT, off: int, size: int) -> bytes:
        end = min(off + size, self.size)
        if end > self.fail_at:
            raise pyfuse3.FUSEError(errno.EIO)
        return pattern(off, max(0, end - off))


def main() -> int:
    mountpoint, size, fail_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    options = set(pyfuse3.default_options)
    options.add("fsname=eio_fuse")
    options.add("ro")
    pyfuse3.init(EioFile(size, fail_at), mountpoint, options)
    print("READY", flush=True)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
