"""Deterministic guest disk images for the simulator's sample VMs.

Owns ``make_guest_image``: a sparse raw file with a GPT (written by ``sfdisk``)
and one ext4 partition at 1 MiB, built by ``mke2fs -d`` from a generated
directory tree. No root, no loop devices. The same arguments always produce
the same bytes: UUIDs and the directory hash seed derive from ``seed``, file
times and the filesystem's own timestamps are fixed.

Must not import anything from the client side of rhvfs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

MiB = 1024 * 1024
PARTITION_OFFSET = 1 * MiB
# The filesystem stays modest so most of a sample disk is a hole.
MAX_FS_SIZE = 64 * MiB
FS_BLOCK_SIZE = 4096
# 2020-01-01T00:00:00Z: every timestamp inside the image.
FIXED_EPOCH = 1577836800
# GPT needs 33 sectors at the end for the backup header.
_GPT_TAIL = 1 * MiB
_LINUX_FS_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
_MIN_SIZE = PARTITION_OFFSET + 4 * MiB + _GPT_TAIL

_OS_RELEASE = """\
PRETTY_NAME="rhvfs sample guest"
NAME="rhvfs-sample"
ID=rhvfs-sample
VERSION_ID="1"
HOME_URL="https://example.invalid/rhvfs"
"""


class GuestDataError(Exception):
    """Raised when sfdisk or mke2fs fails, or the requested image cannot hold the data."""


def derived_uuid(seed: int, purpose: str) -> uuid.UUID:
    """A stable random-looking UUID (version 4 layout) for ``purpose`` under ``seed``."""
    digest = hashlib.sha256(f"rhvfs-sim:{seed}:{purpose}".encode()).digest()
    return uuid.UUID(bytes=digest[:16], version=4)


def fs_size_for(size: int) -> int:
    """Bytes of the ext4 filesystem placed in a disk of ``size`` bytes."""
    room = size - PARTITION_OFFSET - _GPT_TAIL
    return min(MAX_FS_SIZE, room) // FS_BLOCK_SIZE * FS_BLOCK_SIZE


def make_guest_image(
    path: Path, *, size: int, hostname: str, seed: int, files_mib: int = 4
) -> None:
    """Write a sparse raw disk image of ``size`` bytes to ``path`` (replaced if present).

    The ext4 filesystem holds ``/etc/hostname`` (= ``hostname``),
    ``/etc/os-release``, ``/etc/motd`` and ``files_mib`` MiB of pseudo-random
    files ``/data/file-NN.bin`` generated from ``seed``.
    """
    if size < _MIN_SIZE:
        raise GuestDataError(f"guest image size {size} is below the minimum {_MIN_SIZE}")
    fs_size = fs_size_for(size)
    if files_mib * MiB > fs_size // 2:
        raise GuestDataError(f"{files_mib} MiB of files do not fit a {fs_size} byte filesystem")

    with tempfile.TemporaryDirectory(prefix="rhvfs-guest-") as tmp:
        src = Path(tmp) / "root"
        _populate(src, hostname=hostname, seed=seed, files_mib=files_mib)
        path.unlink(missing_ok=True)
        with open(path, "wb") as f:
            f.truncate(size)
        _partition(path, size=size, fs_size=fs_size, seed=seed)
        _mkfs(path, src, fs_size=fs_size, seed=seed, hostname=hostname)
    log.debug("guest image %s: size=%d fs=%d seed=%d", path, size, fs_size, seed)


def _populate(src: Path, *, hostname: str, seed: int, files_mib: int) -> None:
    rng = random.Random(seed)
    files: dict[str, bytes] = {
        "etc/hostname": f"{hostname}\n".encode(),
        "etc/os-release": _OS_RELEASE.encode(),
        "etc/motd": f"Welcome to {hostname}, a guest of the rhvfs simulator (seed {seed}).\n".encode(),
        "data/README.txt": (
            b"Pseudo-random files; regenerate with rhvfs.sim.guestdata.make_guest_image.\n"
        ),
    }
    for i in range(files_mib):
        files[f"data/file-{i:02d}.bin"] = rng.randbytes(MiB)
    for rel, data in files.items():
        p = src / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        os.chmod(p, 0o644)
    # Fixed times on everything, deepest first so parents are not touched after.
    all_paths = sorted(src.rglob("*"), key=lambda p: len(p.parts), reverse=True)
    for p in [*all_paths, src]:
        if p.is_dir():
            os.chmod(p, 0o755)
        os.utime(p, (FIXED_EPOCH, FIXED_EPOCH))


def _run(argv: list[str], *, input: str | None = None, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(argv, input=input, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise GuestDataError(
            f"{argv[0]} failed (exit {proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}"
        )


def _partition(path: Path, *, size: int, fs_size: int, seed: int) -> None:
    sectors = fs_size // 512
    script = (
        "label: gpt\n"
        f"label-id: {derived_uuid(seed, 'disk')}\n"
        "unit: sectors\n"
        "first-lba: 2048\n"
        f"start=2048, size={sectors}, type={_LINUX_FS_TYPE}, "
        f"uuid={derived_uuid(seed, 'partition')}, name=root\n"
    )
    _run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(path)], input=script)


def _mkfs(path: Path, src: Path, *, fs_size: int, seed: int, hostname: str) -> None:
    env = dict(os.environ)
    env["E2FSPROGS_FAKE_TIME"] = str(FIXED_EPOCH)
    env["SOURCE_DATE_EPOCH"] = str(FIXED_EPOCH)
    env.pop("MKE2FS_CONFIG", None)
    fs_uuid = derived_uuid(seed, "filesystem")
    hash_seed = derived_uuid(seed, "hash-seed")
    extended = ",".join(
        [
            f"offset={PARTITION_OFFSET}",
            f"hash_seed={hash_seed}",
            "root_owner=0:0",
            "nodiscard",
            "lazy_itable_init=0",
            "lazy_journal_init=0",
        ]
    )
    argv = [
        "mke2fs",
        "-q",
        "-F",
        "-t",
        "ext4",
        "-b",
        str(FS_BLOCK_SIZE),
        "-U",
        str(fs_uuid),
        "-L",
        hostname[:16],
        "-E",
        extended,
        "-d",
        str(src),
        str(path),
        str(fs_size // FS_BLOCK_SIZE),
    ]
    _run(argv, env=env)
    _fix_ctimes(path, src, env=env)


def _fix_ctimes(path: Path, src: Path, *, env: dict[str, str]) -> None:
    # mke2fs -d copies each source file's ctime, which no syscall can set;
    # rewrite it (and the nanosecond part) to the fixed epoch with debugfs.
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(FIXED_EPOCH))
    rels = ["/", "/lost+found"]
    rels += sorted("/" + p.relative_to(src).as_posix() for p in src.rglob("*"))
    with tempfile.NamedTemporaryFile("w", suffix=".debugfs") as cmds:
        for rel in rels:
            for field in ("ctime", "atime", "mtime", "crtime"):
                cmds.write(f"set_inode_field {rel} {field} {stamp}\n")
        cmds.flush()
        _run(["debugfs", "-w", "-f", cmds.name, f"{path}?offset={PARTITION_OFFSET}"], env=env)
