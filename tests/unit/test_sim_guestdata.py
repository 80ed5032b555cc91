"""make_guest_image: deterministic bytes, a valid GPT + ext4, holes kept."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import time
from pathlib import Path

import pytest

from rhvfs.sim.guestdata import (
    PARTITION_OFFSET,
    GuestDataError,
    derived_uuid,
    make_guest_image,
)

MiB = 1024 * 1024


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _debugfs_cat(image: Path, inner: str) -> bytes:
    out = subprocess.run(
        ["debugfs", "-R", f"cat {inner}", f"{image}?offset={PARTITION_OFFSET}"],
        capture_output=True,
        check=True,
    )
    return out.stdout


def test_same_arguments_give_identical_bytes(tmp_path: Path) -> None:
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    start = time.monotonic()
    make_guest_image(a, size=64 * MiB, hostname="vm-a", seed=42)
    elapsed = time.monotonic() - start
    make_guest_image(b, size=64 * MiB, hostname="vm-a", seed=42)
    assert _sha256(a) == _sha256(b)
    assert elapsed < 2.0  # typically 0.05 s; headroom for a loaded 2-core machine


def test_different_seed_or_hostname_differ(tmp_path: Path) -> None:
    paths = [tmp_path / f"{i}.img" for i in range(3)]
    make_guest_image(paths[0], size=32 * MiB, hostname="vm-a", seed=1)
    make_guest_image(paths[1], size=32 * MiB, hostname="vm-a", seed=2)
    make_guest_image(paths[2], size=32 * MiB, hostname="vm-b", seed=1)
    assert len({_sha256(p) for p in paths}) == 3


def test_layout_and_files(tmp_path: Path) -> None:
    img = tmp_path / "g.img"
    make_guest_image(img, size=1024 * MiB, hostname="web01", seed=7, files_mib=2)
    assert img.stat().st_size == 1024 * MiB
    # Mostly a hole: the 1 GiB disk allocates little more than the files.
    assert img.stat().st_blocks * 512 < 16 * MiB

    table = json.loads(
        subprocess.run(["sfdisk", "--json", str(img)], capture_output=True, check=True).stdout
    )["partitiontable"]
    assert table["label"] == "gpt"
    assert table["id"].lower() == str(derived_uuid(7, "disk"))
    (part,) = table["partitions"]
    assert part["start"] == PARTITION_OFFSET // 512
    assert part["uuid"].lower() == str(derived_uuid(7, "partition"))

    fsck = subprocess.run(
        ["e2fsck", "-fn", f"{img}?offset={PARTITION_OFFSET}"], capture_output=True, text=True
    )
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr

    assert _debugfs_cat(img, "/etc/hostname") == b"web01\n"
    assert b"rhvfs-sample" in _debugfs_cat(img, "/etc/os-release")
    rng = random.Random(7)
    assert _debugfs_cat(img, "/data/file-00.bin") == rng.randbytes(MiB)
    assert _debugfs_cat(img, "/data/file-01.bin") == rng.randbytes(MiB)


def test_too_small_is_refused(tmp_path: Path) -> None:
    with pytest.raises(GuestDataError):
        make_guest_image(tmp_path / "x.img", size=2 * MiB, hostname="x", seed=1)
    assert not os.path.exists(tmp_path / "x.img")
