"""Completeness by evidence and zeroing, through a real FUSE mount of the simulator (issue 10).

An image is complete when every byte is written or a hole the tool made, not
when a timer says so: a pre-sized image closed half written and reopened
later waits. A write after completion is applied while the set is not
finalized, else refused with EROFS (the restore fails, nothing half-built is
left). Holes are zeroed on a raw preallocated disk of the iSCSI domain
(whose new volumes hold stale data) and not sent at all where the new disk
reads zeros. Every test removes what it restored.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.mounts import SimMount, restore_status
from tests.support.restore_mounts import (
    export_sets,
    manifest_disks,
    module_mount,
    removing_vms,
    start_restore,
)
from tests.support.sim import engine_state, vm_details

pytestmark = pytest.mark.slow
MiB = 1024 * 1024
BLOCK_SD = "bs-scsi-012"


@pytest.fixture(scope="module")
def mnt(sim: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimMount]:
    yield from module_mount(sim, tmp_path_factory, "evidence-mount", "--grace-period", "1")


@pytest.fixture(scope="module")
def sets(mnt: SimMount, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Backup sets of web01 and myvm0, copied sparse (zero runs become holes)."""
    base = tmp_path_factory.mktemp("evidence-sets")
    return export_sets(mnt, base, ("web01", "myvm0"), sparse=True)


@pytest.fixture
def cleanup(sim: Any) -> Iterator[list[str]]:
    yield from removing_vms(sim)


def copy_config(set_dir: Path, target: Path) -> None:
    for name in ("vm.ovf", "manifest.json"):
        (target / name).write_bytes((set_dir / name).read_bytes())


def status_now(mnt: SimMount, name: str) -> dict[str, Any]:
    return json.loads((mnt.mnt / "restore" / name / ".status").read_bytes())  # type: ignore[no-any-return]


def check_disks(sim: Any, set_dir: Path, name: str) -> dict[str, Any]:
    """The restored VM's disks hold the source's bytes; its details."""
    restored = vm_details(sim, name)
    assert restored is not None
    want = {d["alias"]: d for d in manifest_disks(set_dir)}
    assert sorted(d["alias"] for d in restored["disks"]) == sorted(want)
    for got in restored["disks"]:
        source = sim.admin.disk_sha256(want[got["alias"]]["id"])
        assert sim.admin.disk_sha256(got["id"]) == source, got["alias"]
    return restored


def allocated_bytes(path: Path) -> int:
    """Bytes of ``path`` in data extents (SEEK_DATA/SEEK_HOLE)."""
    total = 0
    with open(path, "rb") as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:
                    break
                raise
            end = os.lseek(fd, start, os.SEEK_HOLE)
            total += end - start
            pos = end
    return total


def test_presized_image_closed_half_written_waits_for_the_rest(
    sim: Any, mnt: SimMount, sets: dict[str, Path], cleanup: list[str]
) -> None:
    """The issue's case: ftruncate to the full size, write half, close; reopen after 6 s
    (longer than any old grace period) and write the rest: nothing is finalized meanwhile."""
    name = "m0-presized"
    cleanup.append(name)
    set_dir = sets["myvm0"]
    target = start_restore(mnt, name)
    copy_config(set_dir, target)
    disk = manifest_disks(set_dir)[0]
    data = (set_dir / disk["file"]).read_bytes()
    half = len(data) // 2
    with open(target / disk["file"], "wb") as f:
        f.truncate(len(data))
        f.write(data[:half])
    time.sleep(6)
    status = status_now(mnt, name)
    assert status["phase"] == "uploading", status
    assert [d["state"] for d in status["disks"]] == ["uploading"]
    assert [d["image_complete"] for d in status["disks"]] == [False]
    assert [d["bytes_owed"] for d in status["disks"]] == [len(data) - half]
    new_disk = status["disks"][0]["new_disk_id"]
    phases = [t["phase"] for t in sim.admin.transfers() if t["disk_id"] == new_disk]
    assert phases == ["transferring"]  # the upload is not finalized
    assert vm_details(sim, name) is None
    with open(target / disk["file"], "r+b") as f:
        f.seek(half)
        f.write(data[half:])
    status = restore_status(mnt, name)
    assert status["phase"] == "done", status["error"]
    assert [d["bytes_owed"] for d in status["disks"]] == [0]
    check_disks(sim, set_dir, name)


def test_write_after_completion_is_applied_while_another_image_is_written(
    sim: Any, mnt: SimMount, sets: dict[str, Path], cleanup: list[str]
) -> None:
    name = "web01-late"
    cleanup.append(name)
    set_dir = sets["web01"]
    target = start_restore(mnt, name)
    copy_config(set_dir, target)
    first, second, *rest = manifest_disks(set_dir)
    good = (set_dir / first["file"]).read_bytes()
    (target / first["file"]).write_bytes(b"\x11" * len(good))  # wrong bytes ...
    os.utime(target / first["file"])  # ... and the tool says it is finished: complete
    with open(target / second["file"], "wb") as g:  # another image is being written
        g.write((set_dir / second["file"]).read_bytes()[: 4 * MiB])
        g.flush()
        with open(target / first["file"], "r+b") as f:  # after completion: applied
            f.write(good)
        os.utime(target / first["file"])
        g.write((set_dir / second["file"]).read_bytes()[4 * MiB :])
    os.utime(target / second["file"])
    for d in rest:
        subprocess.run(["cp", "-a", str(set_dir / d["file"]), str(target)], check=True)
    status = restore_status(mnt, name)
    assert status["phase"] == "done", status["error"]
    assert any("written again after it was complete" in line for line in status["log"])
    check_disks(sim, set_dir, name)


