"""The Bacula rig (tests/support/bacula.py) runs real Bacula jobs: full, incremental,
restore, read errors, cancel, and stops every daemon it started.

One rig serves the whole module (start ~1 s, stop ~4 s); each test uses its own
job names and directories.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.bacula import BaculaRig, FileSet

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
MiB = 1024 * 1024
SPARSE_SIZE = 64 * MiB
EIO_SIZE = 4 * MiB
EIO_AT = 1 * MiB
SET_OPTIONS = {"signature": "SHA1", "sparse": "yes", "onefs": "no"}


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BaculaRig]:
    workdir = tmp_path_factory.mktemp("bacula")
    r = BaculaRig(workdir, fd_ports=2).start()
    pids = list(r.pids.values())
    assert len(pids) == 4  # director, storage, two file daemons
    try:
        yield r
    finally:
        r.close()
        assert r.pids == {}
        for pid in pids:
            assert not Path(f"/proc/{pid}").exists() or _zombie(pid), f"pid {pid} survived close()"


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return h.hexdigest()


def allocated(path: Path) -> int:
    return os.lstat(path).st_blocks * 512


def make_tree(src: Path) -> None:
    """A 64 MiB sparse file with 1 MiB + 4 KiB of data, a normal file, a symlink,
    and a directory the FileSet excludes."""
    src.mkdir()
    with open(src / "sparse.img", "wb") as f:
        f.truncate(SPARSE_SIZE)
        f.seek(10 * MiB)
        f.write(os.urandom(MiB))
        f.seek(SPARSE_SIZE - 4096)
        f.write(b"\xa5" * 4096)
    (src / "normal.txt").write_bytes(b"first version\n" * 1000)
    (src / "link").symlink_to("normal.txt")
    (src / "skip").mkdir()
    (src / "skip" / "x").write_bytes(b"excluded")


def test_full_incremental_and_restores(rig: BaculaRig, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    fileset = FileSet([src], options=SET_OPTIONS, exclude=[src / "skip"])
    full_hashes = {name: sha256(src / name) for name in ("sparse.img", "normal.txt")}
    assert allocated(src / "sparse.img") < 4 * MiB

    full = rig.run_backup("tree", fileset)
    assert full.ok, full.describe() + "\n" + full.log
    assert full.level == "F"
    assert rig.list_files(full.jobid) == [
        f"{src}/",
        f"{src}/link",
        f"{src}/normal.txt",
        f"{src}/sparse.img",
    ]
    assert full.files == 4
    # Sparse holes are not read: about 1 MiB + 4 KiB + the normal file travel.
    assert full.bytes < 2 * MiB, full.describe()

    # Seconds-granular change detection: the modification must not share a
    # second with the full's start.
    time.sleep(1.1)
    (src / "normal.txt").write_bytes(b"second version\n" * 1000)
    incr = rig.run_backup("tree", level="Incremental")
    assert incr.ok, incr.describe() + "\n" + incr.log
    assert incr.level == "I"
    assert rig.list_files(incr.jobid) == [f"{src}/normal.txt"]
    assert incr.files == 1

    # The full alone, on the second File daemon, with the source prefix
    # replaced: src/x -> out/x.
    out = tmp_path / "out"
    back = rig.run_restore(full.jobid, out, fd=1, strip_prefix=src)
    assert back.ok, back.describe() + "\n" + back.log
    assert back.files == 4
    assert sorted(p.name for p in out.iterdir()) == ["link", "normal.txt", "sparse.img"]
    for name, digest in full_hashes.items():
        assert sha256(out / name) == digest, name
    assert os.readlink(out / "link") == "normal.txt"
    assert os.path.getsize(out / "sparse.img") == SPARSE_SIZE
    # Restored sparse: the holes stay holes (data is 1 MiB + 4 KiB).
    assert allocated(out / "sparse.img") < 4 * MiB, allocated(out / "sparse.img")

    # Full + incremental, original paths re-created under `where`.
    chain = tmp_path / "chain"
    back2 = rig.run_restore([full.jobid, incr.jobid], chain)
    assert back2.ok, back2.describe() + "\n" + back2.log
    restored = chain / src.relative_to("/")
    assert sha256(restored / "normal.txt") == sha256(src / "normal.txt")
    assert sha256(restored / "sparse.img") == full_hashes["sparse.img"]
    assert not (restored / "skip").exists()


def test_accurate_incremental_records_a_deletion(rig: BaculaRig, tmp_path: Path) -> None:
    src = tmp_path / "acc"
    src.mkdir()
    (src / "keep").write_bytes(b"keep")
    (src / "gone").write_bytes(b"gone")
    full = rig.run_backup("accurate", [src], accurate=True)
    assert full.ok, full.log
    assert re.search(r"Accurate: +yes", full.log), full.log
    (src / "gone").unlink()
    incr = rig.run_backup("accurate", level="Incremental")
    assert incr.ok, incr.log
    out = tmp_path / "out"
    back = rig.run_restore([full.jobid, incr.jobid], out, strip_prefix=src)
    assert back.ok, back.log
    assert sorted(p.name for p in out.iterdir()) == ["keep"]

    # The same with Bacula's own rewrite expression.
    out2 = tmp_path / "out2"
    back2 = rig.run_restore([full.jobid, incr.jobid], None, regexwhere=f"!^{src}/!{out2}/!")
    assert back2.ok, back2.log
    assert (out2 / "keep").read_bytes() == b"keep"
    assert not (out2 / "gone").exists()


@pytest.fixture
def eio_mount(tmp_path: Path) -> Iterator[Path]:
    """A FUSE mount holding disk.img (4 MiB) whose reads fail with EIO from 1 MiB on."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "eio_fuse.py"), str(mnt), str(EIO_SIZE), str(EIO_AT)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        line = proc.stdout.readline()
        assert line.strip() == "READY", f"{line!r} {proc.stderr.read() if proc.poll() else ''}"
        yield mnt
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=False, capture_output=True)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
        assert not os.path.ismount(mnt)


