"""Fakes of the engine, imageio and the block reader for the backup-session unit tests.

The fake engine models what sessions rely on: snapshots freeze a disk's
volume (a new active volume takes later guest writes), transfers expose one
volume until they finish, and an idle transfer dies after its inactivity
timeout (measured on trio's clock, so MockClock tests run instantly).
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import trio

from rhvfs.config import Config
from rhvfs.engine.types import (
    Cluster,
    Disk,
    DiskAttachment,
    ImageTransfer,
    Nic,
    Snapshot,
    StorageDomain,
    Template,
    Vm,
)
from rhvfs.errors import Conflict, EngineError, NotFound, TicketGone
from rhvfs.sessions.core._ports import BlockSource

MiB = 1024 * 1024
SD_ID = "sd-0000-1111"
CLUSTER_ID = "cl-0000-2222"


def pattern(seed: int, size: int) -> bytes:
    """Deterministic pseudo-random bytes."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_config(**overrides: Any) -> Config:
    values: dict[str, Any] = dict(
        engine_url="https://engine.example:8443",
        username="admin@internal",
        password="secret",
        system_tries=3,
        system_interval=0.5,
        system_timeout=30.0,
        grace_period=10.0,
        inactivity_timeout=60,
        prefetch_memory=64 * MiB,
        prefetch_streams=4,
    )
    values.update(overrides)
    return Config(**values)