def test_write_after_finalize_is_refused_with_erofs_and_fails_the_restore(
    sim: Any, mnt: SimMount, sets: dict[str, Path]
) -> None:
    name = "m0-sealed"
    before = engine_state(sim)
    set_dir = sets["myvm0"]
    disk = manifest_disks(set_dir)[0]
    # the VM build waits 8 s at the engine: every disk is finalized by then
    sim.admin.add_fault("engine-delay", method="POST", path="/ovirt-engine/api/vms", delay=8)
    try:
        target = start_restore(mnt, name)
        (target / "manifest.json").write_bytes((set_dir / "manifest.json").read_bytes())
        subprocess.run(["cp", "-a", str(set_dir / disk["file"]), str(target)], check=True)
        # the OVF completes the set: its cp waits in its last call for the VM build (the
        # kernel holds that file's inode meanwhile, not the image's): write then
        cp = subprocess.Popen(
            ["cp", "-a", str(set_dir / "vm.ovf"), str(target)], stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 60
        while status_now(mnt, name)["phase"] != "creating_vm" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert status_now(mnt, name)["phase"] == "creating_vm"
        with pytest.raises(OSError) as e, open(target / disk["file"], "r+b") as f:
            f.write(b"late")
            f.flush()
        assert e.value.errno == errno.EROFS
        _, cp_err = cp.communicate(timeout=120)
        assert cp.returncode != 0 and b"Read-only file system" in cp_err, cp_err
        status = restore_status(mnt, name)
    finally:
        sim.admin.clear_faults()
    assert status["phase"] == "failed" and "cannot be applied" in status["error"]
    assert status["errno"] == "EROFS"
    assert engine_state(sim) == before  # the VM built meanwhile was removed, disks too


@pytest.mark.parametrize("sd", [BLOCK_SD, "mydata"])
def test_tar_sparse_restore_zeroes_holes_only_on_block_storage(
    sim: Any,
    mnt: SimMount,
    sets: dict[str, Path],
    tmp_path: Path,
    sd: str,
    cleanup: list[str],
) -> None:
    """web01's raw preallocated disk: on the iSCSI domain its new LV holds stale bytes and
    the holes tar leaves must be zeroed; on NFS no byte is sent for a hole."""
    name = f"web01-tar-S-{sd}"
    cleanup.append(name)
    set_dir = sets["web01"]
    archive = tmp_path / "set.tar"
    subprocess.run(["tar", "-cSf", str(archive), "-C", str(set_dir), "."], check=True)
    target = start_restore(mnt, name, f"storage_domain = {sd}\n")
    subprocess.run(["tar", "-xSf", str(archive), "-C", str(target)], check=True)
    status = restore_status(mnt, name)
    assert status["phase"] == "done", status["error"]
    restored = check_disks(sim, set_dir, name)
    assert {d["sd"] for d in restored["disks"]} == {sd}
    by_alias = {d["alias"]: d for d in status["disks"]}
    for d in manifest_disks(set_dir):
        got = by_alias[d["alias"]]
        allocated = allocated_bytes(set_dir / d["file"])
        hole = d["size"] - got["bytes_written"]
        assert got["bytes_written"] == allocated  # tar wrote the data extents ...
        assert got["bytes_written"] < d["size"]  # ... and left holes
        # bytes over HTTP: the data (PUT, or PATCH zero for written zero blocks)
        assert got["bytes_uploaded"] <= got["bytes_written"]
        if sd == BLOCK_SD and d["format"] == "raw":
            assert got["holes_zeroed"] == hole > 0
        else:
            assert got["holes_zeroed"] == 0
            assert got["bytes_uploaded"] + got["bytes_zeroed"] == got["bytes_written"]


@pytest.mark.parametrize("tool", ["cp-plain", "dd", "dd-sparse", "rsync-sparse"])
def test_tools_without_times_or_with_sparse_writes_complete_by_evidence(
    sim: Any, mnt: SimMount, sets: dict[str, Path], tool: str, cleanup: list[str]
) -> None:
    """Plain cp and dd set no times: their images complete because every byte was written
    or seeked over (then ftruncate); rsync --sparse seeks over zeros in a temp file."""
    name = f"m0-{tool}"
    cleanup.append(name)
    set_dir = sets["myvm0"]
    target = start_restore(mnt, name)
    image = manifest_disks(set_dir)[0]["file"]
    if tool == "cp-plain":
        for f in ("vm.ovf", "manifest.json", image):
            subprocess.run(["cp", str(set_dir / f), str(target)], check=True)
    elif tool.startswith("dd"):
        copy_config(set_dir, target)
        conv = ["conv=sparse"] if tool == "dd-sparse" else []
        subprocess.run(
            ["dd", f"if={set_dir / image}", f"of={target / image}", "bs=1M", "status=none", *conv],
            check=True,
        )
    else:
        subprocess.run(["rsync", "-a", "--sparse", f"{set_dir}/", f"{target}/"], check=True)
    status = restore_status(mnt, name)
    assert status["phase"] == "done", status["error"]
    check_disks(sim, set_dir, name)
    disk = status["disks"][0]
    if tool in ("dd-sparse", "rsync-sparse", "cp-plain"):
        assert disk["bytes_written"] < disk["size"]  # holes were left, not written
    else:
        assert disk["bytes_written"] == disk["size"]