def test_read_error_and_missing_path(rig: BaculaRig, eio_mount: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.txt"
    good.write_bytes(b"good\n")
    missing = tmp_path / "missing"
    broken = eio_mount / "disk.img"
    result = rig.run_backup("broken", FileSet([broken, missing, good], options=SET_OPTIONS))

    # Bacula ends such a backup "OK -- with warnings": status 'T', errors > 0.
    assert result.status == "T", result.describe()
    assert result.errors >= 2, result.describe()
    assert not result.ok
    assert f"Read error on file {broken}. ERR=Input/output error" in result.log
    assert f'Could not stat "{missing}": ERR=No such file or directory' in result.log
    assert "Backup OK -- with warnings" in result.log
    # The unreadable file is in the catalog all the same, holding what was read.
    assert rig.list_files(result.jobid) == sorted([str(broken), str(good)])
    assert EIO_AT // 2 < result.bytes <= EIO_AT + MiB, result.describe()

    # Its restore notices the short file and ends in error; the good file is intact.
    out = tmp_path / "out"
    back = rig.run_restore(result.jobid, out)
    assert back.status == "E", back.describe() + "\n" + back.log
    assert f"File size of restored file {out}{broken} not correct. Original {EIO_SIZE}" in back.log
    assert (out / good.relative_to("/")).read_bytes() == b"good\n"
    assert os.path.getsize(out / broken.relative_to("/")) <= EIO_AT


def test_cancel_of_a_job_stuck_reading(rig: BaculaRig, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    # readfifo: the File daemon opens the FIFO and blocks, as on a stalled source.
    jobid = rig.start_backup("stuck", FileSet([fifo], options={"readfifo": "yes"}))
    deadline = time.monotonic() + 30
    while rig.job_status(jobid) != "R":
        assert time.monotonic() < deadline, rig.job_status(jobid)
        time.sleep(0.1)
    rig.cancel(jobid)
    result = rig.wait_job(jobid, timeout_s=60)
    assert result.status == "A", result.describe() + "\n" + result.log
    assert not result.ok
    assert "Backup Canceled" in result.log


def test_rig_refuses_what_bacula_cannot_express(rig: BaculaRig) -> None:
    with pytest.raises(ValueError):
        rig.run_backup("no-fileset-yet")
    with pytest.raises(ValueError):
        rig.run_backup("bad name", ["/tmp"])
    with pytest.raises(ValueError):
        rig.run_backup("x", ["/tmp"], fd=2)
