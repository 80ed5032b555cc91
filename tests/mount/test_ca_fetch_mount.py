"""A CA fetched with ``rhvfs ca fetch`` is what a fresh mount then verifies TLS with.

The section starts without ``cafile`` (a mount fails: the simulator's CA is not in
the system store). After ``rhvfs ca fetch --yes`` the same section mounts, lists the
VMs (engine TLS) and reads a disk (imageio TLS: the simulator's imageio certificate
is signed by the same CA, as on oVirt), and unmounts leaving no snapshot or transfer.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support.mounts import RHVFS, SimMount
from tests.support.sim import SimProcess, conf_without, live_transfers, snapshot_ids

pytestmark = pytest.mark.slow

MiB = 1 << 20
VM = "myvm0"


def test_a_fetched_ca_is_verified_by_a_fresh_mount(sim: SimProcess, tmp_path: Path) -> None:
    conf = conf_without(sim, tmp_path, "cafile")
    env = {k: v for k, v in os.environ.items() if k != "SSL_CERT_FILE"}
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    untrusted = subprocess.run(
        [*RHVFS, "mount", "-c", sim.section, "--config-file", str(conf),
         "--state-dir", str(tmp_path / "state"), str(mnt)],
        capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert untrusted.returncode == 1
    assert "rhvfs ca fetch" in untrusted.stderr and not os.path.ismount(mnt)

    fetched = subprocess.run(
        [*RHVFS, "ca", "fetch", "-c", sim.section, "--config-file", str(conf), "--yes"],
        capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert fetched.returncode == 0, fetched.stderr

    before = snapshot_ids(sim, VM)
    m = SimMount(sim, mnt, tmp_path / "state", "--grace-period", "0", config_file=conf, env=env)
    try:
        assert m.status()["tls_verified"] is True
        assert VM in os.listdir(mnt / "vms")
        with open(mnt / "vms" / VM / "disks" / f"{VM}_Disk1.raw", "rb") as f:
            assert len(f.read(MiB)) == MiB
    finally:
        m.umount()
    assert snapshot_ids(sim, VM) == before
    assert live_transfers(sim) == []
