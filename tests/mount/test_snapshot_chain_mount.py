"""Snapshot-chain incrementals through a real FUSE mount of a private simulator (issue 14.2).

web01 (up) has a raw preallocated disk, a qcow2 disk without backup and a qcow2
disk with incremental backup. Three sets of ``@rhv-incremental/`` are copied
with tar (a full one, then two with guest writes on every disk before them):
the incremental sets hold only the written data of each disk (qcow2 deltas on
the previous set's files), at most one rhvfs snapshot stays on the VM between
sets, and the three sets restored together through ``restore/<name>/`` give a
VM whose disks have the sha256 of the original disks at the last set. After
the mount ended, ``rhvfs gc`` and the next mount leave the kept snapshot alone
and the chain goes on.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rhvfs import ARTIFACT_MARKER
from rhvfs.backupset import read_allocation
from tests.support.data import sha256_image
from tests.support.mounts import IncrementalMount, extract, manifest_of, restore_status
from tests.support.sim import (
    SimProcess,
    marked_snapshot_ids,
    remove_vm,
    running_sim,
    vm_details,
)

pytestmark = pytest.mark.slow
RHVFS = [sys.executable, "-m", "rhvfs.cli"]
MiB = 1024 * 1024
VM = "web01"
#: per set: disk alias -> (offset, size, pattern) of a guest write before the set
WRITES: list[dict[str, tuple[int, int, int]]] = [
    {},
    {"web01_os": (8 * MiB, 2 * MiB, 0x71), "web01_data": (MiB, 64 * 1024, 0x72)},
    {"web01_os": (40 * MiB, MiB, 0x73), "web01_logs": (3 * MiB, 3 * MiB, 0x74)},
]


class Sets:
    def __init__(self, sim: SimProcess, mount: IncrementalMount, out: Path) -> None:
        self.sim, self.mount, self.out = sim, mount, out
        self.vm_id = ""
        self.disks: dict[str, str] = {}  # alias -> disk id
        self.names: list[list[str]] = []  # per set: its files
        self.manifests: list[dict[str, Any]] = []
        self.sha: list[dict[str, str]] = []  # per set: alias -> sha256 when it was read
        self.snapshots: list[list[str]] = []  # per set: rhvfs snapshots after it


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sets]:
    base = tmp_path_factory.mktemp("snapchain")
    with running_sim(base / "sim", listing_ttl=0.5) as sim:
        (base / "state").mkdir()
        mount = IncrementalMount(sim, base / "mnt", base / "state", vm=VM)
        try:
            s = Sets(sim, mount, base / "sets")
            s.out.mkdir()
            conn = sim.sdk_connection()
            try:
                vms = conn.system_service().vms_service()
                s.vm_id = vms.list(search=f"name={VM}")[0].id
                atts = vms.vm_service(s.vm_id).disk_attachments_service().list()
                disks = conn.system_service().disks_service()
                s.disks = {disks.disk_service(a.disk.id).get().alias: a.disk.id for a in atts}
            finally:
                conn.close()
            for n, writes in enumerate(WRITES):
                for alias, (offset, size, pattern) in writes.items():
                    sim.admin.guest_write(
                        vm=VM, disk=s.disks[alias], offset=offset, size=size, pattern=pattern
                    )
                tar = base / f"set{n}.tar"
                mount.tar_set("@rhv-incremental", tar, s.vm_id)
                s.sha.append({a: sim.admin.disk_sha256(d) for a, d in s.disks.items()})
                s.names.append(extract(tar, s.out))
                s.manifests.append(manifest_of(s.names[-1], s.out))
                s.snapshots.append(marked_snapshot_ids(sim, s.vm_id, ARTIFACT_MARKER))
            yield s
        finally:
            mount.umount()


def test_incremental_sets_hold_only_the_written_data(sets: Sets) -> None:
    s = sets
    assert [m["set_type"] for m in s.manifests] == ["full", "incremental", "incremental"]
    for n, m in enumerate(s.manifests):
        # one kept snapshot between sets, a new one each set, named in the set's manifest
        assert s.snapshots[n] == [m["snapshot_id"]]
        if n:
            assert m["parent_set"]["set_id"] == s.manifests[n - 1]["set_id"]
            assert m["snapshot_id"] != s.manifests[n - 1]["snapshot_id"]
        files = {d["alias"]: d for d in m["disks"]}
        assert set(files) == set(s.disks)
        for alias, d in files.items():
            path = s.out / d["file"]
            if n == 0:
                assert d["file_format"] == "raw" and path.stat().st_size == d["size"]
                continue
            assert (d["backup_mode"], d["file_format"]) == ("incremental", "qcow2")
            written = WRITES[n].get(alias, (0, 0, 0))[1]
            data = sum(a.length for a in read_allocation(path) if a.kind == "data")
            assert data == written, alias
            assert path.stat().st_size < written + MiB, alias  # the data and its metadata
        for alias in WRITES[n]:  # each set is another point in time of the disks
            assert s.sha[n][alias] != s.sha[n - 1][alias]


def test_the_chain_restores_the_disks_of_the_last_set(sets: Sets, tmp_path: Path) -> None:
    s = sets
    archive = tmp_path / "chain.tar"
    files = [name for names in s.names for name in names]
    subprocess.run(["tar", "-cSf", str(archive), "-C", str(s.out), *files], check=True)
    target = s.mount.mnt / "restore" / "w"
    target.mkdir()
    try:
        untar = subprocess.run(
            ["tar", "-xf", str(archive), "-C", str(target)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        status = restore_status(s.mount, "w", timeout_s=600)
        assert status["phase"] == "done", (status["error"], status, untar.stderr[-2000:])
        assert untar.returncode == 0, untar.stderr
        assert status["chain"]["order"] == [f"{m['set_type']} {m['set_id']}" for m in s.manifests]
        restored = vm_details(s.sim, "w")
        assert restored is not None and restored["id"] == status["vm_id"]
        by_alias = {d["alias"]: d["id"] for d in restored["disks"]}
        assert set(by_alias) == set(s.disks)
        for alias, disk_id in by_alias.items():
            assert s.sim.admin.disk_sha256(disk_id) == s.sha[-1][alias], alias
    finally:
        remove_vm(s.sim, "w")


def test_gc_and_a_new_mount_keep_the_snapshot_and_continue_the_chain(sets: Sets) -> None:
    """After the mount that took it ended, the kept snapshot is a dead mount's artifact:
    ``rhvfs gc`` and the next mount's start-up cleanup must leave it alone (the chain
    state names it), so the next set is still an incremental one."""
    s = sets
    [kept] = s.snapshots[-1]
    s.mount.umount()
    gc = subprocess.run(
        [
            *RHVFS,
            "gc",
            "-c",
            s.sim.section,
            "--config-file",
            str(s.sim.conf_file),
            "--state-dir",
            str(s.mount.state_dir),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert gc.returncode == 0, gc.stderr
    assert f"left alone: snapshot {kept} of VM {s.vm_id} (kept as the base" in gc.stdout
    assert marked_snapshot_ids(s.sim, s.vm_id, ARTIFACT_MARKER) == [kept]

    mount = IncrementalMount(s.sim, s.mount.mnt, s.mount.state_dir, vm=VM)
    try:
        offset, size = 100 * MiB, MiB
        disk = s.disks["web01_os"]
        s.sim.admin.guest_write(vm=VM, disk=disk, offset=offset, size=size, pattern=0x75)
        tar = s.out.parent / "set3.tar"
        mount.tar_set("@rhv-incremental", tar, s.vm_id)
        names = extract(tar, s.out)
        m = manifest_of(names, s.out)
        assert (m["set_type"], m["parent_set"]["set_id"]) == (
            "incremental",
            s.manifests[-1]["set_id"],
        )
        image = next(d["file"] for d in m["disks"] if d["id"] == disk)
        assert sum(a.length for a in read_allocation(s.out / image) if a.kind == "data") == size
        assert sha256_image(s.out / image) == s.sim.admin.disk_sha256(disk)
        assert marked_snapshot_ids(s.sim, s.vm_id, ARTIFACT_MARKER) == [m["snapshot_id"]] != [kept]
    finally:
        mount.umount()
