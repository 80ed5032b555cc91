"""Acceptance through real FUSE mounts of the simulator (issue 3).

Each mount is made with the public contract ``rhvfs mount -c sim --config-file
.../ovirt-img.conf MNT`` (the daemonizing path: it returns once the mount
answers) and stopped with ``rhvfs umount``; data is checked against the
simulator's own volumes (``SimAdmin.disk_sha256``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.data import MiB, sha256_file
from tests.support.mounts import RHVFS, SimMount, restic_summary
from tests.support.sim import live_transfers, snapshot_ids
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    return path


@pytest.fixture
def mounted(sim: Any, tmp_path: Path, state_dir: Path) -> Iterator[SimMount]:
    m = SimMount(sim, tmp_path / "mnt", state_dir, "--grace-period", "1")
    try:
        yield m
    finally:
        m.umount()


def sdk_vm(sim: Any, name: str) -> tuple[Any, Any]:
    conn = sim.sdk_connection()
    vms = conn.system_service().vms_service()
    vm = vms.list(search=f"name={name}")[0]
    return conn, vms.vm_service(vm.id)


def disks_of(sim: Any, vm_name: str) -> dict[str, str]:
    """disk id -> alias"""
    conn, vm_service = sdk_vm(sim, vm_name)
    try:
        out = {}
        for att in vm_service.disk_attachments_service().list():
            disk = conn.follow_link(att.disk)
            out[disk.id] = disk.alias
        return out
    finally:
        conn.close()


def set_images(set_dir: Path) -> dict[str, str]:
    """image file name -> disk id, from the set's manifest"""
    manifest = json.loads((set_dir / "manifest.json").read_bytes())
    return {d["file"]: d["id"] for d in manifest["disks"]}


def test_tree_of_the_sample_inventory(mounted: SimMount) -> None:
    mnt = mounted.mnt
    assert {"web01", "myvm", "app01", "db01"} <= set(os.listdir(mnt / "vms"))
    assert sorted(os.listdir(mnt / "tags/production")) == ["db01", "web01"]
    assert os.path.realpath(mnt / "clusters/mycluster/vms/web01") == str(mnt / "vms/web01")
    assert os.path.realpath(mnt / "datacenters/Default/clusters/mycluster/vms/web01") == str(
        mnt / "vms/web01"
    )
    doc = json.loads((mnt / "vms/web01/vm.json").read_bytes())
    assert (doc["name"], doc["status"], len(doc["disks"])) == ("web01", "up", 3)
    # raw preallocated, qcow2 without and with incremental backup (the sample's web01)
    modes = {d["alias"]: (d["format"], d["backup_mode"]) for d in doc["disks"]}
    assert modes == {
        "web01_os": ("raw", "full"),
        "web01_data": ("cow", "full"),
        "web01_logs": ("cow", "incremental"),
    }
    assert doc["sets"]["@rhv"]["method"] == "backup"
    assert doc["sets"]["@rhv-incremental"]["changes_only"] is True
    dc = mnt / "datacenters/Default"
    assert os.path.realpath(dc / "vms/web01") == str(mnt / "vms/web01")
    for sub in ("hosts", "templates", "vms"):
        names = os.listdir(dc / sub)
        assert names and set(names) <= set(os.listdir(mnt / sub)), sub
        assert all(os.path.realpath(dc / sub / n) == str(mnt / sub / n) for n in names)
    status = json.loads((mnt / ".rhvfs/status.json").read_bytes())
    assert status["engine"] == {"name": "oVirt Engine", "version": "4.5.5-1.el8"}
    listing = os.listdir(mnt / "vms/web01/@rhv")
    assert listing[:3] == ["vm.ovf", "vm.xml", "manifest.json"]
    assert len(listing) == 6
    for name in listing[3:]:
        st = os.stat(mnt / "vms/web01/@rhv" / name)
        assert st.st_size >= 256 * MiB and st.st_blocks > 0
    with pytest.raises(OSError) as e:
        (mnt / "vms/web01/vm.json").write_text("x")
    assert e.value.errno == errno.EROFS


