"""Untrusted restore input through a real FUSE mount of the simulator (issue 10, point 6).

- A chain restore whose newest set names a 44-byte ``vm--x.ovf`` with an unknown
  XML encoding (the file that killed the daemon), and chain restores whose qcow2
  delta has a garbage backing file name or huge table sizes: each restore fails
  with one line in ``.status``, nothing it created stays on the engine, and the
  mount goes on serving (the tree lists, a set reads, a valid restore is done).
- 100 configuration-named files of 4 MiB written at once into ten restores of a
  mount with ``staging_memory = 64M``: the mount's resident size (the real
  process, ``/proc/<pid>/status``) grows by less than the budget; the writes past
  it fail with ENOSPC and the restores say so in ``.status``.

The chain is built from a real full set of myvm0 (read through the mount): its
manifest gets a set id, and an incremental set is written next to it with a
qcow2 delta made by ``Qcow2Delta`` over the same disk.
"""

from __future__ import annotations

import concurrent.futures
import configparser
import copy
import errno
import hashlib
import json
import os
import shutil
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rhvfs.backupset._qcow2 import Change, Qcow2Delta
from tests.support.mounts import SimMount, restore_status
from tests.support.sim import engine_state, remove_vm, vm_details

pytestmark = pytest.mark.slow
MiB = 1024 * 1024
BAD_OVF = b'<?xml version="1.0" encoding="x-rhvfs"?><a/>'  # 44 bytes
BUDGET = 64 * MiB


@pytest.fixture(scope="module")
def mnt(sim: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimMount]:
    base = tmp_path_factory.mktemp("input-mount")
    (base / "state").mkdir()
    conf = configparser.ConfigParser(interpolation=None)
    conf.read(sim.conf_file)
    conf[sim.section]["staging_memory"] = "64M"
    conf_file = base / "ovirt-img.conf"
    with open(conf_file, "w") as f:
        conf.write(f)
    m = SimMount(sim, base / "mnt", base / "state", "--grace-period", "1", config_file=conf_file)
    try:
        yield m
    finally:
        m.umount()


