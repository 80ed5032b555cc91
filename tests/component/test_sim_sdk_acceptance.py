"""Issue 2 acceptance: the official SDK (ovirtsdk4) and ovirt_imageio.client against `rhvfs sim`.

Everything goes over HTTPS verified with the simulator's CA. Data checks
compare sha256 of what the upstream clients downloaded with the simulator's
own sha256 of the volume (`SimAdmin.disk_sha256`, read with qemu-img).
Tests that write guest data or run backups use an isolated simulator
(`sim_factory`); the others leave the shared `sim` as they found it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import ovirtsdk4 as sdk
import pytest
from ovirt_imageio import client as imageio
from ovirtsdk4 import types

from tests.support.data import sha256_file, sha256_image
from tests.support.waiting import wait_for

# ovirt_imageio.client leaks its local NBD socket (upstream): not ours to fail on.
pytestmark = [
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

MiB = 1024**2
BITMAP_GRANULARITY = 64 * 1024


def vm_by_name(conn: Any, name: str) -> types.Vm:
    vms = conn.system_service().vms_service().list(search=f"name={name}")
    assert [v.name.lower() for v in vms] == [name.lower()]
    return vms[0]


def disk_by_alias(conn: Any, vm: types.Vm, alias: str) -> types.Disk:
    for att in conn.follow_link(vm.disk_attachments):
        disk = conn.follow_link(att.disk)
        if disk.alias == alias:
            return disk
    raise AssertionError(f"vm {vm.name} has no disk {alias}")


def start_transfer(conn: Any, **kwargs: Any) -> types.ImageTransfer:
    service = conn.system_service().image_transfers_service()
    transfer = service.add(
        types.ImageTransfer(
            direction=kwargs.pop("direction", types.ImageTransferDirection.DOWNLOAD),
            format=kwargs.pop("format", types.DiskFormat.RAW),
            **kwargs,
        )
    )
    assert transfer.phase in (
        types.ImageTransferPhase.INITIALIZING,
        types.ImageTransferPhase.TRANSFERRING,
    )
    ts = service.image_transfer_service(transfer.id)

    def ready() -> types.ImageTransfer | None:
        t = ts.get()
        assert t.phase in (
            types.ImageTransferPhase.INITIALIZING,
            types.ImageTransferPhase.TRANSFERRING,
        )
        return t if t.phase == types.ImageTransferPhase.TRANSFERRING else None

    result: types.ImageTransfer = wait_for("transfer to start", ready)
    assert result.transfer_url.startswith("https://localhost:")
    assert conn.follow_link(result.host).address == "localhost"
    return result


def finalize_transfer(conn: Any, transfer: types.ImageTransfer) -> None:
    ts = conn.system_service().image_transfers_service().image_transfer_service(transfer.id)
    ts.finalize()
    wait_for(
        "transfer to finish", lambda: ts.get().phase == types.ImageTransferPhase.FINISHED_SUCCESS
    )


def download(
    sim: Any, conn: Any, tmp: Path, name: str, fmt: str = "raw", **transfer_args: Any
) -> Path:
    transfer = start_transfer(conn, **transfer_args)
    target = tmp / name
    try:
        imageio.download(transfer.transfer_url, str(target), sim.cafile, fmt=fmt)
    finally:
        finalize_transfer(conn, transfer)
    return target


def test_list_vms_following_disk_attachments(sim: Any) -> None:
    conn = sim.sdk_connection()
    try:
        found = {}
        for vm in conn.system_service().vms_service().list():
            aliases = []
            for att in conn.follow_link(vm.disk_attachments):
                disk = conn.follow_link(att.disk)
                assert disk.id == att.id
                assert disk.storage_domains[0].id
                assert 256 * MiB <= disk.provisioned_size <= 1024 * MiB
                aliases.append(disk.alias)
            found[vm.name] = (vm.status, sorted(aliases))
        assert found["myvm"] == (types.VmStatus.DOWN, ["mydisk", "myvm_Disk1"])
        assert found["web01"] == (types.VmStatus.UP, ["web01_data", "web01_logs", "web01_os"])
        assert all(1 <= len(aliases) <= 3 for _, aliases in found.values()), found
        assert len(found) >= 6
        statuses = {status for status, _ in found.values()}
        assert {
            types.VmStatus.UP,
            types.VmStatus.DOWN,
            types.VmStatus.PAUSED,
            types.VmStatus.SUSPENDED,
        } <= statuses
        myvm = vm_by_name(conn, "MYVM")  # case-insensitive search, like the engine
        assert conn.follow_link(myvm.cluster).name == "Default"
        web01_disks = {
            d.alias: d
            for d in (
                conn.follow_link(a.disk)
                for a in conn.follow_link(vm_by_name(conn, "web01").disk_attachments)
            )
        }
        assert (
            web01_disks["web01_os"].format == types.DiskFormat.RAW
            and web01_disks["web01_os"].sparse is False
        )
        assert web01_disks["web01_data"].backup == types.DiskBackup.NONE
        assert web01_disks["web01_logs"].backup == types.DiskBackup.INCREMENTAL
    finally:
        conn.close()


def test_snapshot_create_wait_remove_wait_404(sim: Any) -> None:
    conn = sim.sdk_connection()
    try:
        vm = vm_by_name(conn, "myvm0")
        disk = disk_by_alias(conn, vm, "myvm0_Disk1")
        before = sim.admin.disk_sha256(disk.id)
        snaps = conn.system_service().vms_service().vm_service(vm.id).snapshots_service()
        snap = snaps.add(types.Snapshot(description="acceptance", persist_memorystate=False))
        assert snap.snapshot_status == types.SnapshotStatus.LOCKED
        ss = snaps.snapshot_service(snap.id)
        wait_for("snapshot ok", lambda: ss.get().snapshot_status == types.SnapshotStatus.OK)
        snap_disks = ss.disks_service().list()
        assert [d.id for d in snap_disks] == [disk.id]
        assert (
            snap_disks[0].image_id == disk.image_id
        )  # the old active volume now belongs to the snapshot
        new_active = conn.follow_link(vm.disk_attachments)[0].disk
        assert conn.follow_link(new_active).image_id != disk.image_id
        chain = (
            conn.system_service()
            .disks_service()
            .disk_service(disk.id)
            .disk_snapshots_service()
            .list(include_active=True)
        )
        assert {c.id for c in chain} == {disk.image_id, conn.follow_link(new_active).image_id}
        ss.remove()

        def gone() -> bool:
            try:
                ss.get()
            except sdk.NotFoundError:
                return True
            return False

        wait_for("snapshot removed", gone)
        after = conn.system_service().disks_service().disk_service(disk.id).get()
        assert after.image_id == disk.image_id  # backward merge: the older volume id survives
        assert after.status == types.DiskStatus.OK
        assert sim.admin.disk_sha256(disk.id) == before
    finally:
        conn.close()


def test_download_disk_of_a_down_vm(sim: Any, tmp_path: Path) -> None:
    conn = sim.sdk_connection()
    try:
        disk = disk_by_alias(conn, vm_by_name(conn, "myvm"), "mydisk")
        ds = conn.system_service().disks_service().disk_service(disk.id)
        transfer = start_transfer(conn, disk=types.Disk(id=disk.id))
        assert ds.get().status == types.DiskStatus.LOCKED
        target = tmp_path / "mydisk.raw"
        try:
            imageio.download(transfer.transfer_url, str(target), sim.cafile, fmt="raw")
        finally:
            finalize_transfer(conn, transfer)
        assert ds.get().status == types.DiskStatus.OK
        assert target.stat().st_size == disk.provisioned_size
        assert sha256_file(target) == sim.admin.disk_sha256(disk.id)
    finally:
        conn.close()


@pytest.mark.slow
def test_download_snapshot_disk_of_a_running_vm_keeps_its_point_in_time(
    sim_factory: Callable[..., Any], tmp_path: Path
) -> None:
    s = sim_factory()
    conn = s.sdk_connection()
    try:
        vm = vm_by_name(conn, "web01")
        disk = disk_by_alias(conn, vm, "web01_logs")
        # The active volume of a running VM's disk cannot be transferred.
        with pytest.raises(sdk.Error) as err:
            conn.system_service().image_transfers_service().add(
                types.ImageTransfer(
                    disk=types.Disk(id=disk.id), direction=types.ImageTransferDirection.DOWNLOAD
                )
            )
        assert err.value.code == 409
        snaps = conn.system_service().vms_service().vm_service(vm.id).snapshots_service()
        snap = snaps.add(types.Snapshot(description="backup point"))
        ss = snaps.snapshot_service(snap.id)
        wait_for("snapshot ok", lambda: ss.get().snapshot_status == types.SnapshotStatus.OK)
        snap_disk = next(d for d in ss.disks_service().list() if d.id == disk.id)
        at_snapshot = s.admin.disk_sha256(disk.id, image_id=snap_disk.image_id)
        # The guest keeps writing after the snapshot: the snapshot volume must not change.
        s.admin.guest_write(vm="web01", disk="web01_logs", offset=3 * MiB, size=MiB, pattern=0x5A)
        assert s.admin.disk_sha256(disk.id) != at_snapshot
        got = download(
            s, conn, tmp_path, "snap.raw", snapshot=types.DiskSnapshot(id=snap_disk.image_id)
        )
        assert sha256_file(got) == at_snapshot
        ss.remove()
    finally:
        conn.close()


def _dirty_extents(transfer_url: str, cafile: str) -> list[Any]:
    c = imageio.ImageioClient(transfer_url, cafile=cafile)
    try:
        return list(c.extents("dirty"))
    finally:
        c.close()


@pytest.mark.slow
def test_full_then_incremental_backup_reproduces_the_disk(
    sim_factory: Callable[..., Any], tmp_path: Path
) -> None:
    s = sim_factory()
    conn = s.sdk_connection()
    try:
        vm = vm_by_name(conn, "myvm")
        disk = disk_by_alias(conn, vm, "mydisk")
        backups = conn.system_service().vms_service().vm_service(vm.id).backups_service()

        def run_backup(from_checkpoint: str | None, name: str) -> tuple[str, Path, list[Any]]:
            backup = backups.add(
                types.Backup(disks=[types.Disk(id=disk.id)], from_checkpoint_id=from_checkpoint)
            )
            assert backup.vm.id == vm.id
            bs = backups.backup_service(backup.id)
            ready = wait_for(
                "backup ready", lambda: (b := bs.get()).phase == types.BackupPhase.READY and b
            )
            assert ready.to_checkpoint_id
            snaps = conn.system_service().vms_service().vm_service(vm.id).snapshots_service().list()
            assert "Auto-generated for Backup VM" in [x.description for x in snaps]
            modes = {d.id: d.backup_mode for d in bs.disks_service().list()}
            expected = (
                types.DiskBackupMode.INCREMENTAL if from_checkpoint else types.DiskBackupMode.FULL
            )
            assert modes == {disk.id: expected}
            # One backup at a time.
            with pytest.raises(sdk.Error) as err:
                backups.add(types.Backup(disks=[types.Disk(id=disk.id)]))
            assert err.value.code == 409
            transfer = start_transfer(
                conn, disk=types.Disk(id=disk.id), backup=types.Backup(id=backup.id)
            )
            # Backup finalize is refused while a transfer of it is open.
            with pytest.raises(sdk.Error) as err:
                bs.finalize()
            assert err.value.code == 409
            target = tmp_path / f"{name}.qcow2"
            dirty: list[Any] = []
            try:
                if from_checkpoint:
                    dirty = _dirty_extents(transfer.transfer_url, s.cafile)
                    imageio.download(
                        transfer.transfer_url,
                        str(target),
                        s.cafile,
                        fmt="qcow2",
                        incremental=True,
                        backing_file=str(tmp_path / "full.qcow2"),
                        backing_format="qcow2",
                    )
                else:
                    imageio.download(transfer.transfer_url, str(target), s.cafile, fmt="qcow2")
            finally:
                finalize_transfer(conn, transfer)
            bs.finalize()
            wait_for("backup succeeded", lambda: bs.get().phase == types.BackupPhase.SUCCEEDED)
            snaps = conn.system_service().vms_service().vm_service(vm.id).snapshots_service().list()
            assert "Auto-generated for Backup VM" not in [x.description for x in snaps]
            return ready.to_checkpoint_id, target, dirty

        before_full = s.admin.disk_sha256(disk.id)
        checkpoint, full, _ = run_backup(None, "full")
        assert sha256_image(full, src_format="qcow2", suffix=".flat") == before_full
        checkpoints = (
            conn.system_service().vms_service().vm_service(vm.id).checkpoints_service().list()
        )
        assert [c.id for c in checkpoints] == [checkpoint]
        assert checkpoints[0].creation_date.tzinfo is not None

        writes = [(5 * MiB + 4096, 100_000, 0xA1), (64 * MiB, 2 * MiB, 0xB2), (200 * MiB, 65536, 0)]
        for offset, size, pattern in writes:
            s.admin.guest_write(vm="myvm", disk="mydisk", offset=offset, size=size, pattern=pattern)
        current = s.admin.disk_sha256(disk.id)
        assert current != before_full

        checkpoint2, incr, dirty = run_backup(checkpoint, "incr")
        for offset, size, _ in writes:
            first = offset // BITMAP_GRANULARITY * BITMAP_GRANULARITY
            end = offset + size
            covered = [
                e for e in dirty if e.dirty and e.start <= first and e.start + e.length >= end
            ]
            assert covered, f"write {offset}+{size} not covered by dirty extents {dirty}"
        dirty_bytes = sum(e.length for e in dirty if e.dirty)
        assert (
            dirty_bytes <= sum(size for _, size, _ in writes) + 2 * len(writes) * BITMAP_GRANULARITY
        )
        assert sha256_image(incr, src_format="qcow2", suffix=".flat") == current
        cps = conn.system_service().vms_service().vm_service(vm.id).checkpoints_service().list()
        assert [c.id for c in cps] == [checkpoint, checkpoint2]
        assert cps[1].parent_id == checkpoint
    finally:
        conn.close()


def test_errors_map_to_sdk_exceptions(sim: Any) -> None:
    with pytest.raises(sdk.AuthError):
        sim.sdk_connection(password="wrong-password").system_service().get()
    conn = sim.sdk_connection()
    try:
        with pytest.raises(sdk.NotFoundError):
            conn.system_service().vms_service().vm_service(
                "00000000-1111-2222-3333-444444444444"
            ).get()
        disk = disk_by_alias(conn, vm_by_name(conn, "myvm0"), "myvm0_Disk1")
        transfer = start_transfer(conn, disk=types.Disk(id=disk.id))
        try:
            with pytest.raises(sdk.Error) as err:
                conn.system_service().disks_service().disk_service(disk.id).remove()
            assert err.value.code == 409
        finally:
            finalize_transfer(conn, transfer)
        assert (
            conn.system_service().disks_service().disk_service(disk.id).get().status
            == types.DiskStatus.OK
        )
    finally:
        conn.close()
