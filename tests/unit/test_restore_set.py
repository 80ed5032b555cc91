"""Reading sets back: manifest validation, OVF parsing, device stripping, staging ranges."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rhvfs.backupset._parse import (
    check_consistent,
    parse_manifest,
    parse_ovf,
    set_disk_flags,
    strip_devices,
    synthesize_ovf,
)
from rhvfs.errors import RestoreError
from rhvfs.sessions.restore._staging import StagingArea, StagingFull
from rhvfs.sim import api_ovf
from tests.support.backup_sets import DISK_IDS, VM_ID, make_set


def manifest_doc() -> dict:
    return json.loads(make_set().files["manifest.json"])


def test_manifest_fields() -> None:
    m = parse_manifest(make_set().files["manifest.json"])
    assert (m.kind, m.owner_id, m.owner_name, m.cluster_name) == ("vm", VM_ID, "myvm", "Default")
    d0, d1 = m.disks
    assert (d0.id, d0.size, d0.format, d0.interface, d0.bootable) == (
        DISK_IDS[0],
        2 * 1024 * 1024,
        "cow",
        "virtio_scsi",
        True,
    )
    assert (d1.format, d1.storage_domain_name) == ("raw", "mydata")
    assert m.disk_by_file(d1.file) is d1
    assert [n.mac for n in m.nics] == ["56:6f:00:00:00:01"]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda d: d.update(format="x"), "not an rhvfs backup set"),
        (lambda d: d.update(format_version=99), "format_version 99"),
        (lambda d: d.update(kind="pool"), "kind must be vm or template"),
        (lambda d: d.update(set_type="incremental"), "cannot be restored alone"),
        (lambda d: d["disks"][0].update(size=-1), "size must be positive"),
        (lambda d: d["disks"][0].update(format="vmdk"), "raw or cow"),
        (lambda d: d["disks"][0].update(id="nope"), "not a UUID"),
        (lambda d: d["disks"][0].update(file="../x"), "not a file name"),
        (lambda d: d["disks"][1].update(id=d["disks"][0]["id"]), "listed twice"),
        (lambda d: d["disks"][0].pop("size"), "has no 'size'"),
    ],
)
def test_manifest_refusals(change, match: str) -> None:  # type: ignore[no-untyped-def]
    doc = manifest_doc()
    change(doc)
    with pytest.raises(RestoreError, match=match):
        parse_manifest(json.dumps(doc).encode())


def test_ovf_identity_and_consistency() -> None:
    s = make_set()
    m = parse_manifest(s.files["manifest.json"])
    info = parse_ovf(s.files["vm.ovf"] + b"   \n")
    assert (info.vm_id, info.name) == (VM_ID, "myvm")
    assert info.disk_ids == frozenset(DISK_IDS[:2])
    check_consistent(m, info)
    other = parse_ovf(make_set(sizes=(1024 * 1024,)).files["vm.ovf"])
    with pytest.raises(RestoreError, match="two different sets"):
        check_consistent(m, other)  # same VM id, but a disk of the manifest is not in the OVF


def test_stripped_ovf_has_no_disks_or_nics_for_the_engine() -> None:
    ovf = make_set().files["vm.ovf"]
    before = api_ovf.parse_ovf(ovf.decode())
    assert len(before.disks) == 2 and len(before.nics) == 1
    after = api_ovf.parse_ovf(strip_devices(ovf))
    assert (after.vm_id, after.name, after.disks, after.nics) == (VM_ID, "myvm", (), ())


def test_synthesized_ovf_reads_back_like_the_manifest() -> None:
    m = parse_manifest(make_set().files["manifest.json"])
    vm = api_ovf.parse_ovf(synthesize_ovf(m))
    assert vm.vm_id == VM_ID and vm.name == "myvm"
    assert [(d.disk_id, d.interface, d.bootable, d.alias) for d in vm.disks] == [
        (DISK_IDS[0], "virtio_scsi", True, "disk0"),
        (DISK_IDS[1], "virtio", False, "disk1"),
    ]
    assert [(n.name, n.mac) for n in vm.nics] == [("nic1", "56:6f:00:00:00:01")]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 200), st.integers(1, 40)), max_size=25))
def test_staging_ranges_and_budget(
    tmp_path_factory: pytest.TempPathFactory, writes: list[tuple[int, int]]
) -> None:
    area = StagingArea(tmp_path_factory.mktemp("stage"), limit_bytes=1 << 20)
    f = area.open_file("x")
    model = bytearray(300)
    covered = [False] * 300
    for i, (off, n) in enumerate(writes):
        data = bytes([i % 251 + 1]) * n
        f.write(off, data)
        model[off : off + n] = data
        for j in range(off, off + n):
            covered[j] = True
    ranges = f.ranges()
    assert [j for s, e in ranges for j in range(s, e)] == [j for j in range(300) if covered[j]]
    assert all(e1 < s2 for (_, e1), (s2, _) in zip(ranges, ranges[1:], strict=False))
    assert area.used_bytes == sum(covered)
    for s, e in ranges:
        assert f.read(s, e - s) == bytes(model[s:e])
    f.close()
    assert area.used_bytes == 0


def test_staging_limit(tmp_path: Path) -> None:
    area = StagingArea(tmp_path, limit_bytes=100)
    f = area.open_file("img")
    f.write(0, b"x" * 60)
    f.write(0, b"y" * 60)  # a rewrite costs nothing more
    with pytest.raises(StagingFull, match="staging_limit 100"):
        f.write(60, b"z" * 41)
    assert area.used_bytes == 60


def test_disk_flags_rewritten_for_the_engine() -> None:
    s = make_set()
    m = parse_manifest(s.files["manifest.json"])
    text = set_disk_flags(
        synthesize_ovf(m), {DISK_IDS[0]: ("sata", False, False), "other": ("ide", True, True)}
    )
    vm = api_ovf.parse_ovf(text)
    d0, d1 = vm.disks
    assert (d0.interface, d0.bootable, d0.active) == ("sata", False, False)
    assert (d1.interface, d1.bootable, d1.active) == ("virtio", False, True)  # untouched
