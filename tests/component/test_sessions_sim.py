"""Backup sessions against the simulator: snapshot point-in-time data, cleanup, faults, gc.

Every test leaves the shared simulator as it found it: sessions end (snapshot
removed, transfers finished), guest writes are undone, faults cleared.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trio

from rhvfs import ARTIFACT_MARKER
from rhvfs.backupset import ConfigKey
from rhvfs.config import Config, load_config
from rhvfs.engine import Engine, open_engine
from rhvfs.errors import VmStateError
from rhvfs.retry import RetryPolicy
from rhvfs.sessions import BackupManager, Journal, Owner

MiB = 1024 * 1024
FAST_POLL = RetryPolicy.for_polling(interval_s=0.05, max_interval_s=0.25, timeout_s=120.0)
GRACE_S = 0.5


class Rig:
    def __init__(
        self, sim: Any, engine: Engine, config: Config, manager: BackupManager, journal: Journal
    ) -> None:
        self.sim = sim
        self.engine = engine
        self.config = config
        self.manager = manager
        self.journal = journal

    async def owner(self, name: str) -> Owner:
        vm = await self.engine.find_vm(name)
        assert vm is not None
        return Owner(kind="vm", id=vm.id, name=vm.name)

    async def sha_of(
        self, handle: int, size: int, *, chunk: int = 4 * MiB, on_offset: Any = None
    ) -> str:
        digest = hashlib.sha256()
        offset = 0
        while offset < size:
            if on_offset is not None:
                await on_offset(offset)
            data = await self.manager.read(handle, offset, chunk)
            assert data, f"short read at {offset} of {size}"
            digest.update(data)
            offset += len(data)
        assert await self.manager.read(handle, offset, chunk) == b""
        return digest.hexdigest()

    async def wait_session_end(self, owner: Owner) -> None:
        for _ in range(600):  # polling the status report is the point
            if not any(s["owner"]["id"] == owner.id for s in self.manager.status()["sessions"]):
                return
            await trio.sleep(0.1)
        raise AssertionError(f"the session of {owner.name} did not end")

    def open_transfers(self) -> list[dict[str, Any]]:
        return [t for t in self.sim.admin.transfers() if not str(t["phase"]).startswith("finished")]


@pytest.fixture
async def rig(sim: Any, tmp_path: Path) -> AsyncIterator[Rig]:
    config = load_config(
        section=sim.section,
        config_file=sim.conf_file,
        overrides={"grace_period": GRACE_S, "system_interval": 0.2, "system_timeout": 60.0},
    )
    journal = Journal(tmp_path / "journal.json")
    async with open_engine(config, poll=FAST_POLL) as engine:
        manager = BackupManager(engine, config, journal=journal, gc_on_start=False)
        async with trio.open_nursery() as nursery:
            await nursery.start(manager.run)
            yield Rig(sim, engine, config, manager, journal)
            nursery.cancel_scope.cancel()
    sim.admin.clear_faults()


async def test_running_vm_disks_read_concurrently_match_the_snapshot(rig: Rig) -> None:
    owner = await rig.owner("web01")
    before = sorted(s.id for s in await rig.engine.list_snapshots(owner.id))
    entries = await rig.manager.list_set(owner)
    assert [e.name for e in entries[:3]] == ["vm.ovf", "vm.xml", "manifest.json"]
    disks = [e for e in entries if e.disk_id]
    assert len(disks) == 3
    original = {e.disk_id: rig.sim.admin.disk_sha256(e.disk_id) for e in disks}

    config_handle = await rig.manager.open(owner, ConfigKey("manifest.json").encode())
    manifest = await rig.manager.read(config_handle, 0, entries[2].size)
    assert len(manifest) == entries[2].size
    doc = json.loads(manifest)
    snap_id = doc["snapshot_id"]
    volumes = {d["id"]: d["image_id"] for d in doc["disks"]}
    assert snap_id in [s.id for s in await rig.engine.list_snapshots(owner.id)]
    snap = next(s for s in await rig.engine.list_snapshots(owner.id) if s.id == snap_id)
    assert snap.description.startswith(f"{ARTIFACT_MARKER} ")
    assert f"host={socket.gethostname()} pid={os.getpid()} " in snap.description
    mine = rig.journal.installation
    assert f" inst={mine.id} mount={mine.instance} " in snap.description

    # The guest keeps writing while the backup runs: the set must not see it.
    write_at = 3 * MiB
    for e in disks:
        rig.sim.admin.guest_write(disk=e.disk_id, offset=write_at, size=65536, pattern=0xA5)
    expected = {
        e.disk_id: rig.sim.admin.disk_sha256(e.disk_id, image_id=volumes[e.disk_id]) for e in disks
    }
    assert expected == original  # the snapshot volumes hold the data as of the snapshot

    got: dict[str, str] = {}
    saved: dict[str, bytes] = {}

    async def one(entry: Any) -> None:
        h = await rig.manager.open(owner, entry.key)
        saved[entry.disk_id] = await rig.manager.read(h, write_at, 65536)
        got[entry.disk_id] = await rig.sha_of(h, entry.size)
        await rig.manager.release(h)

    async with trio.open_nursery() as nursery:
        for e in disks:
            nursery.start_soon(one, e)
    assert got == expected
    assert await rig.manager.list_set(owner) == entries  # stat is stable during the session
    status = rig.manager.status()
    assert status["sessions"][0]["bytes_read"] >= sum(e.size for e in disks)
    await rig.manager.release(config_handle)

    await rig.wait_session_end(owner)
    assert sorted(s.id for s in await rig.engine.list_snapshots(owner.id)) == before
    assert rig.open_transfers() == []
    assert rig.manager.status()["errors"] == []
    assert rig.journal.entries() == []
    # Undo the guest writes so the shared simulator is as we found it.
    for e in disks:
        assert e.disk_id is not None
        rig.sim.admin.guest_write(disk=e.disk_id, offset=write_at, data=saved[e.disk_id])
        assert rig.sim.admin.disk_sha256(e.disk_id) == original[e.disk_id]


@pytest.mark.allow_log("rhvfs.sessions.full", "WARNING", match="is suspended")
async def test_suspended_vm_gets_a_clear_error(rig: Rig) -> None:
    owner = await rig.owner("app01")
    before = await rig.engine.list_snapshots(owner.id)
    entries = await rig.manager.list_set(owner)
    with pytest.raises(VmStateError, match="VM app01 is suspended; resume or power it off"):
        await rig.manager.open(owner, entries[-1].key)
    assert await rig.engine.list_snapshots(owner.id) == before


async def test_connection_drop_mid_read_still_yields_correct_bytes(rig: Rig) -> None:
    owner = await rig.owner("myvm0")
    entries = await rig.manager.list_set(owner)
    disk = next(e for e in entries if e.disk_id)
    expected = rig.sim.admin.disk_sha256(disk.disk_id)
    h = await rig.manager.open(owner, disk.key)
    rig.sim.admin.add_fault("drop-imageio", after_bytes=5 * MiB, times=2)
    assert await rig.sha_of(h, disk.size) == expected
    await rig.manager.release(h)
    await rig.wait_session_end(owner)
    assert rig.open_transfers() == []


async def test_expired_ticket_mid_read_recovers(rig: Rig) -> None:
    owner = await rig.owner("db01")  # paused VMs are backed up too
    entries = await rig.manager.list_set(owner)
    disk = next(e for e in entries if e.disk_id)
    expected = rig.sim.admin.disk_sha256(disk.disk_id)
    h = await rig.manager.open(owner, disk.key)
    assert len(await rig.manager.read(h, 0, 4096)) == 4096  # the transfer exists now
    (d,) = rig.manager.status()["sessions"][0]["disks"]
    rig.sim.admin.add_fault("expire-ticket", transfer=d["transfer_id"])
    assert await rig.sha_of(h, disk.size) == expected
    (d,) = rig.manager.status()["sessions"][0]["disks"]
    assert d["recreated"] == 1
    await rig.manager.release(h)
    await rig.wait_session_end(owner)
    assert rig.open_transfers() == []
    assert rig.journal.entries() == []


async def test_gc_removes_leftovers_of_a_dead_process_and_nothing_else(rig: Rig) -> None:
    owner = await rig.owner("myvm0")
    proc = await trio.lowlevel.open_process(["true"])
    await proc.wait()  # a pid that no longer runs
    from rhvfs.sessions.core._gc import artifact_description
    from rhvfs.sessions.core._installation import Ownership, new_id
    from rhvfs.sessions.core._procid import ProcessIdentity

    ghost = ProcessIdentity(socket.gethostname(), "", proc.pid, 0)
    dead_mount = Ownership(rig.journal.installation.id, new_id())  # this installation's
    leftover = await rig.engine.create_snapshot(
        owner.id,
        description=artifact_description(
            "deadbeef0001", ghost, datetime.now(UTC), owner=dead_mount
        ),
    )
    user = await rig.engine.create_snapshot(owner.id, description="before the upgrade")
    try:
        planned = await rig.manager.collect_garbage(dry_run=True)
        assert any(leftover.id in line and line.startswith("would remove") for line in planned)
        assert {leftover.id, user.id} <= {s.id for s in await rig.engine.list_snapshots(owner.id)}
        done = await rig.manager.collect_garbage()
        assert any(leftover.id in line and line.startswith("removed") for line in done)
        ids = {s.id for s in await rig.engine.list_snapshots(owner.id)}
        assert leftover.id not in ids and user.id in ids
        assert not any(user.id in line for line in done)
    finally:
        await rig.engine.remove_snapshot(owner.id, user.id)


async def test_template_set_reads_the_template_disk(rig: Rig) -> None:
    templates = [t for t in await rig.engine.list_templates() if t.name == "mytemplate"]
    owner = Owner(kind="template", id=templates[0].id, name="mytemplate")
    entries = await rig.manager.list_set(owner)
    disk = next(e for e in entries if e.disk_id)
    expected = rig.sim.admin.disk_sha256(disk.disk_id)
    h = await rig.manager.open(owner, disk.key)
    assert await rig.sha_of(h, disk.size) == expected
    await rig.manager.release(h)
    await rig.wait_session_end(owner)
    assert rig.open_transfers() == []


async def test_engine_5xx_while_creating_the_snapshot_is_retried(rig: Rig) -> None:
    owner = await rig.owner("myvm0")
    before = sorted(s.id for s in await rig.engine.list_snapshots(owner.id))
    entries = await rig.manager.list_set(owner)
    rig.sim.admin.add_fault(
        "engine-error", method="POST", path="/ovirt-engine/api/vms/*/snapshots", status=503, times=2
    )
    h = await rig.manager.open(owner, ConfigKey("manifest.json").encode())
    doc = json.loads(await rig.manager.read(h, 0, entries[2].size))
    snaps = [s for s in await rig.engine.list_snapshots(owner.id) if s.id not in before]
    assert [s.id for s in snaps] == [doc["snapshot_id"]]  # exactly one, despite the retries
    await rig.manager.release(h)
    await rig.wait_session_end(owner)
    assert sorted(s.id for s in await rig.engine.list_snapshots(owner.id)) == before


async def test_gc_cancels_transfers_and_removes_the_snapshot_of_a_killed_session(
    rig: Rig,
) -> None:
    """What a SIGKILLed rhvfs leaves: a journal entry, its snapshot and an open transfer."""
    from rhvfs.sessions import JournalEntry
    from rhvfs.sessions.core import _procid as procid
    from rhvfs.sessions.core._installation import Ownership, new_id
    from rhvfs.sessions.full._session import snapshot_description

    owner = await rig.owner("myvm0")
    before = sorted(s.id for s in await rig.engine.list_snapshots(owner.id))
    proc = await trio.lowlevel.open_process(["true"])
    await proc.wait()
    me = procid.current()
    ghost = procid.ProcessIdentity(me.host, me.boot_id, proc.pid, 1)
    killed_mount = Ownership(rig.journal.installation.id, new_id())
    desc = snapshot_description("killed000001", ghost, datetime.now(UTC), owner=killed_mount)
    entry = JournalEntry(
        session_id="killed000001",
        process=ghost,
        owner_kind="vm",
        owner_id=owner.id,
        owner_name=owner.name,
        started=datetime.now(UTC).isoformat(),
        snapshot_description=desc,
        installation=killed_mount.installation,
        instance=killed_mount.instance,
    )
    rig.journal.put(entry)
    snap = await rig.engine.create_snapshot(owner.id, description=desc)
    (disk, *_) = await rig.engine.snapshot_disks(owner.id, snap.id)
    rig.journal.put(dataclasses.replace(entry, snapshot_id=snap.id))
    transfer = await rig.engine.start_transfer(snapshot_image_id=disk.image_id)
    rig.journal.add_transfer("killed000001", transfer.id)

    lines = await rig.manager.collect_garbage()
    assert f"cancelled transfer {transfer.id} of session killed000001" in lines[0]
    assert lines[1].startswith(f"removed snapshot {snap.id} of VM myvm0")
    assert (await rig.engine.get_transfer(transfer.id)).phase.startswith("finished")  # type: ignore[union-attr]
    assert sorted(s.id for s in await rig.engine.list_snapshots(owner.id)) == before
    assert rig.journal.entries() == []
    again = await rig.manager.collect_garbage()
    assert not any(snap.id in line or transfer.id in line for line in again)


async def test_reader_pausing_longer_than_the_inactivity_timeout_continues(
    sim: Any, tmp_path: Path
) -> None:
    config = load_config(
        section=sim.section,
        config_file=sim.conf_file,
        overrides={"grace_period": GRACE_S, "inactivity_timeout": 2, "system_interval": 0.2},
    )
    journal = Journal(tmp_path / "journal.json")
    async with open_engine(config, poll=FAST_POLL) as engine:
        manager = BackupManager(engine, config, journal=journal, gc_on_start=False)
        async with trio.open_nursery() as nursery:
            await nursery.start(manager.run)
            rig = Rig(sim, engine, config, manager, journal)
            owner = await rig.owner("myvm0")
            entries = await manager.list_set(owner)
            disk = next(e for e in entries if e.disk_id)
            assert disk.disk_id is not None
            expected = sim.admin.disk_sha256(disk.disk_id)
            h = await manager.open(owner, disk.key)
            first = await manager.read(h, 0, MiB)
            await trio.sleep(6)  # the backup tool pauses: 3x the inactivity timeout
            digest = hashlib.sha256(first)
            offset = len(first)
            while data := await manager.read(h, offset, 4 * MiB):
                digest.update(data)
                offset += len(data)
            assert digest.hexdigest() == expected
            (d,) = manager.status()["sessions"][0]["disks"]
            assert d["recreated"] == 0  # kept alive, never expired
            assert d["keepalives"] >= 3
            await manager.release(h)
            await rig.wait_session_end(owner)
            assert rig.open_transfers() == []
            nursery.cancel_scope.cancel()


@pytest.mark.allow_log("rhvfs.sessions.full", "WARNING", match="imageio unavailable")
async def test_a_read_that_finally_fails_raises_and_the_session_recovers(rig: Rig) -> None:
    from rhvfs.errors import ImageioError

    owner = await rig.owner("myvm0")
    entries = await rig.manager.list_set(owner)
    disk = next(e for e in entries if e.disk_id)
    assert disk.disk_id is not None
    expected = rig.sim.admin.disk_sha256(disk.disk_id)
    h = await rig.manager.open(owner, disk.key)
    rig.sim.admin.add_fault("drop-imageio", after_bytes=0, times=1000)
    with pytest.raises(ImageioError):
        await rig.manager.read(h, 0, MiB)  # every try fails: an error, never wrong bytes
    rig.sim.admin.clear_faults()
    assert await rig.sha_of(h, disk.size) == expected
    assert any("read of disk" in e["message"] for e in rig.manager.status()["errors"])
    await rig.manager.release(h)
    await rig.wait_session_end(owner)
    assert rig.open_transfers() == []


async def test_status_tells_reads_that_waited_for_the_data_plane_from_reads_served(
    rig: Rig,
) -> None:
    # Two tools read the same range at once: the first starts the chunk's fetch, the
    # second waits for it (the data plane is behind); a read in the fetched chunk is
    # served at once.
    owner = await rig.owner("myvm0")
    entries = await rig.manager.list_set(owner)
    disk = next(e for e in entries if e.disk_id)
    expected = os.urandom(2 * MiB)
    rig.sim.admin.guest_write(disk=disk.disk_id, offset=0, data=expected)
    h1 = await rig.manager.open(owner, disk.key)
    h2 = await rig.manager.open(owner, disk.key)
    got: dict[int, bytes] = {}

    async def read(h: int) -> None:
        got[h] = bytes(await rig.manager.read(h, 0, MiB))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read, h1)
        nursery.start_soon(read, h2)
    assert got == {h1: expected[:MiB], h2: expected[:MiB]}
    (d,) = rig.manager.status()["sessions"][0]["disks"]
    assert (d["cache_hits"], d["cache_waits"]) == (0, 1)
    assert bytes(await rig.manager.read(h1, MiB, MiB)) == expected[MiB:]
    (d,) = rig.manager.status()["sessions"][0]["disks"]
    assert (d["cache_hits"], d["cache_waits"]) == (1, 1)
    fetched = d["bytes_fetched"]
    for h in (h1, h2):
        await rig.manager.release(h)
    # Reopened: a new reader fetches again (its first read counts as neither); the counts
    # of the closed reader stay in the disk's status.
    h3 = await rig.manager.open(owner, disk.key)
    assert bytes(await rig.manager.read(h3, 0, MiB)) == expected[:MiB]
    (d,) = rig.manager.status()["sessions"][0]["disks"]
    assert (d["cache_hits"], d["cache_waits"]) == (1, 1)
    assert d["bytes_fetched"] >= fetched + MiB  # the new reader's fetch, added to the old
    await rig.manager.release(h3)
    await rig.wait_session_end(owner)
