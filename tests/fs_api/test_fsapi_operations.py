"""rhvfs.fs.Operations called directly (no kernel): attributes, errno table, read-only."""

from __future__ import annotations

import errno
import os
import stat
from typing import Any

import pyfuse3
import pytest

from rhvfs import errors
from rhvfs.fs import ERRNO, Operations, errno_for
from rhvfs.vfs.names import ROOT_INODE
from rhvfs.vfs.tree import Vfs
from tests.support.fake_backups import FakeBackups, image_bytes
from tests.support.fake_engine import DISK_SIZE, inventory_engine

CTX: Any = None  # RequestContext can't be built outside a request; the adapter ignores it


def make_ops() -> tuple[Operations, FakeBackups]:
    backups = FakeBackups()
    return Operations(
        Vfs(inventory_engine(), backups, listing_ttl_s=5.0, uid=1000, gid=1000)
    ), backups


async def walk(ops: Operations, path: str) -> pyfuse3.EntryAttributes:
    attr = await ops.getattr(ROOT_INODE, CTX)
    for part in path.strip("/").split("/"):
        attr = await ops.lookup(attr.st_ino, part.encode(), CTX)
    return attr


class ReadTrackingBackups(FakeBackups):
    """Backups that say whether a read of an owner's set lives (as ``SetRouter`` does)."""

    def __init__(self) -> None:
        super().__init__()
        self.being_read: set[str] = set()

    def is_being_read(self, owner: Any) -> bool:
        return str(owner.id) in self.being_read


async def test_set_file_attributes_are_cached_only_while_a_read_lives() -> None:
    """Between reads a running VM's set files may get a new time: the kernel must ask again
    (restic/borg decide on it); during a read they are stable and cached, or the kernel would
    ask before every read(2)."""
    backups = ReadTrackingBackups()
    ops = Operations(Vfs(inventory_engine(), backups, listing_ttl_s=5.0, uid=1000, gid=1000))
    idle = await walk(ops, "/vms/myvm/@rhv/disk--vm-1-d0.raw")
    assert idle.attr_timeout == 0.0
    backups.being_read.add("vm-1")
    reading = await ops.getattr(idle.st_ino, CTX)
    assert reading.attr_timeout == 5.0
    vmjson = await walk(ops, "/vms/myvm/vm.json")  # not a set file: as before
    assert vmjson.attr_timeout == 0.0


async def test_attributes_of_dirs_files_links() -> None:
    ops, _ = make_ops()
    root = await ops.getattr(ROOT_INODE, CTX)
    assert stat.S_ISDIR(root.st_mode) and stat.S_IMODE(root.st_mode) == 0o555
    image = await walk(ops, "/vms/myvm/@rhv/disk--vm-1-d0.raw")
    assert stat.S_ISREG(image.st_mode) and stat.S_IMODE(image.st_mode) == 0o444
    assert (image.st_size, image.st_blocks, image.st_uid) == (DISK_SIZE, 2048, 1000)
    assert image.st_mtime_ns == image.st_ctime_ns == 1_700_000_000 * 10**9
    link = await walk(ops, "/tags/bkup/myvm")
    assert stat.S_ISLNK(link.st_mode)
    assert await ops.readlink(link.st_ino, CTX) == b"../../vms/myvm"
    assert image.attr_timeout == 5.0  # images: stable attributes, cached by the kernel
    vmjson = await walk(ops, "/vms/myvm/vm.json")
    assert (vmjson.attr_timeout, vmjson.entry_timeout) == (
        0.0,
        5.0,
    )  # content may change on re-listing
    again = await ops.getattr(image.st_ino, CTX)
    assert (again.st_ino, again.st_size, again.st_mtime_ns) == (
        image.st_ino,
        image.st_size,
        image.st_mtime_ns,
    )
    dot = await ops.lookup((await walk(ops, "/vms/myvm")).st_ino, b"..", CTX)
    assert dot.st_ino == (await walk(ops, "/vms")).st_ino


async def test_open_read_release() -> None:
    ops, backups = make_ops()
    attr = await walk(ops, "/vms/runvm/@rhv/data--vm-2-d2.raw")
    info = await ops.open(attr.st_ino, os.O_RDONLY, CTX)
    assert not info.direct_io
    data = b""
    while chunk := await ops.read(info.fh, len(data), 131072):
        data += chunk
    assert data == image_bytes("vm-2", "disk:vm-2-d2", DISK_SIZE)
    await ops.release(info.fh)
    assert backups.released == 1
    status = await walk(ops, "/.rhvfs/status.json")
    assert status.attr_timeout == 0
    assert (await ops.open(status.st_ino, os.O_RDONLY, CTX)).direct_io