class FakeEngine:
    def __init__(self) -> None:
        self.vms: dict[str, Vm] = {}
        self.templates: dict[str, Template] = {}
        self.attachments: dict[str, list[DiskAttachment]] = {}
        self.nics: dict[str, list[Nic]] = {}
        self.volumes: dict[str, bytearray] = {}
        self.active: dict[str, str] = {}  # disk id -> active volume id
        self.snapshots: dict[str, list[Snapshot]] = {}
        self.snapshot_volumes: dict[str, dict[str, str]] = {}  # snapshot id -> disk -> volume
        self.transfers: dict[str, ImageTransfer] = {}
        self.transfer_volume: dict[str, str] = {}
        self.transfer_last_use: dict[str, float] = {}
        self.calls: list[str] = []
        self.create_snapshot_errors: list[EngineError] = []
        self.remove_snapshot_conflicts = 0
        self.slow_snapshot_wait_s = 0.0
        self.lun_disks: set[str] = set()
        self.stop_times: dict[str, str] = {}
        self.status_sequence: dict[str, list[str]] = {}

    # -- building the inventory -------------------------------------------------

    def add_vm(
        self,
        name: str,
        *,
        status: str = "up",
        disks: Sequence[tuple[str, int]] = (("disk1", 2 * MiB),),
        seed: int = 1,
    ) -> Vm:
        vm = Vm(
            id=str(uuid.uuid4()),
            name=name,
            status=status,
            cluster_id=CLUSTER_ID,
            creation_time=datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
            memory=1 << 30,
        )
        self.vms[vm.id] = vm
        atts = []
        for i, (alias, size) in enumerate(disks):
            disk_id = str(uuid.uuid4())
            vol = str(uuid.uuid4())
            self.volumes[vol] = bytearray(pattern(seed * 100 + i, size))
            self.active[disk_id] = vol
            atts.append(
                DiskAttachment(
                    disk=Disk(
                        id=disk_id,
                        alias=alias,
                        provisioned_size=size,
                        actual_size=size // 2,
                        format="cow",
                        image_id=vol,
                        storage_domain_id=SD_ID,
                        status="ok",
                    ),
                    interface="virtio_scsi",
                    bootable=i == 0,
                )
            )
        self.attachments[vm.id] = atts
        self.nics[vm.id] = [
            Nic(id=str(uuid.uuid4()), name="nic1", interface="virtio", mac="56:6f:00:00:00:01")
        ]
        self.snapshots[vm.id] = [
            Snapshot(id=str(uuid.uuid4()), description="Active VM", type="active", status="ok")
        ]
        return vm

    def add_template(self, name: str, *, size: int = 1 * MiB, seed: int = 7) -> Template:
        tpl = Template(
            id=str(uuid.uuid4()),
            name=name,
            status="ok",
            cluster_id=CLUSTER_ID,
            creation_time=datetime(2023, 1, 1, tzinfo=UTC),
        )
        self.templates[tpl.id] = tpl
        disk_id, vol = str(uuid.uuid4()), str(uuid.uuid4())
        self.volumes[vol] = bytearray(pattern(seed, size))
        self.active[disk_id] = vol
        self.attachments[tpl.id] = [
            DiskAttachment(
                disk=Disk(
                    id=disk_id,
                    alias="tdisk",
                    provisioned_size=size,
                    actual_size=size,
                    image_id=vol,
                    storage_domain_id=SD_ID,
                ),
                interface="virtio",
                bootable=True,
            )
        ]
        self.nics[tpl.id] = []
        return tpl

    def disk_ids(self, owner_id: str) -> list[str]:
        return [a.disk.id for a in self.attachments[owner_id]]

    def guest_write(self, disk_id: str, offset: int, data: bytes) -> None:
        vol = self.volumes[self.active[disk_id]]
        vol[offset : offset + len(data)] = data

    def user_snapshots(self, vm_id: str) -> list[Snapshot]:
        return [s for s in self.snapshots[vm_id] if s.type != "active"]

    def open_transfers(self) -> list[ImageTransfer]:
        return [t for t in self.transfers.values() if t.phase == "transferring"]

    def expire(self, transfer_id: str) -> None:
        t = self.transfers[transfer_id]
        self.transfers[transfer_id] = dataclasses.replace(t, phase="finished_failure")

    # -- EngineLike ---------------------------------------------------------------

    async def get_vm(self, vm_id: str) -> Vm:
        await trio.lowlevel.checkpoint()
        self.calls.append("get_vm")
        seq = self.status_sequence.get(vm_id)
        if seq:
            self.vms[vm_id] = dataclasses.replace(self.vms[vm_id], status=seq.pop(0))
        try:
            return self.vms[vm_id]
        except KeyError:
            raise NotFound(vm_id) from None

    async def get_template(self, template_id: str) -> Template:
        await trio.lowlevel.checkpoint()
        return self.templates[template_id]

    def _live_attachments(self, owner_id: str) -> list[DiskAttachment]:
        return [
            dataclasses.replace(
                a,
                disk=dataclasses.replace(
                    a.disk, image_id=None if a.disk.id in self.lun_disks else self.active[a.disk.id]
                ),
            )
            for a in self.attachments[owner_id]
        ]

    def _snapshotted(self, owner_id: str) -> list[DiskAttachment]:
        """Attachments a snapshot covers: not shareable, not direct LUNs."""
        return [
            a
            for a in self.attachments[owner_id]
            if not a.disk.shareable and a.disk.id not in self.lun_disks
        ]

    async def disk_attachments(self, vm_id: str) -> list[DiskAttachment]:
        await trio.lowlevel.checkpoint()
        self.calls.append("disk_attachments")
        return self._live_attachments(vm_id)

    async def template_disk_attachments(self, template_id: str) -> list[DiskAttachment]:
        await trio.lowlevel.checkpoint()
        return self._live_attachments(template_id)

    async def vm_nics(self, vm_id: str) -> list[Nic]:
        await trio.lowlevel.checkpoint()
        return list(self.nics[vm_id])

    async def template_nics(self, template_id: str) -> list[Nic]:
        await trio.lowlevel.checkpoint()
        return list(self.nics[template_id])

    async def list_clusters(self) -> list[Cluster]:
        await trio.lowlevel.checkpoint()
        return [Cluster(id=CLUSTER_ID, name="Default")]

    async def list_storage_domains(self) -> list[StorageDomain]:
        await trio.lowlevel.checkpoint()
        return [StorageDomain(id=SD_ID, name="mydata")]

    def _ovf(self, owner_id: str) -> str:
        snaps = "".join(
            f"<Snapshot ovf:id='{s.id}'><Description>{s.description}</Description></Snapshot>"
            for s in self.snapshots.get(owner_id, [])
        )
        disks = "".join(
            f"<Disk ovf:diskId='{self.active[a.disk.id]}' ovf:disk-alias='{a.disk.alias}'/>"
            for a in self.attachments[owner_id]
        )
        return f"<?xml version='1.0' encoding='UTF-8'?><ovf:Envelope xmlns:ovf='http://schemas.dmtf.org/ovf/envelope/1/'>{disks}{snaps}</ovf:Envelope>"

    async def vm_ovf(self, vm_id: str) -> str:
        await trio.lowlevel.checkpoint()
        return self._ovf(vm_id)

    async def vm_xml(self, vm_id: str) -> bytes:
        await trio.lowlevel.checkpoint()
        vm = self.vms[vm_id]
        stop = (
            f"<stop_time>{self.stop_times[vm_id]}</stop_time>" if vm_id in self.stop_times else ""
        )
        return f"<?xml version='1.0' encoding='UTF-8'?>\n<vm id='{vm.id}'><name>{vm.name}</name><status>{vm.status}</status>{stop}</vm>\n".encode()

    async def template_ovf(self, template_id: str) -> str:
        await trio.lowlevel.checkpoint()
        return self._ovf(template_id)

    async def template_xml(self, template_id: str) -> bytes:
        await trio.lowlevel.checkpoint()
        return f"<template id='{template_id}'/>".encode()

    async def create_snapshot(
        self,
        vm_id: str,
        *,
        description: str,
        persist_memorystate: bool = False,
        disk_ids: list[str] | None = None,
    ) -> Snapshot:
        if not self.slow_snapshot_wait_s:
            await trio.sleep(1)  # the engine takes a while
        self.calls.append("create_snapshot")
        if self.create_snapshot_errors:
            raise self.create_snapshot_errors.pop(0)
        snap = Snapshot(
            id=str(uuid.uuid4()),
            description=description,
            status="ok",
            type="regular",
            persist_memorystate=persist_memorystate,
            vm_id=vm_id,
            date=datetime.now(UTC),
        )
        mapping = {}
        for att in self._snapshotted(vm_id):
            old = self.active[att.disk.id]
            new = str(uuid.uuid4())
            self.volumes[new] = bytearray(self.volumes[old])
            self.active[att.disk.id] = new
            mapping[att.disk.id] = old
        self.snapshots[vm_id].append(snap)
        self.snapshot_volumes[snap.id] = mapping
        if self.slow_snapshot_wait_s:
            # Created at once, then a long wait for "ok": a caller cancelled meanwhile
            # never learns the id.
            await trio.sleep(self.slow_snapshot_wait_s)
        return snap

    async def list_snapshots(self, vm_id: str) -> list[Snapshot]:
        await trio.lowlevel.checkpoint()
        if vm_id not in self.snapshots:
            raise NotFound(vm_id)
        return list(self.snapshots[vm_id])

    async def snapshot_disks(self, vm_id: str, snapshot_id: str) -> list[Disk]:
        await trio.lowlevel.checkpoint()
        mapping = self.snapshot_volumes[snapshot_id]
        return [
            dataclasses.replace(a.disk, image_id=mapping[a.disk.id], actual_size=4096)
            for a in self._snapshotted(vm_id)
        ]

    async def snapshot_ovf(self, vm_id: str, snapshot_id: str) -> str | None:
        await trio.lowlevel.checkpoint()
        return self._ovf(vm_id)

    async def remove_snapshot(self, vm_id: str, snapshot_id: str) -> None:
        await trio.sleep(1)
        self.calls.append("remove_snapshot")
        snaps = self.snapshots[vm_id]
        snap = next((s for s in snaps if s.id == snapshot_id), None)
        if snap is None:
            raise NotFound(snapshot_id)
        if self.remove_snapshot_conflicts:
            self.remove_snapshot_conflicts -= 1
            raise Conflict("snapshot is locked")
        busy = [
            t
            for t, v in self.transfer_volume.items()
            if v in self.snapshot_volumes.get(snapshot_id, {}).values()
            and self.transfers[t].phase == "transferring"
        ]
        if busy:
            raise Conflict(f"disk locked by transfers {busy}")
        # Backward merge: the old volume survives and becomes active again.
        for disk_id, old in self.snapshot_volumes.pop(snapshot_id, {}).items():
            top = self.active[disk_id]
            self.volumes[old] = self.volumes.pop(top)
            self.active[disk_id] = old
        self.snapshots[vm_id] = [s for s in snaps if s.id != snapshot_id]

    async def start_transfer(
        self,
        *,
        disk_id: str | None = None,
        snapshot_image_id: str | None = None,
        backup_id: str | None = None,
        direction: str = "download",
        format: str = "raw",
        inactivity_timeout: int = 60,
        timeout_policy: str = "legacy",
        shallow: bool = False,
        transfer_id: str | None = None,
    ) -> ImageTransfer:
        await trio.sleep(0.5)
        self.calls.append("start_transfer")
        assert direction == "download" and format == "raw"
        vol = snapshot_image_id if snapshot_image_id is not None else self.active[disk_id or ""]
        tid = transfer_id or str(uuid.uuid4())
        t = ImageTransfer(
            id=tid,
            phase="transferring",
            direction=direction,
            format=format,
            transfer_url=f"fake://{tid}",
            inactivity_timeout=inactivity_timeout,
        )
        self.transfers[tid] = t
        self.transfer_volume[tid] = vol
        self.transfer_last_use[tid] = trio.current_time()
        return t

    async def get_transfer(self, transfer_id: str) -> ImageTransfer:
        await trio.lowlevel.checkpoint()
        try:
            return self.transfers[transfer_id]
        except KeyError:
            raise NotFound(transfer_id) from None

    async def finalize_transfer(self, transfer_id: str) -> None:
        await trio.sleep(0.5)
        self.calls.append("finalize_transfer")
        t = await self.get_transfer(transfer_id)
        if t.phase == "transferring":
            self.transfers[transfer_id] = dataclasses.replace(t, phase="finished_success")
        elif t.phase == "finished_failure":
            raise EngineError(f"transfer {transfer_id} failed")

    async def cancel_transfer(self, transfer_id: str) -> None:
        await trio.sleep(0.5)
        self.calls.append("cancel_transfer")
        t = await self.get_transfer(transfer_id)
        if t.phase == "transferring":
            self.transfers[transfer_id] = dataclasses.replace(t, phase="finished_failure")

    async def list_all_snapshots_with_description_prefix(
        self, prefix: str
    ) -> list[tuple[str, Snapshot]]:
        await trio.lowlevel.checkpoint()
        return [
            (vm_id, s)
            for vm_id, snaps in self.snapshots.items()
            for s in snaps
            if s.description.startswith(prefix) and s.type != "active"
        ]


