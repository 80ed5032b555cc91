"""Concurrent SDK clients against one simulator: parallel transfers and listings, no deadlock.

Each worker downloads its own disk twice through image transfers while other
threads list VMs and follow their disk attachments; every download must
match the simulator's sha256 and every disk must end unlocked.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from ovirt_imageio import client as imageio
from ovirtsdk4 import types

from tests.support.data import sha256_file
from tests.support.waiting import wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

P = types.ImageTransferPhase


def test_parallel_transfers_and_listings(sim: Any, tmp_path: Path) -> None:
    targets = [("myvm", "mydisk"), ("myvm", "myvm_Disk1"), ("remote01", "remote01_Disk1")]
    errors: list[str] = []
    results: dict[str, tuple[str, list[str]]] = {}

    def download_twice(vm_name: str, alias: str) -> None:
        conn = sim.sdk_connection()
        try:
            vm = conn.system_service().vms_service().list(search=f"name={vm_name}")[0]
            disk = next(
                d
                for d in (conn.follow_link(a.disk) for a in conn.follow_link(vm.disk_attachments))
                if d.alias == alias
            )
            transfers = conn.system_service().image_transfers_service()
            sums = []
            for i in range(2):
                t = transfers.add(
                    types.ImageTransfer(
                        disk=types.Disk(id=disk.id),
                        direction=types.ImageTransferDirection.DOWNLOAD,
                        format=types.DiskFormat.RAW,
                    )
                )
                ts = transfers.image_transfer_service(t.id)
                wait_for("transferring", lambda ts=ts: ts.get().phase == P.TRANSFERRING, 120.0)
                target = tmp_path / f"{alias}-{i}.raw"
                imageio.download(ts.get().transfer_url, str(target), sim.cafile, fmt="raw")
                sums.append(sha256_file(target))
                target.unlink()
                ts.finalize()
                wait_for(
                    "finished_success", lambda ts=ts: ts.get().phase == P.FINISHED_SUCCESS, 120.0
                )
                ds = conn.system_service().disks_service().disk_service(disk.id)
                wait_for("disk ok", lambda ds=ds: ds.get().status == types.DiskStatus.OK, 120.0)
            results[alias] = (disk.id, sums)
        except Exception as err:  # collected and asserted below
            errors.append(f"{alias}: {err!r}")
        finally:
            conn.close()

    def list_repeatedly() -> None:
        conn = sim.sdk_connection()
        try:
            for _ in range(15):
                for vm in conn.system_service().vms_service().list():
                    conn.follow_link(vm.disk_attachments)
        except Exception as err:
            errors.append(f"lister: {err!r}")
        finally:
            conn.close()

    threads = [threading.Thread(target=download_twice, args=t) for t in targets]
    threads += [threading.Thread(target=list_repeatedly) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a client hung"
    assert errors == []
    for disk_id, sums in results.values():
        assert sums == [sim.admin.disk_sha256(disk_id)] * 2
    assert len(results) == len(targets)
