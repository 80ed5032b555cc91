"""Secrets and transport through a real FUSE mount of the simulator (issue 11, items 2 and 3).

On a private simulator (every ticket and token it ever issued is ours), a
mount started with ``--debug`` and the password only in ``$RHVFS_PASSWORD``
takes a full backup (tar of ``vms/myvm0/@rhv``), restores it through
``restore/<name>/``, and starts an incremental chain (tar of
``@rhv-incremental``, so the chain state file is written too). Afterwards no
imageio ticket id or SSO token the simulator issued (``SimAdmin.credentials()``)
and not the password appear in the mount's log, ``status.json``, ``.status``,
the journal and chain files, ``ps`` output, or the daemon's
``/proc/PID/environ`` and ``cmdline``; everything rhvfs created under its state
dir is 0600 (files) or 0700 (directories) under the usual umask 022.

A mount with ``secure = no`` warns once on the terminal and once in its log,
and says ``"tls_verified": false`` in status.json.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.support.mounts import SimMount, restore_status
from tests.support.sim import conf_with, set_options, vm_details
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

VM = "myvm0"  # one 256 MiB disk with incremental backup, down
RESTORED = "myvm0-secrets"
PS = ["ps", "-eww", "-o", "pid,args"]


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask (the mount inherits it): rhvfs must not rely on a strict one."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def conf_without_password(sim: Any, directory: Path) -> Path:
    """The simulator's section without ``password``: the mount reads ``$RHVFS_PASSWORD``."""
    path = conf_with(sim, directory)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(x for x in lines if not x.replace(" ", "").startswith("password=")))
    path.chmod(0o600)
    return path


def proc_bytes(pid: int, what: str) -> bytes:
    with open(f"/proc/{pid}/{what}", "rb") as f:
        return f.read()


def ps() -> bytes:
    return subprocess.run(PS, capture_output=True, check=True).stdout


def leaks(blob: bytes, secrets: dict[str, list[str]]) -> list[str]:
    """``kind: value`` of every secret found in ``blob``."""
    return [
        f"{kind}: {value}"
        for kind, values in secrets.items()
        for value in values
        if value.encode() in blob
    ]


def tar_while_watching(m: SimMount, tar: Path, set_dir: str, seen: dict[str, bytes]) -> None:
    """tar ``vms/<VM>/<set_dir>``; meanwhile keep ``ps`` output and status.json in ``seen``."""
    backup = subprocess.Popen(["tar", "-cSf", str(tar), "-C", str(m.mnt / "vms" / VM), set_dir])
    n = 0
    while backup.poll() is None:
        n += 1
        seen[f"ps during {set_dir} #{n}"] = ps()
        seen[f"status.json during {set_dir} #{n}"] = (m.mnt / ".rhvfs/status.json").read_bytes()
        time.sleep(0.2)
    assert backup.wait() == 0


def test_backup_and_restore_at_debug_leak_no_secret(
    sim_factory: Callable[..., Any], tmp_path: Path, umask_022: None
) -> None:
    sim = sim_factory()
    conf = conf_without_password(sim, tmp_path)
    state = tmp_path / "private" / "state"  # neither exists: rhvfs creates both
    env = {k: v for k, v in os.environ.items() if k != "RHVFS_PASSWORD"}
    env["RHVFS_PASSWORD"] = sim.password
    m = SimMount(
        sim, tmp_path / "mnt", state, "--debug", "--grace-period", "1", config_file=conf, env=env
    )
    seen: dict[str, bytes] = {"stderr of rhvfs mount": m.stderr.encode()}
    try:
        seen["status.json"] = (m.mnt / ".rhvfs/status.json").read_bytes()
        assert json.loads(seen["status.json"])["tls_verified"] is True
        seen["environ"] = proc_bytes(m.pid, "environ")
        seen["cmdline"] = proc_bytes(m.pid, "cmdline")
        assert b"RHVFS_PASSWORD" not in seen["environ"]
        assert b"PATH=" in seen["environ"]  # the rest of the environment is still there

        full = tmp_path / "full.tar"
        tar_while_watching(m, full, "@rhv", seen)

        target = m.mnt / "restore" / RESTORED
        target.mkdir()
        subprocess.run(
            ["tar", "-xf", str(full), "-C", str(target), "--strip-components=1"],
            check=True,
            timeout=300,
        )
        status = restore_status(m, RESTORED)
        assert status["phase"] == "done", status["error"]
        seen[".status"] = (target / ".status").read_bytes()
        restored = vm_details(sim, RESTORED)
        assert restored is not None and [d["alias"] for d in restored["disks"]] == ["myvm0_Disk1"]

        tar_while_watching(m, tmp_path / "incremental.tar", "@rhv-incremental", seen)
        assert wait_until(lambda: not m.status()["sessions"]["incremental"]["sessions"])
        seen["status.json at the end"] = (m.mnt / ".rhvfs/status.json").read_bytes()
        seen["ps at the end"] = ps()
    finally:
        m.umount()

    issued = sim.admin.credentials()
    # downloads of both sets and the restore's upload; logins of the mount and the restore
    assert len(issued["tickets"]) >= 3 and issued["tokens"], issued
    secrets = {"ticket": issued["tickets"], "token": issued["tokens"], "password": [sim.password]}
    created = sorted(state.rglob("*"))
    for path in created:
        if path.is_file():
            seen[str(path.relative_to(tmp_path))] = path.read_bytes()
    assert {where: hits for where, blob in seen.items() if (hits := leaks(blob, secrets))} == {}

    # Not vacuous: the http stack logged every imageio request at DEBUG, redacted.
    log = next(state.glob("mount-*.log")).read_text()
    assert "HTTP Request: OPTIONS https://" in log and "/images/<ticket>" in log
    engine = f"localhost_{urlsplit(sim.engine_url).port}"
    journal_and_chain = {f"{engine}{x}" for x in (".json", ".chain.json")}
    names = {p.name for p in created}
    assert journal_and_chain | {f"{n}.lock" for n in journal_and_chain} <= names, names

    modes = {
        str(p.relative_to(tmp_path)): (p.is_dir(), stat.S_IMODE(p.stat().st_mode))
        for p in [state.parent, state, *created]
    }
    wrong = {
        name: f"{mode:04o}"
        for name, (is_dir, mode) in modes.items()
        if mode != (0o700 if is_dir else 0o600)
    }
    assert wrong == {}


def test_insecure_mount_warns_once_and_says_so_in_status(sim: Any, tmp_path: Path) -> None:
    conf = conf_with(sim, tmp_path)
    set_options(conf, sim.section, secure="no")
    state = tmp_path / "state"
    m = SimMount(sim, tmp_path / "mnt", state, config_file=conf)
    try:
        status = m.status()
    finally:
        m.umount()
    assert status["tls_verified"] is False
    # one line on the terminal of `rhvfs mount`, one in the daemon's log
    lines = m.stderr.strip().splitlines()
    assert len(lines) == 1 and "INSECURE: TLS certificates are not verified" in lines[0], lines
    log = next(state.glob("mount-*.log")).read_text()
    assert log.count("INSECURE: ") == 1
