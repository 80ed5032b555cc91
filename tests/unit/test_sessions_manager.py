"""BackupManager + BackupSession lifecycle against fakes (MockClock: timers run instantly)."""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from rhvfs import ARTIFACT_MARKER
from rhvfs.backupset import ConfigKey, DiskKey
from rhvfs.errors import EngineError, NotFound, SessionBroken, VmStateError
from rhvfs.sessions import BackupManager, Journal, Owner
from rhvfs.sessions.core import _procid as procid
from tests.support.configs import make_config
from tests.support.data import MiB, sha
from tests.support.fake_dataplane import FakeDataPlane
from tests.support.fake_engine import ENGINE_LIKE, FakeEngine


class Rig:
    def __init__(self, tmp_path: Path, **config: Any) -> None:
        self.engine = FakeEngine(latency=ENGINE_LIKE)
        self.plane = FakeDataPlane(self.engine)
        self.journal = Journal(tmp_path / "journal.json")
        self.config = make_config(**config)
        self.manager = BackupManager(
            self.engine,
            self.config,
            journal=self.journal,
            imageio_opener=self.plane.opener,
            reader_factory=self.plane.reader_factory,
            gc_on_start=False,
        )

    async def read_all(self, owner: Owner, key: str, *, chunk: int = 256 * 1024) -> bytes:
        h = await self.manager.open(owner, key)
        try:
            out = bytearray()
            while True:
                data = await self.manager.read(h, len(out), chunk)
                if not data:
                    return bytes(out)
                out += data
        finally:
            await self.manager.release(h)


