"""Restore options: the options file, mount defaults, per-disk values, validation."""

from __future__ import annotations

import pytest

from rhvfs.errors import RestoreError
from rhvfs.sessions.restore._options import (
    PerDisk,
    build_options,
    parse_lines,
    unknown_disk_keys,
    wanted_mac,
)

D1 = "11111111-1111-1111-1111-111111111111"
D2 = "22222222-2222-2222-2222-222222222222"


def test_file_overrides_mount_defaults_key_by_key() -> None:
    text = "[restore]\n# comment\nvm_name = copy1\nvm_switchon = yes\n; other\n"
    opts = build_options(
        defaults={"vm_name": "x", "cluster": "mycluster"},
        file_values=parse_lines(text, source="f"),
    )
    assert opts.vm_name == "copy1"
    assert opts.cluster == "mycluster"
    assert opts.vm_switchon is True
    assert opts.vm_force_overwrite is False


def test_storage_domain_for_all_and_per_disk() -> None:
    opts = build_options(defaults={}, file_values={"storage_domain": f"mydata, {D2}:other"})
    assert opts.storage_domain == PerDisk(default="mydata", by_disk={D2: "other"})
    assert opts.storage_domain.get(D1, "a") == "mydata"
    assert opts.storage_domain.get(D2, "b") == "other"


def test_per_disk_by_alias_and_bools() -> None:
    opts = build_options(
        defaults={},
        file_values={"disk_boot": "no, boot:yes", "disk_active": "false", "disk_interface": "sata"},
    )
    assert opts.disk_boot.get(D1, "boot") is True
    assert opts.disk_boot.get(D2, "data") is False
    assert opts.disk_active.get(D1, "x") is False
    assert opts.disk_interface.get(D1, "x") == "sata"


def test_nics_modes() -> None:
    assert build_options(defaults={}, file_values={"nics": "new"}).nics == "new"
    assert build_options(defaults={}).nics == "auto"
    assert build_options(defaults={}, file_values={"nics": "original"}).nics == "original"
    opts = build_options(defaults={}, file_values={"nics": "nic1:56:6F:00:00:00:01"})
    assert opts.nics == "explicit"
    assert dict(opts.nic_macs) == {"nic1": "56:6f:00:00:00:01"}
    with pytest.raises(RestoreError, match="nics"):
        build_options(defaults={}, file_values={"nics": "nic1:zz"})


def test_disk_selection() -> None:
    opts = build_options(defaults={}, file_values={"vm_exclude_disks": D2})
    assert opts.selects(D1, "a") and not opts.selects(D2, "b")
    opts = build_options(defaults={}, file_values={"vm_disks": "a"})
    assert opts.selects(D1, "a") and not opts.selects(D2, "b")
    opts = build_options(defaults={}, file_values={"vm_disks": "none"})
    assert not opts.selects(D1, "a") and opts.vm_disks == frozenset()
    assert build_options(defaults={}, file_values={"vm_disks": "all"}).vm_disks is None


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("bogus = 1", "unknown option 'bogus'"),
        ("just words", "expected 'key = value'"),
    ],
)
def test_bad_lines(text: str, match: str) -> None:
    with pytest.raises(RestoreError, match=match):
        parse_lines(text, source="rhvfs-restore.conf")


def test_bad_values() -> None:
    with pytest.raises(RestoreError, match="yes or no"):
        build_options(defaults={}, file_values={"vm_switchon": "maybe"})
    with pytest.raises(RestoreError, match="disk_interface"):
        build_options(defaults={}, file_values={"disk_interface": "scsi"})
    with pytest.raises(RestoreError, match="unknown restore option"):
        build_options(defaults={"colour": "red"})


def test_vm_missing_disks() -> None:
    assert build_options(defaults={}).vm_missing_disks == "fail"
    assert build_options(
        defaults={}, file_values={"vm_missing_disks": "Skip"}
    ).vm_missing_disks == ("skip")
    assert build_options(defaults={"restore_vm_missing_disks": "skip"}).vm_missing_disks == "skip"
    with pytest.raises(RestoreError, match="vm_missing_disks must be fail or skip"):
        build_options(defaults={}, file_values={"vm_missing_disks": "ignore"})


def test_unknown_disk_keys() -> None:
    opts = build_options(defaults={}, file_values={"disk_names": f"{D1}:new, nope:x"})
    assert unknown_disk_keys(opts, [D1, "a"]) == ["nope"]
    assert opts.as_dict()["disk_names"] == {"default": None, "by_disk": {D1: "new", "nope": "x"}}


def test_mount_defaults_come_from_the_config_section(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from rhvfs.config import load_config

    conf = tmp_path / "ovirt-img.conf"
    conf.write_text(
        "[sim]\nengine_url = https://localhost:1\nusername = u\npassword = p\n"
        "restore_vm_switchon = yes\nrestore_storage_domain = mydata\nrestore_nics = new\n"
    )
    cfg = load_config(section="sim", config_file=conf)
    opts = build_options(defaults=cfg.restore_defaults, file_values={"nics": "original"})
    assert opts.vm_switchon is True
    assert opts.storage_domain.default == "mydata"
    assert opts.nics == "original"  # the options file wins


def test_positional_nics_in_the_plugins_syntax() -> None:
    opts = build_options(defaults={}, file_values={"nics": "C0:FF:EE:00:00:01,original"})
    assert opts.nics == "explicit" and dict(opts.nic_macs) == {}
    assert opts.nic_positions == ("c0:ff:ee:00:00:01", "original")
    mine = "56:6f:00:00:00:02"
    first = wanted_mac(opts, 0, name="nic1", nic_id=None, set_mac=mine)
    second = wanted_mac(opts, 1, name="nic2", nic_id=None, set_mac=mine)
    third = wanted_mac(opts, 2, name="nic3", nic_id=None, set_mac=mine)
    assert first == ("c0:ff:ee:00:00:01", True)
    assert second == (mine, True)  # original: the set's MAC, or fail
    assert third == (mine, False)  # past the list: auto
    assert wanted_mac(
        build_options(defaults={}, file_values={"nics": "new, nic2:C0:FF:EE:00:00:09"}),
        1,
        name="nic2",
        nic_id=None,
        set_mac=mine,
    ) == ("c0:ff:ee:00:00:09", True)
    one = build_options(defaults={}, file_values={"nics": "C0:FF:EE:00:00:01"})
    assert one.nic_positions == ("c0:ff:ee:00:00:01",)
    assert wanted_mac(one, 0, name="x", nic_id=None, set_mac=None) == ("c0:ff:ee:00:00:01", True)
    with pytest.raises(RestoreError, match="in NIC order"):
        build_options(defaults={}, file_values={"nics": "C0:FF:EE:00:00:01,bogus"})


def test_original_keeps_the_sets_value_and_remove_base_vm_defaults_to_yes() -> None:
    opts = build_options(
        defaults={},
        file_values={"disk_interface": "original, a:sata", "storage_domain": f"{D1}:original"},
    )
    assert opts.disk_interface == PerDisk(default=None, by_disk={"a": "sata"})
    assert opts.storage_domain == PerDisk()
    assert build_options(defaults={}).remove_base_vm is True
    assert build_options(defaults={}, file_values={"remove_base_vm": "no"}).remove_base_vm is False
