"""A backup is the VM as it was when the tool started (issue 9), through real mounts.

A private simulator (these tests write into guests), mounts with a grace period
long enough that the old "join the session still in its grace period" bug
would show. Every check compares bytes with the simulator's own sha256 of the
disk at that moment.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import start_sim

pytestmark = pytest.mark.slow
RHVFS = [sys.executable, "-m", "rhvfs.cli"]
MiB = 1024 * 1024


class Mount:
    def __init__(self, sim: Any, mnt: Path, state_dir: Path, *extra: str) -> None:
        self.sim, self.mnt = sim, mnt
        mnt.mkdir(exist_ok=True)
        state_dir.mkdir(exist_ok=True)
        argv = [
            *RHVFS, "mount", "-c", sim.section, "--config-file", str(sim.conf_file),
            "--state-dir", str(state_dir), *extra, str(mnt),
        ]  # fmt: skip
        r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads((self.mnt / ".rhvfs/status.json").read_bytes())
        return doc

    def umount(self) -> None:
        if os.path.ismount(self.mnt):
            subprocess.run([*RHVFS, "umount", str(self.mnt)], check=True, timeout=300)


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    s = start_sim(tmp_path_factory.mktemp("pitsim"), sample=True, delay_s=0.0)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def mount(sim: Any, tmp_path: Path) -> Iterator[Mount]:
    m = Mount(sim, tmp_path / "mnt", tmp_path / "state", "--grace-period", "10")
    try:
        yield m
    finally:
        m.umount()


def file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def vm_disks(sim: Any, name: str) -> dict[str, str]:
    """alias -> disk id"""
    conn = sim.sdk_connection()
    try:
        vms = conn.system_service().vms_service()
        vm = vms.list(search=f"name={name}")[0]
        out = {}
        for att in vms.vm_service(vm.id).disk_attachments_service().list():
            disk = conn.follow_link(att.disk)
            out[disk.alias] = disk.id
        return out
    finally:
        conn.close()


def engine_artifacts(sim: Any, name: str) -> tuple[list[str], list[str]]:
    """(snapshot ids, backup ids) of VM ``name``"""
    conn = sim.sdk_connection()
    try:
        vms = conn.system_service().vms_service()
        service = vms.vm_service(vms.list(search=f"name={name}")[0].id)
        snaps = sorted(s.id for s in service.snapshots_service().list())
        backups = sorted(b.id for b in service.backups_service().list())
        return snaps, backups
    finally:
        conn.close()


def set_shas(set_dir: Path) -> dict[str, str]:
    """disk id -> sha256 of its image in a copied set"""
    manifest = json.loads((set_dir / "manifest.json").read_bytes())
    return {d["id"]: file_sha(set_dir / d["file"]) for d in manifest["disks"]}


def tar_set(mnt: Path, vm: str, into: Path) -> Path:
    into.mkdir()
    tar = into.with_suffix(".tar")
    subprocess.run(["tar", "-cSf", str(tar), "-C", str(mnt / "vms" / vm), "@rhv"], check=True)
    subprocess.run(["tar", "-xSf", str(tar), "-C", str(into)], check=True)
    return into / "@rhv"


@pytest.mark.parametrize("vm", ["web01", "myvm0"])
def test_back_to_back_tar_around_a_guest_write(
    sim: Any, mount: Mount, tmp_path: Path, vm: str
) -> None:
    """web01 is up with an incremental-enabled disk (read from an engine backup); myvm0 is
    down (read from a snapshot). The second tar starts right after the first, well inside
    the grace period, and must hold the write."""
    disks = vm_disks(sim, vm)
    first = tar_set(mount.mnt, vm, tmp_path / "first")
    assert set_shas(first) == {d: sim.admin.disk_sha256(d) for d in disks.values()}
    target = next(iter(sorted(disks.values())))
    sim.admin.guest_write(disk=target, offset=3 * MiB, data=b"written between the runs" * 512)
    after = {d: sim.admin.disk_sha256(d) for d in disks.values()}
    second = tar_set(mount.mnt, vm, tmp_path / "second")
    assert set_shas(second) == after
    m1 = json.loads((first / "manifest.json").read_bytes())
    m2 = json.loads((second / "manifest.json").read_bytes())
    assert m1["point_in_time"]["read_id"] != m2["point_in_time"]["read_id"]


READER = textwrap.dedent(
    """
    import hashlib, json, os, sys, time
    set_dir, first, second, pause, marker = sys.argv[1:6]
    out = {}
    def sha(name):
        h = hashlib.sha256()
        with open(os.path.join(set_dir, name), "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
        return h.hexdigest()
    out["manifest"] = json.load(open(os.path.join(set_dir, "manifest.json")))
    out["first"] = sha(first)
    open(marker, "w").close()
    time.sleep(float(pause))
    try:
        out["second"] = sha(second)
    except OSError as e:
        out["errno"] = e.errno
    print(json.dumps(out))
    """
)


def run_reader(set_dir: Path, first: str, second: str, pause_s: float, marker: Path) -> Any:
    return subprocess.Popen(
        [sys.executable, "-c", READER, str(set_dir), first, second, str(pause_s), str(marker)],
        stdout=subprocess.PIPE,
        text=True,
    )


def wait_file(path: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_pauses_keep_one_point_in_time_and_the_limit_refuses_mixing(
    sim: Any, tmp_path: Path
) -> None:
    m = Mount(
        sim, tmp_path / "mnt", tmp_path / "state",
        "--grace-period", "1", "--read-idle-limit", "6",
    )  # fmt: skip
    try:
        set_dir = m.mnt / "vms/web01/@rhv"
        manifest = json.loads((set_dir / "manifest.json").read_bytes())
        files = {d["alias"]: (d["file"], d["id"]) for d in manifest["disks"]}
        (first, first_id), (second, second_id) = files["web01_os"], files["web01_data"]
        before = sim.admin.disk_sha256(second_id)
        # 1: a pause of 3x the grace period between two images, with a guest write during it
        marker = tmp_path / "first-read"
        reader = run_reader(set_dir, first, second, 3.5, marker)
        wait_file(marker)
        sim.admin.guest_write(disk=second_id, offset=7 * MiB, data=b"during the pause" * 4096)
        assert sim.admin.disk_sha256(second_id) != before
        out, _ = reader.communicate(timeout=300)
        got = json.loads(out)
        assert "errno" not in got, got
        assert got["first"] == sim.admin.disk_sha256(first_id)
        assert got["second"] == before  # the point in time of the first image, not later
        # 2: a new run (it reads a file the first run finished) waits past the idle limit
        marker2 = tmp_path / "second-read"
        reader = run_reader(set_dir, first, second, 8.0, marker2)
        wait_file(marker2)
        out, _ = reader.communicate(timeout=300)
        got = json.loads(out)
        assert got.get("errno") == errno.ESTALE, got
        errors = [e["message"] for e in m.status()["sessions"]["errors"]]
        assert any("point in time" in e for e in errors), errors
    finally:
        m.umount()


@pytest.mark.parametrize("vm", ["web01", "app01"])
def test_configuration_only_reads_create_nothing(sim: Any, mount: Mount, vm: str) -> None:
    """web01 is up (its @rhv/ data would come from an engine backup), app01 suspended."""
    before = engine_artifacts(sim, vm)
    set_dir = mount.mnt / "vms" / vm / "@rhv"
    ovf = (set_dir / "vm.ovf").read_bytes()
    doc = json.loads((set_dir / "manifest.json").read_bytes())
    xml = (set_dir / "vm.xml").read_bytes()
    time.sleep(1.0)
    assert engine_artifacts(sim, vm) == before
    conn = sim.sdk_connection()
    try:
        vms = conn.system_service().vms_service()
        entity = vms.list(search=f"name={vm}")[0]
        attachments = vms.vm_service(entity.id).disk_attachments_service().list()
    finally:
        conn.close()
    assert doc[doc["kind"]]["id"] == entity.id and doc[doc["kind"]]["name"] == vm
    assert {d["id"] for d in doc["disks"]} == {a.disk.id for a in attachments}
    assert f"<Name>{vm}</Name>".encode() in ovf
    assert f"<name>{vm}</name>".encode() in xml
    sessions = mount.status()["sessions"]
    assert sessions["sessions"] == [] and sessions["incremental"]["sessions"] == []
    [read] = [r for r in sessions["reads"] if r["owner"]["name"] == vm]
    assert read["files_complete"] == ["manifest.json", "vm.ovf", "vm.xml"]
