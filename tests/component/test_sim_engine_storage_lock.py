"""Long storage work runs without the simulated engine's state lock.

With a `storage-delay` fault the next disk copy (template from a VM, VM
cloned from a snapshot) or snapshot merge takes seconds, deterministically.
Meanwhile unrelated GETs answer at once, the entities involved show the
engine's marks (`locked`, `image_locked`), conflicting requests get 409, and
the result is committed once the work is done (content checked by sha256).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import ovirtsdk4 as sdk
import pytest
from ovirtsdk4 import types

from rhvfs.sim.client import SimAdminError

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

MiB = 1024**2
DELAY_S = 3.0
# A GET that waited for the copy or merge would take about DELAY_S.
FAST_S = 1.0


def wait_for(what: str, fn: Callable[[], Any], timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := fn()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


@pytest.fixture
def conn(sim: Any) -> Iterator[Any]:
    c = sim.sdk_connection()
    try:
        yield c
    finally:
        c.close()
        sim.admin.clear_faults()


def _make_vm(sim: Any, conn: Any, name: str) -> tuple[Any, str]:
    system = conn.system_service()
    vm = system.vms_service().add(
        types.Vm(
            name=name, cluster=types.Cluster(name="Default"), template=types.Template(name="Blank")
        )
    )
    disk = system.disks_service().add(
        types.Disk(
            name=f"{name}_Disk1",
            format=types.DiskFormat.COW,
            provisioned_size=8 * MiB,
            storage_domains=[types.StorageDomain(name="mydata")],
        ),
        headers={"Expect": "201-created"},
    )
    system.vms_service().vm_service(vm.id).disk_attachments_service().add(
        types.DiskAttachment(
            disk=types.Disk(id=disk.id),
            interface=types.DiskInterface.VIRTIO,
            bootable=True,
            active=True,
        )
    )
    sim.admin.guest_write(disk=disk.id, offset=MiB, data=f"{name} data ".encode() * 1000)
    return vm, disk.id


def _timed_list_vms(conn: Any) -> float:
    start = time.monotonic()
    conn.system_service().vms_service().list()
    return time.monotonic() - start


def _conflict(fn: Callable[[], Any]) -> None:
    with pytest.raises(sdk.Error) as err:
        fn()
    assert err.value.code == 409, err.value


def _cleanup(conn: Any, *, templates: Sequence[str] = (), vms: Sequence[str] = ()) -> None:
    """Remove what a test made, once its storage work is over (best effort)."""
    system = conn.system_service()
    services = [system.templates_service().template_service(t) for t in templates]
    services += [system.vms_service().vm_service(v) for v in vms]
    for service in services:
        deadline = time.monotonic() + 60
        while True:
            try:
                service.remove()
                break
            except sdk.NotFoundError:
                break
            except sdk.Error as err:
                if err.code != 409 or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def test_template_copy_does_not_block_gets_and_locks_its_source(sim: Any, conn: Any) -> None:
    system = conn.system_service()
    vm, disk_id = _make_vm(sim, conn, "lockcopy1")
    templates: list[str] = []
    try:
        want = sim.admin.disk_sha256(disk_id)
        sim.admin.add_fault("storage-delay", op="copy", delay=DELAY_S, times=1)
        start = time.monotonic()
        t = system.templates_service().add(
            types.Template(name="lockcopy1-tpl", vm=types.Vm(id=vm.id))
        )
        templates.append(t.id)
        ts = system.templates_service().template_service(t.id)
        vs = system.vms_service().vm_service(vm.id)
        disk_service = system.disks_service().disk_service(disk_id)

        # While the copy runs: marks shown, conflicting requests refused, GETs answer at once.
        assert ts.get().status == types.TemplateStatus.LOCKED
        assert vs.get().status == types.VmStatus.IMAGE_LOCKED
        assert disk_service.get().status == types.DiskStatus.LOCKED
        _conflict(lambda: vs.remove())
        _conflict(lambda: disk_service.remove())
        _conflict(lambda: vs.start())
        _conflict(
            lambda: system.image_transfers_service().add(
                types.ImageTransfer(
                    disk=types.Disk(id=disk_id),
                    direction=types.ImageTransferDirection.UPLOAD,
                    format=types.DiskFormat.RAW,
                )
            )
        )
        with pytest.raises(SimAdminError) as err:
            sim.admin.guest_write(disk=disk_id, offset=0, data=b"too late")
        assert err.value.status == 409
        latencies = []
        while ts.get().status == types.TemplateStatus.LOCKED:
            latencies.append(_timed_list_vms(conn))
            assert time.monotonic() - start < 60, "the template stayed locked"
        assert time.monotonic() - start >= DELAY_S
        assert len(latencies) >= 5
        assert max(latencies) < FAST_S, latencies

        # Committed: the template is ok with a copy of the disk, the marks are gone.
        assert ts.get().status == types.TemplateStatus.OK
        wait_for("vm down", lambda: vs.get().status == types.VmStatus.DOWN)
        assert disk_service.get().status == types.DiskStatus.OK
        [att] = ts.disk_attachments_service().list()
        assert system.disks_service().disk_service(att.id).get().status == types.DiskStatus.OK
        assert sim.admin.disk_sha256(att.id) == want
        assert sim.admin.disk_sha256(disk_id) == want
    finally:
        _cleanup(conn, templates=templates, vms=[vm.id])


def test_clone_from_snapshot_does_not_block_gets_and_locks_the_snapshot(
    sim: Any, conn: Any
) -> None:
    system = conn.system_service()
    vm, disk_id = _make_vm(sim, conn, "lockcopy2")
    vms = [vm.id]
    try:
        snaps = system.vms_service().vm_service(vm.id).snapshots_service()
        snap = snaps.add(types.Snapshot(description="before"))
        ss = snaps.snapshot_service(snap.id)
        wait_for("snapshot ok", lambda: ss.get().snapshot_status == types.SnapshotStatus.OK)
        want = sim.admin.disk_sha256(disk_id)
        # Changes after the snapshot are not part of the clone.
        sim.admin.guest_write(disk=disk_id, offset=2 * MiB, data=b"after the snapshot" * 100)
        assert sim.admin.disk_sha256(disk_id) != want

        sim.admin.add_fault("storage-delay", op="copy", delay=DELAY_S, times=1)
        start = time.monotonic()
        clone = system.vms_service().add(
            types.Vm(
                name="lockcopy2-clone",
                cluster=types.Cluster(name="Default"),
                snapshots=[types.Snapshot(id=snap.id)],
            )
        )
        vms.append(clone.id)
        cs = system.vms_service().vm_service(clone.id)
        assert cs.get().status == types.VmStatus.IMAGE_LOCKED
        assert ss.get().snapshot_status == types.SnapshotStatus.LOCKED
        _conflict(lambda: ss.remove())
        _conflict(lambda: ss.restore())
        _conflict(lambda: system.vms_service().vm_service(vm.id).remove())
        latencies = []
        while cs.get().status == types.VmStatus.IMAGE_LOCKED:
            latencies.append(_timed_list_vms(conn))
            assert time.monotonic() - start < 60, "the clone stayed image_locked"
        assert time.monotonic() - start >= DELAY_S
        assert len(latencies) >= 5
        assert max(latencies) < FAST_S, latencies

        assert cs.get().status == types.VmStatus.DOWN
        assert ss.get().snapshot_status == types.SnapshotStatus.OK
        [att] = cs.disk_attachments_service().list()
        assert system.disks_service().disk_service(att.id).get().status == types.DiskStatus.OK
        assert sim.admin.disk_sha256(att.id) == want
    finally:
        _cleanup(conn, vms=list(reversed(vms)))


def test_snapshot_merge_does_not_block_gets(sim: Any, conn: Any) -> None:
    system = conn.system_service()
    vm, disk_id = _make_vm(sim, conn, "lockmerge")
    try:
        snaps = system.vms_service().vm_service(vm.id).snapshots_service()
        snap = snaps.add(types.Snapshot(description="to merge"))
        ss = snaps.snapshot_service(snap.id)
        wait_for("snapshot ok", lambda: ss.get().snapshot_status == types.SnapshotStatus.OK)
        sim.admin.guest_write(disk=disk_id, offset=3 * MiB, data=b"merge me" * 1000)
        want = sim.admin.disk_sha256(disk_id)
        disk_service = system.disks_service().disk_service(disk_id)

        sim.admin.add_fault("storage-delay", op="merge", delay=DELAY_S, times=1)
        start = time.monotonic()
        ss.remove()
        assert disk_service.get().status == types.DiskStatus.LOCKED
        _conflict(lambda: disk_service.remove())
        latencies = []
        while disk_service.get().status == types.DiskStatus.LOCKED:
            latencies.append(_timed_list_vms(conn))
            assert time.monotonic() - start < 60, "the disk stayed locked"
        assert time.monotonic() - start >= DELAY_S
        assert len(latencies) >= 5
        assert max(latencies) < FAST_S, latencies

        assert disk_service.get().status == types.DiskStatus.OK
        assert [s.description for s in snaps.list()] == ["Active VM"]
        assert len(disk_service.disk_snapshots_service().list()) == 0
        assert sim.admin.disk_sha256(disk_id) == want
    finally:
        _cleanup(conn, vms=[vm.id])


def test_sha256_waits_for_a_merge_instead_of_reading_half_of_it(sim: Any, conn: Any) -> None:
    system = conn.system_service()
    vm, disk_id = _make_vm(sim, conn, "lockmerge2")
    try:
        snaps = system.vms_service().vm_service(vm.id).snapshots_service()
        snap = snaps.add(types.Snapshot(description="to merge"))
        ss = snaps.snapshot_service(snap.id)
        wait_for("snapshot ok", lambda: ss.get().snapshot_status == types.SnapshotStatus.OK)
        sim.admin.guest_write(disk=disk_id, offset=3 * MiB, data=b"merge me too" * 1000)
        want = sim.admin.disk_sha256(disk_id)
        disk_service = system.disks_service().disk_service(disk_id)

        sim.admin.add_fault("storage-delay", op="merge", delay=DELAY_S, times=1)
        start = time.monotonic()
        ss.remove()
        assert disk_service.get().status == types.DiskStatus.LOCKED
        # Asked during the merge, it answers after the commit, with the same content.
        assert sim.admin.disk_sha256(disk_id) == want
        assert time.monotonic() - start >= DELAY_S
        assert disk_service.get().status == types.DiskStatus.OK
    finally:
        _cleanup(conn, vms=[vm.id])