@pytest.mark.parametrize(
    ("exc", "number"),
    [
        (errors.NotFound("x"), errno.ENOENT),
        (errors.VmStateError("suspended"), errno.EBUSY),
        (errors.Conflict("locked"), errno.EBUSY),
        (errors.EngineUnavailable("503"), errno.EIO),
        (errors.ImageioUnavailable("reset"), errno.EIO),
        (errors.TicketGone("403"), errno.EIO),
        (errors.DataIntegrityError("short"), errno.EIO),
        (errors.SessionBroken("dead"), errno.EIO),
        (errors.SessionClosed("closing"), errno.EIO),  # a reader's fd is valid: EBADF would mislead
        (errors.AuthenticationError("bad"), errno.EACCES),
        (errors.ConfigError("bad"), errno.EINVAL),
        (errors.RestoreInputError("not json"), errno.EINVAL),
        (errors.RestoreNameClash("vm exists"), errno.EEXIST),
        (errors.RestoreNoSpace("sd full"), errno.ENOSPC),
        (errors.StagingFull("staging_limit"), errno.ENOSPC),
        (errors.RestoreTooLarge("past the disk"), errno.EFBIG),
        (errors.RestoreBusy("uploading"), errno.EBUSY),
        (errors.RestoreUnsupported("no create_template"), errno.ENOTSUP),
        (errors.RestoreWriteOnly("streamed"), errno.EACCES),
        (errors.RestoreFinished("done"), errno.EROFS),
        (errors.RestoreCancelled("rmdir"), errno.ECANCELED),
        (errors.RestoreFailed("upload"), errno.EIO),
        (errors.RestoreError("options"), errno.EIO),
        (NotADirectoryError(errno.ENOTDIR, "x"), errno.ENOTDIR),
        (KeyError("surprise"), errno.EIO),
        (errors.ReadOnlyFilesystem("x"), errno.EROFS),
        (errors.NotADirectory("x"), errno.ENOTDIR),
        (errors.IsADirectory("x"), errno.EISDIR),
        (errors.NotASymlink("x"), errno.EINVAL),
        (errors.NotARegularFile("x"), errno.EINVAL),
        (errors.SymlinkLoop("x"), errno.ELOOP),
        (errors.SymlinkOutsideTree("x"), errno.EXDEV),
        (errors.BadHandle("x"), errno.EBADF),
        (errors.NoSuchAttribute("x"), pyfuse3.ENOATTR),
        (errors.AttributesUnsupported("x"), errno.ENOTSUP),
        (errors.NameExists("x"), errno.EEXIST),
        (errors.DirectoryNotEmpty("x"), errno.ENOTEMPTY),
        (errors.GeneratedFile("x"), errno.EACCES),
        (errors.NotInRestoreSet("x"), errno.EPERM),
        (errors.UnsupportedFileType("x"), errno.EPERM),
        (errors.RenameAcrossSets("x"), errno.EXDEV),
        (errors.RestoreError("failed"), errno.EIO),
    ],
)
def test_errno_table(exc: BaseException, number: int) -> None:
    assert errno_for(exc) == number


def test_every_vfs_refusal_has_its_own_errno() -> None:
    refusals = errors.FilesystemError.__subclasses__()
    assert refusals and all(cls in ERRNO for cls in refusals)


@pytest.mark.allow_log("rhvfs.fs", "WARNING", match="-> E")
async def test_errors_reach_fuse_as_errno(caplog: pytest.LogCaptureFixture) -> None:
    ops, _ = make_ops()
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.lookup(ROOT_INODE, b"nothing", CTX)
    assert e.value.errno == errno.ENOENT
    sleepy = await walk(ops, "/vms/sleepy/@rhv/disk--vm-4-d0.raw")
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.open(sleepy.st_ino, os.O_RDONLY, CTX)
    assert e.value.errno == errno.EBUSY
    assert "suspended" in caplog.text
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.getattr(12345, CTX)
    assert e.value.errno == errno.ENOENT
    vmjson = await walk(ops, "/vms/myvm/vm.json")
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.lookup(vmjson.st_ino, b"x", CTX)
    assert e.value.errno == errno.ENOTDIR
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.open((await walk(ops, "/vms")).st_ino, os.O_RDONLY, CTX)
    assert e.value.errno == errno.EISDIR
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.readlink(vmjson.st_ino, CTX)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.read(999, 0, 10)
    assert e.value.errno == errno.EBADF


@pytest.mark.allow_log("rhvfs.fs", "ERROR", match="failed unexpectedly")
async def test_unknown_exceptions_are_logged_and_eio(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    ops, _ = make_ops()

    async def boom(ino: int) -> Any:
        raise ZeroDivisionError("bug")

    monkeypatch.setattr(ops.vfs, "getattr", boom)
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.getattr(ROOT_INODE, CTX)
    assert e.value.errno == errno.EIO
    assert "ZeroDivisionError" in caplog.text  # with the traceback


async def test_read_only() -> None:
    ops, _ = make_ops()
    vmjson = await walk(ops, "/vms/myvm/vm.json")
    for flags in (os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC):
        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.open(vmjson.st_ino, flags, CTX)
        assert e.value.errno == errno.EROFS
    calls = [
        ops.mkdir(ROOT_INODE, b"x", 0o755, CTX),
        ops.unlink(ROOT_INODE, b"vms", CTX),
        ops.rename(ROOT_INODE, b"vms", ROOT_INODE, b"v", 0, CTX),
        ops.create(ROOT_INODE, b"f", 0o644, os.O_WRONLY, CTX),
        ops.setxattr(ROOT_INODE, b"user.x", b"1", CTX),
    ]
    for call in calls:
        with pytest.raises(pyfuse3.FUSEError) as e:
            await call
        assert e.value.errno == errno.EROFS
    assert await ops.access(vmjson.st_ino, os.R_OK, CTX)
    assert not await ops.access(vmjson.st_ino, os.W_OK, CTX)
    # no xattrs in the read-only tree: "not supported", so ls -l stops probing each file
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.getxattr(vmjson.st_ino, b"user.x", CTX)
    assert e.value.errno == errno.ENOTSUP