class FakeClient:
    """An imageio client over one fake transfer; 403 (TicketGone) once the transfer is over."""

    def __init__(self, engine: FakeEngine, transfer_id: str) -> None:
        self.engine = engine
        self.transfer_id = transfer_id
        self.capabilities = SimpleNamespace(
            max_readers=8, max_writers=1, features=frozenset({"extents"})
        )
        self.reads: list[tuple[int, int]] = []
        self.closed = False

    def _check(self) -> None:
        t = self.engine.transfers[self.transfer_id]
        idle = trio.current_time() - self.engine.transfer_last_use[self.transfer_id]
        if t.phase == "transferring" and t.inactivity_timeout and idle > t.inactivity_timeout:
            self.engine.expire(self.transfer_id)  # the engine cancels idle transfers
            t = self.engine.transfers[self.transfer_id]
        if t.phase != "transferring":
            raise TicketGone(f"ticket of transfer {self.transfer_id} is gone")
        self.engine.transfer_last_use[self.transfer_id] = trio.current_time()

    async def extents(self) -> list[Any]:
        await trio.lowlevel.checkpoint()
        self._check()
        size = len(self.engine.volumes[self.engine.transfer_volume[self.transfer_id]])
        return [SimpleNamespace(start=0, length=size, zero=False, hole=False)]

    async def read_into(self, offset: int, buf: memoryview) -> None:
        await trio.sleep(0.01)
        self._check()
        vol = self.engine.volumes[self.engine.transfer_volume[self.transfer_id]]
        data = vol[offset : offset + len(buf)]
        assert len(data) == len(buf)
        buf[:] = data
        self.reads.append((offset, len(buf)))


