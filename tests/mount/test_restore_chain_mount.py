"""Restoring chains through a real FUSE mount of a private simulator (issue 5 item 7).

full -> guest write -> incremental -> guest write -> incremental -> guest write
-> differential, each set copied with tar from the mount into one directory;
then full+inc+inc restored into ``restore/a`` and full+diff into
``restore/b`` (one tar of the chosen sets each). Every restored VM's disk must
have the sha256 the original disk had right after that set was read
(``SimAdmin.disk_sha256``; no guest writes happen during a read). A chain
with a missing incremental is refused in ``.status`` and leaves nothing on the
engine.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.mounts import IncrementalMount, extract, manifest_of, restore_status
from tests.support.sim import (
    engine_state,
    remove_vm,
    running_sim,
    vm_and_first_disk,
    vm_details,
)

pytestmark = pytest.mark.slow
MiB = 1024 * 1024
VM = "myvm0"


class Chain:
    def __init__(self, sim: Any, mount: IncrementalMount, out: Path) -> None:
        self.sim, self.mount, self.out = sim, mount, out
        self.names: dict[str, list[str]] = {}  # set label -> its files
        self.sha: dict[str, str] = {}  # set label -> the disk's sha256 when it was read
        self.manifests: dict[str, dict[str, Any]] = {}


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    """A private simulator (guest writes), one mount, and four sets of myvm0's disk."""
    base = tmp_path_factory.mktemp("chainrestore")
    # short listing cache: a set outlives it by a second, and each set waits for its end
    with running_sim(base / "sim", listing_ttl=0.5) as sim:
        (base / "state").mkdir()
        mount = IncrementalMount(sim, base / "mnt", base / "state", vm=VM)
        try:
            vm_id, disk_id = vm_and_first_disk(sim, VM)
            c = Chain(sim, mount, base / "sets")
            c.out.mkdir()
            steps = [
                ("full", "@rhv-incremental", None),
                ("inc1", "@rhv-incremental", (20 * MiB, 8 * MiB, 0x61)),
                ("inc2", "@rhv-incremental", (100 * MiB, MiB, 0x62)),
                ("diff", "@rhv-differential", (200 * MiB, 2 * MiB, 0x63)),
            ]
            for label, kind, write in steps:
                if write is not None:
                    offset, size, pattern = write
                    sim.admin.guest_write(
                        vm=VM, disk=disk_id, offset=offset, size=size, pattern=pattern
                    )
                tar = base / f"{label}.tar"
                mount.tar_set(kind, tar, vm_id)
                c.sha[label] = sim.admin.disk_sha256(disk_id)
                c.names[label] = extract(tar, c.out)
                c.manifests[label] = manifest_of(c.names[label], c.out)
            yield c
        finally:
            mount.umount()


def restore_sets(c: Chain, name: str, labels: list[str], tmp_path: Path) -> dict[str, Any]:
    """One tar of the chosen sets' files, extracted into ``restore/<name>/``."""
    archive = tmp_path / f"{name}.tar"
    files = [n for label in labels for n in c.names[label]]
    subprocess.run(["tar", "-cSf", str(archive), "-C", str(c.out), *files], check=True)
    target = c.mount.mnt / "restore" / name
    target.mkdir()
    subprocess.run(["tar", "-xf", str(archive), "-C", str(target)], check=True, timeout=300)
    return restore_status(c.mount, name)  # type: ignore[arg-type]


def test_full_inc_inc_and_full_diff_restore_each_point_in_time(
    chain: Chain, tmp_path: Path
) -> None:
    c = chain
    m = c.manifests
    assert [m[x]["set_type"] for x in ("full", "inc1", "inc2", "diff")] == [
        "full",
        "incremental",
        "incremental",
        "differential",
    ]
    assert len(set(c.sha.values())) == 4  # every set is another point in time
    try:
        for name, labels, want in (
            ("a", ["full", "inc1", "inc2"], "inc2"),
            ("b", ["full", "diff"], "diff"),
        ):
            status = restore_sets(c, name, labels, tmp_path)
            assert status["phase"] == "done", status
            assert status["chain"]["order"] == [
                f"{m[x]['set_type']} {m[x]['set_id']}" for x in labels
            ]
            restored = vm_details(c.sim, name)
            assert restored is not None and restored["id"] == status["vm_id"]
            (disk,) = restored["disks"]
            assert c.sim.admin.disk_sha256(disk["id"]) == c.sha[want], name
        original = vm_details(c.sim, VM)
        assert original is not None and original["status"] == "down"
    finally:
        remove_vm(c.sim, "a")
        remove_vm(c.sim, "b")


def test_missing_incremental_is_refused_and_leaves_nothing(chain: Chain, tmp_path: Path) -> None:
    c = chain
    before = engine_state(c.sim)
    status = restore_sets(c, "c", ["full", "inc2"], tmp_path)
    assert status["phase"] == "failed" and status["settled"], status
    inc1 = c.manifests["inc1"]["set_id"]
    inc2_manifest = next(n for n in c.names["inc2"] if n.startswith("manifest--"))
    assert status["error"] == (
        f"missing link: set {inc1} (the parent of {inc2_manifest}) is not in the directory"
    )
    assert status["errno"] == "EINVAL"
    assert engine_state(c.sim) == before  # no new VM, the uploaded full image's disk removed
    assert vm_details(c.sim, "c") is None
