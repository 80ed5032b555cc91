"""IncrementalManager against a fake engine with backups, checkpoints and dirty tracking.

The fake engine (``tests.support.fake_engine``) freezes each disk at backup
start (the hybrid model's point in time) and keeps, per checkpoint, the 64 KiB
clusters written since it was created (all bitmaps stay enabled). Sets are read through the manager like
the VFS would, written to a directory, and checked with qemu-img: the top of
each chain converts to exactly the disk as it was when that set's backup
started (sha256). MockClock: grace periods and engine waits run instantly.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from rhvfs.backupset import SetFileKey, parse_key, read_allocation, read_header
from rhvfs.engine.types import Backup, ImageTransfer
from rhvfs.errors import EngineError, NotFound
from rhvfs.sessions._router import SetRouter
from rhvfs.sessions.core._model import Owner, SetEntry
from tests.support.data import MiB, sha, sha256_image
from tests.support.fake_dataplane import Ext
from tests.support.fake_engine import CLUSTER
from tests.support.incremental_rig import Rig, image, manifest, new_vm


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    # the clock must be a parameter of each test: pytest-trio only looks there
    r = Rig(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(r.manager.run)
        yield r
        await r.manager.aclose_all()
        nursery.cancel_scope.cancel()


@pytest.mark.allow_log("rhvfs.sessions.incremental", "WARNING", match="no completed set")
async def test_full_incremental_incremental_differential_chains(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    eng = rig.engine
    owner = new_vm(eng)
    root, data = eng.disk(owner.id, "root").id, eng.disk(owner.id, "data").id

    s0 = await rig.read_set(owner, "incremental")
    m0 = manifest(rig, s0)
    assert m0["set_type"] == "full" and m0["from_checkpoint_id"] is None
    assert "no completed set" in m0["warnings"][0]
    full_id = m0["set_id"]
    assert image(s0, root).name == f"root--{root}--{full_id}.raw"
    assert [d["backup_mode"] for d in m0["disks"]] == ["full", "full"]
    v0 = {d: sha(eng.disk_bytes(d)) for d in (root, data)}
    assert sha((rig.out / image(s0, root).name).read_bytes()) == v0[root]
    assert rig.chain.newest(owner.id) is not None and rig.chain.newest(owner.id).set_id == full_id  # type: ignore[union-attr]

    eng.guest_write(root, 100_000, b"\x11" * 300_000)
    eng.guest_write(data, 0, bytes(CLUSTER))  # a zeroed cluster must override the backing data
    s1 = await rig.read_set(owner, "incremental")
    m1 = manifest(rig, s1)
    assert (m1["set_type"], m1["from_checkpoint_id"], m1["parent_set"]["set_id"]) == (
        "incremental",
        m0["to_checkpoint_id"],
        full_id,
    )
    assert [d["backup_mode"] for d in m1["disks"]] == ["incremental", "incremental"]
    d1_root = image(s1, root)
    assert d1_root.name == f"root--{root}--{m1['set_id']}.qcow2"
    # ~300 KB changed: 6 clusters of data (unaligned) plus 5 clusters of metadata
    assert d1_root.size == (5 + 6) * CLUSTER
    assert read_header(rig.out / d1_root.name).backing_file == image(s0, root).name
    assert [
        (a.start, a.length, a.kind) for a in read_allocation(rig.out / image(s1, data).name)
    ] == [(0, CLUSTER, "zero")]
    v1 = {d: sha(eng.disk_bytes(d)) for d in (root, data)}

    eng.guest_write(root, 3 * MiB, b"\x22" * 5000)
    s2 = await rig.read_set(owner, "incremental")
    m2 = manifest(rig, s2)
    assert m2["parent_set"]["set_id"] == m1["set_id"] and m2["full_set_id"] == full_id
    v2 = {d: sha(eng.disk_bytes(d)) for d in (root, data)}

    eng.guest_write(data, MiB, b"\x33" * 70_000)
    s3 = await rig.read_set(owner, "differential")
    m3 = manifest(rig, s3)
    assert (m3["set_type"], m3["from_checkpoint_id"], m3["parent_set"]["set_id"]) == (
        "differential",
        m0["to_checkpoint_id"],
        full_id,
    )
    assert read_header(rig.out / image(s3, root).name).backing_file == image(s0, root).name
    v3 = {d: sha(eng.disk_bytes(d)) for d in (root, data)}

    # every file name differs between sets: all four sets live in one directory
    names = [e.name for s in (s0, s1, s2, s3) for e in s]
    assert len(names) == len(set(names)) == 4 * 5
    for d in (root, data):
        assert sha256_image(rig.out / image(s1, d).name) == v1[d]
        assert sha256_image(rig.out / image(s2, d).name) == v2[d]
        assert sha256_image(rig.out / image(s3, d).name) == v3[d]
    assert v1 != v0 and v2 != v1 and v3 != v2
    # the differential's root holds both incrementals' root changes
    assert sum(a.length for a in read_allocation(rig.out / image(s3, root).name)) == 7 * CLUSTER
    assert [s.set_type for s in rig.chain.sets(owner.id)] == [
        "full",
        "incremental",
        "incremental",
        "differential",
    ]
    assert rig.engine.backups and all(b.phase == "succeeded" for b in rig.engine.backups.values())
    assert all(t.phase != "transferring" for t in rig.engine.transfers.values())
    assert rig.journal.entries() == []
    assert rig.chain.pending() == []

    # @rhv-since/<cp>/ starts from a checkpoint rhvfs recorded
    assert rig.manager.since_checkpoints(owner) == [m["to_checkpoint_id"] for m in (m0, m1, m2, m3)]
    eng.guest_write(root, 0, b"\x44")
    s4 = await rig.read_set(owner, "since", m1["to_checkpoint_id"])
    m4 = manifest(rig, s4)
    assert m4["parent_set"]["set_id"] == m1["set_id"]
    assert read_header(rig.out / image(s4, root).name).backing_file == image(s1, root).name
    assert sha256_image(rig.out / image(s4, root).name) == sha(eng.disk_bytes(root))


@pytest.mark.allow_log("rhvfs.sessions.incremental", "WARNING", match="no completed set")
async def test_abandoned_set_does_not_advance_the_chain(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    eng = rig.engine
    owner = new_vm(eng, disks=[("root", 2 * MiB)])
    root = eng.disk(owner.id, "root").id
    s0 = await rig.read_set(owner, "incremental")
    base_cp = manifest(rig, s0)["to_checkpoint_id"]
    eng.guest_write(root, 0, b"\x55" * 200_000)

    await rig.read_set(owner, "incremental", stop_after=64 * 1024)  # the tool died mid-file
    assert [s.set_id for s in rig.chain.sets(owner.id)] == [manifest(rig, s0)["set_id"]]
    # an open of the listing's files after the set closed fails cleanly
    eng.guest_write(root, MiB, b"\x66" * 10)
    s2 = await rig.read_set(owner, "incremental")
    m2 = manifest(rig, s2)
    assert m2["from_checkpoint_id"] == base_cp  # still from the last completed set
    assert sha256_image(rig.out / image(s2, root).name) == sha(eng.disk_bytes(root))
    assert all(b.phase == "succeeded" for b in eng.backups.values())


@pytest.mark.allow_log(
    "rhvfs.sessions.incremental", "WARNING", match="no completed set|chain of VM web01 is broken"
)
async def test_broken_chain_gives_a_full_set_with_a_warning(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    eng = rig.engine
    owner = new_vm(eng, disks=[("root", 2 * MiB)])
    root = eng.disk(owner.id, "root").id
    s0 = await rig.read_set(owner, "incremental")
    eng.drop_checkpoint(owner.id, manifest(rig, s0)["to_checkpoint_id"])
    eng.guest_write(root, 0, b"\x77" * 10)
    s1 = await rig.read_set(owner, "incremental")
    m1 = manifest(rig, s1)
    assert m1["set_type"] == "full" and m1["from_checkpoint_id"] is None
    assert any("chain of VM web01 is broken" in w for w in m1["warnings"])
    assert sha((rig.out / image(s1, root).name).read_bytes()) == sha(eng.disk_bytes(root))
    notes = rig.router.status()["incremental"]["notes"]
    assert any("is broken" in n["message"] and n["level"] == "warning" for n in notes)
    assert (
        "start_backup from=None" in eng.calls[-10:]
        or eng.calls.count("start_backup from=None") == 2
    )


@pytest.mark.allow_log("rhvfs.sessions.incremental", "WARNING", match="chain of VM web01 is broken")
@pytest.mark.parametrize("chain", ["checkpoint", "snapshot"])
@pytest.mark.parametrize("state", [None, "invalid"])
async def test_a_base_gone_or_unusable_on_the_engine_is_named_in_the_warning(
    rig: Rig, autojump_clock: trio.testing.MockClock, chain: str, state: str | None
) -> None:
    """The base set's checkpoint (or, for a snapshot chain, its kept snapshot) is gone or
    in a state it cannot serve from: the warning says which, and why; the set is full."""
    eng = rig.engine
    owner = new_vm(eng, disks=[("root", 1 * MiB)])
    if chain == "snapshot":
        eng.set_disk(owner.id, "root", format="raw", backup="none")
    m0 = manifest(rig, await rig.read_set(owner, "incremental"))
    found = eng.checkpoints if chain == "checkpoint" else eng.snapshots
    base = m0["to_checkpoint_id"] if chain == "checkpoint" else m0["snapshot_id"]
    field = "state" if chain == "checkpoint" else "status"
    found[owner.id] = [
        x if x.id != base else dataclasses.replace(x, **{field: state})
        for x in found[owner.id]
        if x.id != base or state is not None
    ]
    m1 = manifest(rig, await rig.read_set(owner, "incremental"))
    what = f"checkpoint {base}" if chain == "checkpoint" else f"its kept snapshot {base}"
    why = "is gone from the engine" if state is None else f"is {state}"
    assert m1["set_type"] == "full"
    assert m1["warnings"] == [
        f"chain of VM web01 is broken: {what} {why}; this incremental set is a full one"
    ]


@pytest.mark.allow_log(
    "rhvfs.sessions.incremental", "WARNING", match="no completed set|chain of VM web01 is broken"
)
async def test_engine_refusing_the_checkpoint_falls_back_to_full(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    eng = rig.engine
    owner = new_vm(eng, disks=[("root", 1 * MiB)])
    s0 = await rig.read_set(owner, "incremental")
    cp = manifest(rig, s0)["to_checkpoint_id"]
    # listed as created, but the engine refuses it (bitmap missing on a volume)
    eng.checkpoints[owner.id] = [
        dataclasses.replace(c, state="created") for c in eng.checkpoints[owner.id]
    ]
    eng.cp_disks[cp] = set()
    orig = eng.start_backup

    async def refusing(vm_id: str, disk_ids: list[str], **kw: Any) -> Backup:
        if kw.get("from_checkpoint_id"):
            raise EngineError("Cannot backup VM: checkpoint bitmap is missing", code=400)
        return await orig(vm_id, disk_ids, **kw)

    eng.start_backup = refusing  # type: ignore[method-assign]
    s1 = await rig.read_set(owner, "incremental")
    m1 = manifest(rig, s1)
    assert m1["set_type"] == "full" and "refused checkpoint" in m1["warnings"][0]
    assert rig.chain.newest(owner.id).set_type == "full"  # type: ignore[union-attr]


def vm_snapshots(rig: Rig, vm_id: str) -> list[str]:
    return [s.id for s in rig.engine.user_snapshots(vm_id)]


def data_bytes(path: Path) -> int:
    return sum(a.length for a in read_allocation(path) if a.kind == "data")


async def test_a_raw_disk_makes_incrementals_a_snapshot_chain(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    """A VM with a raw disk: every disk of its incremental sets comes from one snapshot,
    the set's newer layer as a delta on the previous set's file; the snapshot is kept
    as the next set's base (one per VM) and the one before it removed."""
    eng = rig.engine
    owner = new_vm(eng, disks=[("root", 2 * MiB), ("scratch", 1 * MiB)])
    eng.set_disk(owner.id, "scratch", format="raw", backup="none")
    root, scratch = eng.disk(owner.id, "root").id, eng.disk(owner.id, "scratch").id
    s0 = await rig.read_set(owner, "incremental")
    m0 = manifest(rig, s0)
    assert m0["set_type"] == "full" and "start_backup" not in eng.calls
    [kept0] = vm_snapshots(rig, owner.id)
    assert rig.chain.kept_snapshots() == {owner.id: kept0} == {owner.id: m0["snapshot_id"]}
    for d in (root, scratch):
        assert sha((rig.out / image(s0, d).name).read_bytes()) == sha(eng.disk_bytes(d))

    eng.guest_write(root, 0, b"\x01" * 10)
    eng.guest_write(scratch, CLUSTER + 4096, b"\x02" * (CLUSTER + 10))  # 2 clusters
    s1 = await rig.read_set(owner, "incremental")
    m1 = manifest(rig, s1)
    assert (m1["set_type"], m1["parent_set"]["set_id"]) == ("incremental", m0["set_id"])
    modes = {d["id"]: (d["backup_mode"], d["file_format"], d["full_reason"]) for d in m1["disks"]}
    assert modes == {root: ("incremental", "qcow2", None), scratch: ("incremental", "qcow2", None)}
    for d, clusters in ((root, 1), (scratch, 2)):
        delta = rig.out / image(s1, d).name
        assert read_header(delta).backing_file == image(s0, d).name
        assert data_bytes(delta) == clusters * CLUSTER
        assert sha256_image(delta) == sha(eng.disk_bytes(d))
    [kept1] = vm_snapshots(rig, owner.id)
    assert kept1 != kept0 and rig.chain.kept_snapshots() == {owner.id: kept1}

    eng.guest_write(scratch, 0, b"\x03" * 100)
    s2 = await rig.read_set(owner, "incremental")
    assert manifest(rig, s2)["parent_set"]["set_id"] == m1["set_id"]
    assert data_bytes(rig.out / image(s2, root).name) == 0
    assert data_bytes(rig.out / image(s2, scratch).name) == CLUSTER
    for d in (root, scratch):
        assert sha256_image(rig.out / image(s2, d).name) == sha(eng.disk_bytes(d))
    assert len(vm_snapshots(rig, owner.id)) == 1
    # every layer was read alone: the transfers of the deltas were shallow
    assert len(eng.transfer_shallow) == 4
    assert eng.backups == {}


