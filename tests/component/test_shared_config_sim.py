"""One ``ovirt-img.conf`` section for rhvfs and the real ``ovirt-img``, against the simulator.

The section has ovirt-img's own keys (``log_level``, ``log_file``, ``disk_timeout``,
``description``), rhvfs keys, and ``password_file`` instead of ``password``. rhvfs
accepts ovirt-img's keys (and ignores them) and reads ``password_file``. ovirt-img
ignores the rhvfs keys and ``password_file`` in a section (its ``password_file`` is
only the ``--password-file`` option), so without ``--password-file`` it prompts, and
without a terminal it fails before downloading anything; with ``--password-file`` the
same section works, and ovirt-img honours its ``log_file``. This is what the README
documents.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.mounts import RHVFS
from tests.support.sim import SimProcess, conf_without, set_options

DISK = "mydisk"  # a floating 256 MiB disk with little data: a quick download


def disk_id(sim: SimProcess, name: str) -> str:
    conn = sim.sdk_connection()
    try:
        (disk,) = conn.system_service().disks_service().list(search=f"name={name}")
        return str(disk.id)
    finally:
        conn.close()


@pytest.mark.slow
def test_one_section_serves_rhvfs_and_ovirt_img(sim: SimProcess, tmp_path: Path) -> None:
    xdg = tmp_path / "xdg"  # ovirt-img reads only $XDG_CONFIG_HOME/ovirt-img.conf
    xdg.mkdir()
    conf = conf_without(sim, xdg, "password")
    password = tmp_path / "password"
    password.write_text(sim.password + "\n")
    password.chmod(0o600)
    ovirt_img_log = tmp_path / "ovirt-img.log"
    set_options(
        conf,
        sim.section,
        password_file=password,
        log_level="debug",
        log_file=ovirt_img_log,
        disk_timeout=120,
        description="uploaded by ops",
        grace_period=2,
        max_transfers=4,
    )
    env = {k: v for k, v in os.environ.items() if k != "RHVFS_PASSWORD"}
    env["XDG_CONFIG_HOME"] = str(xdg)

    listed = subprocess.run(
        [*RHVFS, "ls", "-c", sim.section, "/vms"],  # the default config file, as ovirt-img's
        capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert "/vms/myvm0/" in listed.stdout.splitlines()

    ovirt_img = [
        str(Path(sys.executable).with_name("ovirt-img")),
        "download-disk",
        "-c",
        sim.section,
    ]
    prompted = subprocess.run(
        [*ovirt_img, disk_id(sim, DISK), str(tmp_path / "prompted.qcow2")],
        capture_output=True, text=True, timeout=300, env=env, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert prompted.returncode != 0
    assert "Password: " in prompted.stderr  # it ignored password_file and asked
    assert not (tmp_path / "prompted.qcow2").exists()

    downloaded = subprocess.run(
        [*ovirt_img, "--password-file", str(password), disk_id(sim, DISK), str(tmp_path / "d.qcow2")],
        capture_output=True, text=True, timeout=300, env=env, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert downloaded.returncode == 0, downloaded.stderr
    assert (tmp_path / "d.qcow2").stat().st_size > 0
    assert "DEBUG" in ovirt_img_log.read_text()  # its log_file and log_level are its own