class FakeDataPlane:
    """``imageio_opener`` + ``reader_factory`` for BackupManager, recording what was opened."""

    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.clients: list[FakeClient] = []
        self.readers: list[FakeReader] = []
        self.crash_next_reader = False

    def opener(self, url: str) -> Any:
        @asynccontextmanager
        async def cm() -> AsyncIterator[FakeClient]:
            client = FakeClient(self.engine, url.removeprefix("fake://"))
            self.clients.append(client)
            try:
                yield client
            finally:
                client.closed = True

        return cm()

    async def reader_factory(
        self,
        source: BlockSource,
        *,
        size: int,
        extents: Sequence[Any],
        memory_budget: int,
        streams: int,
        nursery: Any,
    ) -> FakeReader:
        reader = FakeReader(source, size=size, memory_budget=memory_budget, streams=streams)
        self.readers.append(reader)
        if self.crash_next_reader:
            self.crash_next_reader = False

            async def worker_bug() -> None:
                await trio.sleep(1)
                raise RuntimeError("bug in a prefetch worker")

            nursery.start_soon(worker_bug)
        return reader


class FakeReader:
    def __init__(self, source: BlockSource, *, size: int, memory_budget: int, streams: int) -> None:
        self.source = source
        self.size = size
        self.memory_budget = memory_budget
        self.streams = streams
        self.closed = False
        self.fetched = 0
        self.forgotten: list[int] = []

    async def read(self, offset: int, size: int, *, handle_id: int) -> bytes:
        size = max(0, min(size, self.size - offset))
        buf = bytearray(size)
        await self.source.read_into(offset, memoryview(buf))
        self.fetched += size
        return bytes(buf)

    def forget_handle(self, handle_id: int) -> None:
        self.forgotten.append(handle_id)

    def statistics(self) -> Any:
        return SimpleNamespace(bytes_fetched=self.fetched, requests=0)

    async def aclose(self) -> None:
        self.closed = True


async def test_fake_engine_snapshot_freezes_volume() -> None:
    eng = FakeEngine()
    vm = eng.add_vm("v", disks=[("a", 8192)])
    disk_id = eng.disk_ids(vm.id)[0]
    before = bytes(eng.volumes[eng.active[disk_id]])
    snap = await eng.create_snapshot(vm.id, description="x")
    eng.guest_write(disk_id, 0, b"\xff" * 16)
    (sdisk,) = await eng.snapshot_disks(vm.id, snap.id)
    assert bytes(eng.volumes[sdisk.image_id or ""]) == before
    await eng.remove_snapshot(vm.id, snap.id)
    assert eng.active[disk_id] == sdisk.image_id
    assert bytes(eng.volumes[sdisk.image_id])[:16] == b"\xff" * 16