@pytest.fixture(scope="module")
def full_set(mnt: SimMount, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("myvm0") / "set"
    subprocess.run(["cp", "-a", str(mnt.mnt / "vms" / "myvm0" / "@rhv"), str(out)], check=True)
    return out


#: The incremental set rewrites the first 8 MiB of the disk with this byte (a delta of
#: more than 4 MiB: the restore parses it in a worker thread).
CHANGED = 8 * MiB
PATTERN = 0x5A


def _delta(size: int, backing: str) -> bytes:
    """A valid qcow2 delta of the disk: its first ``CHANGED`` bytes are ``PATTERN``."""
    q = Qcow2Delta(
        virtual_size=size, changes=[Change(0, CHANGED)], backing_file=backing, backing_format="raw"
    )
    out = bytearray()
    for off in range(0, q.size, 65536):
        if off < q.metadata_size:
            out += q.metadata_cluster(off // 65536)
        else:
            out += bytes([PATTERN]) * sum(n for _, _, n in q.data_ranges(off, 65536))
    return bytes(out)


def expected_sha(full_set: Path) -> str:
    """sha256 of the disk after the incremental set: the full image, first bytes replaced."""
    (disk,) = json.loads((full_set / "manifest.json").read_bytes())["disks"]
    h = hashlib.sha256(bytes([PATTERN]) * CHANGED)
    with open(full_set / disk["file"], "rb") as f:
        f.seek(CHANGED)
        while block := f.read(4 * MiB):
            h.update(block)
    return h.hexdigest()


def chain_dir(full_set: Path, into: Path, *, ovf: bytes | None, delta: str) -> Path:
    """The full set (its manifest now a chain root) plus an incremental set ``c1``.

    ``ovf``: the incremental set's ``vm--x.ovf`` (None: a copy of the valid OVF);
    ``delta``: "valid", "garbage-backing" or "huge-tables".
    """
    shutil.copytree(full_set, into)
    doc = json.loads((into / "manifest.json").read_bytes())
    doc.update(set_id="c0", checkpoint_id="c0")
    (into / "manifest.json").write_text(json.dumps(doc))
    inc = copy.deepcopy(doc)
    inc.update(
        set_type="incremental",
        set_id="c1",
        checkpoint_id="c1",
        parent_set={"set_id": "c0"},
        full_set_id="c0",
        config_files={"ovf": "vm--x.ovf", "api_xml": "vm--x.xml", "manifest": "manifest--c1.json"},
    )
    (disk,) = inc["disks"]
    root_file = disk["file"]
    disk.update(file="disk--c1.qcow2", file_format="qcow2", backing_file=root_file)
    data = bytearray(_delta(disk["size"], root_file))
    if delta == "garbage-backing":
        (bf_off,) = struct.unpack_from(">Q", data, 8)
        garbage = bytes(range(128, 256)) + b"\x00\x01\x1b[2J"
        struct.pack_into(">I", data, 16, len(garbage))
        data[bf_off : bf_off + len(garbage)] = garbage
    elif delta == "huge-tables":
        struct.pack_into(">I", data, 36, 0xFFFF_FFFF)  # l1_size: a 32 GiB L1 table
        struct.pack_into(">Q", data, 24, 1 << 62)  # virtual size: 4 EiB
    (into / "disk--c1.qcow2").write_bytes(bytes(data))
    (into / "manifest--c1.json").write_text(json.dumps(inc))
    (into / "vm--x.ovf").write_bytes(ovf if ovf is not None else (into / "vm.ovf").read_bytes())
    (into / "vm--x.xml").write_bytes((into / "vm.xml").read_bytes())
    return into


def still_serves(mnt: SimMount, sim: Any, full_set: Path, name: str) -> None:
    """The mount answers: the tree lists, a set's file reads, a valid restore is done."""
    assert "myvm0" in os.listdir(mnt.mnt / "vms")
    assert (mnt.mnt / "vms" / "myvm0" / "@rhv" / "vm.ovf").read_bytes().startswith(b"<?xml")
    target = mnt.mnt / "restore" / name
    target.mkdir()
    subprocess.run(["cp", "-a", f"{full_set}/.", str(target)], check=True, timeout=300)
    status = restore_status(mnt, name)
    assert status["phase"] == "done", status["error"]
    assert vm_details(sim, name) is not None
    assert mnt.status()["pid"] == mnt.pid  # the same daemon


def test_valid_chain_restores_with_its_big_delta(
    sim: Any, mnt: SimMount, full_set: Path, tmp_path: Path
) -> None:
    """The starting point of the bad cases: the chain as built restores the newest state."""
    src = chain_dir(full_set, tmp_path / "chain", ovf=None, delta="valid")
    assert (src / "disk--c1.qcow2").stat().st_size > 4 * MiB
    target = mnt.mnt / "restore" / "chain-ok"
    target.mkdir()
    try:
        subprocess.run(["cp", "-a", f"{src}/.", str(target)], check=True, timeout=300)
        status = restore_status(mnt, "chain-ok")
        assert status["phase"] == "done", status["error"]
        restored = vm_details(sim, "chain-ok")
        assert restored is not None
        (disk,) = restored["disks"]
        assert sim.admin.disk_sha256(disk["id"]) == expected_sha(full_set)
    finally:
        remove_vm(sim, "chain-ok")


@pytest.mark.parametrize(
    "case, ovf, delta, reason",
    [
        ("bad-ovf", BAD_OVF, "valid", "vm.ovf is not well-formed XML (unknown encoding"),
        ("garbage-backing", None, "garbage-backing", "backing file name"),
        ("huge-tables", None, "huge-tables", "larger than qcow2 can address"),
    ],
)
def test_bad_chain_input_fails_its_restore_only(
    sim: Any,
    mnt: SimMount,
    full_set: Path,
    tmp_path: Path,
    case: str,
    ovf: bytes | None,
    delta: str,
    reason: str,
) -> None:
    assert len(BAD_OVF) == 44
    before = engine_state(sim)
    src = chain_dir(full_set, tmp_path / "chain", ovf=ovf, delta=delta)
    target = mnt.mnt / "restore" / f"x-{case}"
    target.mkdir()
    subprocess.run(["cp", "-a", f"{src}/.", str(target)], check=True, timeout=300)
    status = restore_status(mnt, f"x-{case}")
    assert status["phase"] == "failed" and status["settled"], status
    assert reason in status["error"] and "\n" not in status["error"], status["error"]
    assert status["errno"] == "EINVAL"
    assert engine_state(sim) == before  # the uploaded full image's disk was removed
    try:
        still_serves(mnt, sim, full_set, f"ok-{case}")
    finally:
        remove_vm(sim, f"ok-{case}")


def _rss(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")


def test_config_files_in_memory_stay_under_the_budget(mnt: SimMount, sim: Any) -> None:
    restores = [mnt.mnt / "restore" / f"mem{i}" for i in range(10)]
    for r in restores:
        r.mkdir()
    baseline = _rss(mnt.pid)
    peak = baseline
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _rss(mnt.pid))
            time.sleep(0.005)

    block = os.urandom(128 * 1024)

    def write(i: int) -> int:
        """Write vm--s<i>.xml (4 MiB) in 128 KiB pieces; 0 or the errno that stopped it."""
        path = restores[i % 10] / f"vm--s{i}.xml"
        try:
            with open(path, "wb", buffering=0) as f:
                for _ in range(32):
                    f.write(block)
        except OSError as e:
            return e.errno or -1
        return 0

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=100) as pool:
            results = list(pool.map(write, range(100)))
    finally:
        stop.set()
        sampler.join()
    growth = peak - baseline
    print(f"rss baseline {baseline / MiB:.1f} MiB, peak {peak / MiB:.1f} MiB, +{growth / MiB:.1f}")
    assert growth < BUDGET, f"RSS grew by {growth / MiB:.1f} MiB, budget {BUDGET / MiB} MiB"
    assert set(results) <= {0, errno.ENOSPC}, results
    assert results.count(errno.ENOSPC) > 0  # 400 MiB do not fit in 64
    failed = [json.loads((r / ".status").read_bytes()) for r in restores]
    failed = [s for s in failed if s["phase"] == "failed"]
    assert failed, "no restore hit the budget"
    for s in failed:
        assert s["errno"] == "ENOSPC" and "staging_memory" in s["error"], s
    # the mount goes on serving, and the memory of the failed restores is back
    assert "myvm0" in os.listdir(mnt.mnt / "vms")
    for r in restores:
        r.rmdir()
    assert _rss(mnt.pid) - baseline < BUDGET
