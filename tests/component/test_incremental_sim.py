"""Incremental sets against the simulator: real engine backups, real imageio dirty extents.

The IncrementalManager runs with the real engine client, imageio client and
block reader. Each set is copied into a directory; the top of each chain is
converted with qemu-img and compared (sha256) with the simulator's own hash
of the disk at that point. Checkpoints the test created are removed again.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from rhvfs import ARTIFACT_MARKER
from rhvfs.backupset import SetKind, read_allocation, read_header
from rhvfs.config import load_config
from rhvfs.engine import Engine, open_engine
from rhvfs.retry import RetryPolicy
from rhvfs.sessions.core._journal import Journal
from rhvfs.sessions.core._model import Owner, SetEntry
from rhvfs.sessions.incremental._chainstate import ChainState
from rhvfs.sessions.incremental._manager import IncrementalManager
from tests.support.data import sha256_file, sha256_image
from tests.support.sim import SimProcess, running_sim

MiB = 1024 * 1024
FAST_POLL = RetryPolicy.for_polling(interval_s=0.05, max_interval_s=0.25, timeout_s=120.0)
VM = "myvm0"


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    """A private simulator: these tests write into guest disks, which must not disturb
    the shared one (other tests read the guests' filesystems)."""
    with running_sim(tmp_path_factory.mktemp("incsim")) as s:
        yield s


class Rig:
    def __init__(self, sim: Any, engine: Engine, tmp: Path, **overrides: Any) -> None:
        self.sim = sim
        self.engine = engine
        self.config = load_config(
            section=sim.section,
            config_file=sim.conf_file,
            overrides={"grace_period": 0.3, "listing_ttl": 0.0, **overrides},
        )
        self.chain = ChainState(tmp / "state" / "chain.json")
        self.manager = IncrementalManager(
            engine,
            self.config,
            chain=self.chain,
            journal=Journal(tmp / "state" / "journal.json"),
            cleanup_on_start=False,
        )
        self.out = tmp / "out"
        self.out.mkdir()

    async def read_set(self, owner: Owner, kind: SetKind) -> tuple[list[SetEntry], dict[str, Any]]:
        entries = await self.manager.list_set(owner, kind)
        for e in entries:
            h = await self.manager.open(owner, e.key)
            out = bytearray()
            while data := await self.manager.read(h, len(out), 4 * MiB):
                out += data
            await self.manager.release(h)
            assert len(out) == e.size
            (self.out / e.name).write_bytes(out)
        with trio.fail_after(60):
            while owner.id in self.manager._sessions:  # noqa: ASYNC110 - no event to wait on
                await trio.sleep(0.05)
        name = next(e.name for e in entries if e.name.startswith("manifest--"))
        return entries, json.loads((self.out / name).read_bytes())


@contextlib.asynccontextmanager
async def running_rig(
    sim: Any, tmp_path: Path, vm_name: str, **overrides: Any
) -> AsyncIterator[Rig]:
    """A running rig on ``vm_name``; afterwards every checkpoint the VM gained is removed
    (oldest first: the engine removes only the root)."""
    config = load_config(section=sim.section, config_file=sim.conf_file)
    async with open_engine(config, connections=2, poll=FAST_POLL) as engine:
        vm = await engine.find_vm(vm_name)
        assert vm is not None
        before = {c.id for c in await engine.list_checkpoints(vm.id)}
        r = Rig(sim, engine, tmp_path, **overrides)
        async with trio.open_nursery() as nursery:
            await nursery.start(r.manager.run)
            try:
                yield r
            finally:
                await r.manager.aclose_all()
                for snap_id in await rhvfs_snapshots(engine, vm.id):  # what the chain kept
                    await engine.remove_snapshot(vm.id, snap_id)
                nursery.cancel_scope.cancel()
        for c in await engine.list_checkpoints(vm.id):
            if c.id not in before:
                await engine.remove_checkpoint(vm.id, c.id)


@pytest.fixture
async def rig(sim: Any, tmp_path: Path) -> AsyncIterator[Rig]:
    async with running_rig(sim, tmp_path, VM) as r:
        yield r


@pytest.mark.slow
@pytest.mark.allow_log("rhvfs.sessions.incremental", "WARNING", match="no completed set")
async def test_full_incrementals_and_differential_against_the_sim(rig: Rig) -> None:
    engine, admin = rig.engine, rig.sim.admin
    vm = await engine.find_vm(VM)
    assert vm is not None
    owner = Owner("vm", vm.id, vm.name)
    disk = next(a.disk for a in await engine.disk_attachments(vm.id))
    assert (disk.format, disk.backup) == ("cow", "incremental")

    s0, m0 = await rig.read_set(owner, "incremental")
    assert m0["set_type"] == "full"
    img0 = next(e for e in s0 if e.disk_id == disk.id)
    assert img0.name.endswith(f"--{m0['set_id']}.raw") and img0.size == disk.provisioned_size
    assert sha256_file(rig.out / img0.name) == admin.disk_sha256(disk.id)

    admin.guest_write(vm=VM, disk=disk.id, offset=10 * MiB, size=3 * MiB, pattern=0x5A)
    admin.guest_write(vm=VM, disk=disk.id, offset=2 * MiB, size=1 * MiB, pattern=0)
    s1, m1 = await rig.read_set(owner, "incremental")
    img1 = next(e for e in s1 if e.disk_id == disk.id)
    assert (m1["set_type"], m1["from_checkpoint_id"]) == ("incremental", m0["to_checkpoint_id"])
    assert m1["disks"][0]["backup_mode"] == "incremental"
    assert read_header(rig.out / img1.name).backing_file == img0.name
    alloc = read_allocation(rig.out / img1.name)
    data_bytes = sum(a.length for a in alloc if a.kind == "data")
    assert 3 * MiB <= data_bytes <= 3 * MiB + 2 * 64 * 1024
    # 4 MiB dirty, 3 MiB of it data: the delta is the data plus < 1 MiB of metadata
    assert img1.size < 4 * MiB
    sha1 = admin.disk_sha256(disk.id)
    assert sha256_image(rig.out / img1.name) == sha1

    admin.guest_write(vm=VM, disk=disk.id, offset=100 * MiB, size=64 * 1024, pattern=0x11)
    s2, m2 = await rig.read_set(owner, "incremental")
    img2 = next(e for e in s2 if e.disk_id == disk.id)
    assert m2["parent_set"]["set_id"] == m1["set_id"]
    sha2 = admin.disk_sha256(disk.id)
    assert sha256_image(rig.out / img2.name) == sha2

    admin.guest_write(vm=VM, disk=disk.id, offset=200 * MiB, size=128 * 1024, pattern=0x22)
    s3, m3 = await rig.read_set(owner, "differential")
    img3 = next(e for e in s3 if e.disk_id == disk.id)
    assert (m3["set_type"], m3["parent_set"]["set_id"]) == ("differential", m0["set_id"])
    assert read_header(rig.out / img3.name).backing_file == img0.name
    assert sha256_image(rig.out / img3.name) == admin.disk_sha256(disk.id)
    assert sha256_image(rig.out / img2.name) == sha2  # the older chain still reads as before
    assert [s.set_type for s in rig.chain.sets(vm.id)] == [
        "full",
        "incremental",
        "incremental",
        "differential",
    ]
    assert rig.chain.pending() == []


@pytest.fixture
async def web01(sim: Any, tmp_path: Path) -> AsyncIterator[Rig]:
    """A rig on the mixed VM web01 (raw disk, cow disk without backup, incremental cow disk)."""
    async with running_rig(sim, tmp_path, "web01") as r:
        yield r


async def rhvfs_snapshots(engine: Engine, vm_id: str) -> list[str]:
    return [
        s.id
        for s in await engine.list_snapshots(vm_id)
        if (s.description or "").startswith(ARTIFACT_MARKER)
    ]


def layer_bytes(path: Path) -> int:
    """Guest bytes a delta file stores as data clusters."""
    return sum(a.length for a in read_allocation(path) if a.kind == "data")


@pytest.mark.slow
@pytest.mark.parametrize("status", ["down", "up"])
async def test_snapshot_chain_incrementals_of_a_mixed_vm(web01: Rig, status: str) -> None:
    """web01: a raw preallocated disk, a qcow2 disk without backup, a qcow2 disk with
    incremental backup, the VM down or up. Its incremental sets come from one kept snapshot
    per VM (one point in time for every disk): a full set, then two sets of qcow2 deltas,
    each only the layer written since the previous set, backed by the previous set's
    files; the chain converts to the disk at that set; one rhvfs snapshot stays on the VM
    between sets."""
    rig = web01
    engine = rig.engine
    vm = await engine.find_vm("web01")
    assert vm is not None and vm.status == "up"
    if status == "down":
        await engine.stop_vm(vm.id)
        try:
            await _snapshot_chain_of_web01(rig, status)
        finally:
            await engine.start_vm(vm.id)
    else:
        await _snapshot_chain_of_web01(rig, status)


async def _snapshot_chain_of_web01(rig: Rig, status: str) -> None:
    engine, admin = rig.engine, rig.sim.admin
    vm = await engine.find_vm("web01")
    assert vm is not None and vm.status == status
    owner = Owner("vm", vm.id, vm.name)
    disks = {a.disk.alias: a.disk for a in await engine.disk_attachments(vm.id)}
    logs, os_disk, data = disks["web01_logs"], disks["web01_os"], disks["web01_data"]
    assert (os_disk.format, os_disk.sparse) == ("raw", False)
    assert (logs.format, logs.backup) == ("cow", "incremental")
    assert await rhvfs_snapshots(engine, vm.id) == []

    s0, m0 = await rig.read_set(owner, "incremental")
    assert m0["set_type"] == "full"
    files0 = {e.disk_id: e for e in s0 if e.disk_id}
    for d in (logs, os_disk, data):
        assert files0[d.id].size == d.provisioned_size
        assert sha256_file(rig.out / files0[d.id].name) == admin.disk_sha256(d.id)
    [kept0] = await rhvfs_snapshots(engine, vm.id)
    assert rig.chain.kept_snapshots() == {vm.id: kept0} and m0["snapshot_id"] == kept0

    files, previous = files0, m0
    for writes in (
        {os_disk: (MiB, MiB, 0x31), data: (3 * MiB, 64 * 1024, 0x32), logs: (0, MiB, 0x33)},
        {os_disk: (9 * MiB, 2 * MiB, 0x41), logs: (5 * MiB, 128 * 1024, 0x42)},
    ):
        for d, (offset, size, pattern) in writes.items():
            admin.guest_write(vm="web01", disk=d.id, offset=offset, size=size, pattern=pattern)
        before = files
        entries, m = await rig.read_set(owner, "incremental")
        assert (m["set_type"], m["parent_set"]["set_id"]) == ("incremental", previous["set_id"])
        modes = {d["id"]: (d["backup_mode"], d["file_format"]) for d in m["disks"]}
        assert modes == {d.id: ("incremental", "qcow2") for d in (logs, os_disk, data)}
        files = {e.disk_id: e for e in entries if e.disk_id}
        for d in (logs, os_disk, data):
            delta = rig.out / files[d.id].name
            assert read_header(delta).backing_file == before[d.id].name
            written = writes[d][1] if d in writes else 0
            # only the layer since the previous set: the written clusters, no more
            assert layer_bytes(delta) == written
            assert files[d.id].size < written + MiB
            assert sha256_image(delta) == admin.disk_sha256(d.id)
        [kept] = await rhvfs_snapshots(engine, vm.id)
        assert rig.chain.kept_snapshots() == {vm.id: kept} and m["snapshot_id"] == kept
        assert kept != kept0
        kept0, previous = kept, m
    assert [s.set_type for s in rig.chain.sets(vm.id)] == ["full", "incremental", "incremental"]
    assert rig.chain.pending() == []


@pytest.mark.slow
@pytest.mark.allow_log("rhvfs.sessions.incremental", "WARNING", match="chain of VM .* is broken")
async def test_snapshot_chain_without_its_kept_snapshot_falls_back_to_a_full_set(
    web01: Rig,
) -> None:
    rig = web01
    engine, admin = rig.engine, rig.sim.admin
    vm = await engine.find_vm("web01")
    assert vm is not None
    owner = Owner("vm", vm.id, vm.name)
    os_disk = next(
        a.disk for a in await engine.disk_attachments(vm.id) if a.disk.alias == "web01_os"
    )
    await rig.read_set(owner, "incremental")
    [kept] = await rhvfs_snapshots(engine, vm.id)
    await engine.remove_snapshot(vm.id, kept)  # an admin removed it
    admin.guest_write(vm="web01", disk=os_disk.id, offset=4 * MiB, size=MiB, pattern=0x51)
    entries, m = await rig.read_set(owner, "incremental")
    assert m["set_type"] == "full"
    assert any(f"kept snapshot {kept} is gone" in w for w in m["warnings"])
    image = next(e for e in entries if e.disk_id == os_disk.id)
    assert image.name.endswith(".raw") and image.size == os_disk.provisioned_size
    assert sha256_file(rig.out / image.name) == admin.disk_sha256(os_disk.id)
    [new_kept] = await rhvfs_snapshots(engine, vm.id)
    assert rig.chain.kept_snapshots() == {vm.id: new_kept}


@pytest.mark.slow
async def test_rhv_full_set_via_backup_then_incremental(rig: Rig) -> None:
    """The proposed @rhv/ path (SetRouter(full_sets_via_backup=True)) on the real engine."""
    from rhvfs.sessions import BackupManager
    from rhvfs.sessions._router import SetRouter

    engine, admin = rig.engine, rig.sim.admin
    vm = await engine.find_vm(VM)
    assert vm is not None
    owner = Owner("vm", vm.id, vm.name)
    disk = next(a.disk for a in await engine.disk_attachments(vm.id))
    full = BackupManager(engine, rig.config, journal=rig.manager.journal, gc_on_start=False)
    router = SetRouter(full, rig.manager, config=rig.config, full_sets_via_backup=True)
    assert not await rig.manager.backs_up_with_checkpoints(owner)  # down: snapshot-based @rhv/
    await engine.start_vm(vm.id)
    assert await rig.manager.backs_up_with_checkpoints(owner)
    snaps_before = {s.id for s in await engine.list_snapshots(vm.id)}
    async with trio.open_nursery() as nursery:
        await nursery.start(full.run)
        listing = await router.list_set(owner)
        for e in listing:
            h = await router.open(owner, e.key)
            out = bytearray()
            while data := await router.read(h, len(out), 4 * MiB):
                out += data
            await router.release(h)
            assert len(out) == e.size
            (rig.out / e.name).write_bytes(out)
        with trio.fail_after(60):
            while owner.id in rig.manager._sessions:  # noqa: ASYNC110 - no event to wait on
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    image = next(e.name for e in listing if e.disk_id == disk.id)
    assert sha256_file(rig.out / image) == admin.disk_sha256(disk.id)
    m = json.loads((rig.out / "manifest.json").read_bytes())
    # taken before the backup: it names the set (= the backup's id); the chain keeps the
    # checkpoint the backup ended with
    assert m["set_type"] == "full" and m["point_in_time"]["method"] == "backup"
    [chain_full] = rig.chain.sets(vm.id)
    assert (chain_full.manifest_file, chain_full.set_id) == ("manifest.json", m["set_id"])
    assert chain_full.checkpoint_id
    assert {s.id for s in await engine.list_snapshots(vm.id)} == snaps_before

    admin.guest_write(vm=VM, disk=disk.id, offset=50 * MiB, size=MiB, pattern=0x44)
    s1, m1 = await rig.read_set(owner, "incremental")
    delta = next(e for e in s1 if e.disk_id == disk.id)
    assert read_header(rig.out / delta.name).backing_file == image
    assert m1["from_checkpoint_id"] == chain_full.checkpoint_id
    assert m1["parent_set"]["set_id"] == m["set_id"]
    assert sha256_image(rig.out / delta.name) == admin.disk_sha256(disk.id)
    await engine.stop_vm(vm.id)


@pytest.mark.slow
@pytest.mark.allow_log("rhvfs.sessions.incremental", "WARNING", match="no completed set")
@pytest.mark.allow_log(
    "rhvfs.sessions.incremental._retention", "WARNING", match="oldest checkpoint .* is not rhvfs's"
)
async def test_keep_checkpoints_on_the_sim(sim: Any, tmp_path: Path) -> None:
    """keep_checkpoints=2: five sets leave rhvfs's two newest checkpoints on the engine;
    another product's checkpoint survives; the next incremental still chains correctly."""
    async with running_rig(sim, tmp_path, VM, keep_checkpoints="2") as rig:
        engine, admin = rig.engine, rig.sim.admin
        vm = await engine.find_vm(VM)
        assert vm is not None
        owner = Owner("vm", vm.id, vm.name)
        disk = next(a.disk for a in await engine.disk_attachments(vm.id))
        before = [c.id for c in await engine.list_checkpoints(vm.id)]
        assert before == []  # the chain's root is rhvfs's: retention can reach it

        async def one_set(n: int) -> dict[str, Any]:
            admin.guest_write(vm=VM, disk=disk.id, offset=n * 7 * MiB, size=MiB, pattern=n)
            _, m = await rig.read_set(owner, "incremental")
            return m

        sets = [await one_set(n) for n in range(1, 4)]
        # another backup product backs the VM up in between
        other = await engine.start_backup(vm.id, [disk.id], description="another product")
        await engine.finalize_backup(vm.id, other.id)
        foreign = other.to_checkpoint_id
        assert foreign
        sets += [await one_set(n) for n in range(4, 6)]
        ours = [m["to_checkpoint_id"] for m in sets]
        on_engine = [c.id for c in await engine.list_checkpoints(vm.id)]
        assert on_engine == [foreign, *ours[-2:]]
        assert [c for c in on_engine if c in ours] == ours[-2:]  # exactly two of rhvfs's

        admin.guest_write(vm=VM, disk=disk.id, offset=220 * MiB, size=MiB, pattern=0x66)
        entries, m = await rig.read_set(owner, "incremental")
        assert (m["set_type"], m["from_checkpoint_id"]) == ("incremental", ours[-1])
        top = next(e for e in entries if e.disk_id == disk.id)
        assert sha256_image(rig.out / top.name) == admin.disk_sha256(disk.id)
        # the foreign checkpoint is the root now: rhvfs removes nothing newer than it
        on_engine = [c.id for c in await engine.list_checkpoints(vm.id)]
        assert on_engine == [foreign, *ours[-2:], m["to_checkpoint_id"]]
