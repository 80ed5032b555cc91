"""Who may enter a mount: the ``-o`` ownership options, the FUSE options, the modes shown."""

from __future__ import annotations

import dataclasses
import grp
import os
import pwd
from pathlib import Path

import pytest

from rhvfs.cli import main
from rhvfs.commands.mount import FuseOptions, parse_o
from rhvfs.errors import ConfigError
from rhvfs.mount import MountOptions, fuse_options
from rhvfs.vfs.nodes import Kind, read_only_bits


def test_no_options_change_nothing() -> None:
    assert parse_o("") == FuseOptions()
    assert parse_o("debug") == FuseOptions(debug_fuse=True)


def test_ownership_options_take_numbers_names_and_octal_masks() -> None:
    root_group = grp.getgrgid(0).gr_name
    root_user = pwd.getpwuid(0).pw_name
    got = parse_o(f"allow_other, gid={root_group},uid={root_user},umask=0027,restore_umask=7")
    assert got == FuseOptions(allow_other=True, uid=0, gid=0, umask=0o027, restore_umask=0o007)
    assert parse_o("uid=1234,gid=5678,umask=22") == FuseOptions(uid=1234, gid=5678, umask=0o022)
    assert parse_o("umask=0") == FuseOptions(umask=0)


def test_the_parsed_options_are_mount_options() -> None:
    fuse = parse_o("allow_other,gid=5,umask=027,debug")
    options = MountOptions(mountpoint="/m", **dataclasses.asdict(fuse))
    assert (options.allow_other, options.debug_fuse, options.gid, options.umask) == (
        True,
        True,
        5,
        0o027,
    )
    assert (options.uid, options.restore_umask) == (None, None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("allow_other", "-o allow_other needs explicit ownership: add umask="),
        ("allow_other,gid=0,uid=0", "-o allow_other needs explicit ownership: add umask="),
        ("umask=0089", "-o umask=0089: expected an octal mask such as 0027"),
        ("umask=01777", "-o umask=01777: expected an octal mask"),
        ("restore_umask=x", "-o restore_umask=x: expected an octal mask"),
        ("umask", "mount option umask needs a value"),
        ("gid=", "mount option gid needs a value"),
        ("gid=no-such-group-rhvfs", "-o gid=no-such-group-rhvfs: no such group"),
        ("uid=no-such-user-rhvfs", "-o uid=no-such-user-rhvfs: no such user"),
        ("allow_root,debug=1", "unknown mount option(s): allow_root, debug=1"),
    ],
)
def test_bad_options_are_refused_with_one_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_o(text)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_rhvfs_mount_refuses_allow_other_without_ownership_before_anything_else(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No configuration, password or engine is needed to say no: nothing is started."""
    assert main(["mount", "-c", "no-such-section", "-o", "allow_other", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        "rhvfs: configuration error: -o allow_other needs explicit ownership: add umask= "
        "(and gid=/uid=), e.g. -o allow_other,gid=rhvfs-backup,umask=0027"
    ]
    assert os.listdir(tmp_path) == []


def test_the_kernel_always_checks_permissions() -> None:
    assert fuse_options(MountOptions("/m")) == {
        "default_permissions",
        "fsname=rhvfs",
        "subtype=rhvfs",
    }
    with_others = fuse_options(MountOptions("/m", allow_other=True, gid=5, umask=0o027))
    assert {"allow_other", "default_permissions"} <= with_others
    # ownership is shown by the VFS, never handed to the kernel as mount options
    assert not any(o.startswith(("uid=", "gid=", "umask=")) for o in with_others)


@pytest.mark.parametrize(
    ("umask", "directory", "file"),
    [
        (0o000, 0o555, 0o444),
        (0o022, 0o555, 0o444),
        (0o027, 0o550, 0o440),
        (0o077, 0o500, 0o400),
        (0o007, 0o550, 0o440),
        # a class without r gets no x either: looking a name up in a set directory lists it
        (0o004, 0o550, 0o440),
        (0o040, 0o505, 0o404),
        (0o001, 0o555, 0o444),
        (0o777, 0o000, 0o000),
    ],
)
def test_read_only_bits_give_a_class_all_reading_or_nothing(
    umask: int, directory: int, file: int
) -> None:
    assert read_only_bits(Kind.DIR, umask) == directory
    assert read_only_bits(Kind.FILE, umask) == file
    assert read_only_bits(Kind.LINK, umask) == 0o777
