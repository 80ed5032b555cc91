"""OVF helpers (rhvfs.backupset): whose OVF it is, device stripping, synthesis, disk flags."""

from __future__ import annotations

import pytest

from rhvfs.backupset import (
    check_consistent,
    missing_ovf,
    parse_manifest,
    parse_ovf,
    set_disk_flags,
    strip_devices,
    synthesize_ovf,
)
from rhvfs.errors import RestoreError
from rhvfs.sim import api_ovf
from tests.support.backup_sets import DISK_IDS, VM_ID, make_set


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


def test_placeholder_is_recognised_and_refusals_are_clear() -> None:
    info = parse_ovf(missing_ovf("vm", "a--b") + b"   \n")
    assert info.placeholder and info.vm_id is None and info.disk_ids == frozenset()
    for bad, match in [
        (b"<html/>", "not an OVF envelope"),
        (b"<ovf:Envelope", "not well-formed"),
        (b'<?xml version="1.0" encoding="nope"?><a/>', "not well-formed"),
        (
            b'<ovf:Envelope xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1/"><x/></ovf:Envelope>',
            "no Content section",
        ),
    ]:
        with pytest.raises(RestoreError, match=match):
            parse_ovf(bad)
