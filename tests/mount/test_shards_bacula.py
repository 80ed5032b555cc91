"""Scale-out with Bacula (issue 12): two backup hosts, each mounting its shard of the engine's
VMs, driven by one Director with one File Daemon per host -- here on one machine: two
mounts (``--shard 0/2``, ``--shard 1/2``) and two File Daemons on different ports.

Each shard's job saves every ``vms/*/@rhv`` of its host's mount; the list is made by the
File Daemon when the job runs (``File = "\\|list-sets MOUNT"``, as in the README), so a
VM created later lands in exactly one job. Restoring both jobs gives every selected VM
exactly once, each disk equal to the simulator's (sha256).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from rhvfs.selection import shard_of
from rhvfs.sim.scale import extra_vm_name
from tests.support.bacula import BaculaRig, FileSet
from tests.support.data import sha256_file
from tests.support.mounts import SimMount
from tests.support.sim import SimProcess

pytestmark = pytest.mark.slow
MiB = 1024 * 1024
N_VMS = 12
LIST_SETS = """#!/bin/sh
# The backup sets of one rhvfs mount, one per line: what a shard's Bacula job saves.
for d in "$1"/vms/*/@rhv; do [ -d "$d" ] && echo "$d"; done
"""


def write_guest_data(sim: SimProcess) -> dict[str, dict[str, str]]:
    """Distinct data in each disk of the extra VMs; vm name -> disk id -> sha256."""
    conn = sim.sdk_connection()
    try:
        vms = conn.system_service().vms_service().list(follow="disk_attachments.disk")
    finally:
        conn.close()
    names = {extra_vm_name(i, N_VMS) for i in range(N_VMS)}
    out: dict[str, dict[str, str]] = {}
    for vm in vms:
        if vm.name in names:
            out[vm.name] = {}
            for n, att in enumerate(vm.disk_attachments):
                data = hashlib.sha256(f"{vm.name}/{n}".encode()).digest() * 4096  # 128 KiB
                sim.admin.guest_write(disk=att.disk.id, offset=2 * MiB * (n + 1), data=data)
                out[vm.name][att.disk.id] = sim.admin.disk_sha256(att.disk.id)
    assert sorted(out) == sorted(names)
    return out


def restored_sets(root: Path) -> dict[str, dict[str, str]]:
    """vm name -> disk id -> sha256 of each set restored under ``root`` (``vms/<vm>/@rhv``)."""
    out: dict[str, dict[str, str]] = {}
    for manifest_path in root.rglob("@rhv/manifest.json"):
        set_dir = manifest_path.parent
        manifest = json.loads(manifest_path.read_text())
        vm = set_dir.parent.name
        assert vm not in out, f"{vm} restored twice"
        out[vm] = {d["id"]: sha256_file(set_dir / d["file"]) for d in manifest["disks"]}
    return out


def test_two_shards_two_file_daemons_one_director(
    sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    sim = sim_factory(serve_args=("--extra-vms", str(N_VMS)))
    want = write_guest_data(sim)
    script = tmp_path / "list-sets"
    script.write_text(LIST_SETS)
    script.chmod(0o755)
    mounts: list[SimMount] = []
    try:
        for shard in range(2):
            state = tmp_path / f"state{shard}"
            state.mkdir()
            mounts.append(
                SimMount(
                    sim,
                    tmp_path / f"mnt{shard}",
                    state,
                    "--shard",
                    f"{shard}/2",
                    "--vms",
                    "vm-.*",
                    "--grace-period",
                    "1",
                )  # fmt: skip
            )
        shown = [sorted(os.listdir(m.mnt / "vms")) for m in mounts]
        assert sorted(shown[0] + shown[1]) == sorted(want)  # none missing, none in both
        assert shown[0] and shown[1]
        for shard, names in enumerate(shown):
            ids = [json.loads((mounts[shard].mnt / "vms" / n / "vm.json").read_text())["id"]
                   for n in names]  # fmt: skip
            assert all(shard_of(i, 2) == shard for i in ids)
            assert mounts[shard].status()["selection"] == {"vms": "vm-.*", "shard": f"{shard}/2"}

        with BaculaRig(tmp_path / "bacula", fd_ports=2) as rig:
            jobs = []
            for shard, m in enumerate(mounts):
                fileset = FileSet(
                    [f"\\|{script} {m.mnt}"],
                    options={"signature": "SHA1", "sparse": "yes"},
                )
                jobs.append(rig.start_backup(f"rhv-shard{shard}", fileset, fd=shard))
            results = [rig.wait_job(j) for j in jobs]  # both shards ran at the same time
            for r in results:
                assert r.ok, r.describe() + "\n" + r.log
            got: dict[str, dict[str, str]] = {}
            for shard, r in enumerate(results):
                where = tmp_path / f"restore{shard}"
                restored = rig.run_restore(r.jobid, where, fd=shard)
                assert restored.ok, restored.describe()
                sets = restored_sets(where)
                assert sorted(sets) == shown[shard], shard
                got.update(sets)
        assert got == want
    finally:
        for m in mounts:
            m.umount()
