"""Options files in the commercial RHV plugin's syntax, restored into the simulator.

Each test writes an options file as the plugin documents it (``key=value`` lines,
positional ``nics``, ``vm_name``/``disk_interface`` special values, the
``remove_base_vm`` default; docs/restore-options.md has the examples), restores a
two-disk, two-NIC set, and checks the result on the engine: names, MACs, disk
interfaces and the sha256 of every restored disk against the set's images.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from rhvfs.engine import Engine
from rhvfs.sessions.restore import RestoreManager
from tests.support.backup_sets import SetFiles, sim_set
from tests.support.data import sha
from tests.support.restore_rig import Harness, sim_restore_manager

MAC1 = "56:6f:7a:00:00:01"
MAC2 = "56:6f:7a:00:00:02"


@pytest.fixture
async def rig(sim: Any, tmp_path: Path) -> AsyncIterator[tuple[Engine, Harness]]:
    async with sim_restore_manager(sim, tmp_path) as (engine, manager):
        yield engine, Harness(engine, manager)  # type: ignore[arg-type]


async def restore(h: Harness, directory: str, s: SetFiles, options: str) -> dict[str, Any]:
    manager: RestoreManager = h.manager
    session = manager.create(directory)
    await h.write_file(session, "rhvfs-restore.conf", options.encode())
    order = ["vm.ovf", "manifest.json", *(n for n in s.files if n.endswith(".raw"))]
    await h.copy(session, s, order)
    with trio.fail_after(120):
        await session.wait_finished()
    return session.status()


async def remove(engine: Engine, vm_names: list[str], template_names: list[str]) -> None:
    for vm in await engine.list_vms():
        if vm.name in vm_names:
            await engine.remove_vm(vm.id)
    for t in await engine.list_templates():
        if t.name in template_names:
            await engine.remove_template(t.id)


async def test_positional_nics_original_name_and_interfaces(
    sim: Any, rig: tuple[Engine, Harness]
) -> None:
    engine, h = rig
    name = f"plug-{uuid.uuid4().hex[:6]}"
    s = sim_set(name, macs=(MAC1, MAC2))
    options = (
        "# pasted from the plugin's restore options\n"
        "vm_name=original\n"
        "nics=C0:FF:EE:00:00:01,original\n"
        "disk_interface=original\n"
    )
    try:
        status = await restore(h, f"{name}-dir", s, options)
        assert status["phase"] == "done", status["error"]
        vm = await engine.get_vm(status["vm_id"])
        assert vm.name == name  # the set's VM name, not the directory's
        nics = {n.name: n.mac for n in await engine.vm_nics(vm.id)}
        assert nics == {"nic1": "c0:ff:ee:00:00:01", "nic2": MAC2}
        atts = {a.disk.alias: a for a in await engine.disk_attachments(vm.id)}
        assert {alias: a.interface for alias, a in atts.items()} == {
            "disk0": "virtio_scsi",
            "disk1": "sata",
        }
        for d in s.manifest["disks"]:
            got = await trio.to_thread.run_sync(sim.admin.disk_sha256, atts[d["alias"]].disk.id)
            assert got == sha(s.files[d["file"]])
    finally:
        await remove(engine, [name], [])


async def test_template_name_removes_the_base_vm_by_default(
    sim: Any, rig: tuple[Engine, Harness]
) -> None:
    engine, h = rig
    name = f"plugt-{uuid.uuid4().hex[:6]}"
    s = sim_set(name, macs=(MAC1, MAC2))
    options = f"template_name={name}-tpl\nnics=new,new\ndisk_interface=original,disk1:virtio\n"
    try:
        status = await restore(h, name, s, options)
        assert status["phase"] == "done", status["error"]
        assert await engine.find_vm(name) is None  # remove_base_vm defaults to yes
        tpl = next(t for t in await engine.list_templates() if t.name == f"{name}-tpl")
        atts = {a.disk.alias: a for a in await engine.template_disk_attachments(tpl.id)}
        assert sorted(atts) == ["disk0", "disk1"]
        assert atts["disk1"].interface == "virtio"
        for d in s.manifest["disks"]:
            got = await trio.to_thread.run_sync(sim.admin.disk_sha256, atts[d["alias"]].disk.id)
            assert got == sha(s.files[d["file"]])
    finally:
        await remove(engine, [name], [f"{name}-tpl"])