def test_tar_of_running_vm_is_point_in_time_and_leaves_nothing(
    sim: Any, mounted: SimMount, tmp_path: Path
) -> None:
    before = snapshot_ids(sim, "web01")
    disks = disks_of(sim, "web01")
    assert len(disks) == 3
    want = {disk_id: sim.admin.disk_sha256(disk_id) for disk_id in disks}
    set_dir = mounted.mnt / "vms/web01/@rhv"
    # Reading the configuration creates nothing; the first image read by the backup run
    # takes the snapshot (issue 9): hold one open, as a tool in the middle of a set would.
    # (found by name: a read of manifest.json by this process would make tar's read of it
    # the start of another backup run)
    first_image = sorted(n for n in os.listdir(set_dir) if n.endswith(".raw"))[0]
    with open(set_dir / first_image, "rb") as hold:  # the snapshot is taken now
        hold.read(4096)
        # the guest keeps writing after the snapshot: the backup must not see it
        data_disk = next(d for d, alias in disks.items() if alias == "web01_data")
        sim.admin.guest_write(disk=data_disk, offset=5 * MiB, data=b"after the snapshot" * 1000)
        try:
            assert sim.admin.disk_sha256(data_disk) != want[data_disk]
            subprocess.run(
                ["tar", "-cSf", str(tmp_path / "set.tar"), "-C", str(set_dir.parent), "@rhv"],
                check=True,
            )
        finally:
            # undo the guest write on the shared simulator (the backed-up bytes hold the original)
            out = tmp_path / "x"
            out.mkdir()
            subprocess.run(["tar", "-xf", str(tmp_path / "set.tar"), "-C", str(out)], check=True)
            images = set_images(out / "@rhv")
            original_file = next(f for f, d in images.items() if d == data_disk)
            with open(out / "@rhv" / original_file, "rb") as f:
                f.seek(5 * MiB)
                original = f.read(len(b"after the snapshot" * 1000))
            sim.admin.guest_write(disk=data_disk, offset=5 * MiB, data=original)
    got = {disk_id: sha256_file(out / "@rhv" / name) for name, disk_id in images.items()}
    assert got == want
    assert sim.admin.disk_sha256(data_disk) == want[data_disk]
    mounted.umount()  # waits for the session to end
    assert snapshot_ids(sim, "web01") == before
    assert live_transfers(sim) == []


def test_cp_and_rsync_give_the_simulators_images(
    sim: Any, mounted: SimMount, tmp_path: Path
) -> None:
    set_dir = mounted.mnt / "vms/myvm0/@rhv"
    images = set_images(set_dir)
    want = {name: sim.admin.disk_sha256(disk_id) for name, disk_id in images.items()}
    subprocess.run(["cp", "-a", str(set_dir), str(tmp_path / "cp")], check=True)
    subprocess.run(["rsync", "-a", f"{set_dir}/", str(tmp_path / "rsync")], check=True)
    for copy in (tmp_path / "cp", tmp_path / "rsync"):
        assert {name: sha256_file(copy / name) for name in images} == want
        assert sorted(os.listdir(copy)) == sorted(os.listdir(set_dir))


