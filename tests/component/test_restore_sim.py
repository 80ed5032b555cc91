"""Restore sessions against the simulator (real engine API, real imageio daemon), no FUSE.

Sets are synthesized (manifest + OVF + random images) so the write patterns
can be chosen exactly: out of order, images before the manifest, holes.
Contents are checked with the simulator's own volume checksums.
"""

from __future__ import annotations

import hashlib
import json
import random
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from rhvfs.config import Config
from rhvfs.engine import Engine
from rhvfs.sessions.core import EngineLimits
from rhvfs.sessions.restore import RestoreFile, RestoreManager, RestoreSession
from tests.support.restore_rig import sim_restore_manager

MiB = 1024 * 1024


def synth_set(name: str, sizes: list[int], seed: int) -> tuple[dict[str, bytes], list[str]]:
    rnd = random.Random(seed)
    vm_id = str(uuid.uuid4())
    files: dict[str, bytes] = {}
    disks = []
    for i, size in enumerate(sizes):
        disk_id = str(uuid.uuid4())
        image = bytearray(size)
        for start in range(0, size, 4 * MiB):  # 1 MiB of data every 4 MiB, holes between
            image[start : start + MiB] = rnd.randbytes(min(MiB, size - start))
        file_name = f"{name}-d{i}--{disk_id}.raw"
        files[file_name] = bytes(image)
        disks.append(
            {
                "id": disk_id,
                "alias": f"{name}-d{i}",
                "file": file_name,
                "size": size,
                "format": "cow" if i else "raw",
                "sparse": True,
                "interface": "virtio_scsi",
                "bootable": i == 0,
                "active": True,
                "storage_domain": {"id": None, "name": "mydata"},
                "description": f"disk {i} of {name}",
            }
        )
    manifest = {
        "format": "rhvfs-backup-set",
        "format_version": 1,
        "kind": "vm",
        "vm": {"id": vm_id, "name": name, "cluster": {"id": None, "name": "Default"}},
        "disks": disks,
        "nics": [{"name": "nic1", "interface": "virtio", "mac": None}],
    }
    files["manifest.json"] = json.dumps(manifest).encode()
    files["vm.ovf"] = (
        '<ovf:Envelope xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1/" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        f'<Content ovf:id="out" xsi:type="ovf:VirtualSystem_Type"><Name>{name}</Name>'
        f"<Comment>comment of {name}</Comment>"
        f'<Section ovf:id="{vm_id}" xsi:type="ovf:OperatingSystemSection_Type">'
        "<Description>other_linux</Description></Section></Content></ovf:Envelope>\n"
    ).encode()
    return files, [d["file"] for d in disks]


@pytest.fixture
async def rig(sim: Any, tmp_path: Path) -> AsyncIterator[tuple[Engine, RestoreManager]]:
    async with sim_restore_manager(sim, tmp_path) as (engine, manager):
        yield engine, manager


async def put(
    session: RestoreSession, name: str, data: bytes, order: list[int], block: int
) -> RestoreFile:
    f = session.new_file(name)
    session.open(f)
    for index in order:
        piece = data[index * block : (index + 1) * block]
        if piece.strip(b"\0"):
            await session.write(f, index * block, piece)
    await session.truncate(f, len(data))
    await session.flush(f)
    await session.release(f)
    return f


