"""`ovirt-img` (unchanged, from the ovirt-imageio package) against `rhvfs sim` with `-c sim`.

`XDG_CONFIG_HOME=<state dir>` makes ovirt-img read the simulator's own
`ovirt-img.conf` (section `[sim]`, TLS verified with the sim CA). Uploads
create their disk through the engine API, so each test removes what it made.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import ovirtsdk4 as sdk
import pytest
from ovirtsdk4 import types

from rhvfs.sim.guestdata import make_guest_image
from tests.support.data import sha256_file
from tests.support.waiting import wait_for

MiB = 1024**2


def _ovirt_img(sim: Any, *args: str) -> None:
    exe = Path(sys.executable).with_name("ovirt-img")
    env = dict(os.environ, XDG_CONFIG_HOME=str(sim.state_dir))
    result = subprocess.run([str(exe), *args], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"ovirt-img {args} failed:\n{result.stdout}\n{result.stderr}"


@pytest.mark.slow
@pytest.mark.parametrize("source_format", ["raw", "qcow2"])
def test_upload_disk_then_download_disk_round_trip(
    sim: Any, tmp_path: Path, source_format: str
) -> None:
    raw = tmp_path / "guest.raw"
    make_guest_image(raw, size=96 * MiB, hostname=f"upload-{source_format}", seed=77, files_mib=2)
    expected = sha256_file(raw)
    source = raw
    if source_format == "qcow2":
        source = tmp_path / "guest.qcow2"
        subprocess.run(
            ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(source)], check=True
        )
    disk_id = str(uuid.uuid4())
    _ovirt_img(
        sim,
        "upload-disk",
        "-c",
        "sim",
        "-s",
        "mydata",
        "-f",
        source_format,
        "--disk-id",
        disk_id,
        "--name",
        f"uploaded-{source_format}",
        str(source),
    )
    conn = sim.sdk_connection()
    try:
        ds = conn.system_service().disks_service().disk_service(disk_id)
        disk = ds.get()
        assert disk.status == types.DiskStatus.OK
        assert disk.provisioned_size == 96 * MiB
        assert disk.format == (
            types.DiskFormat.COW if source_format == "qcow2" else types.DiskFormat.RAW
        )
        assert disk.backup == (
            types.DiskBackup.INCREMENTAL if source_format == "qcow2" else types.DiskBackup.NONE
        )
        assert sim.admin.disk_sha256(disk_id) == expected
        back = tmp_path / "back.raw"
        _ovirt_img(sim, "download-disk", "-c", "sim", "-f", "raw", disk_id, str(back))
        assert sha256_file(back) == expected
        ds.remove()
        assert disk_id not in {d.id for d in conn.system_service().disks_service().list()}
    finally:
        conn.close()


def _zero_sha256(size: int) -> str:
    h = hashlib.sha256()
    for _ in range(size // MiB):
        h.update(bytes(MiB))
    return h.hexdigest()


@pytest.mark.slow
def test_block_domain_new_raw_disk_holds_stale_data_and_upload_disk_zeroes_it(
    sim: Any, tmp_path: Path
) -> None:
    """bs-scsi-012 is iSCSI: a new raw preallocated disk reads its LV's old contents, not
    zeros (the upstream SDK sees the domain as iscsi). ovirt-img zeroes what the image does
    not hold (raw preallocated disk: its client does not assume zeros), so its upload
    there still gives the source's bytes."""
    size = 64 * MiB
    conn = sim.sdk_connection()
    try:
        sds = {sd.name: sd for sd in conn.system_service().storage_domains_service().list()}
        assert sds["bs-scsi-012"].storage.type == types.StorageType.ISCSI
        assert sds["mydata"].storage.type == types.StorageType.NFS
        disks = conn.system_service().disks_service()
        fresh = disks.add(
            types.Disk(
                name="fresh-lv",
                provisioned_size=size,
                format=types.DiskFormat.RAW,
                sparse=False,
                storage_domains=[types.StorageDomain(name="bs-scsi-012")],
            )
        )
        fresh_service = disks.disk_service(fresh.id)
        wait_for("the new disk", lambda: fresh_service.get().status == types.DiskStatus.OK, 30)
        assert sim.admin.disk_sha256(fresh.id) != _zero_sha256(size)  # stale, not zeros
        fresh_service.remove()
        with pytest.raises(sdk.Error, match="RAW Sparse"):  # an LV cannot be sparse raw
            disks.add(
                types.Disk(
                    name="sparse-lv",
                    provisioned_size=size,
                    format=types.DiskFormat.RAW,
                    sparse=True,
                    storage_domains=[types.StorageDomain(name="bs-scsi-012")],
                )
            )

        image = tmp_path / "sparse.raw"
        with open(image, "wb") as f:
            f.truncate(size)
            for off in (0, 5 * MiB, 40 * MiB, size - MiB):
                f.seek(off)
                f.write(bytes([0x5A]) * 300 * 1024)
        expected = sha256_file(image)
        disk_id = str(uuid.uuid4())
        _ovirt_img(
            sim,
            "upload-disk",
            "-c",
            "sim",
            "-s",
            "bs-scsi-012",
            "-f",
            "raw",
            "--preallocated",
            "--disk-id",
            disk_id,
            "--name",
            "uploaded-block",
            str(image),
        )
        disk = disks.disk_service(disk_id).get()
        assert disk.format == types.DiskFormat.RAW and disk.sparse is False
        assert sim.admin.disk_sha256(disk_id) == expected
        disks.disk_service(disk_id).remove()
    finally:
        conn.close()
