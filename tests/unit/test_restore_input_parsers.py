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
