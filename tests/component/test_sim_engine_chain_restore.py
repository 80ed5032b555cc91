"""Layered restore with original ids (ovirt-api-subset.md §6.3), through the SDK and imageio.

Download each qcow2 layer of a disk as stored (`format=cow`), delete the VM
and its disks, recreate the disk with the base image id, the VM from its OVF,
a snapshot whose new active volume takes the original top id, and upload each
layer's bytes into its volume. Upload finalize verifies each qcow2 names its
parent; the restored disk reads exactly as before.
"""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from ovirt_imageio import client as imageio
from ovirtsdk4 import types

from tests.support.waiting import wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]
P = types.ImageTransferPhase


def _transfer(conn: Any, image_id: str, direction: types.ImageTransferDirection) -> tuple[Any, str]:
    transfers = conn.system_service().image_transfers_service()
    t = transfers.add(
        types.ImageTransfer(
            snapshot=types.DiskSnapshot(id=image_id),
            direction=direction,
            format=types.DiskFormat.COW,
        )
    )
    ts = transfers.image_transfer_service(t.id)
    url = wait_for(
        "transferring", lambda: (x := ts.get()).phase == P.TRANSFERRING and x.transfer_url
    )
    return ts, url


def _put(url: str, data: bytes, cafile: str) -> None:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPSConnection(
        parts.hostname, parts.port, context=ssl.create_default_context(cafile=cafile), timeout=60
    )
    try:
        conn.request(
            "PUT", parts.path, body=data, headers={"Content-Range": f"bytes 0-{len(data) - 1}/*"}
        )
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, b"")
        conn.request(
            "PATCH",
            parts.path,
            body=json.dumps({"op": "flush"}),
            headers={"Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        resp.read()
    finally:
        conn.close()


def test_layers_round_trip_with_original_ids(
    sim_factory: Callable[..., Any], tmp_path: Path
) -> None:
    s = sim_factory()
    conn = s.sdk_connection()
    try:
        vms = conn.system_service().vms_service()
        vm = vms.list(search="name=myvm")[0]
        ovf = vms.vm_service(vm.id).get(all_content=True).initialization.configuration.data
        disk = next(
            d
            for d in (conn.follow_link(a.disk) for a in conn.follow_link(vm.disk_attachments))
            if d.alias == "mydisk"
        )
        s.admin.guest_write(vm="myvm", disk="mydisk", offset=7 << 20, size=1 << 20, pattern=0x3C)
        expected = s.admin.disk_sha256(disk.id)
        chain = (
            conn.system_service()
            .disks_service()
            .disk_service(disk.id)
            .disk_snapshots_service()
            .list(include_active=True)
        )
        base = next(c for c in chain if c.parent is None)
        top = next(c for c in chain if c.parent is not None)
        assert top.parent.id == base.id and top.id == disk.image_id
        layers = {}
        for layer in (base, top):
            ts, url = _transfer(conn, layer.id, types.ImageTransferDirection.DOWNLOAD)
            c = imageio.ImageioClient(url, cafile=s.cafile)
            try:
                buf = bytearray(c.size())
                c.read(0, memoryview(buf))
            finally:
                c.close()
            ts.finalize()
            wait_for("finished", lambda ts=ts: ts.get().phase == P.FINISHED_SUCCESS)
            layers[layer.id] = bytes(buf)
        assert layers[top.id][:4] == b"QFI\xfb" and base.id.encode() in layers[top.id][:4096]

        vms.vm_service(vm.id).remove()
        wait_for(
            "disk gone",
            lambda: disk.id not in {d.id for d in conn.system_service().disks_service().list()},
        )

        conn.system_service().disks_service().add(
            types.Disk(
                id=disk.id,
                image_id=base.id,
                name="mydisk",
                format=types.DiskFormat.COW,
                provisioned_size=disk.provisioned_size,
                backup=types.DiskBackup.INCREMENTAL,
                storage_domains=[types.StorageDomain(id=disk.storage_domains[0].id)],
            ),
            headers={"Expect": "201-created"},
        )
        restored = vms.add(
            types.Vm(
                cluster=types.Cluster(name="Default"),
                initialization=types.Initialization(
                    configuration=types.Configuration(type=types.ConfigurationType.OVF, data=ovf)
                ),
            )
        )
        assert restored.id == vm.id
        rs = vms.vm_service(restored.id)
        assert [a.id for a in rs.disk_attachments_service().list()] == [
            disk.id
        ]  # myvm_Disk1 is gone: skipped
        snaps = rs.snapshots_service()
        snap = snaps.add(
            types.Snapshot(
                description="mysnap",
                persist_memorystate=False,
                disk_attachments=[
                    types.DiskAttachment(disk=types.Disk(id=disk.id, image_id=top.id))
                ],
            )
        )
        wait_for(
            "snapshot ok",
            lambda: (
                snaps.snapshot_service(snap.id).get().snapshot_status == types.SnapshotStatus.OK
            ),
        )
        assert conn.system_service().disks_service().disk_service(disk.id).get().image_id == top.id
        for layer in (base, top):
            ts, url = _transfer(conn, layer.id, types.ImageTransferDirection.UPLOAD)
            # A plain PUT of the whole layer (the file grows; ImageioClient would bound
            # writes by the current file size).
            _put(url, layers[layer.id], s.cafile)
            ts.finalize()
            wait_for(
                "finished", lambda ts=ts: ts.get().phase in (P.FINISHED_SUCCESS, P.FINISHED_FAILURE)
            )
            assert ts.get().phase == P.FINISHED_SUCCESS
        assert s.admin.disk_sha256(disk.id) == expected
    finally:
        conn.close()
