"""systemd/rhvfs@.service, run as systemd runs it (``tests.support.systemd_unit``).

The unit's own command lines, for instance ``sim`` (paths under /etc/rhvfs,
/mnt/rhvfs and /var/lib/rhvfs moved into the test directory, ``rhvfs`` found in
PATH as the console script ``pip install`` writes), with the password only in the
``LoadCredential=`` file: ExecStartPre, ExecStart until READY=1, each inside the
unit's sandbox settings (capability bounding set, no new privileges, W^X memory,
system call and address family filters: ``tests.support.sandbox``).

- After a crash (the daemon SIGKILLed), systemd still runs ExecStop, with
  ``SERVICE_RESULT=signal EXIT_CODE=killed EXIT_STATUS=KILL`` and no ``$MAINPID``:
  the mount must stay visibly broken (listing it, and stat once the kernel's
  attribute cache expired, give ENOTCONN), not become an empty directory. The next
  start (Restart=on-failure) keeps it broken through ExecStartPre; a start that
  fails (engine unreachable) leaves it broken; one that reaches the engine replaces
  it only when the new mount is made, and the new mount reads a disk (a backup
  session through imageio).
- A normal stop (``SERVICE_RESULT=success``, ``$MAINPID`` set) unmounts cleanly: the
  daemon exits 0, the session's snapshot and transfer are gone, and the mountpoint
  is an unmounted, empty directory.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.mounts import REPO_ROOT
from tests.support.sim import (
    SimProcess,
    conf_without,
    live_transfers,
    set_options,
    snapshot_ids,
)
from tests.support.systemd_unit import MainExited, ServiceUnit, parse_unit
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

UNIT = REPO_ROOT / "systemd" / "rhvfs@.service"
CAP_SYS_ADMIN = 21
VM = "myvm0"
MiB = 1 << 20


def console_script(bin_dir: Path) -> None:
    """``rhvfs`` as pip installs it: a script running ``rhvfs.cli:main``."""
    bin_dir.mkdir()
    script = bin_dir / "rhvfs"
    script.write_text(
        f"#!{sys.executable}\nimport sys\nfrom rhvfs.cli import main\nsys.exit(main())\n"
    )
    script.chmod(0o755)


def error_of(call: Callable[[Path], object], path: Path) -> int | None:
    """The errno ``call(path)`` fails with; None when it succeeds."""
    try:
        call(path)
    except OSError as e:
        return e.errno
    return None


def closed_port() -> int:
    """A local TCP port nothing listens on (bound, never listened, then released)."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return int(s.getsockname()[1])


def sandbox_of(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    return {k: fields[k].strip() for k in ("NoNewPrivs", "Seccomp", "CapBnd")}


def mounted(mnt: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(mnt) for line in f)


@pytest.fixture
def unit(sim: SimProcess, tmp_path: Path) -> ServiceUnit:
    etc = tmp_path / "etc"
    etc.mkdir()
    conf_without(sim, etc, "password")  # etc/ovirt-img.conf: the password is a credential
    (etc / f"{sim.section}.password").write_text(sim.password + "\n")
    (etc / f"{sim.section}.password").chmod(0o600)
    return ServiceUnit.load(
        UNIT,
        instance=sim.section,
        relocate={
            "/etc/rhvfs/": f"{etc}/",
            "/mnt/rhvfs/": f"{tmp_path}/mnt/",
            "/var/lib/rhvfs": f"{tmp_path}/state-root/rhvfs",
        },
        work=tmp_path,
    )


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    console_script(tmp_path / "bin")
    base = {k: v for k, v in os.environ.items() if k not in ("RHVFS_PASSWORD", "NOTIFY_SOCKET")}
    pythonpath = base.get("PYTHONPATH")
    base["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + pythonpath if pythonpath else "")
    base["PATH"] = f"{tmp_path / 'bin'}{os.pathsep}{base.get('PATH', '/usr/bin:/bin')}"
    return base


def test_unit_lines_are_what_the_test_runs() -> None:
    service = dict(parse_unit(UNIT.read_text())["Service"])
    assert service["ExecStart"].startswith("/usr/bin/env rhvfs mount -c %i ")
    assert "--password-file %%d/password" in service["ExecStart"]
    assert service["ExecStop"].startswith("/usr/bin/env rhvfs umount --only-if-alive ")
    assert service["LoadCredential"] == "password:/etc/rhvfs/%i.password"
    assert "/usr/local/bin" not in UNIT.read_text().split("[Unit]")[1]


def test_a_crashed_daemon_stays_visibly_broken_and_a_stop_unmounts_a_healthy_one(
    sim: SimProcess, unit: ServiceUnit, env: dict[str, str], tmp_path: Path
) -> None:
    mnt = tmp_path / "mnt" / sim.section
    try:
        pid = unit.start(env)
        assert mounted(mnt) and VM in os.listdir(mnt / "vms")
        assert sandbox_of(pid) == {
            "NoNewPrivs": "1",
            "Seccomp": "2",
            "CapBnd": f"{1 << CAP_SYS_ADMIN:016x}",
        }  # the daemon works inside the unit's hardening

        os.kill(pid, signal.SIGKILL)  # the crash
        assert unit.main is not None and unit.main.wait(timeout=60) == -signal.SIGKILL
        crashed = {"SERVICE_RESULT": "signal", "EXIT_CODE": "killed", "EXIT_STATUS": "KILL"}
        assert unit.stop({**env, **crashed}) == [0], unit.log
        assert "left as it is" in unit.log[-1] and "SERVICE_RESULT=signal" in unit.log[-1]
        assert mounted(mnt)
        assert error_of(os.listdir, mnt) == errno.ENOTCONN  # what rsync/tar would meet
        # stat of the root answers from the kernel's attribute cache until it expires
        assert wait_until(lambda: error_of(os.stat, mnt) == errno.ENOTCONN)

        conf = tmp_path / "etc" / "ovirt-img.conf"
        good = conf.read_bytes()
        set_options(conf, sim.section, engine_url=f"https://localhost:{closed_port()}")
        set_options(conf, sim.section, system_tries=1)
        unit.start_pre(env)  # Restart=on-failure, after RestartSec: the engine is away
        with pytest.raises(MainExited):
            unit.start_main(env)
        assert error_of(os.listdir, mnt) == errno.ENOTCONN  # still visibly broken

        conf.write_bytes(good)
        unit.start_pre(env)  # the next restart: the engine is back
        assert error_of(os.listdir, mnt) == errno.ENOTCONN
        pid = unit.start_main(env)  # replaces the dead mount once it reached the engine
        assert "replacing the dead rhvfs mount" in unit.journal.read_text()
        before = snapshot_ids(sim, VM)
        with open(mnt / "vms" / VM / "disks" / f"{VM}_Disk1.raw", "rb") as f:
            assert len(f.read(MiB)) == MiB  # a backup session, imageio, inside the sandbox

        stopping = {"SERVICE_RESULT": "success", "MAINPID": str(pid)}
        assert unit.stop({**env, **stopping}) == [0], unit.log
        assert unit.main.wait(timeout=60) == 0
        assert not mounted(mnt)
        assert os.listdir(mnt) == []
        assert snapshot_ids(sim, VM) == before  # the stop ended the session
        assert live_transfers(sim) == []
    finally:
        if unit.main is not None and unit.main.poll() is None:
            unit.main.kill()
            unit.main.wait()
        if mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
        assert wait_until(lambda: not mounted(mnt))
