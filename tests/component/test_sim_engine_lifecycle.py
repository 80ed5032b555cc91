"""`rhvfs sim serve` lifecycle: fresh `--sample` start time, clean stop, restart on the same dir.

`SimProcess.stop()` (tests/support/sim.py) asserts that no qemu-nbd or
ovirt-imageio process of the simulator survives it.
"""

from __future__ import annotations

import configparser
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from ovirtsdk4 import types

from tests.support.sim import children, cmdline


def _inventory(conn: Any) -> dict[str, Any]:
    system = conn.system_service()
    return {
        "vms": sorted((v.id, v.name, v.status.value) for v in system.vms_service().list()),
        "disks": sorted(
            (d.id, d.alias, d.image_id, d.provisioned_size) for d in system.disks_service().list()
        ),
        "sds": sorted((s.id, s.name) for s in system.storage_domains_service().list()),
        "tags": sorted((t.id, t.name) for t in system.tags_service().list()),
    }


@pytest.mark.slow
def test_fresh_sample_is_ready_fast_and_restart_serves_the_same(
    sim_factory: Callable[..., Any], tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    start = time.monotonic()
    s = sim_factory(state_dir=state_dir)
    ready_s = time.monotonic() - start
    assert ready_s < 20, f"--sample on a fresh dir took {ready_s:.1f} s"

    conf = configparser.ConfigParser()
    conf.read(s.conf_file)
    assert set(conf["sim"]) == {"engine_url", "username", "password", "cafile"}
    assert conf["sim"]["cafile"] == str(state_dir.resolve() / "pki" / "ca.pem")
    assert stat.S_IMODE(s.conf_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((state_dir / "password").stat().st_mode) == 0o600
    assert (state_dir / "serve.json").exists()

    conn = s.sdk_connection()
    try:
        before = _inventory(conn)
        myvm = conn.system_service().vms_service().list(search="name=myvm")[0]
        disk_ids = [a.id for a in conn.follow_link(myvm.disk_attachments)]
        # A snapshot taken before the stop must survive the restart.
        snaps = conn.system_service().vms_service().vm_service(myvm.id).snapshots_service()
        snap = snaps.add(types.Snapshot(description="before restart"))
        deadline = time.monotonic() + 30
        while snaps.snapshot_service(snap.id).get().snapshot_status != types.SnapshotStatus.OK:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        before = _inventory(conn)
    finally:
        conn.close()
    sums = {d: s.admin.disk_sha256(d) for d in disk_ids}
    # Leave a download open: the stop must end its qemu-nbd too.
    conn = s.sdk_connection()
    try:
        transfers = conn.system_service().image_transfers_service()
        t = transfers.add(
            types.ImageTransfer(
                disk=types.Disk(id=disk_ids[0]),
                direction=types.ImageTransferDirection.DOWNLOAD,
                format=types.DiskFormat.RAW,
            )
        )
        deadline = time.monotonic() + 30
        while (
            transfers.image_transfer_service(t.id).get().phase
            != types.ImageTransferPhase.TRANSFERRING
        ):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        conn.close()
    helpers = [cmdline(p) for p in children(s.proc.pid)]
    assert any("qemu-nbd" in c for c in helpers) and any("ovirt-imageio" in c for c in helpers), (
        helpers
    )
    password = s.password
    s.stop()  # asserts no qemu-nbd / imageio process is left
    assert not (state_dir / "serve.json").exists()

    again = sim_factory(state_dir=state_dir)
    assert again.password == password
    conn = again.sdk_connection()
    try:
        assert _inventory(conn) == before
        snaps = conn.system_service().vms_service().vm_service(myvm.id).snapshots_service().list()
        assert "before restart" in [x.description for x in snaps]
        # The transfer that was open when the engine stopped failed; its disk is usable again.
        t = conn.system_service().image_transfers_service().image_transfer_service(t.id).get()
        assert t.phase == types.ImageTransferPhase.FINISHED_FAILURE
        disk = conn.system_service().disks_service().disk_service(disk_ids[0]).get()
        assert disk.status == types.DiskStatus.OK
    finally:
        conn.close()
    assert {d: again.admin.disk_sha256(d) for d in disk_ids} == sums
