"""restore/ through rhvfs.fs.Operations (no kernel): the calls cp, tar and rsync make."""

from __future__ import annotations

import errno
import json
import os
import sys
import types
from pathlib import Path
from typing import Any

import pyfuse3
import pytest
import trio
from vfs_fakes import FakeBackups
from vfs_fakes import FakeEngine as InventoryEngine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "unit"))

from test_restore_fakes import VM_ID, FakeEngine, SetFiles, fake_opener, make_set, sha  # noqa: E402

from rhvfs.config import Config  # noqa: E402
from rhvfs.engine.types import Vm  # noqa: E402
from rhvfs.fs import Operations, errno_for  # noqa: E402
from rhvfs.sessions.restore import RestoreManager  # noqa: E402
from rhvfs.sessions.restore._staging import StagingArea  # noqa: E402
from rhvfs.vfs.names import ROOT_INODE  # noqa: E402
from rhvfs.vfs.tree import Vfs  # noqa: E402

CTX: Any = None
CHUNK = 128 * 1024


async def make_ops(
    nursery: trio.Nursery, tmp_path: Path, engine: FakeEngine
) -> tuple[Operations, RestoreManager]:
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
    vfs = Vfs(InventoryEngine(), FakeBackups(), listing_ttl_s=5.0, restores=manager)
    return Operations(vfs), manager


async def lookup(ops: Operations, path: str) -> pyfuse3.EntryAttributes:
    attr = await ops.getattr(ROOT_INODE, CTX)
    for part in path.strip("/").split("/"):
        attr = await ops.lookup(attr.st_ino, part.encode(), CTX)
    return attr


def fields(**kw: bool) -> Any:
    names = ("update_size", "update_mode", "update_uid", "update_gid", "update_mtime")
    return types.SimpleNamespace(**{n: kw.get(n, False) for n in names})


async def put_file(
    ops: Operations, dir_ino: int, name: str, data: bytes, *, temp: str | None = None
) -> None:
    info, attr = await ops.create(
        dir_ino, (temp or name).encode(), 0o600, os.O_WRONLY | os.O_CREAT | os.O_EXCL, CTX
    )
    for off in range(0, len(data), CHUNK):
        assert await ops.write(info.fh, off, data[off : off + CHUNK]) == len(
            data[off : off + CHUNK]
        )
    ea = pyfuse3.EntryAttributes()
    ea.st_mode = 0o100644
    ea.st_mtime_ns = 1_600_000_000 * 10**9
    await ops.setattr(attr.st_ino, ea, fields(update_mode=True, update_mtime=True), info.fh, CTX)
    await ops.setxattr(attr.st_ino, b"user.backup", b"yes", CTX)
    await ops.flush(info.fh)
    await ops.release(info.fh)
    if temp:
        await ops.rename(dir_ino, temp.encode(), dir_ino, name.encode(), 0, CTX)


async def read_status(ops: Operations, dir_ino: int) -> dict[str, Any]:
    attr = await ops.lookup(dir_ino, b".status", CTX)
    info = await ops.open(attr.st_ino, os.O_RDONLY, CTX)
    assert info.direct_io
    data = await ops.read(info.fh, 0, 1 << 20)
    await ops.release(info.fh)
    return json.loads(data)


async def wait_status(
    ops: Operations, manager: RestoreManager, name: str, dir_ino: int
) -> dict[str, Any]:
    with trio.fail_after(10):
        await manager.get(name).wait_finished()
    return await read_status(ops, dir_ino)


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
        assert sha(engine.content[disk["id"]]) == sha(s.files[disk["file"]])
    listing = await ops.opendir(d.st_ino, CTX)
    names = sorted(n.name for n in ops.vfs.readdir(listing))
    assert names == sorted([".status", *s.files])
    img = await ops.lookup(d.st_ino, s.image_names()[0].encode(), CTX)
    assert img.st_size == s.manifest["disks"][0]["size"]
    assert await ops.getxattr(img.st_ino, b"user.backup", CTX) == b"yes"
    rootlist = await ops.opendir(restore.st_ino, CTX)
    assert [n.name for n in ops.vfs.readdir(rootlist)] == ["myvm"]


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
        assert sha(engine.content[disk["id"]]) == sha(s.files[disk["file"]])
