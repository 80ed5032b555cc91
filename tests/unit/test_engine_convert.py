"""SDK type objects -> rhvfs.engine.types dataclasses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import ovirtsdk4.types as sdk

from rhvfs.engine import _convert as convert
from rhvfs.engine import types as t


def test_image_transfer_uses_image_id_not_disk() -> None:
    item = sdk.ImageTransfer(
        id="T1",
        phase=sdk.ImageTransferPhase.TRANSFERRING,
        direction=sdk.ImageTransferDirection.DOWNLOAD,
        format=sdk.DiskFormat.RAW,
        transfer_url="https://host1:54322/images/abc",
        proxy_url="https://engine:54323/images/abc",
        image=sdk.Image(id="D1"),
        host=sdk.Host(id="H1"),
        inactivity_timeout=60,
        transferred=4096,
        active=False,
    )
    assert convert.image_transfer(item) == t.ImageTransfer(
        id="T1",
        phase="transferring",
        direction="download",
        format="raw",
        transfer_url="https://host1:54322/images/abc",
        proxy_url="https://engine:54323/images/abc",
        disk_id="D1",
        host_id="H1",
        inactivity_timeout=60,
        transferred=4096,
        active=False,
    )
    # Initializing: no URLs yet, no image either.
    bare = convert.image_transfer(
        sdk.ImageTransfer(id="T2", phase=sdk.ImageTransferPhase.INITIALIZING)
    )
    assert (bare.phase, bare.transfer_url, bare.disk_id) == ("initializing", None, None)


def test_disk_fields_and_defaults() -> None:
    item = sdk.Disk(
        id="D1",
        alias="root",
        name="root",
        provisioned_size=6 * 1024**3,
        actual_size=1234,
        format=sdk.DiskFormat.COW,
        sparse=True,
        status=sdk.DiskStatus.OK,
        backup=sdk.DiskBackup.INCREMENTAL,
        backup_mode=sdk.DiskBackupMode.FULL,
        image_id="I3",
        storage_domains=[sdk.StorageDomain(id="SD1")],
        content_type=sdk.DiskContentType.DATA,
        shareable=False,
    )
    assert convert.disk(item) == t.Disk(
        id="D1",
        alias="root",
        provisioned_size=6 * 1024**3,
        actual_size=1234,
        format="cow",
        sparse=True,
        status="ok",
        backup="incremental",
        backup_mode="full",
        image_id="I3",
        storage_domain_id="SD1",
        content_type="data",
    )
    minimal = convert.disk(sdk.Disk(id="D2", name="data"))
    assert (
        minimal.alias,
        minimal.provisioned_size,
        minimal.format,
        minimal.sparse,
        minimal.storage_domain_id,
    ) == ("data", 0, "raw", True, None)


def test_snapshot_reads_snapshot_status_and_type_and_makes_dates_aware() -> None:
    naive = datetime(2024, 5, 2, 1, 0, 3)
    item = sdk.Snapshot(
        id="S1",
        description="rhvfs backup 1",
        snapshot_status=sdk.SnapshotStatus.LOCKED,
        snapshot_type=sdk.SnapshotType.REGULAR,
        status=sdk.VmStatus.UP,  # the inherited VM status must be ignored
        date=naive,
        persist_memorystate=False,
    )
    snap = convert.snapshot(item, vm_id="V1")
    assert snap == t.Snapshot(
        id="S1",
        description="rhvfs backup 1",
        status="locked",
        type="regular",
        date=naive.replace(tzinfo=UTC),
        persist_memorystate=False,
        vm_id="V1",
    )


def test_vm_and_attachment_and_nic() -> None:
    created = datetime(2024, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    item = sdk.Vm(
        id="V1",
        name="myvm",
        status=sdk.VmStatus.DOWN,
        cluster=sdk.Cluster(id="C1"),
        template=sdk.Template(id="B"),
        memory=1 << 30,
        cpu=sdk.Cpu(topology=sdk.CpuTopology(sockets=2, cores=1, threads=1)),
        os=sdk.OperatingSystem(type="other_linux"),
        type=sdk.VmType.SERVER,
        creation_time=created,
    )
    vm = convert.vm(item)
    assert (
        vm.status,
        vm.cluster_id,
        vm.template_id,
        vm.memory,
        vm.cpu_sockets,
        vm.os_type,
        vm.type,
    ) == (
        "down",
        "C1",
        "B",
        1 << 30,
        2,
        "other_linux",
        "server",
    )
    assert vm.creation_time == created and vm.host_id is None

    att = sdk.DiskAttachment(
        id="D1",
        disk=sdk.Disk(id="D1"),
        interface=sdk.DiskInterface.VIRTIO_SCSI,
        bootable=True,
        active=True,
    )
    full = t.Disk(id="D1", alias="root", provisioned_size=1 << 20)
    assert convert.disk_attachment(att, full) == t.DiskAttachment(
        disk=full, interface="virtio_scsi", bootable=True, active=True
    )

    profile = t.VnicProfile(id="P1", name="ovirtmgmt", network_id="N1", network_name="ovirtmgmt")
    nic = sdk.Nic(
        id="N1",
        name="nic1",
        interface=sdk.NicInterface.VIRTIO,
        mac=sdk.Mac(address="56:6f:00:00:00:01"),
        vnic_profile=sdk.VnicProfile(id="P1"),
    )
    assert convert.nic(nic, profiles={"P1": profile}) == t.Nic(
        id="N1",
        name="nic1",
        interface="virtio",
        mac="56:6f:00:00:00:01",
        vnic_profile_id="P1",
        vnic_profile_name="ovirtmgmt",
        network_name="ovirtmgmt",
    )


def test_backup_and_checkpoint() -> None:
    when = datetime(2024, 5, 2, 1, 0, 3, tzinfo=UTC)
    b = sdk.Backup(
        id="B1",
        phase=sdk.BackupPhase.READY,
        vm=sdk.Vm(id="V1"),
        to_checkpoint_id="C2",
        from_checkpoint_id="C1",
        creation_date=when,
        snapshot=sdk.Snapshot(id="S9"),
    )
    assert convert.backup(b) == t.Backup(
        id="B1",
        phase="ready",
        vm_id="V1",
        from_checkpoint_id="C1",
        to_checkpoint_id="C2",
        creation_date=when,
        snapshot_id="S9",
    )
    c = sdk.Checkpoint(
        id="C2",
        parent_id="C1",
        state=sdk.CheckpointState.CREATED,
        creation_date=when,
        description="x",
    )
    assert convert.checkpoint(c, vm_id="V1") == t.Checkpoint(
        id="C2", parent_id="C1", state="created", creation_date=when, description="x", vm_id="V1"
    )


def test_storage_domain() -> None:
    item = sdk.StorageDomain(
        id="SD1",
        name="mydata",
        type=sdk.StorageDomainType.DATA,
        storage=sdk.HostStorage(type=sdk.StorageType.NFS),
        available=10 << 30,
        used=1 << 30,
        committed=2 << 30,
        data_centers=[sdk.DataCenter(id="DC1")],
    )
    sd = convert.storage_domain(item)
    assert sd == t.StorageDomain(
        id="SD1",
        name="mydata",
        type="data",
        storage_type="nfs",
        available=10 << 30,
        used=1 << 30,
        committed=2 << 30,
        datacenter_ids=("DC1",),
    )
