"""Who may enter a real mount (issue 11 item 1), tried as other local users.

Root mounts the simulator; two users created here (``useradd``) try it: one
in a group G, one not. By default neither gets in (FUSE keeps every other user
out). With ``-o allow_other,gid=G,umask=0027`` the member reads a set (its
images' sha256 equal the simulator's volumes) and the non-member gets EACCES
everywhere; neither may create a restore directory unless the mount asks for
it (``restore_umask=0007``). What the member can read without reading an
image (status.json, the whole visible tree) starts nothing on the engine.

The users run their commands through ``runuser -u USER --`` (``setpriv`` where
runuser is missing) with ``LC_ALL=C``, so a refusal reads "Permission denied".
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from tests.support.mounts import SimMount
from tests.support.sim import live_transfers

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("useradd") is None or os.geteuid() != 0,
        reason="needs useradd (as root) to create the users who try the mount",
    ),
]

DENIED = "Permission denied"


class Users(NamedTuple):
    group: str
    gid: int
    member: str  # in group
    other: str  # not


def _run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def users() -> Iterator[Users]:
    tag = secrets.token_hex(3)
    group, member, other = f"rhvfs-bk-{tag}", f"rhvfs-m-{tag}", f"rhvfs-o-{tag}"
    created: list[list[str]] = []
    try:
        _run(["groupadd", group])
        created.append(["groupdel", group])
        for name, extra in ((member, ["-G", group]), (other, [])):
            _run(["useradd", "-M", "-N", "-s", "/bin/sh", *extra, name])
            created.insert(0, ["userdel", name])
        yield Users(group, grp.getgrnam(group).gr_gid, member, other)
    finally:
        for argv in created:
            subprocess.run(argv, capture_output=True, timeout=60)
    assert all(n not in {p.pw_name for p in pwd.getpwall()} for n in (member, other))


def as_user(user: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """``argv`` run as ``user`` with the user's own groups."""
    if shutil.which("runuser"):
        command = ["runuser", "-u", user, "--", *argv]
    else:
        pw = pwd.getpwnam(user)
        command = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups"]
        command += list(argv)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C", "HOME": "/"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def denied(result: subprocess.CompletedProcess[str]) -> bool:
    return result.returncode != 0 and DENIED in result.stderr


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory other users can traverse (pytest's tmp_path is root's, mode 0700)."""
    path = Path(tempfile.mkdtemp(prefix="rhvfs-access-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    return path


def engine_work(sim: Any) -> tuple[list[str], list[str], list[str]]:
    """Every snapshot and engine backup of every VM, and every image transfer, by id."""
    conn = sim.sdk_connection()
    try:
        vms_service = conn.system_service().vms_service()
        snapshots, backups = [], []
        for vm in vms_service.list():
            service = vms_service.vm_service(vm.id)
            snapshots += [s.id for s in service.snapshots_service().list()]
            backups += [b.id for b in service.backups_service().list()]
    finally:
        conn.close()
    transfers = [str(t["id"]) for t in sim.admin.transfers()]
    return sorted(snapshots), sorted(backups), sorted(transfers)


def images_of(set_dir: Path) -> dict[str, str]:
    """image file name -> disk id, from the set's manifest (read by root, the mounter)."""
    manifest = json.loads((set_dir / "manifest.json").read_bytes())
    return {d["file"]: d["id"] for d in manifest["disks"]}


def test_by_default_only_the_mounting_user_gets_in(
    sim: Any, users: Users, public_dir: Path, state_dir: Path
) -> None:
    m = SimMount(sim, public_dir / "mnt", state_dir, "--grace-period", "1")
    try:
        assert "vms" in os.listdir(m.mnt)  # root, the mounter
        for user in (users.member, users.other):
            assert denied(as_user(user, "ls", str(m.mnt))), user
            assert denied(as_user(user, "stat", str(m.mnt / "vms"))), user
            assert denied(as_user(user, "cat", str(m.mnt / ".rhvfs/status.json"))), user
            assert denied(as_user(user, "mkdir", str(m.mnt / "restore/x"))), user
        assert os.listdir(m.mnt / "restore") == []
    finally:
        m.umount()


