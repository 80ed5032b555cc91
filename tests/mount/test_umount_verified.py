"""``rhvfs umount`` signals only the rhvfs daemon serving the mountpoint, verified from /proc.

A FUSE file system that is not rhvfs is left alone; one that poses as rhvfs
(``fuse.rhvfs`` in mountinfo) and names another process in its
``.rhvfs/status.json`` is only detached with ``fusermount3 -u``: that process
survives. A real rhvfs mount (mounted with a relative path) is verified,
stopped with SIGTERM and gone. With ``--only-if-alive`` (systemd's ExecStop) an
unverified mount is not even detached, and an empty mountpoint is nothing to stop.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rhvfs.commands._mounts import canonical_mountpoint, mount_at, verify_daemon
from rhvfs.commands.mount import _daemon_mountpoint
from tests.support.mounts import REPO_ROOT, RHVFS
from tests.support.sim import alive, cmdline
from tests.support.waiting import wait_for, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


class Foreign:
    """``tests.support.foreign_fuse`` mounted at ``mnt`` as ``name``, naming ``pid``."""

    def __init__(self, mnt: Path, name: str, pid: int) -> None:
        self.mnt = mnt
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT) + (os.pathsep + path if path else "")}
        status = json.dumps({"pid": pid, "mountpoint": str(mnt)})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.foreign_fuse", str(mnt), name, status],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip() == "READY", self.proc.stderr.read()  # type: ignore[union-attr]
        assert json.loads((mnt / ".rhvfs/status.json").read_bytes())["pid"] == pid

    def close(self) -> None:
        if mount_at(str(self.mnt)) is not None:
            subprocess.run(["fusermount3", "-u", str(self.mnt)], check=True)
        self.proc.communicate(timeout=30)


@pytest.fixture
def victims() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start long sleepers that a wrong ``rhvfs umount`` would kill."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*argv: str, shows: str = "") -> subprocess.Popen[bytes]:
        p = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL)
        started.append(p)
        want = shows or " ".join(argv)
        wait_for("victim started", lambda: cmdline(p.pid).startswith(want))
        return p

    try:
        yield start
    finally:
        for p in started:
            p.kill()
            p.wait()


def _umount(mnt: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RHVFS, "umount", "--timeout", "20", str(mnt)], capture_output=True, text=True, timeout=120
    )


def test_a_foreign_fuse_mount_and_its_pid_are_left_alone(
    tmp_path: Path, victims: Callable[..., subprocess.Popen[bytes]]
) -> None:
    victim = victims("sleep", "300")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    foreign = Foreign(mnt, "notrhvfs", victim.pid)
    try:
        result = _umount(mnt)
        assert result.returncode == 1
        assert result.stderr.splitlines() == [
            f"rhvfs: configuration error: {mnt} is not an rhvfs mount (fuse.notrhvfs): left alone"
        ]
        assert alive(victim.pid) and victim.poll() is None
        assert mount_at(str(mnt)) is not None and foreign.proc.poll() is None
    finally:
        foreign.close()


LOOKALIKE = "import time; time.sleep(300)"  # its argv claims to be `rhvfs mount MNT`


@pytest.mark.parametrize("kind", ["sleeper", "lookalike", "other-user"])
def test_an_impostor_is_detached_and_the_pid_it_names_survives(
    kind: str, tmp_path: Path, victims: Callable[..., subprocess.Popen[bytes]]
) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if kind == "sleeper":
        victim, reason = victims("sleep", "300"), "is not an rhvfs mount command"
    elif kind == "lookalike":
        victim = victims(sys.executable, "-c", LOOKALIKE, "-m", "rhvfs.cli", "mount", str(mnt))
        reason = "does not serve a FUSE mount (no /dev/fuse open)"
    else:
        if os.getuid() != 0 or shutil.which("setpriv") is None:
            pytest.skip("needs root and setpriv to run a process as another user")
        victim = victims(
            "setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "sleep", "300",
            shows="sleep 300",
        )  # fmt: skip
        reason = "does not belong to the mount's owner"
    foreign = Foreign(mnt, "rhvfs", victim.pid)  # fuse.rhvfs in mountinfo
    try:
        entry = mount_at(str(mnt))
        assert entry is not None and entry.fstype == "fuse.rhvfs"
        result = _umount(mnt)
        assert result.returncode == 0, result.stderr
        (line,) = result.stderr.splitlines()
        assert line.startswith(f"rhvfs: not signalling process {victim.pid} (")
        assert reason in line and line.endswith(f"detaching {mnt} with fusermount3 -u")
        assert alive(victim.pid) and victim.poll() is None
        assert mount_at(str(mnt)) is None
        foreign.proc.communicate(timeout=30)  # the impostor ended with its mount
    finally:
        foreign.close()


def test_the_verified_rhvfs_daemon_is_stopped(sim: Any, tmp_path: Path, state_dir: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    argv = [
        *RHVFS, "mount", "-c", sim.section, "--config-file", str(sim.conf_file),
        "--state-dir", str(state_dir), "mnt",
    ]  # fmt: skip
    # A relative mountpoint: the daemon's argv says "mnt", its working directory says where.
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    try:
        pid = int(json.loads((mnt / ".rhvfs/status.json").read_bytes())["pid"])
        entry = mount_at(canonical_mountpoint(str(mnt)))
        assert entry is not None and entry.source == "rhvfs"
        assert verify_daemon(pid, entry, mountpoint_of=_daemon_mountpoint) is None
        with open(mnt / "vms/myvm/vm.json", "rb") as f:
            assert json.loads(f.read())["name"] == "myvm"
        result = _umount(mnt)
        assert (result.returncode, result.stderr) == (0, "")
        assert not alive(pid)  # stopped by SIGTERM, not merely detached
        assert mount_at(str(mnt)) is None
    finally:
        if mount_at(str(mnt)) is not None:
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
    assert wait_until(lambda: not alive(pid), 30)


def test_only_if_alive_leaves_an_unverified_mount_mounted(
    tmp_path: Path, victims: Callable[..., subprocess.Popen[bytes]]
) -> None:
    """systemd's ExecStop (``--only-if-alive``) detaches nothing that is not a healthy,
    verified rhvfs mount; a mountpoint without a mount is nothing to stop."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    command = [*RHVFS, "umount", "--only-if-alive", "--timeout", "20", str(mnt)]
    empty = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert empty.returncode == 0
    assert empty.stderr.splitlines() == [f"rhvfs: {mnt} is not mounted: nothing to stop"]

    victim = victims("sleep", "300")
    foreign = Foreign(mnt, "rhvfs", victim.pid)  # fuse.rhvfs, naming a process that is no daemon
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert result.returncode == 1
        (line,) = result.stderr.splitlines()
        assert line.startswith(f"rhvfs: {mnt} left as it is: process {victim.pid} is not verified")
        assert mount_at(str(mnt)) is not None and foreign.proc.poll() is None
        assert alive(victim.pid) and victim.poll() is None
    finally:
        foreign.close()