async def test_out_of_order_and_early_images_reach_the_engine_intact(
    sim: Any, rig: tuple[Engine, RestoreManager]
) -> None:
    engine, manager = rig
    files, images = synth_set("rs-ooo", [12 * MiB, 9 * MiB], seed=3)
    session = manager.create("rs-ooo")
    marker = session.journal.marker
    assert marker is not None
    block = 512 * 1024
    # the first image arrives before the configuration (staged), in reverse block order
    first = files[images[0]]
    # out of order with zero blocks skipped, no times set: nothing proves the image is
    # finished (restic looks like this until it sets the times at the end)
    f0 = await put(session, images[0], first, list(reversed(range(len(first) // block))), block)
    assert manager.staging.used_bytes > 0
    await put(session, "vm.ovf", files["vm.ovf"], [0], len(files["vm.ovf"]))
    await put(session, "manifest.json", files["manifest.json"], [0], len(files["manifest.json"]))
    # the second one in a shuffled order straight to the engine
    second = files[images[1]]
    order = list(range(len(second) // block + 1))
    random.Random(5).shuffle(order)
    f1 = await put(session, images[1], second, order, block)
    await trio.sleep(manager.close_grace_s + 1)
    assert session.phase == "uploading"
    # while the restore runs, its disks carry its marker (the set's description comes later)
    made = [d for d in session.disks.values() if d.disk_id]
    assert len(made) == 2
    for d in made:
        assert d.disk_id is not None and (await engine.get_disk(d.disk_id)).description == marker
    for f in (f0, f1):
        await session.set_times(f)  # ... the tool says it is finished
    with trio.fail_after(120):
        await session.wait_finished()
    status = session.status()
    assert status["phase"] == "done", status["error"]
    assert manager.staging.used_bytes == 0
    try:
        # done: the VM has the OVF's comment, the disks the set's descriptions
        assert (await engine.get_vm(status["vm_id"])).comment == "comment of rs-ooo"
        atts = {a.disk.alias: a for a in await engine.disk_attachments(status["vm_id"])}
        assert {
            alias: (await engine.get_disk(a.disk.id)).description for alias, a in atts.items()
        } == {"rs-ooo-d0": "disk 0 of rs-ooo", "rs-ooo-d1": "disk 1 of rs-ooo"}
        for i, name in enumerate(images):
            att = atts[f"rs-ooo-d{i}"]
            assert att.disk.format == ("cow" if i else "raw")
            assert att.bootable == (i == 0)
            want = hashlib.sha256(files[name]).hexdigest()
            assert await trio.to_thread.run_sync(sim.admin.disk_sha256, att.disk.id) == want
        disk0 = status["disks"][0]
        assert disk0["bytes_uploaded"] == 3 * MiB  # data only: holes and zeroes are not PUT
    finally:
        await engine.remove_vm(status["vm_id"])


async def test_a_set_with_more_disks_than_max_transfers_restores_one_disk_at_a_time(
    sim: Any, tmp_path: Path
) -> None:
    """max_transfers=1, three disks written one after the other: each disk's upload gives
    its place to the next once idle (its transfer finalized, its data kept; on file storage
    nothing is left to send, so it is not reopened); the engine's disks hold exactly the
    images."""
    limits = EngineLimits.from_config(
        Config(engine_url="https://x", username="u", password="p", max_transfers=1)
    )
    files, images = synth_set("rs-lim", [6 * MiB, 5 * MiB, 3 * MiB], seed=7)
    async with sim_restore_manager(sim, tmp_path, limits=limits) as (engine, manager):
        session = manager.create("rs-lim")
        for name in ("vm.ovf", "manifest.json"):
            await put(session, name, files[name], [0], len(files[name]))
        block = 1024 * 1024
        for name in images:
            await put(session, name, files[name], list(range(len(files[name]) // block)), block)
        with trio.fail_after(120):
            await session.wait_finished()
        status = session.status()
        assert status["phase"] == "done", status["error"]
        try:
            atts = {a.disk.alias: a for a in await engine.disk_attachments(status["vm_id"])}
            for i, name in enumerate(images):
                want = hashlib.sha256(files[name]).hexdigest()
                disk_id = atts[f"rs-lim-d{i}"].disk.id
                assert await trio.to_thread.run_sync(sim.admin.disk_sha256, disk_id) == want
            stats = limits.transfers.status()
            assert (stats["peak"], stats["in_use"]) == (1, 0)
            # the second and third disk waited for the place the one before gave away
            assert stats["waited"] >= 2
            assert not [t for t in await engine.list_transfers() if t.phase == "transferring"]
        finally:
            await engine.remove_vm(status["vm_id"])
