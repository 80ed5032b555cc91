"""Access control as the VFS shows it (the kernel enforces it): owners, modes, status.json.

``-o uid=,gid=,umask=,restore_umask=`` become ``Vfs(uid=, gid=, umask=,
restore_umask=)``: every node is owned by uid/gid; the read-only tree is 0555/0444
less the umask (a class reads everything or nothing), ``restore/`` shows its own
modes less ``restore_umask`` (default ``umask | 022``: only the owner starts
restores). Reading ``.rhvfs/status.json`` or walking the visible tree starts no
engine work; reading an image does.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from rhvfs.config import Config
from rhvfs.fs import Operations, errno_for
from rhvfs.sessions.core._model import Owner
from rhvfs.sessions.restore import RestoreManager
from rhvfs.sessions.restore._staging import StagingArea
from rhvfs.vfs.nodes import Kind
from rhvfs.vfs.tree import Vfs
from tests.support.data import MiB
from tests.support.fake_backups import FakeBackups
from tests.support.fake_dataplane import upload_opener
from tests.support.fake_engine import FakeEngine, inventory_engine
from tests.support.fs_ops import CTX, lookup, put_file
from tests.support.incremental_rig import Rig, new_vm

#: Engine calls that create, change or remove something (the FakeEngine records every call).
_ENGINE_WORK = ("create_", "start_", "finalize_", "remove_", "cancel_", "add_")


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def make_ops(nursery: trio.Nursery, tmp_path: Path, **access: Any) -> Operations:
    engine = FakeEngine()
    cfg = Config(engine_url="http://fake.invalid", username="u", password="p")
    manager = RestoreManager(
        engine,
        cfg,
        errno_for=errno_for,
        opener=upload_opener(engine),
        staging=StagingArea(tmp_path, limit_bytes=1 << 30),
        close_grace_s=0.05,
    )
    await nursery.start(manager.run)
    vfs = Vfs(inventory_engine(), FakeBackups(), listing_ttl_s=5.0, restores=manager, **access)
    return Operations(vfs)


async def modes(ops: Operations, paths: list[str]) -> dict[str, tuple[int, int, int]]:
    """path -> (permission bits, uid, gid) as ``stat`` shows them."""
    out = {}
    for path in paths:
        attr = await lookup(ops, path) if path != "/" else await ops.getattr(1, CTX)
        out[path] = (stat.S_IMODE(attr.st_mode), attr.st_uid, attr.st_gid)
    return out


TREE = [
    "/",
    "/vms",
    "/vms/myvm",
    "/vms/myvm/@rhv",
    "/vms/myvm/@rhv/manifest.json",
    "/vms/myvm/@rhv/disk--vm-1-d0.raw",
    "/vms/myvm/disks/data.raw",
    "/vms/myvm/vm.json",
    "/templates/mytemplate/@rhv/manifest.json",
    "/.rhvfs",
    "/.rhvfs/status.json",
    "/tags/bkup/myvm",
]
RESTORE = ["/restore", "/restore/r1", "/restore/r1/.status", "/restore/r1/sub", "/restore/r1/f"]


async def make_restore(ops: Operations) -> None:
    root = await lookup(ops, "/restore")
    r1 = await ops.mkdir(root.st_ino, b"r1", 0o777, CTX)
    await ops.mkdir(r1.st_ino, b"sub", 0o777, CTX)
    await put_file(ops, r1.st_ino, "f", b"x" * 512)  # chmods it 0644, as tar and cp do


Shown = dict[str, tuple[int, int, int]]


def expected(
    tree: tuple[int, int, int], restore: tuple[int, int, int, int], owner: tuple[int, int]
) -> Shown:
    """What ``modes`` gives for TREE + RESTORE: ``tree`` is (dir, file, link) bits,
    ``restore`` (dir, .status, written file, restore/ itself)."""
    directory, file, link = tree
    rdir, rstatus, rfile, rtop = restore
    want = {p: (directory, *owner) for p in TREE}
    for p in TREE:
        if p.endswith((".json", ".raw")):
            want[p] = (file, *owner)
    want["/tags/bkup/myvm"] = (link, *owner)
    want.update(
        {
            "/restore": (rtop, *owner),
            "/restore/r1": (rdir, *owner),
            "/restore/r1/.status": (rstatus, *owner),
            "/restore/r1/sub": (rdir, *owner),
            "/restore/r1/f": (rfile, *owner),
        }
    )
    return want


async def test_default_modes_are_unchanged(nursery: trio.Nursery, tmp_path: Path) -> None:
    ops = await make_ops(nursery, tmp_path)
    await make_restore(ops)
    me = (os.getuid(), os.getgid())
    assert await modes(ops, TREE + RESTORE) == expected(
        (0o555, 0o444, 0o777), (0o755, 0o444, 0o644, 0o755), me
    )


async def test_group_readable_mount_keeps_restore_to_the_owner(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """``-o allow_other,uid=7,gid=4242,umask=0027``: sets and disks 0440 in 0550 directories,
    status.json too; restore/ 0750: the group may look, only the owner may write."""
    ops = await make_ops(nursery, tmp_path, uid=7, gid=4242, umask=0o027)
    await make_restore(ops)
    assert await modes(ops, TREE + RESTORE) == expected(
        (0o550, 0o440, 0o777), (0o750, 0o440, 0o640, 0o750), (7, 4242)
    )


async def test_restore_umask_lets_the_group_write_when_asked(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    ops = await make_ops(nursery, tmp_path, gid=4242, umask=0o027, restore_umask=0o007)
    await make_restore(ops)
    # f was chmodded 0644 by its writer: a mode set explicitly is kept (less the mask)
    assert await modes(ops, TREE + RESTORE) == expected(
        (0o550, 0o440, 0o777), (0o770, 0o440, 0o640, 0o770), (os.getuid(), 4242)
    )
    r1 = await lookup(ops, "/restore/r1")
    info, attr = await ops.create(r1.st_ino, b"g", 0o644, os.O_WRONLY | os.O_CREAT, CTX)
    await ops.release(info.fh)
    assert stat.S_IMODE(attr.st_mode) == 0o660  # not chmodded: group-writable, as asked


async def test_a_mode_set_in_restore_is_still_masked(nursery: trio.Nursery, tmp_path: Path) -> None:
    """A tool restoring a world-writable mode does not open restore/ to others."""
    ops = await make_ops(nursery, tmp_path, gid=4242, umask=0o027)
    await make_restore(ops)
    f = await lookup(ops, "/restore/r1/f")
    vfs = ops.vfs
    node = await vfs.setattr(f.st_ino, mode=stat.S_IFREG | 0o666)
    assert stat.S_IMODE(vfs.attributes(node).mode) == 0o640
    assert node.kind is Kind.FILE and node.perm == 0o666  # remembered as set


def _engine_work(engine: FakeEngine) -> list[str]:
    return [c for c in engine.calls if c.startswith(_ENGINE_WORK)]


async def test_status_json_and_the_visible_tree_start_no_engine_work(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Whoever may read status.json (or walk the tree as ``find`` does) starts nothing on
    the engine: only reading an image does, which needs the same permission (same umask)."""
    from rhvfs.sessions import BackupManager
    from rhvfs.sessions._router import SetRouter

    r = Rig(tmp_path)
    full = BackupManager(
        r.engine,
        r.config,
        journal=r.journal,
        imageio_opener=r.plane.opener,
        reader_factory=r.plane.reader_factory,
        gc_on_start=False,
    )
    router = SetRouter(full, r.manager, config=r.config, full_sets_via_backup=True)
    new_vm(r.engine, disks=[("root", 2 * MiB)])
    r.engine.add_vm("plain", disks=[("d", MiB)], seed=3)
    vfs = Vfs(
        r.engine,
        router,
        listing_ttl_s=5.0,
        owner_factory=Owner,
        status_info=lambda: {"mountpoint": "/x"},
        umask=0o027,
    )

    async def walk(path: str) -> list[str]:
        """``path`` and everything listed below it, as ``find`` sees it."""
        node = await vfs.resolve(path, follow_last=False)
        found = [path]
        if node.kind is Kind.DIR:
            for child in await vfs.listdir(node.ino):
                found += await walk(f"{path.rstrip('/')}/{child.name}")
        return found

    async def read(path: str) -> bytes:
        fh = await vfs.open((await vfs.resolve(path)).ino)
        out = bytearray()
        try:
            while part := await vfs.read(fh, len(out), 1 * MiB):
                out += part
        finally:
            await vfs.release(fh)
        return bytes(out)

    async with trio.open_nursery() as nursery:
        await nursery.start(full.run)
        await nursery.start(r.manager.run)
        for _ in range(3):
            assert b'"sessions"' in await read("/.rhvfs/status.json")
        seen = await walk("/")
        assert "/vms/web01/@rhv/manifest.json" in seen and "/vms/plain/vm.json" in seen
        for path in seen:
            node = await vfs.resolve(path, follow_last=False)
            await vfs.getattr(node.ino)
            if node.kind is Kind.FILE and node.data is None:
                await read(path)  # generated files: vm.json, status.json...
        await read("/vms/web01/@rhv/manifest.json")  # configuration creates nothing either
        assert _engine_work(r.engine) == []
        assert not r.engine.backups and r.engine.open_transfers() == []

        # the check sees engine work when there is some: an image read starts a backup
        image = next(p for p in seen if p.startswith("/vms/plain/@rhv/") and p.endswith(".raw"))
        assert len(await read(image)) == MiB
        assert _engine_work(r.engine) != []
        nursery.cancel_scope.cancel()
