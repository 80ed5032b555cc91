"""Concurrent SDK clients against one simulator: parallel transfers and listings, no deadlock.

Each worker downloads its own disk twice through image transfers while other
threads list VMs and follow their disk attachments; every download must
match the simulator's sha256 and every disk must end unlocked.
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from ovirt_imageio import client as imageio
from ovirtsdk4 import types

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

P = types.ImageTransferPhase


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 23):
            h.update(chunk)
    return h.hexdigest()


def _poll(fn: Any, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not fn():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


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
                _poll(lambda ts=ts: ts.get().phase == P.TRANSFERRING)
                target = tmp_path / f"{alias}-{i}.raw"
                imageio.download(ts.get().transfer_url, str(target), sim.cafile, fmt="raw")
                sums.append(_sha256(target))
                target.unlink()
                ts.finalize()
                _poll(lambda ts=ts: ts.get().phase == P.FINISHED_SUCCESS)
                ds = conn.system_service().disks_service().disk_service(disk.id)
                _poll(lambda ds=ds: ds.get().status == types.DiskStatus.OK)
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
