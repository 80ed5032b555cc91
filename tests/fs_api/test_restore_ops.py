"""restore/ through rhvfs.fs.Operations (no kernel): the calls cp, tar and rsync make."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pyfuse3
import pytest
import trio

from rhvfs.engine.types import Vm
from tests.support.backup_sets import VM_ID, SetFiles, make_set
from tests.support.data import sha
from tests.support.fake_engine import FakeEngine
from tests.support.fs_ops import (
    CTX,
    lookup,
    make_ops,
    put_file,
    read_status,
    wait_status,
)


async def test_rsync_style_restore_through_operations(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    engine = FakeEngine()
    ops, manager = await make_ops(nursery, tmp_path, engine)
    restore = await lookup(ops, "/restore")
    assert await ops.access(restore.st_ino, os.W_OK, CTX)
    d = await ops.mkdir(restore.st_ino, b"myvm", 0o755, CTX)
    assert d.st_mode & 0o777 == 0o755
    s: SetFiles = make_set()
    assert (await read_status(ops, d.st_ino))["phase"] == "receiving"
    for name, data in s.files.items():
        await put_file(ops, d.st_ino, name, data, temp=f".{name}.a1B2c3")
    status = await wait_status(ops, manager, "myvm", d.st_ino)
    assert status["phase"] == "done", status["error"]
    assert status["vm_id"] == VM_ID
    for disk in s.manifest["disks"]:
        assert sha(engine.disk_bytes(disk["id"])) == sha(s.files[disk["file"]])
    listing = await ops.opendir(d.st_ino, CTX)
    names = sorted(n.name for n in ops.vfs.readdir(listing))
    assert names == sorted([".status", *s.files])
    img = await ops.lookup(d.st_ino, s.image_names()[0].encode(), CTX)
    assert img.st_size == s.manifest["disks"][0]["size"]
    assert await ops.getxattr(img.st_ino, b"user.backup", CTX) == b"yes"
    rootlist = await ops.opendir(restore.st_ino, CTX)
    assert [n.name for n in ops.vfs.readdir(rootlist)] == ["myvm"]


@pytest.mark.allow_log("rhvfs.fs", "WARNING", match="already exists")
async def test_name_clash_fails_close_with_eexist(nursery: trio.Nursery, tmp_path: Path) -> None:
    engine = FakeEngine()
    engine.vms["x"] = Vm(id="x", name="myvm", status="down")
    ops, manager = await make_ops(nursery, tmp_path, engine)
    restore = await lookup(ops, "/restore")
    d = await ops.mkdir(restore.st_ino, b"myvm", 0o755, CTX)
    s = make_set()
    await put_file(ops, d.st_ino, "vm.ovf", s.files["vm.ovf"])
    with pytest.raises(pyfuse3.FUSEError) as e:
        await put_file(ops, d.st_ino, "manifest.json", s.files["manifest.json"])
    assert e.value.errno == errno.EEXIST
    status = await wait_status(ops, manager, "myvm", d.st_ino)
    assert status["phase"] == "failed" and "already exists" in status["error"]
    assert engine.disks == {}
    await ops.rmdir(restore.st_ino, b"myvm", CTX)
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.lookup(restore.st_ino, b"myvm", CTX)
    assert e.value.errno == errno.ENOENT


async def test_outside_restore_stays_read_only(nursery: trio.Nursery, tmp_path: Path) -> None:
    ops, _ = await make_ops(nursery, tmp_path, FakeEngine())
    vms = await lookup(ops, "/vms")
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.mkdir(vms.st_ino, b"x", 0o755, CTX)
    assert e.value.errno == errno.EROFS
    restore = await lookup(ops, "/restore")
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.create(restore.st_ino, b"file", 0o644, os.O_WRONLY | os.O_CREAT, CTX)
    assert e.value.errno == errno.EPERM


async def test_bacula_where_nested_path(nursery: trio.Nursery, tmp_path: Path) -> None:
    """A restore job with where=restore/<name> recreates the original path below it."""
    engine = FakeEngine()
    ops, manager = await make_ops(nursery, tmp_path, engine)
    restore = await lookup(ops, "/restore")
    d = await ops.mkdir(restore.st_ino, b"bacula", 0o755, CTX)
    ino = d.st_ino
    for part in (b"mnt", b"rhvfs", b"vms", b"myvm", b"@rhv"):
        ino = (await ops.mkdir(ino, part, 0o755, CTX)).st_ino
    s = make_set()
    for name, data in s.files.items():
        await put_file(ops, ino, name, data)
    status = await wait_status(ops, manager, "bacula", d.st_ino)
    assert status["phase"] == "done", status["error"]
    vm = engine.vms[status["vm_id"]]
    assert vm.name == "bacula"
    for disk in s.manifest["disks"]:
        assert sha(engine.disk_bytes(disk["id"])) == sha(s.files[disk["file"]])
