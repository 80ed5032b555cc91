"""Incremental and differential sets through real FUSE mounts of the simulator (issue 5).

Sets are copied with tar from ``vms/<vm>/@rhv-incremental/`` and
``@rhv-differential/`` while guest writes go through ``rhvfs sim guest-write``
(``SimAdmin.guest_write``). All tars are extracted into ONE directory (names
never collide), and each chain top is converted offline with qemu-img and
compared (sha256) with the simulator's own hash of the disk at that point.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ovirtsdk4
import pytest

from tests.support.data import sha256_file, sha256_image
from tests.support.mounts import IncrementalMount, extract, manifest_of
from tests.support.sim import SimProcess, running_sim
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow
RHVFS = [sys.executable, "-m", "rhvfs.cli"]
MiB = 1024 * 1024
VM = "myvm0"


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    """A private simulator: these tests write into guest disks, which must not disturb
    the shared one (other tests read the guests' filesystems)."""
    # short listing cache: a set outlives it by a second, and each set waits for its end
    with running_sim(tmp_path_factory.mktemp("incsim"), listing_ttl=0.5) as s:
        yield s


@pytest.fixture
def vm(sim: Any) -> Iterator[tuple[str, str]]:
    """(vm id, disk id) of the test VM; checkpoints created by the test are removed after it."""
    conn = sim.sdk_connection()
    try:
        vms = conn.system_service().vms_service()
        vm = vms.list(search=f"name={VM}")[0]
        service = vms.vm_service(vm.id)
        att = service.disk_attachments_service().list()[0]
        before = {c.id for c in service.checkpoints_service().list()}
        yield vm.id, att.disk.id
        for c in service.checkpoints_service().list():
            if c.id not in before:
                for _ in range(100):  # the disk may still be locked by a closing session
                    try:
                        service.checkpoints_service().checkpoint_service(c.id).remove()
                        break
                    except ovirtsdk4.Error:
                        time.sleep(0.2)
    finally:
        conn.close()


@pytest.fixture
def mount(sim: Any, tmp_path: Path) -> Iterator[IncrementalMount]:
    state = tmp_path / "state"
    state.mkdir()
    m = IncrementalMount(sim, tmp_path / "mnt", state, vm=VM)
    try:
        yield m
    finally:
        m.umount()


def test_full_incrementals_differential_via_tar(
    sim: Any, vm: tuple[str, str], mount: IncrementalMount, tmp_path: Path
) -> None:
    vm_id, disk_id = vm
    admin = sim.admin
    out = tmp_path / "all-sets"
    out.mkdir()
    # The set directories are reached by name but hidden from the VM's listing,
    # so a tree walk over the VM directory never starts an engine backup.
    listed = {p.name for p in (mount.mnt / "vms" / VM).iterdir()}
    assert {"@rhv", "disks", "vm.json"} <= listed
    assert not {"@rhv-incremental", "@rhv-differential", "@rhv-since"} & listed
    for name in ("@rhv-incremental", "@rhv-differential", "@rhv-since"):
        assert (mount.mnt / "vms" / VM / name).is_dir()

    mount.tar_set("@rhv-incremental", tmp_path / "s0.tar", vm_id)
    n0 = extract(tmp_path / "s0.tar", out)
    m0 = manifest_of(n0, out)
    assert m0["set_type"] == "full"
    full_img = next(n for n in n0 if n.endswith(".raw"))
    assert sha256_file(out / full_img) == admin.disk_sha256(disk_id)

    admin.guest_write(vm=VM, disk=disk_id, offset=20 * MiB, size=8 * MiB, pattern=0x61)
    mount.tar_set("@rhv-incremental", tmp_path / "s1.tar", vm_id)
    sha1 = admin.disk_sha256(disk_id)
    # the tar of the incremental holds the 8 MiB written plus metadata, not the 256 MiB disk
    tar1 = (tmp_path / "s1.tar").stat().st_size
    config_bytes = sum(
        (out / n).stat().st_size for n in n0 if not n.endswith(".raw")
    )  # the config files are the same size in every set
    assert 8 * MiB < tar1 < 8 * MiB + MiB + 2 * config_bytes, tar1
    n1 = extract(tmp_path / "s1.tar", out)
    m1 = manifest_of(n1, out)
    assert (m1["set_type"], m1["from_checkpoint_id"]) == ("incremental", m0["to_checkpoint_id"])

    admin.guest_write(vm=VM, disk=disk_id, offset=100 * MiB, size=1 * MiB, pattern=0x62)
    admin.guest_write(vm=VM, disk=disk_id, offset=21 * MiB, size=1 * MiB, pattern=0)
    mount.tar_set("@rhv-incremental", tmp_path / "s2.tar", vm_id)
    sha2 = admin.disk_sha256(disk_id)
    n2 = extract(tmp_path / "s2.tar", out)
    m2 = manifest_of(n2, out)
    assert m2["parent_set"]["set_id"] == m1["set_id"]

    admin.guest_write(vm=VM, disk=disk_id, offset=200 * MiB, size=2 * MiB, pattern=0x63)
    mount.tar_set("@rhv-differential", tmp_path / "s3.tar", vm_id)
    sha3 = admin.disk_sha256(disk_id)
    n3 = extract(tmp_path / "s3.tar", out)
    m3 = manifest_of(n3, out)
    assert (m3["set_type"], m3["parent_set"]["set_id"]) == ("differential", m0["set_id"])

    # one directory holds all four sets
    assert len({*n0, *n1, *n2, *n3}) == len(n0) + len(n1) + len(n2) + len(n3)
    top = {
        m["set_id"]: next(n for n in names if n.endswith(".qcow2"))
        for m, names in ((m1, n1), (m2, n2), (m3, n3))
    }
    info = subprocess.run(
        ["qemu-img", "info", "--backing-chain", "--output=json", str(out / top[m2["set_id"]])],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert [Path(i["filename"]).name for i in json.loads(info.stdout)] == [
        top[m2["set_id"]],
        top[m1["set_id"]],
        full_img,
    ]
    assert sha256_image(out / top[m1["set_id"]]) == sha1
    assert sha256_image(out / top[m2["set_id"]]) == sha2
    assert sha256_image(out / top[m3["set_id"]]) == sha3

    # the offline chain agrees with a download of the disk through the mount
    disk_file = next((mount.mnt / "vms" / VM / "disks").iterdir())
    cmp_ = subprocess.run(
        ["qemu-img", "compare", "-F", "raw", str(out / top[m3["set_id"]]), str(disk_file)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert cmp_.returncode == 0, cmp_.stdout + cmp_.stderr


def test_abandoned_set_and_broken_chain(
    sim: Any, vm: tuple[str, str], mount: IncrementalMount, tmp_path: Path
) -> None:
    vm_id, disk_id = vm
    admin = sim.admin
    mount.tar_set("@rhv-incremental", tmp_path / "s0.tar", vm_id)
    base = mount.sets(vm_id)[-1]

    # a tool that dies mid-set: the chain does not advance
    admin.guest_write(vm=VM, disk=disk_id, offset=5 * MiB, size=2 * MiB, pattern=0x71)
    set_dir = mount.mnt / "vms" / VM / "@rhv-incremental"
    delta = next(p for p in set_dir.iterdir() if p.name.endswith(".qcow2"))
    with open(delta, "rb") as f:
        assert len(f.read(MiB)) == MiB
    assert wait_until(lambda: not mount.status()["sessions"]["incremental"]["sessions"])
    assert [s.set_id for s in mount.sets(vm_id)] == [base.set_id]

    mount.tar_set("@rhv-incremental", tmp_path / "s1.tar", vm_id)
    s1 = mount.sets(vm_id)[-1]
    assert (s1.set_type, s1.from_checkpoint_id) == ("incremental", base.checkpoint_id)

    # the checkpoint of the newest set disappears on the engine: the next set is a full one
    # (the engine removes only the oldest checkpoint: every one up to s1's goes, oldest first)
    conn = sim.sdk_connection()
    try:
        service = conn.system_service().vms_service().vm_service(vm_id)
        for c in service.checkpoints_service().list():
            service.checkpoints_service().checkpoint_service(c.id).remove()
            if c.id == s1.checkpoint_id:
                break
        assert wait_until(
            lambda: s1.checkpoint_id not in {c.id for c in service.checkpoints_service().list()}
        )
    finally:
        conn.close()
    mount.tar_set("@rhv-incremental", tmp_path / "s2.tar", vm_id)
    s2 = mount.sets(vm_id)[-1]
    assert (s2.set_type, s2.from_checkpoint_id) == ("full", None)
    out = tmp_path / "s2"
    out.mkdir()
    names = extract(tmp_path / "s2.tar", out)
    m2 = manifest_of(names, out)
    assert any("is broken" in w for w in m2["warnings"])
    notes = mount.status()["sessions"]["incremental"]["notes"]
    assert any("is broken" in n["message"] for n in notes)
    assert sha256_file(out / next(n for n in names if n.endswith(".raw"))) == admin.disk_sha256(
        disk_id
    )


def test_rhv_of_a_running_vm_starts_the_chain(
    sim: Any, vm: tuple[str, str], mount: IncrementalMount, tmp_path: Path
) -> None:
    """@rhv/ of a VM that is up is read from a full engine backup: its manifest records the
    checkpoint, and the next incremental's delta names the @rhv/ image as backing file."""
    vm_id, disk_id = vm
    conn = sim.sdk_connection()
    service = conn.system_service().vms_service().vm_service(vm_id)
    service.start()
    try:
        assert wait_until(lambda: str(service.get().status) == "up")
        subprocess.run(
            [
                "tar",
                "-cf",
                str(tmp_path / "full.tar"),
                "-C",
                str(mount.mnt / "vms" / VM / "@rhv"),
                ".",
            ],
            check=True,
            timeout=300,
        )
        assert wait_until(lambda: len(mount.sets(vm_id)) == 1), mount.status()
        out = tmp_path / "sets"
        out.mkdir()
        names = extract(tmp_path / "full.tar", out)
        full = json.loads((out / "manifest.json").read_bytes())
        # The manifest is taken before the backup (configuration reads create nothing):
        # it names the set (= the engine backup's id); the chain keeps its checkpoint.
        [chain_full] = mount.sets(vm_id)
        assert full["set_type"] == "full" and full["set_id"] == chain_full.set_id
        assert full["point_in_time"]["method"] == "backup" and chain_full.checkpoint_id
        image = next(n for n in names if n.endswith(".raw"))
        assert sha256_file(out / image) == sim.admin.disk_sha256(disk_id)

        sim.admin.guest_write(vm=VM, disk=disk_id, offset=30 * MiB, size=MiB, pattern=0x7E)
        mount.tar_set("@rhv-incremental", tmp_path / "inc.tar", vm_id)
        inc_names = extract(tmp_path / "inc.tar", out)
        m = manifest_of(inc_names, out)
        assert m["from_checkpoint_id"] == chain_full.checkpoint_id
        assert m["parent_set"]["set_id"] == full["set_id"]
        delta = next(n for n in inc_names if n.endswith(".qcow2"))
        info = subprocess.run(
            ["qemu-img", "info", "--output=json", str(out / delta)],
            capture_output=True,
            text=True,
            check=True,
        )
        assert json.loads(info.stdout)["backing-filename"] == image
        assert sha256_image(out / delta) == sim.admin.disk_sha256(disk_id)
    finally:
        service.stop()
        wait_until(lambda: str(service.get().status) == "down")
        conn.close()
