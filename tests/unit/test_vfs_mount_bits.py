"""Small pure pieces of the mount: sd_notify, FUSE options, the systemd unit, naming helpers."""

from __future__ import annotations

import configparser
import socket
from pathlib import Path

import pytest

from rhvfs.mount import MountOptions, fuse_options, sd_notify
from rhvfs.vfs.layout import unique_names
from rhvfs.vfs.nodes import content_mtime_ns

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "rhvfs@.service"


def test_sd_notify_sends_to_notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert sd_notify("READY=1")
        assert server.recv(100) == b"READY=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not sd_notify("READY=1")


def test_fuse_options() -> None:
    assert fuse_options(MountOptions("/m")) == {
        "default_permissions",
        "fsname=rhvfs",
        "subtype=rhvfs",
    }
    assert "allow_other" in fuse_options(MountOptions("/m", allow_other=True))


def test_systemd_unit_is_a_notify_service_per_section() -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    service = parser["Service"]
    assert service["Type"] == "notify"
    assert (
        "mount -c %i " in service["ExecStart"]
        and "--foreground /mnt/rhvfs/%i" in service["ExecStart"]
    )
    assert "umount" in service["ExecStop"] and service["ExecStop"].endswith("/mnt/rhvfs/%i")
    assert service["TimeoutStopSec"] == "15min"
    for forbidden in ("ProtectSystem", "PrivateTmp", "ProtectHome"):  # would hide the mount
        assert forbidden not in service


def test_unique_names_add_ids_only_on_clashes() -> None:
    names = unique_names([("1", "a"), ("2", "a"), ("3", "b/c"), ("4", "B")])
    assert names == {"1": "a--1", "2": "a--2", "3": "b%2Fc", "4": "B"}
    assert unique_names([("d1", "disk")], suffix=".json") == {"d1": "disk.json"}


def test_content_mtime_keeps_the_second_and_follows_content() -> None:
    base = 1_700_000_000_123_456_789
    a = content_mtime_ns(b"a", base_mtime_ns=base)
    assert a // 10**9 == base // 10**9
    assert a == content_mtime_ns(b"a", base_mtime_ns=base)
    assert a != content_mtime_ns(b"b", base_mtime_ns=base)