def test_tar_of_a_tag_backs_up_exactly_the_tagged_vms(mounted: SimMount, tmp_path: Path) -> None:
    tags = mounted.mnt / "tags"
    result = subprocess.run(
        "tar -cSf %s mytag/*/@rhv" % (tmp_path / "tag.tar"),
        shell=True,
        cwd=tags,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    names = subprocess.run(
        ["tar", "-tf", str(tmp_path / "tag.tar")], capture_output=True, text=True, check=True
    )
    vms = {line.split("/")[1] for line in names.stdout.splitlines()}
    assert vms == {"myvm", "myvm0"}
    assert sum(1 for line in names.stdout.splitlines() if line.endswith(".raw")) == 3


def test_restic_twice_over_a_down_vm_reports_files_unchanged(
    sim: Any, tmp_path: Path, state_dir: Path
) -> None:
    repo = tmp_path / "repo"
    env = {**os.environ, "RESTIC_PASSWORD": "test"}
    subprocess.run(["restic", "init", "-r", str(repo)], check=True, capture_output=True, env=env)
    summaries = []
    for _ in range(2):  # two mounts: inode numbers, mtime, ctime and size must not change
        m = SimMount(sim, tmp_path / "mnt", state_dir, "--grace-period", "0")
        try:
            summaries.append(restic_summary(repo, m.mnt / "vms/myvm0/@rhv"))
        finally:
            m.umount()
    assert summaries[0]["files_new"] == 4
    assert (
        summaries[1]["files_new"],
        summaries[1]["files_changed"],
        summaries[1]["files_unmodified"],
    ) == (0, 0, 4)


def test_suspended_vm_gets_ebusy_and_a_status_entry(mounted: SimMount) -> None:
    set_dir = mounted.mnt / "vms/app01/@rhv"
    image = next(n for n in os.listdir(set_dir) if n.endswith(".raw"))
    started = time.monotonic()
    with pytest.raises(OSError) as e:
        (set_dir / image).read_bytes()
    assert e.value.errno == errno.EBUSY
    assert time.monotonic() - started < 30
    assert "suspended" in json.dumps(mounted.status()["sessions"])


def kill_mid_backup(sim: Any, mnt: Path, state_dir: Path, vm: str) -> None:
    """Mount, start reading ``vm``'s set, SIGKILL the mount process, detach the dead mount."""
    first = SimMount(sim, mnt, state_dir)
    try:
        set_dir = first.mnt / "vms" / vm / "@rhv"
        image = next(n for n in os.listdir(set_dir) if n.endswith(".raw"))
        f = open(set_dir / image, "rb")  # noqa: SIM115 - closed after the kill, on a dead mount
        f.read(MiB)  # session started, a transfer is live
        assert live_transfers(sim)
        os.kill(first.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            f.close()  # ECONNABORTED: the mount stays visibly broken, as after any crash
        assert wait_until(lambda: not os.path.exists(f"/proc/{first.pid}"), 10)
        with pytest.raises(OSError) as e:
            os.listdir(first.mnt)
        assert e.value.errno == errno.ENOTCONN  # not unmounted: never an empty directory
    finally:
        if first.pid and os.path.exists(f"/proc/{first.pid}"):
            os.kill(first.pid, signal.SIGKILL)
        # `rhvfs umount` detaches a mount whose process is gone
        subprocess.run([*RHVFS, "umount", str(first.mnt)], check=True, timeout=60)


def test_sigkilled_mount_leftovers_are_removed_by_the_next_mount(
    sim: Any, tmp_path: Path, state_dir: Path
) -> None:
    before = snapshot_ids(sim, "db01")
    kill_mid_backup(sim, tmp_path / "mnt", state_dir, "db01")
    assert len(snapshot_ids(sim, "db01")) == len(before) + 1
    second = SimMount(sim, tmp_path / "mnt", state_dir)
    try:
        assert wait_until(
            lambda: snapshot_ids(sim, "db01") == before and not live_transfers(sim), 60
        )
    finally:
        second.umount()


def test_rhvfs_gc_dry_run_then_removal(sim: Any, tmp_path: Path, state_dir: Path) -> None:
    before = snapshot_ids(sim, "db01")
    kill_mid_backup(sim, tmp_path / "mnt", state_dir, "db01")
    leftover = set(snapshot_ids(sim, "db01")) - set(before)
    assert len(leftover) == 1
    gc = [
        *RHVFS,
        "gc",
        "-c",
        sim.section,
        "--config-file",
        str(sim.conf_file),
        "--state-dir",
        str(state_dir),
    ]
    dry = subprocess.run([*gc, "--dry-run"], capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr
    assert next(iter(leftover)) in dry.stdout
    assert set(snapshot_ids(sim, "db01")) - set(before) == leftover  # dry run removed nothing
    done = subprocess.run(gc, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert next(iter(leftover)) in done.stdout
    assert snapshot_ids(sim, "db01") == before
    assert not live_transfers(sim)
    again = subprocess.run(gc, capture_output=True, text=True, timeout=120)
    assert again.stdout.strip() == "nothing to clean up"


def test_umount_during_a_read_cleans_up(sim: Any, tmp_path: Path, state_dir: Path) -> None:
    before = snapshot_ids(sim, "web01")
    m = SimMount(sim, tmp_path / "mnt", state_dir, "--grace-period", "30")
    try:
        image = next(
            p for p in (m.mnt / "vms/web01/@rhv").iterdir() if p.name.startswith("web01_data")
        )
        slow_reader = (
            "import sys, time\n"
            "with open(sys.argv[1], 'rb') as f:\n"
            "    print('reading', flush=True)\n"
            "    while f.read(1 << 20):\n"
            "        time.sleep(0.05)\n"
        )
        reader = subprocess.Popen(
            [sys.executable, "-c", slow_reader, str(image)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert reader.stdout is not None and reader.stdout.readline() == "reading\n"
        time.sleep(0.5)
        assert len(snapshot_ids(sim, "web01")) == len(before) + 1
    finally:
        m.umount()  # returns only after the session is gone, even with a reader in the middle
    _, err = reader.communicate(timeout=60)
    assert reader.returncode != 0, err  # the reader sees an error, never silently short data
    assert snapshot_ids(sim, "web01") == before
    assert live_transfers(sim) == []


def test_template_set_gives_the_template_disk(sim: Any, mounted: SimMount) -> None:
    set_dir = mounted.mnt / "templates/mytemplate/@rhv"
    assert os.listdir(set_dir)[:3] == ["vm.ovf", "vm.xml", "manifest.json"]
    images = set_images(set_dir)
    assert len(images) == 1
    for name, disk_id in images.items():
        assert sha256_file(set_dir / name) == sim.admin.disk_sha256(disk_id)


def test_paused_vm_set_reads_the_simulators_disk(sim: Any, mounted: SimMount) -> None:
    set_dir = mounted.mnt / "vms/db01/@rhv"
    images = set_images(set_dir)
    assert len(images) == 1
    for name, disk_id in images.items():
        assert sha256_file(set_dir / name) == sim.admin.disk_sha256(disk_id)


def test_reopen_right_after_close_with_no_grace_period(
    sim: Any, tmp_path: Path, state_dir: Path
) -> None:
    """qemu-img opens, closes and reopens at once: with grace 0 the reopen must not join a
    session that is ending (it used to fail with EIO/EBUSY every time)."""
    m = SimMount(sim, tmp_path / "mnt", state_dir, "--grace-period", "0")
    try:
        image = m.mnt / "vms/myvm0/disks/myvm0_Disk1.raw"
        for _ in range(3):
            info = subprocess.run(
                ["qemu-img", "info", "--output=json", "-f", "raw", str(image)],
                capture_output=True,
                text=True,
            )
            assert info.returncode == 0, info.stderr
            assert json.loads(info.stdout)["virtual-size"] == 256 * MiB
            probe = subprocess.run(["qemu-img", "info", str(image)], capture_output=True, text=True)
            assert probe.returncode == 0, probe.stderr
    finally:
        m.umount()
    assert not live_transfers(sim)