@pytest.fixture
async def rig(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> Any:
    r = Rig(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(r.manager.run)
        yield r
        nursery.cancel_scope.cancel()


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def vm_owner(engine: FakeEngine, name: str) -> Owner:
    vm = next(v for v in engine.vms.values() if v.name == name)
    return Owner(kind="vm", id=vm.id, name=vm.name)


async def test_listing_order_sizes_and_no_session(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    vm = rig.engine.add_vm("web01", disks=[("root", 3 * MiB), ("data", 1 * MiB)])
    owner = Owner("vm", vm.id, vm.name)
    entries = await rig.manager.list_set(owner)
    names = [e.name for e in entries]
    ids = rig.engine.disk_ids(vm.id)
    assert names == [
        "vm.ovf",
        "vm.xml",
        "manifest.json",
        f"root--{ids[0]}.raw",
        f"data--{ids[1]}.raw",
    ]
    assert [e.size for e in entries[3:]] == [3 * MiB, 1 * MiB]
    assert all(e.size % (64 * 1024) == 0 and e.size >= 64 * 1024 for e in entries[:3])
    assert all(e.blocks >= 1 for e in entries)
    assert entries[3].blocks == (3 * MiB // 2) // 512  # from actual_size
    assert rig.engine.user_snapshots(vm.id) == []
    assert "create_snapshot" not in rig.engine.calls
    files = await rig.manager.list_disk_files(owner)
    assert [f.name for f in files] == ["root.raw", "data.raw"]
    assert [f.key for f in files] == [DiskKey(i).encode() for i in ids]


async def test_full_session_reads_snapshot_data_and_cleans_up(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    eng = rig.engine
    vm = eng.add_vm("web01", disks=[("a", 2 * MiB), ("b", 3 * MiB), ("c", 1 * MiB)])
    owner = Owner("vm", vm.id, vm.name)
    listed = await rig.manager.list_set(owner)
    ids = eng.disk_ids(vm.id)
    expected = {d: sha(bytes(eng.volumes[eng.active[d]])) for d in ids}

    # Open all disks concurrently; the guest writes right after the first open.
    results: dict[str, str] = {}

    async def one(disk_id: str) -> None:
        results[disk_id] = sha(await rig.read_all(owner, DiskKey(disk_id).encode()))

    h = await rig.manager.open(owner, ConfigKey("vm.ovf").encode())
    for d in ids:
        eng.guest_write(d, 0, b"\xee" * 4096)
    async with trio.open_nursery() as n:
        for d in ids:
            n.start_soon(one, d)
    assert results == expected
    snaps = eng.user_snapshots(vm.id)
    assert len(snaps) == 1
    desc = snaps[0].description
    assert desc.startswith(f"{ARTIFACT_MARKER} ")
    assert f"host={socket.gethostname()} " in desc and " pid=" in desc
    assert len(eng.open_transfers()) == 3
    # Stat during the session equals the listing before it.
    assert await rig.manager.list_set(owner) == listed
    st = rig.manager.status()
    assert st["sessions"][0]["snapshot_id"] == snaps[0].id
    assert st["sessions"][0]["bytes_read"] == 6 * MiB
    assert rig.journal.entries()[0].snapshot_id == snaps[0].id

    await rig.manager.release(h)
    await trio.sleep(rig.config.grace_period - 1)
    assert len(eng.user_snapshots(vm.id)) == 1  # still in its grace period
    await trio.sleep(30)
    assert eng.user_snapshots(vm.id) == []
    assert eng.open_transfers() == []
    assert eng.calls.count("finalize_transfer") == 3
    assert rig.journal.entries() == []
    assert rig.manager.status()["sessions"] == []
    assert all(c.closed for c in rig.plane.clients)
    # The guest's write survived the merge.
    assert all(bytes(eng.volumes[eng.active[d]])[:4096] == b"\xee" * 4096 for d in ids)


async def test_reopen_within_grace_joins_the_session(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    vm = rig.engine.add_vm("v1")
    owner = Owner("vm", vm.id, vm.name)
    await rig.manager.list_set(owner)
    key = DiskKey(rig.engine.disk_ids(vm.id)[0]).encode()
    first = await rig.read_all(owner, key)
    await trio.sleep(rig.config.grace_period / 2)
    second = await rig.read_all(owner, key)
    assert first == second
    assert rig.engine.calls.count("create_snapshot") == 1
    assert rig.engine.calls.count("start_transfer") == 1
    await trio.sleep(rig.config.grace_period + 30)
    assert rig.engine.user_snapshots(vm.id) == []
    third = await rig.read_all(owner, key)
    assert third == first
    assert rig.engine.calls.count("create_snapshot") == 2


async def test_config_files_are_padded_to_the_announced_size(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    vm = rig.engine.add_vm("v1", disks=[("root", 1 * MiB), ("root", 1 * MiB)])
    owner = Owner("vm", vm.id, vm.name)
    listed = {e.name: e for e in await rig.manager.list_set(owner)}
    manifest = await rig.read_all(owner, ConfigKey("manifest.json").encode())
    ovf = await rig.read_all(owner, ConfigKey("vm.ovf").encode())
    xml = await rig.read_all(owner, ConfigKey("vm.xml").encode())
    assert len(manifest) == listed["manifest.json"].size
    assert len(ovf) == listed["vm.ovf"].size
    assert len(xml) == listed["vm.xml"].size
    assert ovf.startswith(b"<?xml") and ovf.rstrip().endswith(b"</ovf:Envelope>")
    assert xml.rstrip().endswith(b"</vm>")
    doc = json.loads(manifest)
    snap = rig.engine.user_snapshots(vm.id)[0]
    assert doc["snapshot_id"] == snap.id
    assert doc["kind"] == "vm" and doc["set_type"] == "full"
    assert doc["vm"]["name"] == "v1" and doc["vm"]["cluster"]["name"] == "Default"
    ids = rig.engine.disk_ids(vm.id)
    assert [d["id"] for d in doc["disks"]] == ids
    assert [d["file"] for d in doc["disks"]] == [e for e in listed if e.endswith(".raw")]
    assert doc["disks"][0]["storage_domain"]["name"] == "mydata"
    assert doc["disks"][0]["image_id"] == rig.engine.snapshot_volumes[snap.id][ids[0]]
    assert doc["nics"][0]["mac"] == "56:6f:00:00:00:01"
    # Two disks with the same alias get distinct names in disks/.
    files = await rig.manager.list_disk_files(owner)
    assert sorted(f.name for f in files) == sorted(f"root--{i}.raw" for i in ids)


@pytest.mark.allow_log("rhvfs.sessions.full", "WARNING", match="is suspended")
async def test_suspended_vm_is_refused_clearly(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    vm = rig.engine.add_vm("web01", status="suspended")
    owner = Owner("vm", vm.id, vm.name)
    await rig.manager.list_set(owner)
    for _ in range(2):
        with pytest.raises(VmStateError, match="VM web01 is suspended; resume or power it off"):
            await rig.manager.open(owner, DiskKey(rig.engine.disk_ids(vm.id)[0]).encode())
    assert rig.engine.user_snapshots(vm.id) == []
    assert "create_snapshot" not in rig.engine.calls
    assert rig.journal.entries() == []
    assert "suspended" in rig.manager.status()["errors"][-1]["message"]


@pytest.mark.allow_log("rhvfs.sessions.full", "WARNING", match="is image_locked")
@pytest.mark.allow_log("rhvfs.retry", "WARNING", match="timed out")
async def test_locked_vm_is_waited_for(rig: Rig, autojump_clock: trio.testing.MockClock) -> None:
    vm = rig.engine.add_vm("v1", status="image_locked")
    owner = Owner("vm", vm.id, vm.name)
    await rig.manager.list_set(owner)
    rig.engine.status_sequence[vm.id] = ["image_locked", "image_locked", "up"]
    data = await rig.read_all(owner, DiskKey(rig.engine.disk_ids(vm.id)[0]).encode())
    assert len(data) == 2 * MiB
    rig.engine.status_sequence[vm.id] = ["image_locked"] * 1000
    await trio.sleep(100)  # first session ends
    with pytest.raises(VmStateError, match="image_locked"):
        await rig.manager.open(owner, ConfigKey("vm.ovf").encode())


@pytest.mark.allow_log("rhvfs.retry", "WARNING", match="timed out|is locked")
@pytest.mark.allow_log("rhvfs.sessions.full._session", "WARNING", match="timed out|is locked")
async def test_locked_template_is_waited_for_then_refused(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    import dataclasses

    tpl = rig.engine.add_template("t1")
    owner = Owner("template", tpl.id, tpl.name)
    await rig.manager.list_set(owner)
    rig.engine.templates[tpl.id] = dataclasses.replace(tpl, status="locked")

    async def unlock_later() -> None:
        await trio.sleep(5)
        rig.engine.templates[tpl.id] = tpl

    async with trio.open_nursery() as nursery:
        nursery.start_soon(unlock_later)
        data = await rig.read_all(owner, ConfigKey("vm.ovf").encode())
    assert data.startswith(b"<?xml")
    await trio.sleep(100)  # the first session ends
    rig.engine.templates[tpl.id] = dataclasses.replace(tpl, status="locked")
    start = trio.current_time()
    with pytest.raises(VmStateError, match="template t1 is locked; try again later"):
        await rig.manager.open(owner, ConfigKey("vm.ovf").encode())
    assert trio.current_time() - start == pytest.approx(30.0)


@pytest.mark.allow_log("rhvfs.sessions.full", "WARNING", match="storage domain is full")
async def test_failed_snapshot_breaks_the_session_until_the_grace_period_ends(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    vm = rig.engine.add_vm("v1")
    owner = Owner("vm", vm.id, vm.name)
    await rig.manager.list_set(owner)
    rig.engine.create_snapshot_errors = [EngineError("storage domain is full")]
    key = DiskKey(rig.engine.disk_ids(vm.id)[0]).encode()
    with pytest.raises(SessionBroken, match="storage domain is full"):
        await rig.manager.open(owner, key)
    with pytest.raises(SessionBroken):
        await rig.manager.open(owner, key)
    assert rig.engine.calls.count("create_snapshot") == 1
    assert rig.journal.entries() == []
    await trio.sleep(rig.config.grace_period + 1)
    assert len(await rig.read_all(owner, key)) == 2 * MiB


async def test_transient_snapshot_errors_are_retried(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    from rhvfs.errors import EngineUnavailable

    vm = rig.engine.add_vm("v1")
    owner = Owner("vm", vm.id, vm.name)
    rig.engine.create_snapshot_errors = [EngineUnavailable("502"), EngineUnavailable("503")]
    data = await rig.read_all(owner, DiskKey(rig.engine.disk_ids(vm.id)[0]).encode())
    assert len(data) == 2 * MiB
    assert len(rig.engine.user_snapshots(vm.id)) == 1


async def test_expired_ticket_is_recreated_transparently(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    eng = rig.engine
    vm = eng.add_vm("v1", disks=[("a", 4 * MiB)])
    owner = Owner("vm", vm.id, vm.name)
    disk_id = eng.disk_ids(vm.id)[0]
    expected = bytes(eng.volumes[eng.active[disk_id]])
    h = await rig.manager.open(owner, DiskKey(disk_id).encode())
    first = await rig.manager.read(h, 0, MiB)
    (tid,) = [t.id for t in eng.open_transfers()]
    eng.expire(tid)
    rest = await rig.manager.read(h, MiB, 3 * MiB)
    assert first + rest == expected
    assert len(eng.open_transfers()) == 1 and eng.open_transfers()[0].id != tid
    assert rig.manager.status()["sessions"][0]["disks"][0]["recreated"] == 1
    assert [t.id for t in eng.open_transfers()] == list(rig.journal.entries()[0].transfer_ids)
    await rig.manager.release(h)
    await trio.sleep(60)
    assert eng.open_transfers() == [] and eng.user_snapshots(vm.id) == []


async def test_keepalive_keeps_a_paused_reader_transfer_alive(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    eng = rig.engine
    vm = eng.add_vm("v1", disks=[("a", 1 * MiB)])
    owner = Owner("vm", vm.id, vm.name)
    disk_id = eng.disk_ids(vm.id)[0]
    expected = bytes(eng.volumes[eng.active[disk_id]])
    h = await rig.manager.open(owner, DiskKey(disk_id).encode())
    a = await rig.manager.read(h, 0, 4096)
    await trio.sleep(rig.config.inactivity_timeout * 5)  # the backup tool pauses
    b = await rig.manager.read(h, 4096, MiB)
    assert a + b == expected
    assert rig.engine.calls.count("start_transfer") == 1  # never expired
    keepalives = rig.manager.status()["sessions"][0]["disks"][0]["keepalives"]
    assert keepalives >= 10
    assert all(r == (0, 4096) for r in rig.plane.clients[0].reads[1:-1])
    await rig.manager.release(h)


async def test_unmount_ends_every_session(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    r = Rig(tmp_path)
    vm1 = r.engine.add_vm("v1")
    vm2 = r.engine.add_vm("v2", seed=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(r.manager.run)
        handles = []
        for vm in (vm1, vm2):
            owner = Owner("vm", vm.id, vm.name)
            h = await r.manager.open(owner, DiskKey(r.engine.disk_ids(vm.id)[0]).encode())
            assert len(await r.manager.read(h, 0, 65536)) == 65536
            handles.append(h)
        assert len(r.engine.open_transfers()) == 2
        nursery.cancel_scope.cancel()  # unmount with open handles
    assert r.engine.open_transfers() == []
    assert r.engine.user_snapshots(vm1.id) == [] and r.engine.user_snapshots(vm2.id) == []
    assert r.journal.entries() == []


async def test_snapshot_removal_retries_while_locked(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    vm = rig.engine.add_vm("v1")
    owner = Owner("vm", vm.id, vm.name)
    await rig.read_all(owner, ConfigKey("vm.ovf").encode())
    rig.engine.remove_snapshot_conflicts = 3
    await trio.sleep(rig.config.grace_period + 60)
    assert rig.engine.user_snapshots(vm.id) == []
    assert rig.engine.calls.count("remove_snapshot") == 4
    assert rig.journal.entries() == []


async def test_unknown_key_and_eof(rig: Rig, autojump_clock: trio.testing.MockClock) -> None:
    vm = rig.engine.add_vm("v1", disks=[("a", 65536)])
    owner = Owner("vm", vm.id, vm.name)
    with pytest.raises(NotFound):
        await rig.manager.open(owner, "disk:nope")
    h = await rig.manager.open(owner, DiskKey(rig.engine.disk_ids(vm.id)[0]).encode())
    assert len(await rig.manager.read(h, 65536 - 100, 4096)) == 100
    assert await rig.manager.read(h, 65536, 4096) == b""
    await rig.manager.release(h)


async def test_mtime_stable_for_down_vm_and_renewed_for_running(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    r = Rig(tmp_path)
    down = r.engine.add_vm("down1", status="down")
    up = r.engine.add_vm("up1", status="up", seed=3)
    od, ou = Owner("vm", down.id, down.name), Owner("vm", up.id, up.name)
    async with trio.open_nursery() as nursery:
        await nursery.start(r.manager.run)
        d1 = await r.manager.list_set(od)
        u1 = await r.manager.list_set(ou)
        await r.read_all(od, d1[3].key)
        await r.read_all(ou, u1[3].key)
        assert await r.manager.list_set(od) == d1
        assert await r.manager.list_set(ou) == u1  # frozen during the session
        await trio.sleep(r.config.grace_period + 60)
        d2 = await r.manager.list_set(od)
        u2 = await r.manager.list_set(ou)
        # The next session of the running VM keeps what the last listing announced.
        h = await r.manager.open(ou, u1[3].key)
        assert await r.manager.list_set(ou) == u2
        await r.manager.release(h)
        nursery.cancel_scope.cancel()
    assert d2 == d1  # an unchanged down VM looks unchanged
    assert [e.size for e in u2] == [e.size for e in u1]
    assert u2[0].mtime_ns != u1[0].mtime_ns  # a running VM's data moved on
    # A second mount announces the same for the down VM.
    r2 = BackupManager(r.engine, r.config, journal=r.journal, gc_on_start=False)
    assert await r2.list_set(od) == d1
    # A changed down VM gets a new mtime.
    r.engine.attachments[down.id][0] = r.engine.attachments[down.id][0].__class__(
        disk=r.engine.attachments[down.id][0].disk.__class__(
            **{**r.engine.attachments[down.id][0].disk.__dict__, "actual_size": 12345}
        )
    )
    d3 = await r2.list_set(od)
    assert d3[0].mtime_ns != d1[0].mtime_ns


async def test_template_is_read_without_a_snapshot(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    tpl = rig.engine.add_template("tpl1")
    owner = Owner("template", tpl.id, tpl.name)
    entries = await rig.manager.list_set(owner)
    assert [e.name for e in entries][:3] == ["vm.ovf", "vm.xml", "manifest.json"]
    disk_id = rig.engine.disk_ids(tpl.id)[0]
    data = await rig.read_all(owner, DiskKey(disk_id).encode())
    assert data == bytes(rig.engine.volumes[rig.engine.active[disk_id]])
    assert "create_snapshot" not in rig.engine.calls
    doc = json.loads(await rig.read_all(owner, ConfigKey("manifest.json").encode()))
    assert doc["kind"] == "template" and doc["snapshot_id"] is None
    await trio.sleep(rig.config.grace_period + 30)
    assert rig.engine.open_transfers() == [] and rig.journal.entries() == []


async def test_concurrent_first_opens_share_one_snapshot(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    vm = rig.engine.add_vm("v1", disks=[("a", MiB), ("b", MiB), ("c", MiB)])
    owner = Owner("vm", vm.id, vm.name)
    keys = [ConfigKey("vm.ovf").encode(), ConfigKey("manifest.json").encode()] + [
        DiskKey(d).encode() for d in rig.engine.disk_ids(vm.id)
    ]
    handles: list[int] = []

    async def opener(key: str) -> None:
        handles.append(await rig.manager.open(owner, key))

    async with trio.open_nursery() as nursery:
        for key in keys:
            nursery.start_soon(opener, key)
    assert len(handles) == len(set(handles)) == 5
    assert rig.engine.calls.count("create_snapshot") == 1
    assert rig.manager.status()["sessions"][0]["handles"] == 5
    for h in handles:
        await rig.manager.release(h)
    await trio.sleep(rig.config.grace_period + 30)
    assert rig.engine.user_snapshots(vm.id) == []


async def test_listings_size_and_time_the_set_without_its_ovf(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    """Issue 12: listing @rhv/ and disks/ reads the engine's listing of the VM, never its OVF
    or XML; the sizes announced from the bounds hold when the configuration is read."""
    from rhvfs.backupset import announced_size, config_size_bounds
    from rhvfs.engine.types import Snapshot

    vm = rig.engine.add_vm("v1", disks=[("a", 1 * MiB), ("b", 1 * MiB)], status="down")
    owner = Owner("vm", vm.id, vm.name)
    rig.engine.stop_times[vm.id] = "2026-01-01T10:00:00.000+00:00"
    # An OVF a few KiB long (snapshots make it grow): still inside its bound.
    rig.engine.snapshots[vm.id] += [
        Snapshot(id=f"s{i:05d}", description="y" * 100, type="regular", status="ok")
        for i in range(40)
    ]
    rig.engine.calls.clear()
    listed = {e.name: e for e in await rig.manager.list_set(owner)}
    await rig.manager.list_disk_files(owner)
    assert not [c for c in rig.engine.calls if c.endswith(("_ovf", "_xml"))], rig.engine.calls
    assert "create_snapshot" not in rig.engine.calls
    data = await rig.manager._owner_data.summary(owner)
    bounds = config_size_bounds(data)
    assert listed["vm.ovf"].size == announced_size(bounds["vm.ovf"])
    assert listed["vm.xml"].size == announced_size(bounds["vm.xml"])
    assert listed["vm.ovf"].mtime_ns // 1_000_000_000 == 1767261600  # the stop time

    ovf = await rig.read_all(owner, ConfigKey("vm.ovf").encode())
    assert len(ovf) == listed["vm.ovf"].size
    assert ovf.rstrip() == (await rig.engine.vm_ovf(vm.id)).encode()
    assert 4000 < len(ovf.rstrip()) < listed["vm.ovf"].size
    assert {e.name: e for e in await rig.manager.list_set(owner)} == listed


@pytest.mark.allow_log("rhvfs.sessions.full", "WARNING", match="refusing to truncate")
async def test_config_that_outgrew_its_announced_size_fails_loudly(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    from rhvfs.engine.types import Snapshot
    from rhvfs.errors import DataIntegrityError

    vm = rig.engine.add_vm("v1")
    owner = Owner("vm", vm.id, vm.name)
    listed = {e.name: e for e in await rig.manager.list_set(owner)}
    # Between the listing and the backup, the OVF grows by far more than the headroom.
    rig.engine.snapshots[vm.id] += [
        Snapshot(id=f"s{i:05d}", description="x" * 200, type="regular", status="ok")
        for i in range(500)
    ]
    h = await rig.manager.open(owner, ConfigKey("vm.ovf").encode())
    with pytest.raises(DataIntegrityError, match="refusing to truncate"):
        await rig.manager.read(h, 0, 4096)
    # The rest of the set is still served, with the sizes that were announced.
    assert (
        len(await rig.read_all(owner, ConfigKey("manifest.json").encode()))
        == listed["manifest.json"].size
    )
    assert (
        len(await rig.read_all(owner, DiskKey(rig.engine.disk_ids(vm.id)[0]).encode())) == 2 * MiB
    )
    assert {e.name: e for e in await rig.manager.list_set(owner)} == listed
    assert any("vm.ovf" in e["message"] for e in rig.manager.status()["errors"])
    await rig.manager.release(h)


async def test_unmount_while_the_snapshot_is_being_created_removes_it(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    r = Rig(tmp_path)
    vm = r.engine.add_vm("v1")
    owner = Owner("vm", vm.id, vm.name)
    r.engine.slow_snapshot_wait_s = 100.0
    async with trio.open_nursery() as nursery:
        await nursery.start(r.manager.run)
        await r.manager.list_set(owner)

        async def opener() -> None:
            await r.manager.open(owner, ConfigKey("vm.ovf").encode())

        nursery.start_soon(opener)
        await trio.sleep(5)  # the snapshot exists on the engine; its id is not known yet
        assert len(r.engine.user_snapshots(vm.id)) == 1
        assert r.journal.entries()[0].snapshot_id is None
        nursery.cancel_scope.cancel()
    assert r.engine.user_snapshots(vm.id) == []
    assert r.journal.entries() == []


async def test_memory_state_option_applies_to_running_vms_only(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    r = Rig(tmp_path, memory_state=True)
    up = r.engine.add_vm("up1")
    down = r.engine.add_vm("down1", status="down", seed=2)
    seen: dict[str, bool] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(r.manager.run)
        for vm in (up, down):
            owner = Owner("vm", vm.id, vm.name)
            h = await r.manager.open(owner, ConfigKey("vm.ovf").encode())
            (snap,) = r.engine.user_snapshots(vm.id)
            seen[vm.name] = snap.persist_memorystate
            await r.manager.release(h)
        nursery.cancel_scope.cancel()
    assert seen == {"up1": True, "down1": False}
    assert r.engine.user_snapshots(up.id) == [] and r.engine.user_snapshots(down.id) == []


async def test_shareable_and_lun_disks_are_not_part_of_the_set(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    import dataclasses

    vm = rig.engine.add_vm("v1", disks=[("os", MiB), ("shared", MiB), ("lun", MiB)])
    atts = rig.engine.attachments[vm.id]
    atts[1] = dataclasses.replace(atts[1], disk=dataclasses.replace(atts[1].disk, shareable=True))
    rig.engine.lun_disks.add(atts[2].disk.id)
    owner = Owner("vm", vm.id, vm.name)
    listed = await rig.manager.list_set(owner)
    assert [e.disk_id for e in listed if e.disk_id] == [atts[0].disk.id]
    doc = json.loads(await rig.read_all(owner, ConfigKey("manifest.json").encode()))
    assert [d["alias"] for d in doc["disks"]] == ["os"]
    assert await rig.manager.list_set(owner) == listed


async def test_releasing_a_disk_frees_its_buffers_but_keeps_the_transfer(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    vm = rig.engine.add_vm("v1", disks=[("a", MiB), ("b", MiB)])
    owner = Owner("vm", vm.id, vm.name)
    ka, kb = (DiskKey(d).encode() for d in rig.engine.disk_ids(vm.id))
    h1 = await rig.manager.open(owner, ka)
    h2 = await rig.manager.open(owner, ka)
    hb = await rig.manager.open(owner, kb)
    first = await rig.manager.read(h1, 0, MiB)
    await rig.manager.read(hb, 0, 4096)
    await rig.manager.release(h1)
    assert not rig.plane.readers[0].closed  # h2 still reads disk a
    assert rig.plane.readers[0].forgotten == [h1]
    await rig.manager.release(h2)
    assert rig.plane.readers[0].closed  # nobody reads disk a: its buffers are gone
    h3 = await rig.manager.open(owner, ka)
    assert await rig.manager.read(h3, 0, MiB) == first
    assert len(rig.plane.readers) == 3 and not rig.plane.readers[2].closed
    assert rig.engine.calls.count("start_transfer") == 2  # one per disk, reused
    (da, _) = rig.manager.status()["sessions"][0]["disks"]
    assert da["bytes_fetched"] == 2 * MiB  # both readers of disk a counted
    for h in (h3, hb):
        await rig.manager.release(h)


async def test_prefetch_memory_is_shared_by_the_disks_being_read(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    assert rig.config.prefetch_memory == 64 * MiB
    vm = rig.engine.add_vm("v1", disks=[("a", MiB), ("b", MiB), ("c", MiB)])
    owner = Owner("vm", vm.id, vm.name)
    ka, kb, kc = (DiskKey(d).encode() for d in rig.engine.disk_ids(vm.id))
    # One after the other (tar): each disk gets the whole budget.
    assert len(await rig.read_all(owner, ka)) == MiB
    assert len(await rig.read_all(owner, kb)) == MiB
    assert [r.memory_budget for r in rig.plane.readers] == [64 * MiB, 64 * MiB]
    # Two at once: they share it.
    ha, hb = await rig.manager.open(owner, ka), await rig.manager.open(owner, kb)
    await rig.manager.read(ha, 0, 4096)
    await rig.manager.read(hb, 0, 4096)
    assert [r.memory_budget for r in rig.plane.readers[2:]] == [32 * MiB, 32 * MiB]
    # A third while two hold it all: the minimum that still works.
    hc = await rig.manager.open(owner, kc)
    await rig.manager.read(hc, 0, 4096)
    assert rig.plane.readers[4].memory_budget == 16 * MiB
    for h in (ha, hb, hc):
        await rig.manager.release(h)


@pytest.mark.allow_log("rhvfs.sessions.full", "ERROR", match="crashed|bug in a prefetch worker")
async def test_a_crashing_session_ends_alone_and_cleans_up(
    rig: Rig, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    vm = rig.engine.add_vm("v1")
    other = rig.engine.add_vm("v2", seed=2)
    owner, owner2 = Owner("vm", vm.id, vm.name), Owner("vm", other.id, other.name)
    key = DiskKey(rig.engine.disk_ids(vm.id)[0]).encode()
    h2 = await rig.manager.open(owner2, ConfigKey("vm.ovf").encode())
    rig.plane.crash_next_reader = True
    h = await rig.manager.open(owner, key)
    data = await rig.manager.read(h, 0, MiB)
    await trio.sleep(5)  # the bug strikes
    assert rig.engine.user_snapshots(vm.id) == [] and rig.engine.open_transfers() == []
    assert "crashed" in caplog.text
    messages = [e["message"] for e in rig.manager.status()["errors"]]
    assert any("bug in a prefetch worker" in m for m in messages)
    # one line naming the failure, not the exception's repr (RuntimeError('...'))
    assert (
        "session broken: backup of v1 failed: internal error: RuntimeError: bug in a prefetch worker"
        in messages
    )
    assert not any("Error('" in m for m in messages)
    # The manager and the other session live on; a new open starts a fresh session.
    assert len(await rig.manager.read(h2, 0, 100)) == 100
    assert (await rig.read_all(owner, key))[:MiB] == data
    await rig.manager.release(h)
    await rig.manager.release(h2)


@pytest.mark.allow_log("rhvfs.sessions.full", "WARNING", match="VM is locked")
async def test_a_locked_vm_is_waited_for_a_little_then_refused(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    from rhvfs.errors import Conflict

    vm = rig.engine.add_vm("v1")
    owner = Owner("vm", vm.id, vm.name)
    key = ConfigKey("vm.ovf").encode()
    rig.engine.create_snapshot_errors = [Conflict("VM is locked"), Conflict("VM is locked")]
    h = await rig.manager.open(owner, key)
    assert len(rig.engine.user_snapshots(vm.id)) == 1
    await rig.manager.release(h)
    await trio.sleep(rig.config.grace_period + 30)
    rig.engine.create_snapshot_errors = [Conflict("VM is locked")] * 1000
    start = trio.current_time()
    with pytest.raises(SessionBroken, match="VM is locked"):
        await rig.manager.open(owner, key)
    assert 15 <= trio.current_time() - start <= rig.config.system_timeout + 5
    assert rig.engine.user_snapshots(vm.id) == [] and rig.journal.entries() == []


async def test_a_down_vm_that_ran_meanwhile_gets_a_new_mtime(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    vm = rig.engine.add_vm("v1", status="down")
    owner = Owner("vm", vm.id, vm.name)
    rig.engine.stop_times[vm.id] = "2026-01-01T10:00:00.000+00:00"
    first = await rig.manager.list_set(owner)
    assert await rig.manager.list_set(owner) == first
    assert first[0].mtime_ns // 1_000_000_000 == 1767261600  # the stop time, to the second
    # It ran and stopped again: disks, ids and sizes all look the same.
    rig.engine.stop_times[vm.id] = "2026-01-02T10:00:00.000+00:00"
    second = await rig.manager.list_set(owner)
    assert [e.size for e in second] == [e.size for e in first]
    assert second[0].mtime_ns != first[0].mtime_ns
    assert second[0].mtime_ns // 1_000_000_000 == 1767261600 + 86400


def _set_disk(engine: FakeEngine, vm_id: str, **changes: Any) -> None:
    att = engine.attachments[vm_id][0]
    engine.attachments[vm_id][0] = dataclasses.replace(
        att, disk=dataclasses.replace(att.disk, **changes)
    )


async def test_down_vm_configuration_is_newer_and_an_undated_change_is_dated_when_seen(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    """Configuration newer than images in the same second (borg 1.2 caches the images);
    a disk in flux keeps the times; a change the stop time does not show gets a later
    second, not in the future (Bacula compares whole seconds with its last job's start)."""
    vm = rig.engine.add_vm("v1", status="down")
    owner = Owner("vm", vm.id, vm.name)
    rig.engine.stop_times[vm.id] = "2026-01-01T10:00:00.000+00:00"
    first = await rig.manager.list_set(owner)
    [image] = [e for e in first if e.disk_id]
    configs = [e for e in first if not e.disk_id]
    assert len(configs) == 3
    assert all(image.mtime_ns < c.mtime_ns for c in configs)
    assert {c.mtime_ns // 10**9 for c in [image, *configs]} == {1767261600}
    _set_disk(rig.engine, vm.id, status="locked", image_id="another-volume", actual_size=1)
    assert await rig.manager.list_set(owner) == first  # in flux: nothing re-announced
    _set_disk(rig.engine, vm.id, status="ok", image_id="v-2", actual_size=2)
    seen_s = time.time_ns() // 10**9
    changed = await rig.manager.list_set(owner)
    [image2] = [e for e in changed if e.disk_id]
    assert 1767261600 < image2.mtime_ns // 10**9 <= time.time_ns() // 10**9
    assert image2.mtime_ns // 10**9 >= seen_s - 1
    assert all(image2.mtime_ns < c.mtime_ns for c in changed if not c.disk_id)
    assert await rig.manager.list_set(owner) == changed  # and stays


async def test_a_date_a_mount_gave_is_kept_for_the_next_mount(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """An undated change keeps the date it got in the next mount; a change made while no
    mount ran gets a later whole second than the last mount showed (Bacula sees it)."""
    r = Rig(tmp_path)
    vm = r.engine.add_vm("d1", status="down")
    owner = Owner("vm", vm.id, vm.name)
    r.engine.stop_times[vm.id] = "2026-01-01T10:00:00.000+00:00"
    async with trio.open_nursery() as nursery:
        await nursery.start(r.manager.run)
        await r.manager.list_set(owner)
        _set_disk(r.engine, vm.id, actual_size=777)
        changed = await r.manager.list_set(owner)
        nursery.cancel_scope.cancel()  # the manager writes its dates when it stops
    [image] = [e for e in changed if e.disk_id]
    assert image.mtime_ns // 10**9 > 1767261600
    again = BackupManager(r.engine, r.config, journal=r.journal, gc_on_start=False)
    assert [e.mtime_ns for e in await again.list_set(owner)] == [e.mtime_ns for e in changed]
    _set_disk(r.engine, vm.id, actual_size=888)  # while no mount runs
    later = BackupManager(r.engine, r.config, journal=r.journal, gc_on_start=False)
    [image2] = [e for e in await later.list_set(owner) if e.disk_id]
    assert image2.mtime_ns // 10**9 > image.mtime_ns // 10**9


async def test_a_listing_answered_while_a_read_lived_keeps_the_date_of_the_set(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    """A listing that began before a read of the down VM and whose engine answer was taken
    while the read's snapshot existed (the disk unlocked, the snapshot's volume active)
    returns after the read ended: it keeps the set's date, and so does the next listing
    (restic and rsync must find the unchanged VM unchanged right after a backup)."""
    vm = rig.engine.add_vm("v1", status="down")
    owner = Owner("vm", vm.id, vm.name)
    first = await rig.manager.list_set(owner)
    [image] = [e for e in first if e.disk_id]
    [volume] = [a.disk.image_id for a in (await rig.engine.listed_vm(vm.id)).disk_attachments]
    reading, answered, read_over = trio.Event(), trio.Event(), trio.Event()
    listed_vm = rig.engine.listed_vm
    answers = []

    async def answer_during_the_read(vm_id: str) -> Any:
        await reading.wait()
        answers.append(await listed_vm(vm_id))
        answered.set()
        await read_over.wait()
        return answers[-1]

    listings = []

    async def list_once() -> None:
        listings.append(await rig.manager.list_set(owner))

    rig.engine.listed_vm = answer_during_the_read  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(list_once)
        await trio.sleep(1)
        handle = await rig.manager.open(owner, image.key)
        reading.set()
        await answered.wait()
        await rig.manager.release(handle)
        await trio.sleep(rig.config.grace_period + 60)
        assert rig.manager.status()["sessions"] == [] and rig.engine.user_snapshots(vm.id) == []
        read_over.set()
    rig.engine.listed_vm = listed_vm  # type: ignore[method-assign]
    [disk] = [a.disk for a in answers[0].disk_attachments]
    assert (disk.status or "ok") == "ok" and disk.image_id != volume  # the read's snapshot
    assert listings == [first]
    assert await rig.manager.list_set(owner) == first


@pytest.mark.allow_log("rhvfs.retry", "WARNING", match="giving up")
@pytest.mark.allow_log(
    "rhvfs.sessions.full", "WARNING", match="removing snapshot .* failed|retrying in the background"
)
async def test_a_pending_snapshot_removal_keeps_the_date_of_the_set(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    """While a read's snapshot waits for its removal in the background, the down VM's disk
    shows the snapshot's volume: the set keeps its date, before and after the removal."""
    vm = rig.engine.add_vm("v1", status="down")
    owner = Owner("vm", vm.id, vm.name)
    first = await rig.manager.list_set(owner)
    [image] = [e for e in first if e.disk_id]
    before = (await rig.engine.listed_vm(vm.id)).disk_attachments
    rig.engine.fail_on.add("remove_snapshot")  # the engine keeps it locked (409)
    await rig.read_all(owner, image.key)
    await trio.sleep(rig.config.grace_period + rig.config.system_timeout + 5)
    assert rig.manager.status()["sessions"] == [] and rig.manager.status()["pending_cleanups"]
    assert (await rig.engine.listed_vm(vm.id)).disk_attachments != before  # in the middle
    assert await rig.manager.list_set(owner) == first
    rig.engine.fail_on.clear()
    await trio.sleep(700)  # the longest pause between tries is 10 minutes
    assert rig.manager.status()["pending_cleanups"] == []
    assert (await rig.engine.listed_vm(vm.id)).disk_attachments == before
    assert await rig.manager.list_set(owner) == first


@pytest.mark.allow_log("rhvfs.retry", "WARNING", match="giving up")
@pytest.mark.allow_log(
    "rhvfs.sessions.full", "WARNING", match="removing snapshot .* failed|retrying in the background"
)
async def test_a_failed_snapshot_removal_is_retried_while_the_mount_lives(
    rig: Rig, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    vm = rig.engine.add_vm("v1")
    owner = Owner("vm", vm.id, vm.name)
    await rig.read_all(owner, ConfigKey("vm.ovf").encode())
    (snap,) = rig.engine.user_snapshots(vm.id)
    rig.engine.fail_on.add("remove_snapshot")  # the engine keeps it locked (409)
    await trio.sleep(rig.config.grace_period + rig.config.system_timeout + 5)
    assert rig.manager.status()["sessions"] == []  # the session has ended
    (pending,) = rig.manager.status()["pending_cleanups"]
    assert (pending["kind"], pending["id"], pending["vm_id"]) == ("snapshot", snap.id, vm.id)
    assert pending["session_id"] == rig.journal.entries()[0].session_id  # gc's fallback
    assert [s.id for s in rig.engine.user_snapshots(vm.id)] == [snap.id]
    errors = [e["message"] for e in rig.manager.status()["errors"]]
    assert (
        errors[-1]
        == f"cleanup failed; retrying in the background: snapshot {snap.id} of VM {vm.id}"
    )
    await trio.sleep(3600)  # the engine stays busy for an hour: the retries go on
    assert [s.id for s in rig.engine.user_snapshots(vm.id)] == [snap.id]
    (pending,) = rig.manager.status()["pending_cleanups"]
    assert pending["attempts"] >= 5
    tries = rig.engine.calls.count("remove_snapshot")
    rig.engine.fail_on.clear()
    await trio.sleep(700)  # the longest pause between tries is 10 minutes
    assert rig.engine.user_snapshots(vm.id) == []
    assert rig.engine.calls.count("remove_snapshot") == tries + 1
    assert rig.manager.status()["pending_cleanups"] == []
    assert rig.journal.entries() == []
    assert not any("rhvfs gc" in r.getMessage() for r in caplog.records)


@pytest.mark.allow_log("rhvfs.retry", "WARNING", match="giving up")
@pytest.mark.allow_log("rhvfs.sessions.core._cleanup", "WARNING", match="cancelling it")
@pytest.mark.allow_log(
    "rhvfs.sessions.full",
    "WARNING",
    match="ending transfer|removing snapshot .* failed|retrying in the background",
)
async def test_transfers_that_would_not_end_are_retried_before_the_snapshot(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    vm = rig.engine.add_vm("v1", disks=[("a", 1 * MiB), ("b", 1 * MiB)])
    owner = Owner("vm", vm.id, vm.name)
    for d in rig.engine.disk_ids(vm.id):
        await rig.read_all(owner, DiskKey(d).encode())
    (snap,) = rig.engine.user_snapshots(vm.id)
    transfers = {t.id for t in rig.engine.open_transfers()}
    assert len(transfers) == 2
    rig.engine.fail_on |= {"finalize_transfer", "cancel_transfer"}
    await trio.sleep(rig.config.grace_period + rig.config.system_timeout + 5)
    pending = rig.manager.status()["pending_cleanups"]
    assert [(p["kind"], p["id"]) for p in pending] == [
        *(("transfer", t) for t in sorted(transfers, key=[p["id"] for p in pending].index)),
        ("snapshot", snap.id),
    ]
    assert {p["id"] for p in pending[:2]} == transfers
    (entry,) = rig.journal.entries()
    assert set(entry.transfer_ids) == transfers
    rig.engine.fail_on.clear()
    await trio.sleep(300)
    assert rig.engine.open_transfers() == [] and rig.engine.user_snapshots(vm.id) == []
    assert rig.manager.status()["pending_cleanups"] == [] and rig.journal.entries() == []


@pytest.mark.allow_log("rhvfs.retry", "WARNING", match="giving up")
@pytest.mark.allow_log(
    "rhvfs.sessions.full", "WARNING", match="removing snapshot .* failed|retrying in the background"
)
@pytest.mark.allow_log("rhvfs.sessions.core._pending", "WARNING", match="not finished when")
async def test_what_is_still_pending_at_unmount_is_left_to_the_next_mount(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    r = Rig(tmp_path)
    vm = r.engine.add_vm("v1")
    owner = Owner("vm", vm.id, vm.name)
    async with trio.open_nursery() as nursery:
        await nursery.start(r.manager.run)
        await r.read_all(owner, ConfigKey("vm.ovf").encode())
        r.engine.fail_on.add("remove_snapshot")
        await trio.sleep(r.config.grace_period + r.config.system_timeout + 5)
        assert len(r.manager.status()["pending_cleanups"]) == 1
        nursery.cancel_scope.cancel()  # unmount
    (snap,) = r.engine.user_snapshots(vm.id)
    (entry,) = r.journal.entries()
    assert entry.snapshot_id == snap.id and entry.installation == r.journal.installation.id
    # The mount's process ends (here: its journal entry now names a dead process); the
    # next mount of the same state directory takes what it left.
    ghost = procid.ProcessIdentity(entry.process.host, entry.process.boot_id, dead_pid(), 1)
    r.journal.put(dataclasses.replace(entry, process=ghost))
    r.engine.fail_on.clear()
    r2 = BackupManager(r.engine, r.config, journal=Journal(r.journal.path), gc_on_start=False)
    lines = await r2.collect_garbage()
    assert lines == [
        f"removed snapshot {snap.id} of VM v1 (session {entry.session_id} of pid {ghost.pid} (vm v1))"
    ]
    assert r.engine.user_snapshots(vm.id) == [] and r.journal.entries() == []


async def test_artifacts_name_the_installation_and_the_mount(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    vm = rig.engine.add_vm("v1")
    owner = Owner("vm", vm.id, vm.name)
    h = await rig.manager.open(owner, ConfigKey("vm.ovf").encode())
    (snap,) = rig.engine.user_snapshots(vm.id)
    installation = rig.journal.installation
    assert installation.held  # the manager runs: its mount instance is live
    assert f" inst={installation.id} mount={installation.instance} " in snap.description
    (entry,) = rig.journal.entries()
    assert (entry.installation, entry.instance) == (installation.id, installation.instance)
    # Neither this mount's gc nor another process's (same state directory) takes it.
    assert await rig.manager.collect_garbage() == []
    other = BackupManager(
        rig.engine, rig.config, journal=Journal(rig.journal.path), gc_on_start=False
    )
    assert await other.collect_garbage() == []
    assert [s.id for s in rig.engine.user_snapshots(vm.id)] == [snap.id]
    await rig.manager.release(h)


async def test_a_park_cut_short_by_the_close_leaves_the_transfer_to_the_cleanup(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The read ends while its transfer is being parked (finalize in flight): the close
    cancels the park, and the cleanup still ends that transfer; nothing is left over."""
    caplog.set_level(logging.INFO, logger="rhvfs.sessions.core._transfer_channel")
    r = Rig(tmp_path, grace_period=0.0)
    vm = r.engine.add_vm("v1", disks=[("a", 1 * MiB)])
    owner = Owner("vm", vm.id, vm.name)
    key = DiskKey(r.engine.disk_ids(vm.id)[0]).encode()
    async with trio.open_nursery() as nursery:
        await nursery.start(r.manager.run)
        h = await r.manager.open(owner, key, read_id="read-1")
        assert len(await r.manager.read(h, 0, 1 * MiB)) == 1 * MiB
        (transfer,) = r.engine.open_transfers()
        await r.manager.release(h)  # parks at once (grace period 0): finalize takes 0.5 s
        await trio.sleep(0.25)
        assert any("parked: no reader" in rec.getMessage() for rec in caplog.records)
        assert r.engine.transfers[transfer.id].phase == "transferring"  # finalize in flight
        r.manager.end_read(owner, "read-1", reason="read completely")  # closes mid-park
        await trio.sleep(30)
        assert r.engine.calls.count("finalize_transfer") == 1  # the cleanup's; the park's was cut
        assert r.engine.transfers[transfer.id].phase == "finished_success"
        assert r.engine.open_transfers() == [] and r.engine.user_snapshots(vm.id) == []
        assert r.manager.status()["pending_cleanups"] == [] and r.journal.entries() == []
        nursery.cancel_scope.cancel()
