"""How ``rhvfs umount`` recognises the rhvfs daemon of a mountpoint: mountinfo, command lines,
and the /proc checks of ``verify_daemon`` on processes that are not it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from rhvfs.commands._mounts import (
    RHVFS_FSNAME,
    RHVFS_FSTYPE,
    MountEntry,
    canonical_mountpoint,
    mount_at,
    parse_mountinfo,
    rhvfs_mount_args,
    verify_daemon,
)
from rhvfs.commands.mount import _daemon_mountpoint
from rhvfs.mount import MountOptions, fuse_options
from tests.support.sim import cmdline
from tests.support.waiting import wait_for

MOUNTINFO = (
    "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
    "41 22 0:40 / /srv/with\\040space rw,nosuid,nodev,relatime shared:20 - "
    "fuse.rhvfs rhvfs rw,user_id=1000,group_id=1000,default_permissions\n"
    "42 22 0:41 / /mnt/x rw,relatime - fuse.sshfs me@host:/ rw,user_id=0,group_id=0\n"
    "43 42 0:42 / /mnt/x rw,relatime master:3 shared:9 - fuse.rhvfs rhvfs rw,user_id=0,group_id=0\n"
    "garbage line\n"
)


def test_the_fstype_is_what_the_mount_asks_for() -> None:
    options = fuse_options(MountOptions("/m"))
    assert f"subtype={RHVFS_FSTYPE.removeprefix('fuse.')}" in options
    assert f"fsname={RHVFS_FSNAME}" in options


def test_mountinfo_entries_and_the_topmost_mount() -> None:
    entries = parse_mountinfo(MOUNTINFO)
    assert [(e.mount_id, e.point, e.fstype, e.device) for e in entries] == [
        (22, "/", "ext4", "8:1"),
        (41, "/srv/with space", "fuse.rhvfs", "0:40"),
        (42, "/mnt/x", "fuse.sshfs", "0:41"),
        (43, "/mnt/x", "fuse.rhvfs", "0:42"),
    ]
    assert entries[1].owner_uid == 1000 and entries[1].source == "rhvfs"
    assert entries[0].owner_uid is None
    top = mount_at("/mnt/x", entries)
    assert top is not None and top.mount_id == 43  # stacked: the later entry is on top
    assert mount_at("/mnt", entries) is None


def test_canonical_mountpoint_resolves_the_parent_only(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "real" / "mnt").symlink_to("/nonexistent")  # the last part is not followed
    assert canonical_mountpoint(str(tmp_path / "link" / "mnt")) == str(tmp_path / "real" / "mnt")
    assert canonical_mountpoint(str(tmp_path / "real" / "x" / ".." / "m")) == str(
        tmp_path / "real" / "m"
    )
    assert canonical_mountpoint("/") == "/"


def test_rhvfs_mount_command_lines() -> None:
    py = "/usr/bin/python3"
    daemon = [
        py, "-m", "rhvfs.cli", "mount", "-c", "prod", "--state-dir", "/s", "-o", "allow_other",
        "/mnt/p", "--foreground", "--log", "/s/l", "--ready-fd", "5",
        "--password-file", "/dev/fd/7",
    ]  # fmt: skip
    args = rhvfs_mount_args(daemon)
    assert args is not None and _daemon_mountpoint(args) == "/mnt/p"
    script = [py, "/usr/local/bin/rhvfs", "mount", "-c", "p", "--foreground", "/mnt/rhvfs/p"]
    assert _daemon_mountpoint(rhvfs_mount_args(script) or []) == "/mnt/rhvfs/p"
    assert rhvfs_mount_args(["/usr/local/bin/rhvfs", "--debug", "mount", "m"]) == ["m"]
    assert rhvfs_mount_args([py, "-u", "-m", "rhvfs.cli", "mount", "rel"]) == ["rel"]
    for other in (
        [py, "-m", "rhvfs.cli", "umount", "/mnt/p"],
        [py, "-m", "tests.support.fake_mount", "/mnt/p"],
        [py, "/usr/bin/sshfs-ish", "mount", "/mnt/p"],
        ["sleep", "300"],
        [],
    ):
        assert rhvfs_mount_args(other) is None, other
    assert _daemon_mountpoint(["-c", "prod"]) is None  # no mountpoint: does not parse
    assert _daemon_mountpoint(["--grace-period", "x", "/m"]) is None


def _entry(point: str, *, uid: int, fstype: str = RHVFS_FSTYPE) -> MountEntry:
    return MountEntry(
        mount_id=1,
        device="0:99",
        point=point,
        fstype=fstype,
        source="rhvfs",
        super_options={"user_id": str(uid)},
    )


def test_verify_daemon_refuses_every_process_that_is_not_it(tmp_path: Path) -> None:
    me = os.getuid()
    mnt = str(tmp_path / "mnt")
    check = _daemon_mountpoint
    assert "not an rhvfs one" in (
        verify_daemon(os.getpid(), _entry(mnt, uid=me, fstype="fuse.sshfs"), mountpoint_of=check)
        or ""
    )
    assert "does not belong to the mount's owner" in (
        verify_daemon(os.getpid(), _entry(mnt, uid=me + 1), mountpoint_of=check) or ""
    )
    assert "not an rhvfs mount command" in (
        verify_daemon(os.getpid(), _entry(mnt, uid=me), mountpoint_of=check) or ""
    )
    code = "import time; time.sleep(60)"
    for claimed, why in (
        ("elsewhere", f"mounts {tmp_path / 'elsewhere'}, not {mnt}"),
        ("mnt", "does not see this mount"),  # no such mount in its namespace
    ):
        p = subprocess.Popen(
            [sys.executable, "-c", code, "-m", "rhvfs.cli", "mount", claimed], cwd=tmp_path
        )
        try:
            wait_for("the child's exec", lambda pid=p.pid: "rhvfs.cli" in cmdline(pid))
            reason = verify_daemon(p.pid, _entry(mnt, uid=me), mountpoint_of=check)
            assert reason is not None and why in reason, reason
        finally:
            p.kill()
            p.wait()
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert "cannot inspect process" in (
        verify_daemon(gone.pid, _entry(mnt, uid=me), mountpoint_of=check) or ""
    )
