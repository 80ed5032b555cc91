"""The parsers of restore input on damaged files, directly (thousands of cases, fast).

Every parser a restore runs on what a tool wrote either returns a value or
raises the one error class of its kind (``SetFormatError`` for OVF and
manifest, ``ChainError`` for a delta) -- never anything else -- and the qcow2
parser's reads are bounded: no single read larger than a cluster or 1 MiB of L1
table, no more bytes read in all than the file holds (plus its header), and
nothing written outside the disk when a delta is applied. The same damage
strategies feed the FS API tests (``tests/fs_api/test_restore_fuzz.py``).
"""

from __future__ import annotations

import json
import re
import struct

import pytest
import trio
from hypothesis import HealthCheck, given, settings

from rhvfs.backupset import (
    ChainError,
    Manifest,
    apply_delta,
    check_delta,
    delta_end,
    link_from_manifest,
    parse_ovf,
    strip_devices,
)
from rhvfs.errors import SetFormatError
from tests.support.fuzz_inputs import (
    DISK_SIZE,
    manifest_inputs,
    ovf_inputs,
    qcow2_inputs,
    tiny_chain,
)

MANY = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@settings(MANY, max_examples=800)
@given(ovf_inputs())
def test_ovf_parser_returns_or_refuses(data: bytes) -> None:
    try:
        info = parse_ovf(data)
    except SetFormatError as e:
        assert "\n" not in str(e) and len(str(e)) < 500
        return
    assert isinstance(info.disk_ids, frozenset)
    try:
        strip_devices(data)
    except SetFormatError:
        pass


@settings(MANY, max_examples=500)
@given(manifest_inputs())
def test_manifest_parser_returns_or_refuses(data: bytes) -> None:
    try:
        m = Manifest.from_json(data)
    except SetFormatError as e:
        assert "\n" not in str(e) and len(str(e)) < 500
        return
    assert Manifest.from_json(m.to_json()) == m


def _link() -> object:
    _, c1, _ = tiny_chain()
    name = next(n for n in c1 if n.startswith("manifest--"))
    link = link_from_manifest(name, Manifest.from_json(c1[name]))
    return next(iter(link.disks.values()))


@settings(MANY, max_examples=1200)
@given(qcow2_inputs())
def test_delta_parser_is_bounded_and_returns_or_refuses(data: bytes) -> None:
    link = _link()
    reads: list[tuple[int, int]] = []

    def read_at(offset: int, length: int) -> bytes:
        reads.append((offset, length))
        assert offset >= 0 and 0 <= length <= 2 * 1024 * 1024, (offset, length)
        return data[offset : offset + length]

    try:
        check_delta(read_at, link)  # type: ignore[arg-type]
        need = delta_end(read_at, link, file_size=len(data))  # type: ignore[arg-type]
    except ChainError as e:
        assert "\n" not in str(e)
        return
    finally:
        # in all: at most the file, plus the first cluster read for the header
        assert sum(n for _, n in reads) <= len(data) + 2 * 1024 * 1024 + 104
    assert need <= len(data)
    written: list[tuple[int, int]] = []

    async def write(offset: int, chunk: bytes) -> None:
        written.append((offset, len(chunk)))

    async def zero(offset: int, length: int) -> None:
        written.append((offset, length))

    stats = trio.run(lambda: apply_delta(read_at, write=write, zero=zero, file_size=len(data)))
    assert all(0 <= o and o + n <= DISK_SIZE for o, n in written), written
    assert stats.data_bytes + stats.zero_bytes == sum(n for _, n in written)


def test_the_undamaged_delta_parses() -> None:
    _, c1, _ = tiny_chain()
    delta = next(v for n, v in c1.items() if n.endswith(".qcow2"))
    link = _link()
    check_delta(lambda o, n: delta[o : o + n], link)  # type: ignore[arg-type]
    assert 0 < delta_end(lambda o, n: delta[o : o + n], link, file_size=len(delta)) <= len(delta)  # type: ignore[arg-type]
    assert (
        json.loads(c1[next(n for n in c1 if n.startswith("manifest--"))])["set_type"]
        == "incremental"
    )


def test_crafted_delta_headers_are_refused_without_big_reads() -> None:
    """The headers of the bug report and their kin: one clear error, no read over 64 KiB."""
    _, c1, _ = tiny_chain()
    valid = next(v for n, v in c1.items() if n.endswith(".qcow2"))
    link = _link()

    def crafted(*fields: tuple[int, str, int]) -> bytes:
        data = bytearray(valid)
        for offset, fmt, value in fields:
            struct.pack_into(fmt, data, offset, value)
        return bytes(data)

    (bf_off,) = struct.unpack_from(">Q", valid, 8)
    garbage = bytearray(valid)
    garbage[bf_off : bf_off + 8] = b"\xff\xfe\x00\x1b[2J\x07"
    cases = {
        bytes(garbage): "backing file name is not UTF-8",
        crafted((36, ">I", 0xFFFF_FFFF)): "larger than 32 MiB",
        crafted((24, ">Q", 1 << 62)): "larger than qcow2 can address",
        crafted((20, ">I", 30)): "bad cluster_bits 30",
        crafted((16, ">I", 0xFFFF_FFFF)): "backing file name of 4294967295 bytes",
        crafted((8, ">Q", 1 << 40)): "outside the first cluster",
        crafted((100, ">I", 0xFFFF_FFF8)): "bad header_length",
        crafted((108, ">I", 0xFFFF_FFFF)): "runs past the first cluster",
        crafted((40, ">Q", 12345)): "L1 table offset 12345 is not a cluster",
        crafted((36, ">I", 0)): "too small",
    }
    for data, message in cases.items():
        biggest = 0

        def read_at(offset: int, length: int, data: bytes = data) -> bytes:
            nonlocal biggest
            biggest = max(biggest, length)
            return data[offset : offset + length]

        with pytest.raises(ChainError, match=re.escape(message)):
            check_delta(read_at, link)  # type: ignore[arg-type]
            delta_end(read_at, link, file_size=len(data))  # type: ignore[arg-type]
        assert biggest <= 64 * 1024, (message, biggest)


def test_tables_that_reuse_clusters_cannot_make_the_parser_read_more_than_the_file() -> None:
    """Every L2 entry of a 64 MiB disk naming the one data cluster of a 384 KiB file:
    refused once the clusters add up to more than the file, after reading no more than it."""
    _, c1, _ = tiny_chain()
    data = bytearray(next(v for n, v in c1.items() if n.endswith(".qcow2")))
    struct.pack_into(">Q", data, 24, 64 * 1024 * 1024)  # virtual size: 1024 clusters
    (l1_off,) = struct.unpack_from(">Q", data, 40)
    (l2_entry,) = struct.unpack_from(">Q", data, l1_off)
    l2_off = l2_entry & 0x00FF_FFFF_FFFF_FE00
    (data_entry,) = struct.unpack_from(">Q", data, l2_off + 8)  # guest cluster 1: data
    for i in range(1024):
        struct.pack_into(">Q", data, l2_off + i * 8, data_entry)
    total = 0

    def read_at(offset: int, length: int) -> bytes:
        nonlocal total
        total += length
        return bytes(data[offset : offset + length])

    with pytest.raises(ChainError, match="add up to more than the file"):
        delta_end(read_at, _link(), file_size=len(data))  # type: ignore[arg-type]
    assert total <= len(data) + 65536
