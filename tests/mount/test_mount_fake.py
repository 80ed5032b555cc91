"""Real FUSE mounts of the fake backend: the tree, attributes and data through the kernel.

The mount runs in a subprocess (tests/support/fake_mount.py -> rhvfs.mount.serve)
and is stopped with ``rhvfs umount``, exactly as an admin would.
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.data import sha
from tests.support.fake_backups import image_bytes
from tests.support.fake_engine import DISK_SIZE
from tests.support.mounts import RHVFS, FakeMount, restic_summary

pytestmark = pytest.mark.slow


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[FakeMount]:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    m = FakeMount(mnt)
    try:
        yield m
    finally:
        if m.proc.poll() is None:
            m.umount()


def snapshot_stats(root: Path) -> dict[str, tuple[int, int, int, int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if "status.json" in path:
                continue
            st = os.lstat(path)
            out[os.path.relpath(path, root)] = (
                st.st_ino,
                st.st_size,
                st.st_mtime_ns,
                st.st_ctime_ns,
                st.st_mode,
            )
    return out


def test_tree_symlinks_and_config(mount: FakeMount) -> None:
    mnt = mount.mnt
    assert sorted(os.listdir(mnt)) == [
        ".rhvfs", "clusters", "datacenters", "hosts", "restore", "storagedomains", "tags", "templates", "vms",
    ]  # fmt: skip
    # readdir order: configuration before images (tar and restic store in this order)
    assert os.listdir(mnt / "vms/myvm/@rhv")[:3] == ["vm.ovf", "vm.xml", "manifest.json"]
    found = subprocess.run(
        ["find", str(mnt), "-name", "*.raw"], capture_output=True, text=True, check=True
    )
    assert (
        len(found.stdout.splitlines()) == 4 * 3 * 2 + 3 * 2
    )  # 4 VMs + 1 template, @rhv and disks/
    assert os.path.realpath(mnt / "tags/bkup/myvm") == str(mnt / "vms/myvm")
    assert os.path.realpath(mnt / "datacenters/Default/clusters/mycluster/vms/runvm") == str(
        mnt / "vms/runvm"
    )
    assert sorted(os.listdir(mnt / "tags/bkup")) == ["myvm", "odd%2Fname"]
    doc = json.loads((mnt / "tags/bkup/myvm/vm.json").read_bytes())
    assert (doc["name"], doc["status"]) == ("myvm", "down")
    assert os.stat(mnt / "vms/myvm/vm.json").st_size == len((mnt / "vms/myvm/vm.json").read_bytes())
    assert (mnt / "storagedomains/mydata/free_space").read_text() == f"{5 << 30}\n"
    status = json.loads((mnt / ".rhvfs/status.json").read_bytes())
    assert status["mountpoint"] == str(mnt) and status["pid"] == mount.proc.pid
    dev = os.stat(mnt).st_dev
    bdi = Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
    assert bdi.read_text().strip() == "4096"  # raised from the kernel's 128 KiB default
    # cp and cat size each read and write by st_blksize: 1 MiB, one whole FUSE request
    # (at 128 KiB a restore written by cp took eight round trips per MiB)
    image = next((mnt / "vms/myvm/@rhv").glob("*.raw"))
    assert os.stat(image).st_blksize == 1 << 20


def test_read_only_and_errors(mount: FakeMount) -> None:
    mnt = mount.mnt
    for action in (
        lambda: open(mnt / "vms/myvm/vm.json", "w"),
        lambda: os.mkdir(mnt / "vms/new"),
        lambda: (mnt / "newfile").write_bytes(b"x"),
        lambda: os.unlink(mnt / "vms/myvm/vm.json"),
    ):
        with pytest.raises(OSError) as e:
            action()
        assert e.value.errno == errno.EROFS
    with pytest.raises(OSError) as e:
        (mnt / "vms/sleepy/@rhv/disk--vm-4-d0.raw").read_bytes()
    assert e.value.errno == errno.EBUSY  # suspended VM: clear errno, no hang
    assert not (mnt / "vms/nosuch").exists()


def test_tar_cp_rsync_give_exact_images(mount: FakeMount, tmp_path: Path) -> None:
    src = mount.mnt / "vms/runvm/@rhv"
    want = {
        f"{n}--vm-2-d{i}.raw": sha(image_bytes("vm-2", f"disk:vm-2-d{i}", DISK_SIZE))
        for i, n in enumerate(["disk", "disk", "data"])
    }
    tar_out = tmp_path / "tar"
    tar_out.mkdir()
    subprocess.run(
        ["tar", "-cSf", str(tmp_path / "set.tar"), "-C", str(src.parent), "@rhv"], check=True
    )
    subprocess.run(["tar", "-xf", str(tmp_path / "set.tar"), "-C", str(tar_out)], check=True)
    listing = subprocess.run(
        ["tar", "-tf", str(tmp_path / "set.tar")], capture_output=True, text=True, check=True
    )
    assert listing.stdout.splitlines()[1:4] == ["@rhv/vm.ovf", "@rhv/vm.xml", "@rhv/manifest.json"]
    subprocess.run(["cp", "-a", str(src), str(tmp_path / "cp")], check=True)
    subprocess.run(["rsync", "-a", f"{src}/", str(tmp_path / "rsync")], check=True)
    for copy in (tar_out / "@rhv", tmp_path / "cp", tmp_path / "rsync"):
        got = {name: sha((copy / name).read_bytes()) for name in want}
        assert got == want, copy
        assert (copy / "vm.ovf").read_text() == "config:vm.ovf of vm runvm\n"
        assert os.stat(copy / "vm.ovf").st_mtime_ns == os.stat(src / "vm.ovf").st_mtime_ns
    mount.umount()
    assert mount.counts["opened"] > 0 and mount.counts["opened"] == mount.counts["released"]


def test_o_direct_reads_give_exact_bytes(mount: FakeMount, tmp_path: Path) -> None:
    """Readers that bypass the page cache: ``dd iflag=direct`` (the README's way to copy
    several images at once), ``qemu-img convert -T none``, and O_DIRECT preads at odd
    offsets and sizes, mixed with a buffered reader of the same image."""
    image = mount.mnt / "vms/runvm/@rhv/data--vm-2-d2.raw"
    want = image_bytes("vm-2", "disk:vm-2-d2", DISK_SIZE)
    assert DISK_SIZE % (1 << 20), "the tail must be a partial MiB"
    # bs=4M: the kernel splits each read into 1 MiB FUSE READs sent at once.
    for bs in ("4M", "1M", "1000"):
        out = tmp_path / f"dd-{bs}.raw"
        subprocess.run(
            ["dd", f"if={image}", f"of={out}", f"bs={bs}", "iflag=direct", "status=none"],
            check=True,
        )
        assert sha(out.read_bytes()) == sha(want), bs
    out = tmp_path / "qemu.raw"
    subprocess.run(
        ["qemu-img", "convert", "-T", "none", "-f", "raw", "-O", "raw", str(image), str(out)],
        check=True,
    )
    assert sha(out.read_bytes()) == sha(want)
    buf = mmap.mmap(-1, 3 << 20)  # page-aligned, as O_DIRECT callers use
    fd = os.open(image, os.O_RDONLY | os.O_DIRECT)
    try:
        with open(image, "rb") as buffered:
            for offset, size in ((513, 70_000), (DISK_SIZE - 4096 - 7, 1 << 20), (0, 3 << 20)):
                n = os.preadv(fd, [memoryview(buf)[:size]], offset)
                assert n == min(size, DISK_SIZE - offset)
                assert buf[:n] == want[offset : offset + n], (offset, size)
                buffered.seek(offset)
                assert buffered.read(size) == want[offset : offset + size]
            assert os.preadv(fd, [memoryview(buf)[:4096]], DISK_SIZE) == 0  # EOF
    finally:
        os.close(fd)
        buf.close()


def test_attributes_are_stable_across_mounts(tmp_path: Path) -> None:
    stats = []
    for _ in range(2):
        mnt = tmp_path / "mnt"
        mnt.mkdir(exist_ok=True)
        m = FakeMount(mnt)
        try:
            stats.append(snapshot_stats(mnt))
        finally:
            m.umount()
    assert stats[0] == stats[1]
    assert len(stats[0]) > 80
    inodes = [v[0] for v in stats[0].values()]
    assert len(set(inodes)) == len(inodes)


def test_umount_waits_and_refuses_unmounted(tmp_path: Path) -> None:
    result = subprocess.run([*RHVFS, "umount", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().endswith("is not mounted") and "Traceback" not in result.stderr
    assert shutil.which("fusermount3")


def test_restic_second_run_over_a_new_mount_sees_files_unchanged(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    env = {**os.environ, "RESTIC_PASSWORD": "test"}
    subprocess.run(["restic", "init", "-r", str(repo)], check=True, capture_output=True, env=env)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    summaries = []
    for _ in range(2):  # two separate mounts: inode numbers and times must not change
        m = FakeMount(mnt)
        try:
            summaries.append(restic_summary(repo, mnt / "vms/myvm/@rhv"))
        finally:
            m.umount()
    assert summaries[0]["files_new"] == 6
    assert summaries[1]["files_new"] == 0 and summaries[1]["files_changed"] == 0
    assert summaries[1]["files_unmodified"] == 6


def test_umount_of_a_hung_mount_detaches_it(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    m = FakeMount(mnt)
    os.kill(m.proc.pid, signal.SIGSTOP)  # the mount process answers nothing any more
    try:
        result = subprocess.run(
            [*RHVFS, "umount", "--timeout", "5", str(mnt)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert not os.path.ismount(mnt)
    finally:
        os.kill(m.proc.pid, signal.SIGCONT)
        m.proc.communicate(timeout=30)
