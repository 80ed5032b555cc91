"""The qcow2 delta codec (rhvfs.backupset) against qemu-img itself.

Every example builds a backing raw image, applies changes to get the
"current" guest image, synthesizes the delta by reading it through
``Qcow2Delta.read`` (sequentially in odd chunk sizes and at random offsets),
then lets qemu-img check it, follow its backing chain, and compare
backing+delta byte for byte with the current image. The parser and the
apply helper must reproduce the current image from the backing file too.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rhvfs.backupset._qcow2 import (
    CLUSTER_SIZE,
    Allocation,
    Change,
    Qcow2Delta,
    Qcow2FormatError,
    apply_allocation,
    classify_clusters,
    read_allocation,
    read_header,
)

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img missing")


def _qemu_img(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True, check=False)


def _apply_changes(base: bytes, changes: list[Change], rng: random.Random) -> bytes:
    """The guest image after ``changes``: zero ranges first, then data (data wins)."""
    cur = bytearray(base)
    for c in changes:
        if c.zero:
            cur[c.start : c.end] = bytes(len(cur[c.start : c.end]))
    for c in changes:
        if not c.zero:
            n = len(cur[c.start : c.end])
            cur[c.start : c.end] = rng.randbytes(n)
    return bytes(cur)


def _build(delta: Qcow2Delta, current: bytes, rng: random.Random) -> tuple[bytes, list[int]]:
    """Read the whole delta sequentially in uneven chunks; check random reads against it.

    Returns the file bytes and the lengths fetched during the sequential pass.
    """
    fetched: list[int] = []

    async def fetch(offset: int, length: int) -> bytes:
        assert 0 <= offset and offset + length <= len(current)
        fetched.append(length)
        return current[offset : offset + length]

    async def main() -> bytes:
        parts = []
        pos = 0
        while pos < delta.size + 1000:
            n = rng.choice([512, 4096, 131072, 65536 + 512, 1, 777])
            part = await delta.read(pos, n, fetch)
            assert len(part) == max(0, min(n, delta.size - pos))
            parts.append(part)
            pos += n
        whole = b"".join(parts)
        sequential = list(fetched)
        for _ in range(20):
            off = rng.randrange(0, delta.size + 1)
            n = rng.randrange(0, 3 * delta.cluster_size)
            assert await delta.read(off, n, fetch) == whole[off : off + n]
        fetched[:] = sequential
        return whole

    return trio.run(main), fetched


def _check_chain(tmp: Path, delta_bytes: bytes, current: bytes, backing_format: str) -> None:
    (tmp / "delta.qcow2").write_bytes(delta_bytes)
    (tmp / "current.raw").write_bytes(current)
    check = _qemu_img("check", "--output=json", str(tmp / "delta.qcow2"))
    assert check.returncode == 0, check.stdout + check.stderr
    report = json.loads(check.stdout)
    assert report.get("leaks", 0) == 0 and report.get("corruptions", 0) == 0, report
    assert report["image-end-offset"] == len(delta_bytes)
    info = _qemu_img("info", "--backing-chain", "--output=json", str(tmp / "delta.qcow2"))
    assert info.returncode == 0, info.stderr
    chain = json.loads(info.stdout)
    assert [i["format"] for i in chain] == ["qcow2", backing_format]
    assert chain[0]["backing-filename"] == "base.img"
    assert chain[0]["full-backing-filename"] == str(tmp / "base.img")
    assert chain[0]["virtual-size"] == len(current)
    cmp_ = _qemu_img(
        "compare", "-f", "qcow2", "-F", "raw", str(tmp / "delta.qcow2"), str(tmp / "current.raw")
    )
    assert cmp_.returncode == 0, cmp_.stdout + cmp_.stderr


@st.composite
def _scenarios(draw: st.DrawFn) -> tuple[int, int, list[Change], int]:
    cluster_size = draw(st.sampled_from([512, 4096, CLUSTER_SIZE]))
    # 512-byte clusters: 64 L2 entries (32 KiB) per table and 256 refcounts per
    # block, so small images still need several L2 tables and refcount blocks.
    max_clusters = {512: 700, 4096: 80, CLUSTER_SIZE: 24}[cluster_size]
    clusters = draw(st.integers(1, max_clusters))
    virtual_size = clusters * cluster_size - draw(st.integers(0, cluster_size // 512 - 1)) * 512
    unit = draw(st.sampled_from([1, 512, cluster_size]))
    slots = virtual_size // unit + 1
    changes = []
    for _ in range(draw(st.integers(0, 12))):
        start = draw(st.integers(0, slots)) * unit
        length = draw(st.integers(1, max(1, slots // 3))) * unit
        changes.append(Change(min(start, virtual_size), length, zero=draw(st.booleans())))
    return cluster_size, virtual_size, changes, draw(st.integers(0, 2**32))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_scenarios())
def test_delta_chain_matches_current_image(scenario: tuple[int, int, list[Change], int]) -> None:
    cluster_size, virtual_size, changes, seed = scenario
    rng = random.Random(seed)
    base = rng.randbytes(virtual_size)
    current = _apply_changes(base, changes, rng)
    delta = Qcow2Delta(
        virtual_size=virtual_size,
        changes=changes,
        backing_file="base.img",
        backing_format="raw",
        cluster_size=cluster_size,
    )
    whole, fetched = _build(delta, current, rng)
    assert len(whole) == delta.size
    assert delta.size == delta.metadata_size + delta.data_size
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "base.img").write_bytes(base)
        _check_chain(tmp, whole, current, "raw")

        # the parser sees exactly what the synthesizer laid out
        allocation = read_allocation(tmp / "delta.qcow2")
        assert allocation == delta.changed_ranges()
        header = read_header(tmp / "delta.qcow2")
        assert (header.virtual_size, header.cluster_size) == (virtual_size, cluster_size)
        assert (header.backing_file, header.backing_format) == ("base.img", "raw")

        # rolling the backing image forward with the parsed delta gives the current image
        rolled = bytearray(base)

        def write_at(offset: int, data: bytes) -> None:
            rolled[offset : offset + len(data)] = data

        apply_allocation(tmp / "delta.qcow2", allocation, write_at, chunk_bytes=3000)
        assert hashlib.sha256(rolled).hexdigest() == hashlib.sha256(current).hexdigest()

    # one sequential pass fetches each changed data byte once, nothing else
    data_guest = sum(a.length for a in delta.changed_ranges() if a.kind == "data")
    assert sum(fetched) == data_guest


def test_unchanged_disk_gives_metadata_only_delta(tmp_path: Path) -> None:
    base = random.Random(1).randbytes(1024 * 1024)
    delta = Qcow2Delta(
        virtual_size=len(base), changes=[], backing_file="base.img", backing_format="raw"
    )
    assert delta.data_size == 0
    assert delta.size == 4 * CLUSTER_SIZE  # header, refcount table, refcount block, L1
    whole, fetched = _build(delta, base, random.Random(2))
    assert fetched == []
    (tmp_path / "base.img").write_bytes(base)
    _check_chain(tmp_path, whole, base, "raw")
    assert read_allocation(tmp_path / "delta.qcow2") == []


def test_zero_range_overrides_backing_data(tmp_path: Path) -> None:
    """A whole-cluster zero change is a zero-flag L2 entry: no data, reads as zeroes."""
    base = b"\xab" * (4 * CLUSTER_SIZE)
    current = base[:CLUSTER_SIZE] + bytes(2 * CLUSTER_SIZE) + base[3 * CLUSTER_SIZE :]
    delta = Qcow2Delta(
        virtual_size=len(base),
        changes=[Change(CLUSTER_SIZE, 2 * CLUSTER_SIZE, zero=True)],
        backing_file="base.img",
        backing_format="raw",
    )
    assert delta.data_size == 0
    whole, fetched = _build(delta, current, random.Random(3))
    assert fetched == []
    (tmp_path / "base.img").write_bytes(base)
    _check_chain(tmp_path, whole, current, "raw")
    assert read_allocation(tmp_path / "delta.qcow2") == [
        Allocation(CLUSTER_SIZE, 2 * CLUSTER_SIZE, "zero", None)
    ]


def test_qcow2_backing_and_chain_of_two_deltas(tmp_path: Path) -> None:
    """full (qcow2 from qemu-img) <- delta1 <- delta2: convert of the top equals the newest state."""
    rng = random.Random(4)
    size = 3 * 1024 * 1024
    v0 = rng.randbytes(size)
    (tmp_path / "v0.raw").write_bytes(v0)
    assert (
        _qemu_img(
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            str(tmp_path / "v0.raw"),
            str(tmp_path / "full.qcow2"),
        ).returncode
        == 0
    )
    c1 = [Change(100_000, 200_000), Change(2 * 1024 * 1024, 65536, zero=True)]
    v1 = _apply_changes(v0, c1, rng)
    c2 = [Change(150_000, 10), Change(size - 512, 512, zero=True)]
    v2 = _apply_changes(v1, c2, rng)
    d1 = Qcow2Delta(
        virtual_size=size, changes=c1, backing_file="full.qcow2", backing_format="qcow2"
    )
    d2 = Qcow2Delta(virtual_size=size, changes=c2, backing_file="d1.qcow2", backing_format="qcow2")
    (tmp_path / "d1.qcow2").write_bytes(_build(d1, v1, rng)[0])
    (tmp_path / "d2.qcow2").write_bytes(_build(d2, v2, rng)[0])
    info = _qemu_img("info", "--backing-chain", "--output=json", str(tmp_path / "d2.qcow2"))
    assert [i["filename"] for i in json.loads(info.stdout)] == [
        str(tmp_path / n) for n in ("d2.qcow2", "d1.qcow2", "full.qcow2")
    ]
    out = tmp_path / "out.raw"
    assert _qemu_img("convert", "-O", "raw", str(tmp_path / "d2.qcow2"), str(out)).returncode == 0
    assert hashlib.sha256(out.read_bytes()).hexdigest() == hashlib.sha256(v2).hexdigest()


def test_grown_disk_reads_zero_past_the_old_backing_end(tmp_path: Path) -> None:
    rng = random.Random(5)
    base = rng.randbytes(1024 * 1024)
    current = base + bytes(1024 * 1024)
    changes = [Change(1024 * 1024 + 4096, 4096)]
    current = _apply_changes(current, changes, rng)
    delta = Qcow2Delta(
        virtual_size=len(current), changes=changes, backing_file="base.img", backing_format="raw"
    )
    (tmp_path / "base.img").write_bytes(base)
    whole, _ = _build(delta, current, rng)
    (tmp_path / "delta.qcow2").write_bytes(whole)
    (tmp_path / "current.raw").write_bytes(current)
    r = _qemu_img(
        "compare", "-F", "raw", str(tmp_path / "delta.qcow2"), str(tmp_path / "current.raw")
    )
    assert r.returncode == 0, r.stdout


def test_size_is_changed_data_plus_small_metadata() -> None:
    """4 GiB disk, 64 MiB changed in 16 scattered 4 MiB runs: delta <= 1.1 x changed bytes."""
    gib = 1024**3
    changes = [Change(i * 256 * 1024 * 1024 + 12345, 4 * 1024 * 1024) for i in range(16)]
    delta = Qcow2Delta(
        virtual_size=4 * gib, changes=changes, backing_file="b", backing_format="qcow2"
    )
    changed = 64 * 1024 * 1024
    # each unaligned 4 MiB run touches one extra cluster
    assert delta.data_size == changed + 16 * CLUSTER_SIZE
    # header, refcount table, 1 refcount block, L1, 8 L2 tables
    assert delta.metadata_size == 12 * CLUSTER_SIZE
    assert delta.size / changed < 1.1


def test_data_ranges_map_file_to_guest() -> None:
    cs = CLUSTER_SIZE
    delta = Qcow2Delta(
        virtual_size=100 * cs,
        changes=[Change(90 * cs, 2 * cs), Change(10 * cs, cs), Change(50 * cs, 5 * cs, zero=True)],
        backing_file="b",
    )
    first = delta.metadata_size
    assert delta.data_ranges(0, delta.size) == [
        (first, 10 * cs, cs),
        (first + cs, 90 * cs, 2 * cs),
    ]
    assert delta.data_ranges(first + cs + 100, 10) == [(first + cs + 100, 90 * cs + 100, 10)]


def test_classify_partial_zero_edges_become_data() -> None:
    data, zero = classify_clusters(
        [Change(100, 3 * 512 * 4 - 200, zero=True)], virtual_size=512 * 20, cluster_size=512 * 4
    )
    # bytes [100, 6044) zero: cluster 0 partly (data), cluster 1 fully (zero), cluster 2 partly (data)
    assert (data, zero) == ([(0, 1), (2, 3)], [(1, 2)])
    # a zero range to the end of the disk covers the short last cluster fully
    assert classify_clusters(
        [Change(4096, 1024, zero=True)], virtual_size=5120, cluster_size=2048
    ) == (
        [],
        [(2, 3)],
    )
    # adjacent zero extents split off cluster boundaries still make whole zero clusters
    assert classify_clusters(
        [Change(0, 1000, zero=True), Change(1000, 3096, zero=True)],
        virtual_size=8192,
        cluster_size=4096,
    ) == ([], [(0, 1)])


def test_parser_refuses_foreign_files(tmp_path: Path) -> None:
    (tmp_path / "x.raw").write_bytes(b"\0" * 4096)
    with pytest.raises(Qcow2FormatError, match="magic"):
        read_allocation(tmp_path / "x.raw")
    img = tmp_path / "c.qcow2"
    assert _qemu_img("create", "-f", "qcow2", str(img), "1M").returncode == 0
    assert _qemu_img("check", str(img)).returncode == 0
    assert read_allocation(img) == []
    truncated = tmp_path / "t.qcow2"
    truncated.write_bytes(img.read_bytes()[:200])
    with pytest.raises(Qcow2FormatError, match="truncated"):
        read_allocation(truncated)


def test_parser_reads_qemu_written_layers(tmp_path: Path) -> None:
    """read_allocation of an overlay qemu-io wrote to: data and zero clusters as qemu placed them."""
    base = tmp_path / "base.qcow2"
    top = tmp_path / "top.qcow2"
    assert _qemu_img("create", "-f", "qcow2", str(base), "4M").returncode == 0
    assert (
        _qemu_img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", str(top)).returncode
        == 0
    )
    r = subprocess.run(
        [
            "qemu-io",
            "-f",
            "qcow2",
            "-c",
            "write -P 0x5a 1M 128k",
            "-c",
            "write -z 2M 64k",
            str(top),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    alloc = read_allocation(top)
    assert [(a.start, a.length, a.kind) for a in alloc] == [
        (1024 * 1024, 128 * 1024, "data"),
        (2 * 1024 * 1024, 64 * 1024, "zero"),
    ]
    assert read_header(top).backing_file == "base.qcow2"
