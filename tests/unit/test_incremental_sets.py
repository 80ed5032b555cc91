"""IncrementalManager against a fake engine with backups, checkpoints and dirty tracking.

The fake engine freezes each disk at backup start (the hybrid model's point in
time) and keeps, per checkpoint, the 64 KiB clusters written since it was
created (all bitmaps stay enabled). Sets are read through the manager like
the VFS would, written to a directory, and checked with qemu-img: the top of
each chain converts to exactly the disk as it was when that set's backup
started (sha256). MockClock: grace periods and engine waits run instantly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from test_sessions_fakes import FakeClient, FakeDataPlane, FakeEngine, MiB, make_config

from rhvfs.backupset import SetFileKey, SetKind, parse_key, read_allocation, read_header
from rhvfs.engine.types import Backup, Checkpoint, Disk, ImageTransfer
from rhvfs.errors import Conflict, EngineError, ImageioError, NotFound
from rhvfs.sessions._router import SetRouter
from rhvfs.sessions.core._journal import Journal
from rhvfs.sessions.core._model import Owner, SetEntry
from rhvfs.sessions.full._manager import SetView
from rhvfs.sessions.incremental._chainstate import ChainState
from rhvfs.sessions.incremental._manager import IncrementalManager

CLUSTER = 64 * 1024


class BackupEngine(FakeEngine):
    """FakeEngine plus the VM backup API (hybrid model) and checkpoints with dirty clusters."""

    def __init__(self) -> None:
        super().__init__()
        self.backups: dict[str, Backup] = {}
        self.backup_modes: dict[str, dict[str, str]] = {}
        self.backup_dirty: dict[str, dict[str, set[int]]] = {}
        self.checkpoints: dict[str, list[Checkpoint]] = {}
        self.cp_disks: dict[str, set[str]] = {}
        self.dirty: dict[str, dict[str, set[int]]] = {}  # checkpoint -> disk -> clusters
        self.transfer_backup: dict[str, tuple[str, str]] = {}

    def set_disk(self, vm_id: str, alias: str, **changes: Any) -> None:
        self.attachments[vm_id] = [
            dataclasses.replace(a, disk=dataclasses.replace(a.disk, **changes))
            if a.disk.alias == alias
            else a
            for a in self.attachments[vm_id]
        ]

    def disk(self, vm_id: str, alias: str) -> Disk:
        return next(a.disk for a in self.attachments[vm_id] if a.disk.alias == alias)

    def content(self, disk_id: str) -> bytes:
        return bytes(self.volumes[self.active[disk_id]])

    def guest_write(self, disk_id: str, offset: int, data: bytes) -> None:
        super().guest_write(disk_id, offset, data)
        first, last = offset // CLUSTER, (offset + len(data) - 1) // CLUSTER
        for per_disk in self.dirty.values():
            if disk_id in per_disk:
                per_disk[disk_id].update(range(first, last + 1))

    def _owner_of_disk(self, disk_id: str) -> str:
        return next(
            o for o, atts in self.attachments.items() if any(a.disk.id == disk_id for a in atts)
        )

    async def start_backup(
        self,
        vm_id: str,
        disk_ids: list[str],
        *,
        from_checkpoint_id: str | None = None,
        description: str = "",
        backup_id: str | None = None,
        require_consistency: bool = False,
    ) -> Backup:
        await trio.sleep(1)
        self.calls.append(f"start_backup from={from_checkpoint_id}")
        if any(b.vm_id == vm_id and b.phase == "ready" for b in self.backups.values()):
            raise Conflict("backup already in progress")
        disks = {a.disk.id: a.disk for a in self.attachments[vm_id]}
        cps = {c.id: c for c in self.checkpoints.get(vm_id, [])}
        if from_checkpoint_id is not None:
            cp = cps.get(from_checkpoint_id)
            if cp is None or cp.state != "created":
                raise EngineError(f"checkpoint {from_checkpoint_id} is not valid", code=400)
            if any(disks[d].backup != "incremental" for d in disk_ids):
                raise EngineError("all disks must have incremental backup enabled", code=400)
        bid = backup_id or str(uuid.uuid4())
        modes, dirty = {}, {}
        for d in disk_ids:
            frozen = f"bk-{bid}-{d}"
            self.volumes[frozen] = bytearray(self.volumes[self.active[d]])
            if from_checkpoint_id is not None and d in self.cp_disks[from_checkpoint_id]:
                modes[d] = "incremental"
                dirty[d] = set(self.dirty[from_checkpoint_id][d])
            else:
                modes[d] = "full"
        cow = [d for d in disk_ids if disks[d].format == "cow"]
        new_cp = None
        if cow:
            new_cp = str(uuid.uuid4())
            parent = self.checkpoints.get(vm_id, [])
            self.checkpoints.setdefault(vm_id, []).append(
                Checkpoint(
                    id=new_cp,
                    parent_id=parent[-1].id if parent else None,
                    state="created",
                    creation_date=datetime.now(UTC),
                    vm_id=vm_id,
                )
            )
            self.cp_disks[new_cp] = set(cow)
            self.dirty[new_cp] = {d: set() for d in cow}
        backup = Backup(
            id=bid,
            phase="ready",
            vm_id=vm_id,
            from_checkpoint_id=from_checkpoint_id,
            to_checkpoint_id=new_cp,
            description=description,
        )
        self.backups[bid] = backup
        self.backup_modes[bid] = modes
        self.backup_dirty[bid] = dirty
        return backup

    async def backup_disks(self, vm_id: str, backup_id: str) -> list[Disk]:
        await trio.lowlevel.checkpoint()
        disks = {a.disk.id: a.disk for a in self.attachments[vm_id]}
        return [
            dataclasses.replace(disks[d], backup_mode=m)
            for d, m in self.backup_modes[backup_id].items()
        ]

    async def finalize_backup(self, vm_id: str, backup_id: str) -> None:
        await trio.sleep(0.5)
        self.calls.append("finalize_backup")
        b = self.backups.get(backup_id)
        if b is None:
            raise NotFound(backup_id)
        busy = [
            t
            for t, (bid, _) in self.transfer_backup.items()
            if bid == backup_id and self.transfers[t].phase == "transferring"
        ]
        if busy:
            raise Conflict(f"transfers {busy} of backup {backup_id} are not finished")
        self.backups[backup_id] = dataclasses.replace(b, phase="succeeded")

    async def list_checkpoints(self, vm_id: str) -> list[Checkpoint]:
        await trio.lowlevel.checkpoint()
        return list(self.checkpoints.get(vm_id, []))

    def drop_checkpoint(self, vm_id: str, cp_id: str) -> None:
        self.checkpoints[vm_id] = [c for c in self.checkpoints[vm_id] if c.id != cp_id]

    async def start_transfer(self, **kw: Any) -> ImageTransfer:
        backup_id = kw.get("backup_id")
        if backup_id is None:
            return await super().start_transfer(**kw)
        disk_id = kw["disk_id"]
        assert self.backups[backup_id].phase == "ready"
        t = await super().start_transfer(**{**kw, "backup_id": None})
        self.transfer_volume[t.id] = f"bk-{backup_id}-{disk_id}"
        self.transfer_backup[t.id] = (backup_id, disk_id)
        return t


class DirtyClient(FakeClient):
    engine: BackupEngine

    async def extents(self, context: str = "zero") -> list[Any]:  # type: ignore[override]
        await trio.lowlevel.checkpoint()
        self._check()
        vol = self.engine.volumes[self.engine.transfer_volume[self.transfer_id]]
        out: list[Any] = []

        def add(start: int, length: int, **flags: bool) -> None:
            if (
                out
                and all(getattr(out[-1], k) == v for k, v in flags.items())
                and out[-1].start + out[-1].length == start
            ):
                out[-1] = dataclasses.replace(out[-1], length=out[-1].length + length)
            else:
                out.append(Ext(start, length, **flags))

        dirty: set[int] | None = None
        if context == "dirty":
            item = self.engine.transfer_backup.get(self.transfer_id)
            if item is None or item[1] not in self.engine.backup_dirty[item[0]]:
                raise ImageioError("Ticket does not support dirty extents", status=404)
            dirty = self.engine.backup_dirty[item[0]][item[1]]
        for c in range(0, -(-len(vol) // CLUSTER)):
            chunk = vol[c * CLUSTER : (c + 1) * CLUSTER]
            zero = not any(chunk)
            if dirty is None:
                add(c * CLUSTER, len(chunk), zero=zero, dirty=False)
            else:
                add(c * CLUSTER, len(chunk), zero=zero, dirty=c in dirty)
        return out


@dataclasses.dataclass
class Ext:
    start: int
    length: int
    zero: bool
    dirty: bool = False
    hole: bool = False


class DirtyPlane(FakeDataPlane):
    def opener(self, url: str) -> Any:
        @asynccontextmanager
        async def cm() -> AsyncIterator[DirtyClient]:
            client = DirtyClient(self.engine, url.removeprefix("fake://"))
            self.clients.append(client)
            try:
                yield client
            finally:
                client.closed = True

        return cm()


class Full:
    """A stand-in for BackupManager: the router must pass @rhv/ calls through untouched."""

    def __init__(self) -> None:
        self.opened: list[str] = []
        self.ended: list[str] = []

    async def list_set(self, owner: Any) -> list[Any]:
        return [SetEntry(name="root--abc.raw", key="disk:abc", size=1, blocks=1, mtime_ns=0)]

    async def list_disk_files(self, owner: Any) -> list[Any]:
        return [SetEntry(name="root.raw", key="disk:abc", size=1, blocks=1, mtime_ns=0)]

    async def config_view(self, owner: Any, *, read_id: str, via_backup: bool) -> SetView:
        return SetView(
            read_id=read_id,
            method="backup" if via_backup else "snapshot",
            entries=tuple(await self.list_set(owner)),
            disk_entries=tuple(await self.list_disk_files(owner)),
            contents={},
            image_ids={"abc": "volume"},
            shape="shape",
        )

    async def open(
        self,
        owner: Any,
        key: str,
        *,
        read_id: str | None = None,
        expect_images: Mapping[str, str] | None = None,
    ) -> int:
        self.opened.append(key)
        return 7

    def end_read(self, owner: Any, read_id: str, *, reason: str) -> None:
        self.ended.append(read_id)

    async def read(self, handle: int, offset: int, size: int) -> bytes:
        return b"full"

    async def release(self, handle: int) -> None:
        pass

    def status(self) -> dict[str, Any]:
        return {"sessions": []}


class Rig:
    def __init__(self, tmp_path: Path) -> None:
        self.engine = BackupEngine()
        self.plane = DirtyPlane(self.engine)
        self.chain = ChainState(tmp_path / "state" / "chain.json")
        self.journal = Journal(tmp_path / "state" / "journal.json")
        # an incomplete set outlives its last close by read_idle_limit (transfers parked
        # after the grace period)
        self.config = make_config(grace_period=5.0, read_idle_limit=20.0)
        self.manager = IncrementalManager(
            self.engine,
            self.config,
            chain=self.chain,
            journal=self.journal,
            imageio_opener=self.plane.opener,
            reader_factory=self.plane.reader_factory,
            cleanup_on_start=False,
        )
        self.full = Full()
        self.router = SetRouter(self.full, self.manager, config=self.config)
        self.out = tmp_path / "out"
        self.out.mkdir()

    async def read_set(
        self,
        owner: Owner,
        kind: SetKind,
        since: str | None = None,
        *,
        stop_after: int | None = None,
    ) -> list[SetEntry]:
        """List the set, copy every file into ``out`` (random-sized chunks), wait for the close."""
        entries = await self.router.list_incremental(owner, kind, since)
        for i, e in enumerate(entries):
            h = await self.router.open(owner, e.key)
            data = bytearray()
            chunk = 128 * 1024 + 512 * (i % 3)
            while True:
                if (
                    stop_after is not None
                    and len(data) >= stop_after
                    and e.name.endswith((".qcow2", ".raw"))
                ):
                    break
                part = await self.router.read(h, len(data), chunk)
                if not part:
                    break
                data += part
            await self.router.release(h)
            (self.out / e.name).write_bytes(data)
            if stop_after is None:
                assert len(data) == e.size
        await trio.sleep(self.config.grace_period + 30)
        assert owner.id not in self.manager._sessions
        return entries


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    # the clock must be a parameter of each test: pytest-trio only looks there
    r = Rig(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(r.manager.run)
        yield r
        await r.manager.aclose_all()
        nursery.cancel_scope.cancel()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def chain_top_sha(path: Path) -> str:
    out = path.with_suffix(".converted")
    r = subprocess.run(
        ["qemu-img", "convert", "-O", "raw", str(path), str(out)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    return sha(out.read_bytes())


def manifest(rig: Rig, entries: list[SetEntry]) -> dict[str, Any]:
    name = next(e.name for e in entries if e.name.startswith("manifest--"))
    doc: dict[str, Any] = json.loads((rig.out / name).read_bytes())
    return doc


def image(entries: list[SetEntry], disk_id: str) -> SetEntry:
    return next(e for e in entries if e.disk_id == disk_id)


def new_vm(
    engine: BackupEngine,
    *,
    disks: Sequence[tuple[str, int]] = (("root", 4 * MiB), ("data", 2 * MiB)),
) -> Owner:
    vm = engine.add_vm("web01", disks=disks)
    for a in engine.attachments[vm.id]:
        engine.set_disk(vm.id, a.disk.alias, backup="incremental", format="cow")
    return Owner("vm", vm.id, vm.name)


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
    v0 = {d: sha(eng.content(d)) for d in (root, data)}
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
    v1 = {d: sha(eng.content(d)) for d in (root, data)}

    eng.guest_write(root, 3 * MiB, b"\x22" * 5000)
    s2 = await rig.read_set(owner, "incremental")
    m2 = manifest(rig, s2)
    assert m2["parent_set"]["set_id"] == m1["set_id"] and m2["full_set_id"] == full_id
    v2 = {d: sha(eng.content(d)) for d in (root, data)}

    eng.guest_write(data, MiB, b"\x33" * 70_000)
    s3 = await rig.read_set(owner, "differential")
    m3 = manifest(rig, s3)
    assert (m3["set_type"], m3["from_checkpoint_id"], m3["parent_set"]["set_id"]) == (
        "differential",
        m0["to_checkpoint_id"],
        full_id,
    )
    assert read_header(rig.out / image(s3, root).name).backing_file == image(s0, root).name
    v3 = {d: sha(eng.content(d)) for d in (root, data)}

    # every file name differs between sets: all four sets live in one directory
    names = [e.name for s in (s0, s1, s2, s3) for e in s]
    assert len(names) == len(set(names)) == 4 * 5
    for d in (root, data):
        assert chain_top_sha(rig.out / image(s1, d).name) == v1[d]
        assert chain_top_sha(rig.out / image(s2, d).name) == v2[d]
        assert chain_top_sha(rig.out / image(s3, d).name) == v3[d]
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
    assert chain_top_sha(rig.out / image(s4, root).name) == sha(eng.content(root))


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
    assert chain_top_sha(rig.out / image(s2, root).name) == sha(eng.content(root))
    assert all(b.phase == "succeeded" for b in eng.backups.values())


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
    assert sha((rig.out / image(s1, root).name).read_bytes()) == sha(eng.content(root))
    notes = rig.router.status()["incremental"]["notes"]
    assert any("is broken" in n["message"] and n["level"] == "warning" for n in notes)
    assert (
        "start_backup from=None" in eng.calls[-10:]
        or eng.calls.count("start_backup from=None") == 2
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


async def test_raw_disk_gets_full_data_in_every_set(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    eng = rig.engine
    owner = new_vm(eng, disks=[("root", 2 * MiB), ("scratch", 1 * MiB)])
    eng.set_disk(owner.id, "scratch", format="raw", backup="none")
    root, scratch = eng.disk(owner.id, "root").id, eng.disk(owner.id, "scratch").id
    await rig.read_set(owner, "incremental")
    eng.guest_write(root, 0, b"\x01" * 10)
    eng.guest_write(scratch, 4096, b"\x02" * 10)
    s1 = await rig.read_set(owner, "incremental")
    m1 = manifest(rig, s1)
    modes = {d["id"]: (d["backup_mode"], d["file_format"], d["full_reason"]) for d in m1["disks"]}
    assert modes == {root: ("incremental", "qcow2", None), scratch: ("full", "raw", "raw disk")}
    assert image(s1, scratch).size == MiB
    assert sha((rig.out / image(s1, scratch).name).read_bytes()) == sha(eng.content(scratch))
    assert chain_top_sha(rig.out / image(s1, root).name) == sha(eng.content(root))
    # the raw disk came from a snapshot of just that disk, removed again
    assert "create_snapshot" in eng.calls and eng.user_snapshots(owner.id) == []


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
    await router.release(h)
    assert rig.full.opened == ["disk:abc", "disk:abc"] and not rig.engine.backups
    with pytest.raises(NotFound):
        await rig.router.list_incremental(owner, "since", "no-such-checkpoint")
    with pytest.raises(NotFound):
        await rig.router.list_incremental(Owner("template", "t1", "tpl"), "incremental")


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
        assert sha((r.out / image).read_bytes()) == sha(eng.content(root))
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
        assert chain_top_sha(r.out / delta.name) == sha(eng.content(root))

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
    assert sha((rig.out / image(s0, root).name).read_bytes()) == sha(rig.engine.content(root))
    failures.extend([EngineUnavailable("503")] * 3)  # OPEN_TRIES in a row: the set fails
    with pytest.raises(SessionBroken, match="503"):
        await rig.router.list_incremental(owner, "incremental")
