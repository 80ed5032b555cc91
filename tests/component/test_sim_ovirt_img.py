"""`ovirt-img` (unchanged, from the ovirt-imageio package) against `rhvfs sim` with `-c sim`.

`XDG_CONFIG_HOME=<state dir>` makes ovirt-img read the simulator's own
`ovirt-img.conf` (section `[sim]`, TLS verified with the sim CA). Uploads
create their disk through the engine API, so each test removes what it made.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from ovirtsdk4 import types

from rhvfs.sim.guestdata import make_guest_image
from tests.support.data import sha256_file

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
