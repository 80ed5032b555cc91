"""The simulator's `POST /templates` from a VM, driven with the official SDK.

Each test makes (and removes) its own VM and template on the shared simulator.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import ovirtsdk4 as sdk
import pytest
from ovirtsdk4 import types

from tests.support.waiting import wait_for

pytestmark = [
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

MiB = 1024**2


@pytest.fixture
def conn(sim: Any) -> Iterator[Any]:
    c = sim.sdk_connection()
    try:
        yield c
    finally:
        c.close()


def _make_vm(sim: Any, conn: Any, name: str) -> tuple[types.Vm, str]:
    system = conn.system_service()
    vm = system.vms_service().add(
        types.Vm(
            name=name, cluster=types.Cluster(name="Default"), template=types.Template(name="Blank")
        )
    )
    vs = system.vms_service().vm_service(vm.id)
    disk = system.disks_service().add(
        types.Disk(
            name=f"{name}_Disk1",
            format=types.DiskFormat.COW,
            provisioned_size=8 * MiB,
            storage_domains=[types.StorageDomain(name="mydata")],
        ),
        headers={"Expect": "201-created"},
    )
    vs.disk_attachments_service().add(
        types.DiskAttachment(
            disk=types.Disk(id=disk.id),
            interface=types.DiskInterface.VIRTIO,
            bootable=True,
            active=True,
        )
    )
    vs.nics_service().add(types.Nic(name="nic1", interface=types.NicInterface.VIRTIO))
    sim.admin.guest_write(disk=disk.id, offset=MiB, data=b"template me " * 1000)
    return vm, disk.id


def _cleanup(conn: Any, *, vm_id: str | None = None, template_id: str | None = None) -> None:
    system = conn.system_service()
    if template_id is not None:
        try:
            system.templates_service().template_service(template_id).remove()
        except sdk.NotFoundError:
            pass
    if vm_id is not None:
        try:
            system.vms_service().vm_service(vm_id).remove()
        except sdk.NotFoundError:
            pass


def test_template_from_a_down_vm_copies_disks_nics_and_serves_its_ovf(sim: Any, conn: Any) -> None:
    system = conn.system_service()
    vm, disk_id = _make_vm(sim, conn, "tplsrc1")
    tid = None
    try:
        want = sim.admin.disk_sha256(disk_id)
        t = system.templates_service().add(
            types.Template(name="tpl-from-vm1", description="made", vm=types.Vm(id=vm.id))
        )
        tid = t.id
        assert t.name == "tpl-from-vm1"
        assert t.status in (types.TemplateStatus.LOCKED, types.TemplateStatus.OK)
        ts = system.templates_service().template_service(t.id)
        wait_for("template ok", lambda: ts.get().status == types.TemplateStatus.OK)
        vs = system.vms_service().vm_service(vm.id)
        wait_for("vm down", lambda: vs.get().status == types.VmStatus.DOWN)
        atts = ts.disk_attachments_service().list()
        assert len(atts) == 1
        assert atts[0].id != disk_id
        assert atts[0].interface == types.DiskInterface.VIRTIO and atts[0].bootable is True
        tdisk = system.disks_service().disk_service(atts[0].id).get()
        assert tdisk.status == types.DiskStatus.OK
        assert tdisk.provisioned_size == 8 * MiB
        assert sim.admin.disk_sha256(tdisk.id) == want
        assert [n.name for n in ts.nics_service().list()] == ["nic1"]
        full = ts.get(query={"all_content": "true"})
        ovf = full.initialization.configuration.data
        assert "tpl-from-vm1" in ovf and tdisk.id in ovf
        # The VM's own disk is untouched and still its own.
        assert [a.id for a in vs.disk_attachments_service().list()] == [disk_id]
        assert sim.admin.disk_sha256(disk_id) == want
        # The name is taken now.
        with pytest.raises(sdk.Error) as err:
            system.templates_service().add(
                types.Template(name="tpl-from-vm1", vm=types.Vm(id=vm.id))
            )
        assert err.value.code == 409
        # Removing the template removes its copies, not the VM's disk.
        ts.remove()
        tid = None
        with pytest.raises(sdk.NotFoundError):
            system.disks_service().disk_service(tdisk.id).get()
        assert sim.admin.disk_sha256(disk_id) == want
    finally:
        _cleanup(conn, vm_id=vm.id, template_id=tid)


def test_template_from_a_running_vm_is_refused(sim: Any, conn: Any) -> None:
    system = conn.system_service()
    vm, _ = _make_vm(sim, conn, "tplsrc2")
    vs = system.vms_service().vm_service(vm.id)
    try:
        vs.start()
        wait_for("vm up", lambda: vs.get().status == types.VmStatus.UP)
        before = {t.name for t in system.templates_service().list()}
        with pytest.raises(sdk.Error) as err:
            system.templates_service().add(
                types.Template(name="tpl-from-vm2", vm=types.Vm(id=vm.id))
            )
        assert err.value.code == 409
        assert {t.name for t in system.templates_service().list()} == before
        vs.stop()
        wait_for("vm down", lambda: vs.get().status == types.VmStatus.DOWN)
    finally:
        _cleanup(conn, vm_id=vm.id)


def test_a_template_takes_its_ovf_comment_and_can_be_edited(sim: Any, conn: Any) -> None:
    """An import without a comment takes the OVF's (the engine's rule); `PUT` edits the
    comment and description, refuses a name in use, and the Blank template."""
    system = conn.system_service()
    vm, _ = _make_vm(sim, conn, "tplsrc3")
    tid = None
    try:
        t = system.templates_service().add(
            types.Template(name="tpl-edit-src", vm=types.Vm(id=vm.id))
        )
        tid = t.id
        ts = system.templates_service().template_service(t.id)
        wait_for("template ok", lambda: ts.get().status == types.TemplateStatus.OK)
        ts.update(types.Template(comment="ovf comment", description="d1"))
        got = ts.get()
        assert (got.comment, got.description, got.name) == ("ovf comment", "d1", "tpl-edit-src")
        ovf = ts.get(query={"all_content": "true"}).initialization.configuration.data
        assert "<Comment>ovf comment</Comment>" in ovf
        with pytest.raises(sdk.Error) as err:
            ts.update(types.Template(name="Blank"))
        assert err.value.code == 409
        with pytest.raises(sdk.Error) as err:
            system.templates_service().template_service(
                "0" * 8 + "-0000-0000-0000-" + "0" * 12
            ).update(types.Template(comment="x"))
        assert err.value.code == 409
        # an import of that OVF without a comment of its own takes the OVF's
        ts.remove()
        tid = None
        imported = system.templates_service().add(
            types.Template(
                name="tpl-edit-imported",
                cluster=types.Cluster(name="Default"),
                initialization=types.Initialization(
                    configuration=types.Configuration(type=types.ConfigurationType.OVF, data=ovf)
                ),
            )
        )
        tid = imported.id
        assert imported.comment == "ovf comment"
    finally:
        _cleanup(conn, vm_id=vm.id, template_id=tid)