@pytest.mark.allow_log("rhvfs.sessions.incremental", "WARNING", match="chain of VM .* is broken")
async def test_snapshot_chain_abandoned_set_and_lost_snapshot(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    """A set the tool did not finish keeps the previous snapshot and removes its own; a
    kept snapshot someone removed makes the next set a full one, with a warning."""
    eng = rig.engine
    owner = new_vm(eng, disks=[("root", 2 * MiB)])
    eng.set_disk(owner.id, "root", format="raw", backup="none")
    root = eng.disk(owner.id, "root").id
    s0 = await rig.read_set(owner, "incremental")
    [kept] = vm_snapshots(rig, owner.id)
    eng.guest_write(root, 0, b"\x55" * 200_000)
    await rig.read_set(owner, "incremental", stop_after=64 * 1024)  # the tool died mid-file
    assert vm_snapshots(rig, owner.id) == [kept]
    assert [s.set_id for s in rig.chain.sets(owner.id)] == [manifest(rig, s0)["set_id"]]

    s2 = await rig.read_set(owner, "incremental")
    assert manifest(rig, s2)["parent_set"]["set_id"] == manifest(rig, s0)["set_id"]
    delta = rig.out / image(s2, root).name
    assert data_bytes(delta) == 4 * CLUSTER and sha256_image(delta) == sha(eng.disk_bytes(root))

    [kept2] = vm_snapshots(rig, owner.id)
    await eng.remove_snapshot(owner.id, kept2)  # an admin removed it
    eng.guest_write(root, MiB, b"\x66" * 10)
    s3 = await rig.read_set(owner, "incremental")
    m3 = manifest(rig, s3)
    assert m3["set_type"] == "full" and f"kept snapshot {kept2} is gone" in m3["warnings"][0]
    assert image(s3, root).name.endswith(".raw")
    assert sha((rig.out / image(s3, root).name).read_bytes()) == sha(eng.disk_bytes(root))
    assert len(vm_snapshots(rig, owner.id)) == 1


@pytest.mark.allow_log("rhvfs.sessions.incremental", "WARNING", match="chain of VM .* is broken")
async def test_a_snapshot_taken_after_the_kept_one_makes_a_full_set(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    """An admin's snapshot between two sets splits the layer since the kept snapshot in
    two: the new snapshot's own layer would miss what was written before the admin's, so
    that set is a full one; the admin's snapshot is left alone and the next set is a delta."""
    eng = rig.engine
    owner = new_vm(eng, disks=[("root", 2 * MiB)])
    eng.set_disk(owner.id, "root", format="raw", backup="none")
    root = eng.disk(owner.id, "root").id
    await rig.read_set(owner, "incremental")
    eng.guest_write(root, 0, b"\x11" * 100)
    admin = await eng.create_snapshot(owner.id, description="before upgrade")
    eng.guest_write(root, MiB, b"\x22" * 100)
    s1 = await rig.read_set(owner, "incremental")
    m1 = manifest(rig, s1)
    assert m1["set_type"] == "full"
    assert f"snapshot {admin.id} was taken after the kept snapshot" in m1["warnings"][0]
    assert sha((rig.out / image(s1, root).name).read_bytes()) == sha(eng.disk_bytes(root))
    eng.guest_write(root, 3 * CLUSTER, b"\x33" * 100)
    s2 = await rig.read_set(owner, "incremental")
    assert manifest(rig, s2)["set_type"] == "incremental"
    delta = rig.out / image(s2, root).name
    assert data_bytes(delta) == CLUSTER and sha256_image(delta) == sha(eng.disk_bytes(root))
    assert admin.id in vm_snapshots(rig, owner.id) and len(vm_snapshots(rig, owner.id)) == 2


async def test_router_passes_full_sets_through(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    owner = new_vm(rig.engine, disks=[("root", 1 * MiB)])
    h = await rig.router.open(owner, "disk:abc")
    assert await rig.router.read(h, 0, 10) == b"full"
    await rig.router.release(h)
    assert rig.full.opened == ["disk:abc"] and not isinstance(parse_key("disk:abc"), SetFileKey)
    # disks/ files keep the BackupManager's snapshot reads even with full_sets_via_backup
    router = SetRouter(rig.full, rig.manager, config=rig.config, full_sets_via_backup=True)
    [entry] = await router.list_disk_files(owner)
    h = await router.open(owner, entry.key)
    assert rig.full.opened == ["disk:abc"]  # the session is asked for at the first read
    assert await router.read(h, 0, 10) == b"full"
    await router.release(h)
    assert rig.full.opened == ["disk:abc", "disk:abc"] and not rig.engine.backups
    # An image opened and closed without a read (borg's fstat of every file) opens nothing.
    h = await router.open(owner, entry.key)
    await router.release(h)
    assert rig.full.opened == ["disk:abc", "disk:abc"] and not rig.engine.backups
    with pytest.raises(NotFound):
        await rig.router.list_incremental(owner, "since", "no-such-checkpoint")
    with pytest.raises(NotFound):
        await rig.router.list_incremental(Owner("template", "t1", "tpl"), "incremental")


@pytest.mark.allow_log("rhvfs.sessions.incremental", "WARNING", match="no completed set")
async def test_listing_without_reading_ends_the_backup(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    owner = new_vm(rig.engine, disks=[("root", 1 * MiB)])
    entries = await rig.router.list_incremental(owner, "incremental")
    again = await rig.router.list_incremental(owner, "incremental")
    assert [e.name for e in again] == [e.name for e in entries]  # joined, same set
    await trio.sleep(rig.config.grace_period + 30)
    assert rig.chain.sets(owner.id) == []
    assert all(b.phase == "succeeded" for b in rig.engine.backups.values())
    assert len(rig.engine.backups) == 1
    with pytest.raises(NotFound):
        await rig.router.open(owner, entries[0].key)


async def test_full_rhv_set_via_backup_starts_the_chain(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """SetRouter(full_sets_via_backup=True): @rhv/ of a VM with incremental disks is read
    from a full engine backup; it becomes the chain's full set (issue 5 item 2)."""
    from rhvfs.sessions import BackupManager

    r = Rig(tmp_path)
    full = BackupManager(
        r.engine,
        r.config,
        journal=r.journal,
        imageio_opener=r.plane.opener,
        reader_factory=r.plane.reader_factory,
        gc_on_start=False,
    )
    router = SetRouter(full, r.manager, config=r.config, full_sets_via_backup=True)
    eng = r.engine
    owner = new_vm(eng, disks=[("root", 2 * MiB)])
    root = eng.disk(owner.id, "root").id
    plain = eng.add_vm("plain", disks=[("d", MiB)], seed=3)  # raw disk: snapshot-based as before
    async with trio.open_nursery() as nursery:
        await nursery.start(full.run)
        await nursery.start(r.manager.run)

        async def copy(o: Owner, entries: list[Any], into: Path) -> None:
            for e in entries:
                h = await router.open(o, e.key)
                data = bytearray()
                while part := await router.read(h, len(data), 256 * 1024):
                    data += part
                await router.release(h)
                assert len(data) == e.size
                (into / e.name).write_bytes(data)

        listing = await router.list_set(owner)
        assert [e.name for e in listing][:3] == ["vm.ovf", "vm.xml", "manifest.json"]
        assert "create_snapshot" not in eng.calls and not eng.backups  # listing starts nothing
        await copy(owner, listing, r.out)
        await trio.sleep(60)
        m = json.loads((r.out / "manifest.json").read_bytes())
        # The manifest is taken before the backup (configuration reads create nothing):
        # it names the set (= the read = the engine backup's id); the chain state keeps
        # the checkpoint the backup ended with.
        pit = m["point_in_time"]
        assert (m["set_type"], pit["method"], m["config_files"]["ovf"]) == (
            "full",
            "backup",
            "vm.ovf",
        )
        assert m["set_id"] == m["backup_id"] == pit["read_id"]
        image = next(e.name for e in listing if e.disk_id == root)
        assert sha((r.out / image).read_bytes()) == sha(eng.disk_bytes(root))
        assert "create_snapshot" not in eng.calls and len(eng.backups) == 1
        assert list(eng.backups) == [m["backup_id"]]
        [chain_full] = r.chain.sets(owner.id)
        assert (chain_full.set_type, chain_full.manifest_file) == ("full", "manifest.json")
        assert chain_full.set_id == m["set_id"] and chain_full.checkpoint_id

        eng.guest_write(root, 4096, b"\x99" * 100_000)
        s1 = await r.read_set(owner, "incremental")
        m1 = manifest(r, s1)
        assert (m1["from_checkpoint_id"], m1["parent_set"]["manifest"]) == (
            chain_full.checkpoint_id,
            "manifest.json",
        )
        assert m1["parent_set"]["set_id"] == m["set_id"]
        delta = image_of(s1, root)
        assert read_header(r.out / delta.name).backing_file == image
        assert sha256_image(r.out / delta.name) == sha(eng.disk_bytes(root))

        plain_owner = Owner("vm", plain.id, plain.name)
        (tmp_path / "plain").mkdir()
        await copy(plain_owner, await router.list_set(plain_owner), tmp_path / "plain")
        assert "create_snapshot" in eng.calls and len(eng.backups) == 2
        await r.manager.aclose_all()
        nursery.cancel_scope.cancel()


def image_of(entries: list[SetEntry], disk_id: str) -> SetEntry:
    return image(entries, disk_id)


async def test_leftover_backup_of_a_dead_process_is_finalized(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    from rhvfs.sessions.core._procid import ProcessIdentity, current
    from rhvfs.sessions.incremental._chainstate import PendingBackup

    owner = new_vm(rig.engine, disks=[("root", 1 * MiB)])
    disk = rig.engine.disk(owner.id, "root").id
    b = await rig.engine.start_backup(owner.id, [disk], backup_id="b-dead")
    t = await rig.engine.start_transfer(disk_id=disk, backup_id=b.id)
    me = current()
    dead = ProcessIdentity(
        host=me.host, boot_id=me.boot_id, pid=me.pid, start_ticks=me.start_ticks + 1
    )
    rig.chain.add_pending(PendingBackup(b.id, owner.id, dead, "2026-01-01T00:00:00+00:00"))
    rig.chain.add_pending(PendingBackup("b-live", owner.id, me, "2026-01-01T00:00:00+00:00"))

    async def gc_transfers_later() -> None:  # the session gc cancels the dead one's transfer
        await trio.sleep(5)
        await rig.engine.cancel_transfer(t.id)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(gc_transfers_later)
        done = await rig.manager.finalize_leftovers()
    assert done == [f"finalized leftover backup b-dead of VM {owner.id}"]
    assert rig.engine.backups["b-dead"].phase == "succeeded"
    assert [p.backup_id for p in rig.chain.pending()] == ["b-live"]


async def test_delta_source_and_file_extents_match_the_synthesizer() -> None:
    """Reading a delta's data region through DeltaSource (file offsets) gives exactly the
    synthesizer's bytes; the file extent map marks as data only non-zero guest bytes."""
    import random

    from rhvfs.backupset import Change, Qcow2Delta
    from rhvfs.sessions.incremental._manager import DeltaSource, delta_file_extents

    rng = random.Random(11)
    size = 3 * MiB + 512
    guest = bytearray(rng.randbytes(size))
    guest[CLUSTER : CLUSTER + 4096] = bytes(4096)  # a zero part inside a dirty data cluster
    changes = [Change(CLUSTER, 3 * CLUSTER), Change(MiB, 10), Change(size - 700, 700)]
    changes.append(Change(2 * MiB, 2 * CLUSTER, zero=True))
    delta = Qcow2Delta(
        virtual_size=size, changes=changes, backing_file="b.raw", backing_format="raw"
    )
    zero_map = [
        Ext(0, CLUSTER, zero=False),
        Ext(CLUSTER, 4096, zero=True),
        Ext(CLUSTER + 4096, size - CLUSTER - 4096, zero=False),
    ]

    class Chan:
        async def read_into(self, offset: int, buf: memoryview) -> None:
            assert offset + len(buf) <= size
            buf[:] = guest[offset : offset + len(buf)]

    async def fetch(offset: int, length: int) -> bytes:
        return bytes(guest[offset : offset + length])

    expected = await delta.read(0, delta.size, fetch)
    src = DeltaSource(delta, Chan())  # type: ignore[arg-type]
    buf = bytearray(delta.size - delta.metadata_size)
    await src.read_into(delta.metadata_size, memoryview(buf))
    assert bytes(buf) == expected[delta.metadata_size :]
    extents = delta_file_extents(delta, zero_map)
    assert extents[0].start == 0 and extents[-1].start + extents[-1].length == delta.size
    data = sum(e.length for e in extents if not e.zero)
    # clusters 1-3, 16 and 47 in full, 512 bytes of the last one (the disk ends there),
    # minus the 4 KiB of zeroes inside cluster 1
    assert data == 5 * CLUSTER + 512 - 4096
    for e in extents:
        if not e.zero:
            assert any(expected[e.start : e.start + e.length])


@pytest.mark.allow_log("rhvfs.sessions.core._owner_data", "WARNING", match="no OVF")
async def test_vm_without_ovf_gets_the_placeholder_like_full_sets(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    """One OVF fallback for every set: the engine refusing the OVF still gives a set."""
    from rhvfs.backupset import missing_ovf

    owner = new_vm(rig.engine, disks=[("root", 1 * MiB)])

    async def no_ovf(vm_id: str) -> str:
        raise EngineError("the VM has no configuration", code=400)

    rig.engine.vm_ovf = no_ovf  # type: ignore[method-assign]
    s0 = await rig.read_set(owner, "incremental")
    m0 = manifest(rig, s0)
    ovf = next(e.name for e in s0 if e.name.endswith(".ovf"))
    assert (rig.out / ovf).read_bytes() == missing_ovf("vm", owner.name)
    assert m0["config_files"]["ovf"] is None and m0["set_type"] == "full"


@pytest.mark.allow_log("rhvfs.retry", "WARNING", match="giving up")
@pytest.mark.allow_log("rhvfs.sessions.incremental", "WARNING", match="503")
async def test_a_transfer_that_fails_to_open_is_retried_a_few_times(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    from rhvfs.errors import EngineUnavailable, SessionBroken

    owner = new_vm(rig.engine, disks=[("root", 1 * MiB)])
    orig = rig.engine.start_transfer
    failures = [EngineUnavailable("503"), EngineUnavailable("503")]

    async def flaky(**kw: Any) -> ImageTransfer:
        if failures:
            raise failures.pop(0)
        return await orig(**kw)

    rig.engine.start_transfer = flaky  # type: ignore[method-assign]
    s0 = await rig.read_set(owner, "incremental")
    root = rig.engine.disk(owner.id, "root").id
    assert not failures
    assert sha((rig.out / image(s0, root).name).read_bytes()) == sha(rig.engine.disk_bytes(root))
    failures.extend([EngineUnavailable("503")] * 3)  # OPEN_TRIES in a row: the set fails
    with pytest.raises(SessionBroken, match="503"):
        await rig.router.list_incremental(owner, "incremental")


@pytest.mark.allow_log("rhvfs.sessions.incremental", "WARNING", match="no completed set")
@pytest.mark.allow_log("rhvfs.retry", "WARNING", match="giving up")
@pytest.mark.allow_log(
    "rhvfs.sessions.incremental",
    "WARNING",
    match="finalizing backup .* failed|retrying in the background|chain does not advance",
)
async def test_a_backup_that_did_not_finalize_is_retried_while_the_mount_lives(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    owner = new_vm(rig.engine, disks=[("root", 1 * MiB)])
    rig.engine.fail_on.add("finalize_backup")  # still busy (409) for a long while
    for e in await rig.router.list_incremental(owner, "incremental"):
        h = await rig.router.open(owner, e.key)
        assert len(await rig.router.read(h, 0, e.size)) == e.size
        await rig.router.release(h)
    await trio.sleep(rig.config.system_timeout + 5)  # read completely: the set ends at once
    assert owner.id not in rig.manager._sessions
    (backup,) = rig.engine.backups.values()
    assert backup.phase == "ready"
    (pending,) = rig.router.status()["pending_cleanups"]
    assert (pending["kind"], pending["id"], pending["vm_id"]) == ("backup", backup.id, owner.id)
    assert "pending_cleanups" not in rig.router.status()["incremental"]
    installation = rig.journal.installation
    (recorded,) = rig.chain.pending()
    assert (recorded.backup_id, recorded.installation, recorded.instance) == (
        backup.id,
        installation.id,
        installation.instance,
    )
    assert f" inst={installation.id} mount={installation.instance} " in backup.description
    assert backup.description.endswith(" kind=incremental")
    # Another process of this installation does not take it while this mount lives.
    assert await rig.manager.finalize_leftovers() == []
    rig.engine.fail_on.clear()
    await trio.sleep(700)
    assert rig.engine.backups[backup.id].phase == "succeeded"
    assert rig.router.status()["pending_cleanups"] == []
    assert rig.chain.pending() == [] and rig.journal.entries() == []


async def test_leftover_backups_of_another_installation_are_not_finalized(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    from rhvfs.sessions.core._installation import new_id
    from rhvfs.sessions.core._procid import ProcessIdentity, current
    from rhvfs.sessions.incremental._chainstate import PendingBackup

    owner = new_vm(rig.engine, disks=[("root", 1 * MiB)])
    disk = rig.engine.disk(owner.id, "root").id
    theirs = await rig.engine.start_backup(owner.id, [disk], backup_id="b-theirs")
    me = current()
    dead = ProcessIdentity(me.host, me.boot_id, me.pid, me.start_ticks + 1)
    rig.chain.add_pending(
        PendingBackup(theirs.id, owner.id, dead, "2026-01-01T00:00:00+00:00", new_id(), new_id())
    )
    assert await rig.manager.finalize_leftovers() == []
    assert rig.engine.backups[theirs.id].phase == "ready"
    ours = PendingBackup(
        theirs.id,
        owner.id,
        dead,
        "2026-01-01T00:00:00+00:00",
        rig.journal.installation.id,
        new_id(),
    )
    rig.chain.add_pending(ours)  # the same backup, now named as a dead mount's of ours
    assert await rig.manager.finalize_leftovers() == [
        f"finalized leftover backup {theirs.id} of VM {owner.id}"
    ]
