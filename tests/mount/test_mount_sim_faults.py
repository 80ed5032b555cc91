"""Faults through real FUSE mounts of the simulator: the reader still gets exact bytes.

Issue 3 acceptance: imageio connections dropped mid-stream, engine 5xx while
the snapshot is created, a reader pausing longer than the transfer's
inactivity timeout, an expired ticket; plus the daemonizing ``rhvfs mount``
failing cleanly, and libguestfs reading a disk straight from the mount.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.data import MiB
from tests.support.mounts import RHVFS, SimMount
from tests.support.sim import conf_with, live_transfers, snapshot_ids

pytestmark = pytest.mark.slow


class ConfMount(SimMount):
    """A mount of the shared simulator with extra settings in its config section."""

    def __init__(self, sim: Any, tmp_path: Path, **settings: object) -> None:
        conf = conf_with(sim, tmp_path, **settings)
        shim = type("S", (), {"section": sim.section, "conf_file": conf})()
        state = tmp_path / "state"
        state.mkdir(exist_ok=True)
        super().__init__(shim, tmp_path / "mnt", state)
        self.sim = sim


@pytest.fixture
def faults(sim: Any) -> Iterator[Any]:
    sim.admin.clear_faults()
    try:
        yield sim.admin
    finally:
        sim.admin.clear_faults()


def disk_file(mnt: Path, vm: str, alias: str) -> Path:
    return mnt / "vms" / vm / "disks" / f"{alias}.raw"


def disk_id_of(mnt: Path, vm: str, alias: str) -> str:
    doc = json.loads((mnt / "vms" / vm / "vm.json").read_bytes())
    return next(d["id"] for d in doc["disks"] if d["alias"] == alias)


def sha_of(path: Path, *, pause_after: int = -1, pause_s: float = 0.0) -> str:
    h = hashlib.sha256()
    done = 0
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
            done += len(chunk)
            if done == pause_after:
                time.sleep(pause_s)
    return h.hexdigest()


def test_dropped_imageio_connections_still_give_exact_bytes(
    sim: Any, faults: Any, tmp_path: Path
) -> None:
    m = ConfMount(sim, tmp_path, grace_period=0)
    try:
        path = disk_file(m.mnt, "myvm0", "myvm0_Disk1")
        want = sim.admin.disk_sha256(disk_id_of(m.mnt, "myvm0", "myvm0_Disk1"))
        faults.add_fault("drop-imageio", after_bytes=3 * MiB, times=3)
        assert sha_of(path) == want
    finally:
        m.umount()
    assert not live_transfers(sim)


def test_engine_5xx_while_creating_the_snapshot_is_retried(
    sim: Any, faults: Any, tmp_path: Path
) -> None:
    before = snapshot_ids(sim, "db01")
    m = ConfMount(sim, tmp_path, grace_period=0, system_interval=0.2)
    try:
        faults.add_fault(
            "engine-error",
            method="POST",
            path="/ovirt-engine/api/vms/*/snapshots",
            status=503,
            times=2,
        )
        set_dir = m.mnt / "vms/db01/@rhv"
        manifest = json.loads((set_dir / "manifest.json").read_bytes())  # creates nothing
        image = manifest["disks"][0]["file"]
        with open(set_dir / image, "rb") as f:  # the first image read takes the snapshot
            f.read(4096)
            new = set(snapshot_ids(sim, "db01")) - set(before)
            assert len(new) == 1  # exactly one despite the retries
            conn = sim.sdk_connection()
            try:
                vms = conn.system_service().vms_service()
                vm = vms.list(search="name=db01")[0]
                snaps = vms.vm_service(vm.id).snapshots_service()
                description = snaps.snapshot_service(new.pop()).get().description
            finally:
                conn.close()
            assert manifest["point_in_time"]["read_id"] in description
    finally:
        m.umount()
    assert snapshot_ids(sim, "db01") == before


def test_reader_pausing_longer_than_the_inactivity_timeout(
    sim: Any, faults: Any, tmp_path: Path
) -> None:
    m = ConfMount(sim, tmp_path, grace_period=0, inactivity_timeout=2)
    try:
        path = disk_file(m.mnt, "myvm", "mydisk")
        want = sim.admin.disk_sha256(disk_id_of(m.mnt, "myvm", "mydisk"))
        assert sha_of(path, pause_after=8 * MiB, pause_s=5.0) == want
    finally:
        m.umount()
    assert not live_transfers(sim)


def test_expired_ticket_is_recreated_transparently(sim: Any, faults: Any, tmp_path: Path) -> None:
    m = ConfMount(sim, tmp_path, grace_period=0)
    try:
        path = disk_file(m.mnt, "myvm", "mydisk")
        want = sim.admin.disk_sha256(disk_id_of(m.mnt, "myvm", "mydisk"))
        h = hashlib.sha256()
        with open(path, "rb") as f:
            h.update(f.read(4 * MiB))
            sessions = m.status()["sessions"]["sessions"]
            transfer = next(
                d["transfer_id"] for s in sessions for d in s["disks"] if d["transfer_id"]
            )
            faults.add_fault("expire-ticket", transfer=transfer)
            while chunk := f.read(MiB):
                h.update(chunk)
        assert h.hexdigest() == want
    finally:
        m.umount()
    assert not live_transfers(sim)


def test_daemonizing_mount_fails_with_one_clear_line(tmp_path: Path) -> None:
    conf = tmp_path / "ovirt-img.conf"
    conf.write_text(
        "[nowhere]\nengine_url = https://127.0.0.1:9\nusername = admin@internal\n"
        "password = x\nsystem_tries = 1\nsystem_timeout = 5\n"
    )
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    result = subprocess.run(
        [*RHVFS, "mount", "-c", "nowhere", "--config-file", str(conf), "--state-dir", str(tmp_path), str(mnt)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith("rhvfs: mount failed: engine unavailable")
    assert not os.path.ismount(mnt)


@pytest.mark.guestfs
@pytest.mark.skipif(
    # scripts/test.sh installs libguestfs, so CI never skips this; a developer
    # box without it may.
    shutil.which("virt-ls") is None and not os.environ.get("CI"),
    reason="libguestfs-tools not installed",
)
def test_virt_ls_reads_a_disk_straight_from_the_mount(sim: Any, tmp_path: Path) -> None:
    m = ConfMount(sim, tmp_path, grace_period=10)  # libguestfs opens the image several times
    try:
        env = {
            **os.environ,
            "LIBGUESTFS_BACKEND": "direct",
            "LIBGUESTFS_BACKEND_SETTINGS": "force_tcg",
        }
        # web01_os: a guest disk no other test writes into (the shared simulator is shared)
        disk = disk_file(m.mnt, "web01", "web01_os")
        result = subprocess.run(
            ["virt-ls", "-a", str(disk), "-m", "/dev/sda1", "/etc"],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
        assert {"hostname", "os-release", "motd"} <= set(
            result.stdout.split()
        )  # the sample guest's /etc
    finally:
        m.umount()
