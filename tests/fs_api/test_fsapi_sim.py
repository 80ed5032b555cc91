"""Operations called directly (no kernel) over the real backend: engine + BackupManager + simulator."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pyfuse3
import pytest
import trio

from rhvfs.config import load_config
from rhvfs.fs import Operations
from rhvfs.mount import MountOptions, open_backend
from rhvfs.vfs.names import ROOT_INODE
from rhvfs.vfs.tree import Vfs

pytestmark = pytest.mark.slow
CTX: Any = None
MiB = 1024 * 1024


async def walk(ops: Operations, path: str) -> pyfuse3.EntryAttributes:
    attr = await ops.getattr(ROOT_INODE, CTX)
    for part in path.strip("/").split("/"):
        attr = await ops.lookup(attr.st_ino, part.encode(), CTX)
    return attr


async def test_read_a_down_vm_image_through_operations(sim: Any, tmp_path: Path) -> None:
    config = load_config(
        section=sim.section, config_file=sim.conf_file, overrides={"grace_period": 0.0}
    )
    options = MountOptions(mountpoint="", state_dir=str(tmp_path))
    async with open_backend(config, options, gc_on_start=False) as backend:
        vfs = Vfs(
            backend.engine,
            backend.backups,
            listing_ttl_s=config.listing_ttl,
            owner_factory=backend.owner_factory,
        )
        ops = Operations(vfs)
        names = [n.name for n in await vfs.listdir((await walk(ops, "/vms/myvm0/@rhv")).st_ino)]
        assert names[:3] == ["vm.ovf", "vm.xml", "manifest.json"]
        image = names[3]
        attr = await walk(ops, f"/vms/myvm0/@rhv/{image}")
        assert attr.st_size == 256 * MiB and 0 < attr.st_blocks < attr.st_size // 512
        info = await ops.open(attr.st_ino, os.O_RDONLY, CTX)
        manifest_info = await ops.open(
            (await walk(ops, "/vms/myvm0/@rhv/manifest.json")).st_ino, os.O_RDONLY, CTX
        )
        manifest = json.loads(await ops.read(manifest_info.fh, 0, 1 << 20))
        disk = next(d for d in manifest["disks"] if d["file"] == image)
        h = hashlib.sha256()
        offset = 0
        while chunk := await ops.read(info.fh, offset, 128 * 1024):  # as the kernel sends them
            h.update(chunk)
            offset += len(chunk)
        await ops.release(info.fh)
        await ops.release(manifest_info.fh)
        assert offset == attr.st_size
        want = await trio.to_thread.run_sync(sim.admin.disk_sha256, disk["id"])
        assert h.hexdigest() == want
        again = await ops.getattr(attr.st_ino, CTX)
        assert (again.st_size, again.st_mtime_ns, again.st_ctime_ns) == (
            attr.st_size,
            attr.st_mtime_ns,
            attr.st_ctime_ns,
        )
