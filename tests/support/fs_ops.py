"""The restore tree through ``rhvfs.fs.Operations`` (no kernel), as cp, tar and rsync call it.

``make_ops`` builds Operations over the browsing inventory with a restore tree
whose ``RestoreManager`` runs on the given fake engine; ``put_file`` creates,
writes, chmods, touches, tags and renames one file the way a copy tool does.
Must not: assert anything about a restore (the tests do).
"""

from __future__ import annotations

import json
import os
import types
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from rhvfs.config import Config
from rhvfs.fs import Operations, errno_for
from rhvfs.sessions.core import EngineLimits, Journal
from rhvfs.sessions.restore import RestoreManager
from rhvfs.sessions.restore._staging import StagingArea
from rhvfs.vfs.names import ROOT_INODE
from rhvfs.vfs.tree import Vfs
from tests.support.fake_backups import FakeBackups
from tests.support.fake_dataplane import upload_opener
from tests.support.fake_engine import FakeEngine, inventory_engine

CTX: Any = None
CHUNK = 128 * 1024


async def make_ops(
    nursery: trio.Nursery,
    tmp_path: Path,
    engine: FakeEngine,
    *,
    limits: EngineLimits | None = None,
    **settings: float,
) -> tuple[Operations, RestoreManager]:
    """``settings``: more ``RestoreManager`` timer settings (e.g. ``outcome_timeout_s``);
    ``limits``: the mount's (default: from the default config)."""
    cfg = Config(engine_url="http://fake.invalid", username="u", password="p")
    manager = RestoreManager(
        engine,
        cfg,
        errno_for=errno_for,
        opener=upload_opener(engine),
        staging=StagingArea(tmp_path, limit_bytes=1 << 30),
        close_grace_s=0.05,
        journal=Journal(tmp_path / "state" / "journal.json"),
        limits=limits,
        **settings,  # type: ignore[arg-type]
    )
    await nursery.start(manager.run)
    vfs = Vfs(inventory_engine(), FakeBackups(), listing_ttl_s=5.0, restores=manager)
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
