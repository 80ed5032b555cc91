"""The one ``Vfs`` with a writable restore/ (no FUSE): dispatch, one handle table, named errors."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import trio

from rhvfs import errors
from rhvfs.config import Config
from rhvfs.fs import errno_for
from rhvfs.sessions.restore import RestoreManager
from rhvfs.sessions.restore._staging import StagingArea
from rhvfs.vfs.names import ROOT_INODE
from rhvfs.vfs.tree import Vfs
from tests.support.fake_backups import FakeBackups
from tests.support.fake_dataplane import upload_opener as fake_opener
from tests.support.fake_engine import DISK_SIZE, FakeEngine, inventory_engine

WRITE_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL


async def make_vfs(nursery: trio.Nursery, tmp_path: Path) -> tuple[Vfs, FakeBackups]:
    engine = FakeEngine()
    cfg = Config(engine_url="http://fake.invalid", username="u", password="p")
    manager = RestoreManager(
        engine,
        cfg,
        errno_for=errno_for,
        opener=fake_opener(engine),
        staging=StagingArea(tmp_path, limit_bytes=1 << 30),
        close_grace_s=0.05,
    )
    await nursery.start(manager.run)
    backups = FakeBackups()
    vfs = Vfs(inventory_engine(), backups, listing_ttl_s=5.0, restores=manager, uid=7, gid=8)
    return vfs, backups


async def test_restore_root_is_owned_by_the_restore_tree(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    vfs, _ = await make_vfs(nursery, tmp_path)
    restore = await vfs.lookup(ROOT_INODE, "restore")
    listed = {n.name: n for n in await vfs.listdir(ROOT_INODE)}["restore"]
    for node in (restore, listed, await vfs.getattr(restore.ino)):
        attrs = vfs.attributes(node)
        assert attrs.mode == stat.S_IFDIR | 0o755
        assert (attrs.uid, attrs.gid) == (7, 8)
    assert vfs.access(restore.ino, os.W_OK)
    assert (await vfs.lookup(restore.ino, "..")).ino == ROOT_INODE
    d = await vfs.mkdir(restore.ino, "a")
    assert (await vfs.lookup(d.ino, "..")).ino == restore.ino
    assert (await vfs.lookup(d.ino, ".")).ino == d.ino
    assert await vfs.path_of(d.ino) == "/restore/a"
    assert (await vfs.resolve("/restore/a/.status")).name == ".status"
    vms = await vfs.resolve("/vms")
    assert vfs.attributes(vms).mode == stat.S_IFDIR | 0o555
    assert not vfs.access(vms.ino, os.W_OK)


async def test_one_handle_table_for_both_trees(nursery: trio.Nursery, tmp_path: Path) -> None:
    vfs, backups = await make_vfs(nursery, tmp_path)
    image = await vfs.resolve("/vms/myvm/@rhv/disk--vm-1-d0.raw")
    restore = await vfs.resolve("/restore")
    d = await vfs.mkdir(restore.ino, "a")
    read_fh = await vfs.open(image.ino)
    dir_fh = await vfs.opendir(d.ino)
    write_fh, node = await vfs.create(d.ino, "data.bin", WRITE_NEW)
    status_fh = await vfs.open((await vfs.lookup(d.ino, ".status")).ino)
    assert len({read_fh, dir_fh, write_fh, status_fh}) == 4
    assert [n.name for n in vfs.readdir(dir_fh)] == [".status"]
    assert vfs.readdir(read_fh) == []  # not a directory handle
    assert len(await vfs.read(read_fh, 0, 4096)) == 4096 and image.size == DISK_SIZE
    assert await vfs.write(write_fh, 0, b"<data>") == 6
    assert (await vfs.getattr(node.ino)).size == 6
    assert b'"phase"' in await vfs.read(status_fh, 0, 1 << 20)
    assert (vfs.direct_io(read_fh), vfs.direct_io(write_fh), vfs.direct_io(status_fh)) == (
        False,
        False,
        True,
    )
    with pytest.raises(errors.ReadOnlyFilesystem):
        await vfs.write(read_fh, 0, b"x")
    with pytest.raises(errors.BadHandle):
        await vfs.read(dir_fh, 0, 1)
    with pytest.raises(errors.BadHandle):
        await vfs.flush(12345)
    # Unmount with files open: read handles are released, restore files are left to their
    # session (releasing one would say the file is complete).
    assert vfs.open_handles == 1
    await vfs.release_all()
    assert backups.released == 1 and vfs.open_handles == 0
    assert await vfs.write(write_fh, 6, b"\n") == 1
    vfs.releasedir(dir_fh)
    for fh in (write_fh, status_fh):
        await vfs.flush(fh)
        await vfs.release(fh)
    with pytest.raises(errors.BadHandle):
        await vfs.read(status_fh, 0, 1)


async def test_refusals_are_named_errors(nursery: trio.Nursery, tmp_path: Path) -> None:
    vfs, _ = await make_vfs(nursery, tmp_path)
    restore = await vfs.resolve("/restore")
    vms = await vfs.resolve("/vms")
    a = await vfs.mkdir(restore.ino, "a")
    b = await vfs.mkdir(restore.ino, "b")
    sub = await vfs.mkdir(a.ino, "sub")
    await vfs.mkdir(sub.ino, "deeper")
    status = await vfs.lookup(a.ino, ".status")
    fh, f = await vfs.create(a.ino, "data.bin", WRITE_NEW)
    await vfs.release(fh)
    refusals = [
        (errors.NameExists, vfs.mkdir(restore.ino, "a")),
        (errors.NameExists, vfs.mkdir(a.ino, "sub")),
        (errors.NameExists, vfs.create(a.ino, "data.bin", WRITE_NEW)),
        (errors.NameExists, vfs.rename(a.ino, "data.bin", a.ino, "sub")),
        (errors.NotInRestoreSet, vfs.create(restore.ino, "f", WRITE_NEW)),
        (errors.GeneratedFile, vfs.create(sub.ino, ".status", WRITE_NEW)),
        (errors.GeneratedFile, vfs.open(status.ino, os.O_WRONLY)),
        (errors.GeneratedFile, vfs.setattr(status.ino, size=0)),
        (errors.GeneratedFile, vfs.rename(a.ino, ".status", a.ino, "x")),
        (errors.DirectoryNotEmpty, vfs.rmdir(a.ino, "sub")),
        (errors.NotADirectory, vfs.rmdir(a.ino, "data.bin")),
        (errors.NotADirectory, vfs.listdir(f.ino)),
        (errors.IsADirectory, vfs.unlink(a.ino, "sub")),
        (errors.IsADirectory, vfs.open(sub.ino, os.O_RDONLY)),
        (errors.RenameAcrossSets, vfs.rename(a.ino, "data.bin", b.ino, "data.bin")),
        (errors.RenameAcrossSets, vfs.rename(restore.ino, "a", restore.ino, "c")),
        (errors.UnsupportedFileType, vfs.mknod(a.ino, "fifo")),
        (errors.ReadOnlyFilesystem, vfs.symlink(a.ino, "l", "data.bin")),
        (errors.ReadOnlyFilesystem, vfs.link(f.ino, a.ino, "hard")),
        (errors.ReadOnlyFilesystem, vfs.rename(a.ino, "data.bin", vms.ino, "data.bin")),
        (errors.ReadOnlyFilesystem, vfs.rename(vms.ino, "myvm", a.ino, "myvm")),
        (errors.ReadOnlyFilesystem, vfs.mkdir(vms.ino, "x")),
        (errors.ReadOnlyFilesystem, vfs.open(vms.ino, os.O_RDWR)),
        (errors.ReadOnlyFilesystem, vfs.setattr(vms.ino, mode=0o777)),
        (errors.NoSuchAttribute, vfs.getxattr(f.ino, b"user.none")),
        (errors.NoSuchAttribute, vfs.removexattr(f.ino, b"user.none")),
        (errors.AttributesUnsupported, vfs.getxattr(vms.ino, b"user.none")),
        (errors.NotFound, vfs.lookup(a.ino, "nothing")),
        (errors.NotFound, vfs.unlink(a.ino, "nothing")),
        (errors.NotFound, vfs.rmdir(restore.ino, "nothing")),
    ]
    for error, call in refusals:
        with pytest.raises(error):
            await call
    await vfs.unlink(a.ino, ".status")  # quietly "removed" (rm -r), still generated
    await vfs.setxattr(f.ino, b"user.x", b"1")
    assert await vfs.listxattr(f.ino) == [b"user.x"]
    await vfs.removexattr(f.ino, b"user.x")
    assert [n.name for n in await vfs.listdir(a.ino)] == [".status", "sub", "data.bin"]


async def test_without_restores_restore_is_read_only() -> None:
    vfs = Vfs(inventory_engine(), FakeBackups(), listing_ttl_s=5.0)
    restore = await vfs.resolve("/restore")
    assert vfs.attributes(restore).mode == stat.S_IFDIR | 0o555
    assert await vfs.listdir(restore.ino) == []
    with pytest.raises(errors.ReadOnlyFilesystem):
        await vfs.mkdir(restore.ino, "a")
    with pytest.raises(errors.ReadOnlyFilesystem):
        await vfs.mknod(restore.ino, "a")


async def test_a_read_only_vfs_has_no_restore_tree_even_with_a_restore_manager(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """``-o ro``: ``restore/`` is not in the root, can't be looked up, and nothing is
    writable anywhere (``access(W_OK)`` false, ``mkdir`` refused)."""
    writable, _ = await make_vfs(nursery, tmp_path)
    vfs = Vfs(
        inventory_engine(),
        FakeBackups(),
        listing_ttl_s=5.0,
        restores=writable.restore.manager if writable.restore is not None else None,
        restore_dir=False,
    )
    assert vfs.restore is None
    assert [n.name for n in await vfs.listdir(ROOT_INODE)] == [
        ".rhvfs", "clusters", "datacenters", "hosts", "storagedomains", "tags", "templates", "vms",
    ]  # fmt: skip
    with pytest.raises(errors.NotFound):
        await vfs.lookup(ROOT_INODE, "restore")
    with pytest.raises(errors.NotFound):
        await vfs.resolve("/restore")
    assert not vfs.access(ROOT_INODE, os.W_OK)
    with pytest.raises(errors.ReadOnlyFilesystem):
        await vfs.mkdir(ROOT_INODE, "restore")
    assert [n.name for n in await vfs.listdir((await vfs.resolve("/vms/myvm")).ino)] == [
        "@rhv",
        "disks",
        "vm.json",
    ]
