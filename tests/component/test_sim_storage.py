"""Storage: qcow2 chains, guest writes, bitmaps and backward merges, checked by content."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from rhvfs.sim.guestdata import make_guest_image
from rhvfs.sim.storage import BitmapError, EmptyVolume, Storage, StorageError
from tests.support.data import sha

MiB = 1024 * 1024
SD = "sd-1"
DISK = "disk-1"
SIZE = 32 * MiB


def test_empty_volumes_in_bulk_are_what_create_volume_makes(tmp_path: Path) -> None:
    s = Storage(tmp_path)
    s.create_volume(SD, "ref", "c", fmt="cow", size=64 * MiB)
    made = [
        EmptyVolume(SD, f"d{i}", f"v{i}", "cow" if i % 2 else "raw", (i + 1) * 16 * MiB)
        for i in range(6)
    ]
    s.create_empty_volumes(made)
    ref = s.volume_info(SD, "ref", "c")
    for v in made:
        info = s.volume_info(SD, v.disk_id, v.vol_id)
        assert (info.fmt, info.virtual_size, info.backing_vol_id) == (v.fmt, v.size, None)
        assert info.sparse and info.actual_size <= 64 * 1024
        assert s.content_sha256(SD, v.disk_id, v.vol_id) == sha(bytes(v.size))
        assert oct(s.volume_path(SD, v.disk_id, v.vol_id).stat().st_mode & 0o777) == "0o600"
    same = s.volume_info(SD, "d3", "v3")  # cow, 64 MiB: the same image as qemu-img made
    assert s.volume_path(SD, "d3", "v3").read_bytes() == s.volume_path(SD, "ref", "c").read_bytes()
    assert same.file_size == ref.file_size
    # A snapshot on top works as on any volume; an existing volume is refused.
    s.snapshot(SD, "d3", "v3", "top")
    s.guest_write(SD, "d3", "top", offset=MiB, pattern=0xAB, size=65536)
    assert s.content_sha256(SD, "d3", "v3") == sha(bytes(64 * MiB))
    with pytest.raises(StorageError):
        s.create_empty_volumes([EmptyVolume(SD, "d1", "v1", "cow", MiB)])


def test_operations_leave_their_volumes_written_through(tmp_path: Path) -> None:
    """vdsm writes images with O_DIRECT, so a disk's allocation (the engine's ``actual_size``)
    is final when an operation returns, and a down VM's disk does not change by itself.
    Through the page cache, ext4 allocates extent blocks at writeback, seconds later, which
    changed a listed disk's ``actual_size`` under load and re-dated an unchanged set: every
    operation writes its volumes through before it returns."""
    src = tmp_path / "scattered.raw"
    with open(src, "wb") as f:
        f.truncate(256 * MiB)
        for i in range(2000):  # 2000 extents: more than the inode holds, an extent tree
            f.seek(i * 128 * 1024)
            f.write(b"x" * 4096)
    os.sync()
    s = Storage(tmp_path / "storage")
    s.import_raw(SD, DISK, "base", src, fmt="raw")
    path = s.volume_path(SD, DISK, "base")
    imported = path.stat().st_blocks
    os.sync()
    assert path.stat().st_blocks == imported
    for i in range(8):
        s.guest_write(SD, DISK, "base", offset=(i * 128 + 64) * 1024, pattern=0xCD, size=4096)
    written = path.stat().st_blocks
    os.sync()
    assert path.stat().st_blocks == written > imported


@pytest.fixture
def guest(tmp_path: Path) -> tuple[Storage, bytearray]:
    """A storage with a cow base volume "base" seeded from a guest image, and its bytes."""
    img = tmp_path / "guest.img"
    make_guest_image(img, size=SIZE, hostname="vm1", seed=3, files_mib=1)
    storage = Storage(tmp_path / "storage")
    storage.import_raw(SD, DISK, "base", img, fmt="cow")
    return storage, bytearray(img.read_bytes())


def test_create_raw_and_cow(tmp_path: Path) -> None:
    s = Storage(tmp_path)
    s.create_volume(SD, DISK, "r", fmt="raw", size=4 * MiB)
    s.create_volume(SD, DISK, "p", fmt="raw", size=4 * MiB, sparse=False)
    s.create_volume(SD, DISK, "c", fmt="cow", size=4 * MiB)
    r, p, c = (s.volume_info(SD, DISK, v) for v in ("r", "p", "c"))
    assert (r.fmt, r.virtual_size, r.file_size) == ("raw", 4 * MiB, 4 * MiB)
    assert r.actual_size <= 4096  # qemu-img writes the first block against format probing
    assert (p.fmt, p.virtual_size, p.actual_size) == ("raw", 4 * MiB, 4 * MiB)
    assert (c.fmt, c.virtual_size, c.backing_vol_id) == ("cow", 4 * MiB, None)
    assert c.file_size < MiB
    zero = sha(bytes(4 * MiB))
    assert [s.content_sha256(SD, DISK, v) for v in ("r", "p", "c")] == [zero] * 3
    assert s.volume_path(SD, DISK, "c") == tmp_path / SD / DISK / "c"
    assert s.volume_path(SD, DISK, "c").read_bytes()[:4] == b"QFI\xfb"
    with pytest.raises(StorageError):
        s.create_volume(SD, DISK, "c", fmt="cow", size=MiB)
    assert (r.sparse, p.sparse, c.sparse) == (True, False, True)
    s.resize(SD, DISK, "p", 6 * MiB)
    grown = s.volume_info(SD, DISK, "p")
    assert (grown.virtual_size, grown.actual_size) == (6 * MiB, 6 * MiB)
    s.resize(SD, DISK, "r", 6 * MiB)
    assert s.volume_info(SD, DISK, "r").actual_size <= 4096
    assert s.content_sha256(SD, DISK, "p") == sha(bytes(6 * MiB))
    s.resize(SD, DISK, "c", 8 * MiB)
    assert s.volume_info(SD, DISK, "c").virtual_size == 8 * MiB
    with pytest.raises(StorageError):
        s.resize(SD, DISK, "c", MiB)
    s.delete_disk(SD, DISK)
    assert not (tmp_path / SD / DISK).exists()
    assert s.list_volumes(SD, DISK) == []


def test_import_keeps_content_and_holes(guest: tuple[Storage, bytearray], tmp_path: Path) -> None:
    s, expected = guest
    assert s.content_sha256(SD, DISK, "base") == sha(expected)
    img = tmp_path / "guest.img"
    s.import_raw(SD, "raw-disk", "v", img, fmt="raw")
    assert s.content_sha256(SD, "raw-disk", "v") == sha(expected)
    raw_path = s.volume_path(SD, "raw-disk", "v")
    assert raw_path.stat().st_blocks * 512 <= img.stat().st_blocks * 512 + MiB
    s.import_raw(SD, "full-disk", "v", img, fmt="raw", sparse=False)
    full = s.volume_info(SD, "full-disk", "v")
    assert (full.sparse, full.actual_size) == (False, SIZE)
    assert s.content_sha256(SD, "full-disk", "v") == sha(expected)


def test_snapshot_write_merge(guest: tuple[Storage, bytearray]) -> None:
    s, expected = guest
    base_sha = sha(expected)
    s.add_bitmap(SD, DISK, "base", "cp1")
    s.snapshot(SD, DISK, "base", "top")
    info = s.volume_info(SD, DISK, "top")
    assert (info.fmt, info.backing_vol_id, info.virtual_size) == ("cow", "base", SIZE)
    bms = s.list_bitmaps(SD, DISK, "top")
    assert [(b.name, b.granularity, b.enabled, b.in_use) for b in bms] == [
        ("cp1", 65536, True, False)
    ]

    s.guest_write(SD, DISK, "top", offset=20 * MiB, pattern=0xAB, size=3 * 65536)
    s.guest_write(SD, DISK, "top", offset=1000, data=b"guest was here")
    s.guest_write(SD, DISK, "top", offset=2 * MiB, pattern=0, size=MiB)
    expected[20 * MiB : 20 * MiB + 3 * 65536] = b"\xab" * (3 * 65536)
    expected[1000:1014] = b"guest was here"
    expected[2 * MiB : 3 * MiB] = bytes(MiB)
    top_sha = sha(expected)
    assert top_sha != base_sha
    assert s.content_sha256(SD, DISK, "top") == top_sha
    assert s.content_sha256(SD, DISK, "base") == base_sha

    # A third volume, so the merge must rebase a child.
    s.add_bitmap(SD, DISK, "top", "cp2")
    s.snapshot(SD, DISK, "top", "active")
    s.guest_write(SD, DISK, "active", offset=30 * MiB, pattern=0x11, size=4096)
    expected[30 * MiB : 30 * MiB + 4096] = b"\x11" * 4096
    active_sha = sha(expected)
    assert s.chain(SD, DISK, "active") == ["active", "top", "base"]

    s.merge(SD, DISK, "base", "top")
    assert s.list_volumes(SD, DISK) == ["active", "base"]
    assert s.chain(SD, DISK, "active") == ["active", "base"]
    assert s.content_sha256(SD, DISK, "base") == top_sha
    assert s.content_sha256(SD, DISK, "active") == active_sha
    assert sorted(b.name for b in s.list_bitmaps(SD, DISK, "base")) == ["cp1", "cp2"]

    s.merge(SD, DISK, "base", "active")
    assert s.list_volumes(SD, DISK) == ["base"]
    assert s.content_sha256(SD, DISK, "base") == active_sha


def test_guest_write_bounds(guest: tuple[Storage, bytearray]) -> None:
    s, _ = guest
    with pytest.raises(StorageError):
        s.guest_write(SD, DISK, "base", offset=SIZE - 10, data=b"x" * 11)
    with pytest.raises(StorageError):
        s.guest_write(SD, DISK, "base", offset=0, data=b"x", pattern=1, size=1)


def test_dirty_overlay_chain_rules(guest: tuple[Storage, bytearray], tmp_path: Path) -> None:
    s, _ = guest
    work = tmp_path / "work"
    with pytest.raises(BitmapError):
        s.prepare_dirty_overlay(SD, DISK, "base", "cp1", work)
    s.add_bitmap(SD, DISK, "base", "cp1")
    s.snapshot(SD, DISK, "base", "mid")
    s.snapshot(SD, DISK, "mid", "top")
    overlay = s.prepare_dirty_overlay(SD, DISK, "top", "cp1", work)
    assert overlay.parent == work
    # The overlay carries the bitmap and shows the chain's data.
    info = s._info(overlay, "cow")
    assert [b["name"] for b in info["format-specific"]["data"]["bitmaps"]] == ["cp1"]
    assert info["backing-filename"] == str(s.volume_path(SD, DISK, "top").resolve())
    overlay.unlink()

    # A gap (bitmap removed from the middle volume) is inconsistent.
    s.remove_bitmap(SD, DISK, "mid", "cp1")
    with pytest.raises(BitmapError):
        s.prepare_dirty_overlay(SD, DISK, "top", "cp1", work)
    # Missing on the top volume.
    s.remove_bitmap(SD, DISK, "top", "cp1")
    with pytest.raises(BitmapError):
        s.prepare_dirty_overlay(SD, DISK, "top", "cp1", work)
    assert list(work.iterdir()) == []


def test_guest_write_larger_than_one_qemu_io_buffer(tmp_path: Path) -> None:
    s = Storage(tmp_path / "storage with space")
    s.create_volume(SD, DISK, "v", fmt="cow", size=80 * MiB)
    data = random.Random(5).randbytes(40 * MiB + 123)
    s.guest_write(SD, DISK, "v", offset=3 * MiB + 7, data=data)
    s.guest_write(SD, DISK, "v", offset=45 * MiB, pattern=0x33, size=34 * MiB)
    expected = bytearray(80 * MiB)
    expected[3 * MiB + 7 : 3 * MiB + 7 + len(data)] = data
    expected[45 * MiB : 79 * MiB] = b"\x33" * (34 * MiB)
    assert s.content_sha256(SD, DISK, "v") == sha(expected)
