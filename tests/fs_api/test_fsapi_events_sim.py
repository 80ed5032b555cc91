"""Engine events of backups and restores, through Operations over the real backend and
the simulator: a backup (a read of ``@rhv/``) and a restore post their start, end and
failure to the engine (origin ``rhvfs``), and the simulator lists them."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
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
from tests.support.backup_sets import sim_set
from tests.support.fs_ops import put_file, read_status
from tests.support.sim import remove_vm, vm_and_first_disk

pytestmark = pytest.mark.slow
CTX: Any = None
API = "/ovirt-engine/api"
MiB = 1024 * 1024


@asynccontextmanager
async def mounted(
    sim: Any, tmp_path: Path, **overrides: object
) -> AsyncIterator[tuple[Operations, Any]]:
    """Operations over the real backend, and its restore manager."""
    config = load_config(
        section=sim.section,
        config_file=sim.conf_file,
        overrides={"grace_period": 0.0, "outcome_timeout": 0.0, **overrides},
    )
    options = MountOptions(mountpoint="", state_dir=str(tmp_path))
    async with open_backend(config, options, gc_on_start=False) as backend:
        vfs = Vfs(
            backend.engine,
            backend.backups,
            listing_ttl_s=config.listing_ttl,
            owner_factory=backend.owner_factory,
            restores=backend.restores,
        )
        try:
            yield Operations(vfs), backend.restores
        finally:
            await trio.to_thread.run_sync(sim.admin.clear_faults)


async def walk(ops: Operations, path: str) -> pyfuse3.EntryAttributes:
    attr = await ops.getattr(ROOT_INODE, CTX)
    for part in path.strip("/").split("/"):
        attr = await ops.lookup(attr.st_ino, part.encode(), CTX)
    return attr


async def read_whole(ops: Operations, path: str) -> str:
    """sha256 of the file, read to its end in 8 MiB requests."""
    attr = await walk(ops, path)
    info = await ops.open(attr.st_ino, os.O_RDONLY, CTX)
    h, offset = hashlib.sha256(), 0
    try:
        while chunk := await ops.read(info.fh, offset, 8 * MiB):
            h.update(chunk)
            offset += len(chunk)
    finally:
        await ops.release(info.fh)
    assert offset == attr.st_size
    return h.hexdigest()


def rhvfs_events(sim: Any, words: str) -> list[tuple[str, str, str | None]]:
    """(description, severity, vm id) of the simulator's rhvfs events naming ``words``,
    oldest first, read with the SDK as any engine client would."""
    conn = sim.sdk_connection()
    try:
        found = conn.system_service().events_service().list(search=f"origin=rhvfs {words}")
        return [
            (e.description, e.severity.value, e.vm.id if e.vm is not None else None)
            for e in reversed(found)
        ]
    finally:
        conn.close()


async def wait_events(sim: Any, words: str, count: int) -> list[tuple[str, str, str | None]]:
    with trio.fail_after(30):
        while True:
            found = await trio.to_thread.run_sync(rhvfs_events, sim, words)
            if len(found) >= count:
                return found
            await trio.sleep(0.1)


@pytest.mark.allow_log("rhvfs.sessions.full._session", "WARNING", match="injected fault")
@pytest.mark.allow_log("rhvfs.fs", "WARNING", match="injected fault")
async def test_a_backup_posts_its_start_and_end_and_a_failed_one_an_error(
    sim: Any, tmp_path: Path
) -> None:
    vm_id, _ = await trio.to_thread.run_sync(vm_and_first_disk, sim, "myvm0")
    async with mounted(sim, tmp_path) as (ops, _):
        names = [n.name for n in await ops.vfs.listdir((await walk(ops, "/vms/myvm0/@rhv")).st_ino)]
        for name in names:
            await read_whole(ops, f"/vms/myvm0/@rhv/{name}")
        done = await wait_events(sim, "backup of VM myvm0 finished", 1)
        read_id = done[-1][0].rsplit("(read ", 1)[1].rstrip(")")
        events = await wait_events(sim, read_id, 2)
        assert [(d.split(" (")[0], sev, vm) for d, sev, vm in events] == [
            ("rhvfs: backup of VM myvm0 started", "normal", vm_id),
            ("rhvfs: backup of VM myvm0 finished: every file was read", "normal", vm_id),
        ]

        await trio.to_thread.run_sync(
            lambda: sim.admin.add_fault(
                "engine-error", method="POST", path=f"{API}/vms/{vm_id}/snapshots", status=400
            )
        )
        image = next(n for n in names if n.endswith(".raw"))
        with pytest.raises(pyfuse3.FUSEError):
            await read_whole(ops, f"/vms/myvm0/@rhv/{image}")
        failed = await wait_events(sim, "backup of VM myvm0 failed", 1)
        assert failed[-1][1:] == ("error", vm_id)
        assert "injected fault" in failed[-1][0]


@pytest.mark.allow_log("rhvfs", "WARNING", match="injected fault")
async def test_a_restore_posts_its_start_and_end_and_a_failed_one_an_error(
    sim: Any, tmp_path: Path
) -> None:
    good, bad = f"evr-{uuid.uuid4().hex[:6]}", f"evf-{uuid.uuid4().hex[:6]}"
    try:
        async with mounted(sim, tmp_path) as (ops, restores):
            restore = await walk(ops, "/restore")
            vm_ids: dict[str, str | None] = {}
            for name in (good, bad):
                if name == bad:
                    await trio.to_thread.run_sync(
                        lambda: sim.admin.add_fault(
                            "engine-error", method="POST", path=f"{API}/vms", status=400, times=-1
                        )
                    )
                d = await ops.mkdir(restore.st_ino, name.encode(), 0o755, CTX)
                s = sim_set(name)
                for file_name in ["vm.ovf", "manifest.json", *s.image_names()]:
                    await put_file(ops, d.st_ino, file_name, s.files[file_name])
                with trio.fail_after(120):
                    await restores.get(name).wait_finished()
                status = await read_status(ops, d.st_ino)
                assert status["phase"] == ("done" if name == good else "failed"), status
                vm_ids[name] = status["vm_id"]
        ok = await wait_events(sim, f"restore of {good}", 2)
        assert [(d.split(" (")[0], sev) for d, sev, _ in ok] == [
            (f"rhvfs: restore of {good} from the set of vm {good} started", "normal"),
            (f"rhvfs: restore of {good} from the set of vm {good} finished: VM {good}", "normal"),
        ]
        assert ok[-1][2] == vm_ids[good] and vm_ids[good] is not None  # linked to the new VM
        failed = await wait_events(sim, f"restore of {bad}", 2)
        assert [sev for _, sev, _ in failed] == ["normal", "error"]
        assert "failed: " in failed[-1][0] and "injected fault" in failed[-1][0]
    finally:
        for name in (good, bad):
            await trio.to_thread.run_sync(remove_vm, sim, name)


def checkpoints(sim: Any, vm_id: str) -> set[str]:
    conn = sim.sdk_connection()
    try:
        service = conn.system_service().vms_service().vm_service(vm_id).checkpoints_service()
        return {c.id for c in service.list()}
    finally:
        conn.close()


def remove_checkpoints(sim: Any, vm_id: str, ids: set[str]) -> None:
    conn = sim.sdk_connection()
    try:
        service = conn.system_service().vms_service().vm_service(vm_id).checkpoints_service()
        for cp in ids:
            service.checkpoint_service(cp).remove()
    finally:
        conn.close()


async def test_an_incremental_set_posts_its_start_and_end(sim: Any, tmp_path: Path) -> None:
    vm_id, _ = await trio.to_thread.run_sync(vm_and_first_disk, sim, "myvm")
    before = await trio.to_thread.run_sync(checkpoints, sim, vm_id)
    try:
        await _read_an_incremental_set(sim, tmp_path, vm_id)
    finally:  # leave the shared simulator's VM without the checkpoint this set made
        new = await trio.to_thread.run_sync(checkpoints, sim, vm_id) - before
        await trio.to_thread.run_sync(remove_checkpoints, sim, vm_id, new)


async def _read_an_incremental_set(sim: Any, tmp_path: Path, vm_id: str) -> None:
    async with mounted(sim, tmp_path) as (ops, _):
        listing = await ops.vfs.listdir((await walk(ops, "/vms/myvm/@rhv-incremental")).st_ino)
        for node in listing:
            await read_whole(ops, f"/vms/myvm/@rhv-incremental/{node.name}")
        started = await wait_events(sim, "incremental backup of VM myvm started", 1)
        set_id = started[-1][0].rsplit("(set ", 1)[1].rstrip(")")
        assert set_id in listing[0].name
        events = await wait_events(sim, f"set {set_id}", 2)
        assert [(d, sev, vm) for d, sev, vm in events] == [
            (f"rhvfs: incremental backup of VM myvm started (set {set_id})", "normal", vm_id),
            (
                f"rhvfs: backup of VM myvm finished: every file was read (set {set_id})",
                "normal",
                vm_id,
            ),
        ]
