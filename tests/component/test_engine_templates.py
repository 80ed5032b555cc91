"""``Engine.create_template`` / ``remove_template`` against the simulator.

Each test makes its own VM (and template) on the shared simulator and removes them.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from rhvfs.config import Config, load_config
from rhvfs.engine import Engine, open_engine
from rhvfs.errors import Conflict, NotFound
from rhvfs.retry import RetryPolicy

MiB = 1024**2
FAST_POLL = RetryPolicy.for_polling(interval_s=0.05, max_interval_s=0.25, timeout_s=120.0)


def _config(sim: Any, **overrides: Any) -> Config:
    return load_config(section=sim.section, config_file=sim.conf_file, overrides=overrides or None)


@pytest.fixture
async def engine(sim: Any) -> AsyncIterator[Engine]:
    async with open_engine(_config(sim, system_interval=0.05), poll=FAST_POLL) as eng:
        try:
            yield eng
        finally:
            await trio.to_thread.run_sync(sim.admin.clear_faults)


async def _vm_with_disk(sim: Any, engine: Engine, name: str) -> tuple[str, str, str]:
    """A down VM with one 8 MiB disk holding known bytes: (vm id, disk id, its sha256)."""
    vm = await engine.create_vm(name=name, cluster="Default")
    disk = await engine.create_disk(
        alias=f"{name}_Disk1",
        provisioned_size=8 * MiB,
        format="cow",
        sparse=True,
        storage_domain="mydata",
    )
    await engine.attach_disk(vm.id, disk.id, interface="virtio", bootable=True)
    await engine.add_nic(vm.id, name="nic1", interface="virtio", mac=None, vnic_profile_id=None)
    data = uuid.uuid4().bytes * 4096
    await trio.to_thread.run_sync(
        lambda: sim.admin.guest_write(disk=disk.id, offset=2 * MiB, data=data)
    )
    digest = await trio.to_thread.run_sync(sim.admin.disk_sha256, disk.id)
    return vm.id, disk.id, digest


async def test_create_template_copies_the_vm_disks_and_remove_template_drops_them(
    sim: Any, engine: Engine
) -> None:
    vm_id, disk_id, digest = await _vm_with_disk(sim, engine, "etpl-src1")
    try:
        tpl = await engine.create_template(vm_id, name="etpl1", description="from a vm")
        assert (tpl.name, tpl.status, tpl.description) == ("etpl1", "ok", "from a vm")
        atts = await engine.template_disk_attachments(tpl.id)
        assert len(atts) == 1 and atts[0].disk.id != disk_id
        copy = await trio.to_thread.run_sync(sim.admin.disk_sha256, atts[0].disk.id)
        assert copy == digest
        assert [n.name for n in await engine.template_nics(tpl.id)] == ["nic1"]
        assert (await engine.get_vm(vm_id)).status == "down"
        # A second call with the same name is refused (the name is taken) ...
        with pytest.raises(Conflict):
            await engine.create_template(vm_id, name="etpl1")
        assert [x.name for x in await engine.list_templates()].count("etpl1") == 1
        # ... and removal takes the copy, not the VM's disk.
        await engine.remove_template(tpl.id)
        with pytest.raises(NotFound):
            await engine.get_template(tpl.id)
        with pytest.raises(NotFound):
            await engine.get_disk(atts[0].disk.id)
        assert await trio.to_thread.run_sync(sim.admin.disk_sha256, disk_id) == digest
        await engine.remove_template(tpl.id)  # absent already is fine
    finally:
        await engine.remove_vm(vm_id)


async def test_create_template_retries_a_transient_error_once(sim: Any, engine: Engine) -> None:
    vm_id, _, digest = await _vm_with_disk(sim, engine, "etpl-src2")
    try:
        await trio.to_thread.run_sync(
            lambda: sim.admin.add_fault(
                "engine-error",
                method="POST",
                path="/ovirt-engine/api/templates",
                status=503,
                times=1,
            )
        )
        tpl = await engine.create_template(vm_id, name="etpl2")
        assert [x.name for x in await engine.list_templates()].count("etpl2") == 1
        atts = await engine.template_disk_attachments(tpl.id)
        assert [await trio.to_thread.run_sync(sim.admin.disk_sha256, a.disk.id) for a in atts] == [
            digest
        ]
        await engine.remove_template(tpl.id)
    finally:
        await engine.remove_vm(vm_id)


async def test_create_template_from_a_running_vm_is_a_conflict(sim: Any, engine: Engine) -> None:
    vm_id, _, _ = await _vm_with_disk(sim, engine, "etpl-src3")
    try:
        await engine.start_vm(vm_id)
        with pytest.raises(Conflict):
            await engine.create_template(vm_id, name="etpl3")
        assert "etpl3" not in [x.name for x in await engine.list_templates()]
        await engine.stop_vm(vm_id)
    finally:
        await engine.remove_vm(vm_id)