def test_group_members_read_sets_others_get_nothing_and_restore_stays_the_owners(
    sim: Any, users: Users, public_dir: Path, state_dir: Path
) -> None:
    options = f"allow_other,gid={users.group},umask=0027"
    m = SimMount(sim, public_dir / "mnt", state_dir, "--grace-period", "1", "-o", options)
    set_dir = m.mnt / "vms/db01/@rhv"
    try:
        # what the kernel checks: root:G, 0550 directories, 0440 files; restore/ 0750
        shown = {
            p: (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
            for p in (m.mnt, m.mnt / "vms", set_dir, set_dir / "manifest.json", m.mnt / "restore")
            for st in [os.stat(p)]
        }
        assert shown == {
            m.mnt: (0o550, 0, users.gid),
            m.mnt / "vms": (0o550, 0, users.gid),
            set_dir: (0o550, 0, users.gid),
            set_dir / "manifest.json": (0o440, 0, users.gid),
            m.mnt / "restore": (0o750, 0, users.gid),
        }

        # the member may read status.json and walk the tree: that starts nothing
        before = engine_work(sim)
        status = as_user(users.member, "cat", str(m.mnt / ".rhvfs/status.json"))
        assert status.returncode == 0 and '"sessions"' in status.stdout, status.stderr
        walk = as_user(users.member, "find", str(m.mnt))
        assert walk.returncode == 0, walk.stderr
        assert f"{set_dir}/manifest.json" in walk.stdout.splitlines()
        assert engine_work(sim) == before and live_transfers(sim) == []

        # ... and reads a whole set: the images are the simulator's disks
        images = images_of(set_dir)
        assert len(images) == 1
        read = as_user(users.member, "sh", "-c", f"cd '{set_dir}' && sha256sum -- *")
        assert read.returncode == 0, read.stderr
        lines = (line.split("  ", 1) for line in read.stdout.splitlines())
        sums = {name: digest for digest, name in lines}
        assert set(sums) >= {"vm.ovf", "manifest.json", *images}
        for name, disk_id in images.items():
            assert sums[name] == sim.admin.disk_sha256(disk_id)

        # the non-member gets nothing, not even the set it knows the path of
        for path in (m.mnt, m.mnt / "vms", set_dir):
            assert denied(as_user(users.other, "ls", str(path))), path
        image = set_dir / next(iter(images))
        for path in (set_dir / "manifest.json", image, m.mnt / ".rhvfs/status.json"):
            assert denied(as_user(users.other, "cat", str(path))), path

        # restore/ is the owner's: neither may start a restore
        for user in (users.member, users.other):
            assert denied(as_user(user, "mkdir", str(m.mnt / "restore/x"))), user
        assert os.listdir(m.mnt / "restore") == []
    finally:
        m.umount()
    assert live_transfers(sim) == []


def test_restore_umask_lets_the_group_start_a_restore(
    sim: Any, users: Users, public_dir: Path, state_dir: Path
) -> None:
    options = f"allow_other,gid={users.gid},umask=0027,restore_umask=0007"
    m = SimMount(sim, public_dir / "mnt", state_dir, "--grace-period", "1", "-o", options)
    target = m.mnt / "restore/by-member"
    try:
        assert stat.S_IMODE(os.stat(m.mnt / "restore").st_mode) == 0o770
        assert stat.S_IMODE(os.stat(m.mnt / "vms").st_mode) == 0o550  # the rest: unchanged
        assert denied(as_user(users.other, "mkdir", str(target)))
        made = as_user(users.member, "mkdir", str(target))
        assert made.returncode == 0, made.stderr
        assert os.listdir(m.mnt / "restore") == ["by-member"]
        status = as_user(users.member, "cat", str(target / ".status"))
        assert status.returncode == 0 and '"phase"' in status.stdout, status.stderr
        assert denied(as_user(users.other, "cat", str(target / ".status")))
        removed = as_user(users.member, "rmdir", str(target))
        assert removed.returncode == 0, removed.stderr
        assert os.listdir(m.mnt / "restore") == []
    finally:
        m.umount()
