"""The one in-memory fake of the oVirt engine the unit and fs_api tiers run against.

It implements what the VFS inventory (``rhvfs.vfs.backend.EngineInventory``),
the backup sessions (``rhvfs.sessions.core._ports.EngineLike``), the
incremental sessions (``EngineWithBackups``) and the restore sessions
(``rhvfs.sessions.restore._ports.RestoreEngine``) call, over one model:

- every disk is in ``disks``; its bytes are the *active volume*
  ``volumes[active[disk_id]]``; owners (VMs and templates) list theirs in
  ``attachments`` (the engine's disk attachments, as it returns them);
- a snapshot freezes each disk's volume (a new active volume takes later guest
  writes); removing it merges the top back (the old volume id is active again);
- a VM backup freezes each disk at its start (the hybrid model's point in
  time); each checkpoint keeps the 64 KiB clusters written since it was
  created (all bitmaps stay enabled), which the data plane reports as dirty;
- a transfer exposes one volume (``transfer_volume``) until it finishes and
  dies after its inactivity timeout (see ``tests.support.fake_dataplane``);
- slow jobs take ``latency`` seconds of trio's clock (MockClock makes them
  instant); ``calls`` records every engine call by name, in order.

Failure knobs: ``fail_on`` (names of calls that raise ``Conflict``),
``create_snapshot_errors``, ``remove_snapshot_conflicts``,
``slow_snapshot_wait_s``, ``status_sequence``, ``lun_disks``.

Must not: import rhvfs code under test beyond its value types and errors.
"""

from __future__ import annotations

import dataclasses
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import trio

from rhvfs.engine.types import (
    Backup,
    Checkpoint,
    Cluster,
    DataCenter,
    Disk,
    DiskAttachment,
    Host,
    ImageTransfer,
    Nic,
    Snapshot,
    StorageDomain,
    Tag,
    Template,
    Vm,
)
from rhvfs.errors import Conflict, EngineError, NotFound, is_transient
from tests.support.data import MiB, pattern

CLUSTER_ID = "c1c1c1c1-0000-0000-0000-000000000001"
CLUSTER2_ID = "c2"
SD_ID = "5d5d5d5d-0000-0000-0000-000000000001"
SD2_ID = "5d5d5d5d-0000-0000-0000-000000000002"
#: Granularity of the dirty bitmaps of checkpoints (bytes).
CLUSTER = 64 * 1024

_OVF_NS = "http://schemas.dmtf.org/ovf/envelope/1/"
_XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"


@dataclasses.dataclass(frozen=True)
class Latency:
    """Seconds (trio's clock) the fake engine takes for its slow jobs."""

    snapshot_s: float = 0.0  # create/remove a snapshot, start a backup
    transfer_s: float = 0.0  # start/finalize/cancel a transfer, finalize a backup


#: No waiting at all: for tests on the real clock (restores).
INSTANT = Latency()
#: Roughly what an engine takes; use with ``autojump_clock`` (backup sessions).
ENGINE_LIKE = Latency(snapshot_s=1.0, transfer_s=0.5)


def ovf_vm_id(ovf: str) -> str | None:
    """The VM id of an OVF: the ``ovf:id`` of its OperatingSystemSection (as the engine reads it)."""
    try:
        root = ET.fromstring(ovf)
    except ET.ParseError:
        return None
    for section in root.iter():
        if (
            section.tag.rsplit("}", 1)[-1] == "Section"
            and section.get(f"{{{_XSI_NS}}}type") == "ovf:OperatingSystemSection_Type"
        ):
            return section.get(f"{{{_OVF_NS}}}id")
    return None


class FakeEngine:
    """An engine in memory; see the module docstring for its model."""

    def __init__(self, *, sd_available: int = 100 * MiB, latency: Latency = INSTANT) -> None:
        self.latency = latency
        # -- inventory
        self.datacenters: list[DataCenter] = []
        self.clusters = [
            Cluster(id=CLUSTER_ID, name="Default"),
            Cluster(id=CLUSTER2_ID, name="mycluster"),
        ]
        self.hosts: list[Host] = []
        self.sds = [
            StorageDomain(id=SD_ID, name="mydata", available=sd_available),
            StorageDomain(id=SD2_ID, name="other", available=sd_available),
        ]
        self.tags: list[Tag] = []
        self.tagged: dict[str, list[str]] = {}  # tag id -> vm ids
        self.vms: dict[str, Vm] = {}
        self.templates: dict[str, Template] = {}
        self.disks: dict[str, Disk] = {}
        self.attachments: dict[str, list[DiskAttachment]] = {}  # owner id -> attachments
        self.nics: dict[str, list[Nic]] = {}  # owner id -> nics
        self.stop_times: dict[str, str] = {}  # vm id -> <stop_time> of its API XML
        # -- storage
        self.volumes: dict[str, bytearray] = {}
        self.active: dict[str, str] = {}  # disk id -> active volume id
        self.lun_disks: set[str] = set()  # direct LUNs: no volume, never snapshotted
        # -- snapshots
        self.snapshots: dict[str, list[Snapshot]] = {}
        self.snapshot_volumes: dict[str, dict[str, str]] = {}  # snapshot id -> disk -> volume
        # -- backups and checkpoints
        self.backups: dict[str, Backup] = {}
        self.backup_modes: dict[str, dict[str, str]] = {}  # backup -> disk -> full|incremental
        self.backup_dirty: dict[str, dict[str, set[int]]] = {}  # backup -> disk -> clusters
        self.checkpoints: dict[str, list[Checkpoint]] = {}  # vm id -> checkpoints
        self.cp_disks: dict[str, set[str]] = {}  # checkpoint -> disks it covers
        self.dirty: dict[str, dict[str, set[int]]] = {}  # checkpoint -> disk -> clusters
        # -- transfers
        self.transfers: dict[str, ImageTransfer] = {}
        self.transfer_volume: dict[str, str] = {}
        self.transfer_last_use: dict[str, float] = {}
        self.transfer_backup: dict[str, tuple[str, str]] = {}  # transfer -> (backup, disk)
        self.flushes = 0  # imageio flush requests of all uploads
        # -- what restores imported
        self.ovfs: list[tuple[str, str | None, bool]] = []  # (ovf, name, regenerate_ids)
        self.template_ovfs: list[str] = []
        # -- recording and failure knobs
        self.calls: list[str] = []
        self.fail_on: set[str] = set()
        self.create_snapshot_errors: list[EngineError] = []
        self.remove_snapshot_conflicts = 0
        self.slow_snapshot_wait_s = 0.0
        self.status_sequence: dict[str, list[str]] = {}  # vm id -> statuses get_vm returns

    async def _call(self, name: str, *, delay_s: float = 0.0) -> None:
        """Every engine call: take ``delay_s`` (a checkpoint at least), record it, maybe fail."""
        await trio.sleep(delay_s)
        self.calls.append(name)
        if name in self.fail_on:
            raise Conflict(f"injected failure of {name}")

    # -- building the inventory (test side, synchronous) ---------------------------

    def add_disk(
        self,
        alias: str,
        size: int,
        *,
        data: bytes | None = None,
        disk_id: str | None = None,
        image_id: str | None = None,
        **fields: Any,
    ) -> Disk:
        """A disk whose active volume holds ``data`` (zeroes by default); not attached."""
        disk = Disk(
            id=disk_id or str(uuid.uuid4()),
            alias=alias,
            provisioned_size=size,
            image_id=image_id or str(uuid.uuid4()),
            **fields,
        )
        assert disk.image_id is not None
        self.disks[disk.id] = disk
        self.active[disk.id] = disk.image_id
        self.volumes[disk.image_id] = bytearray(data if data is not None else bytes(size))
        return disk

    def add_vm(
        self,
        name: str,
        *,
        status: str = "up",
        disks: Sequence[tuple[str, int]] = (("disk1", 2 * MiB),),
        seed: int = 1,
    ) -> Vm:
        """A VM with one NIC and ``disks`` (alias, size) of deterministic data."""
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
            disk = self.add_disk(
                alias,
                size,
                data=pattern(seed * 100 + i, size),
                actual_size=size // 2,
                format="cow",
                storage_domain_id=SD_ID,
                status="ok",
            )
            atts.append(DiskAttachment(disk=disk, interface="virtio_scsi", bootable=i == 0))
        self.attachments[vm.id] = atts
        self.nics[vm.id] = [
            Nic(id=str(uuid.uuid4()), name="nic1", interface="virtio", mac="56:6f:00:00:00:01")
        ]
        self.snapshots[vm.id] = [
            Snapshot(id=str(uuid.uuid4()), description="Active VM", type="active", status="ok")
        ]
        return vm

    def add_template(self, name: str, *, size: int = 1 * MiB, seed: int = 7) -> Template:
        """A template with one disk of deterministic data."""
        tpl = Template(
            id=str(uuid.uuid4()),
            name=name,
            status="ok",
            cluster_id=CLUSTER_ID,
            creation_time=datetime(2023, 1, 1, tzinfo=UTC),
        )
        self.templates[tpl.id] = tpl
        disk = self.add_disk(
            "tdisk", size, data=pattern(seed, size), actual_size=size, storage_domain_id=SD_ID
        )
        self.attachments[tpl.id] = [DiskAttachment(disk=disk, interface="virtio", bootable=True)]
        self.nics[tpl.id] = []
        return tpl

    def set_disk(self, owner_id: str, alias: str, **changes: Any) -> None:
        """Change fields of the owner's disk called ``alias`` (e.g. ``backup="incremental"``)."""
        atts = []
        for a in self.attachments[owner_id]:
            if a.disk.alias == alias:
                a = dataclasses.replace(a, disk=dataclasses.replace(a.disk, **changes))
                self.disks[a.disk.id] = a.disk
            atts.append(a)
        self.attachments[owner_id] = atts

    # -- looking at the state (test side) -----------------------------------------

    def disk(self, owner_id: str, alias: str) -> Disk:
        return next(a.disk for a in self.attachments[owner_id] if a.disk.alias == alias)

    def disk_ids(self, owner_id: str) -> list[str]:
        return [a.disk.id for a in self.attachments[owner_id]]

    def disk_bytes(self, disk_id: str) -> bytes:
        """What the guest sees on the disk now (its active volume)."""
        return bytes(self.volumes[self.active[disk_id]])

    def guest_write(self, disk_id: str, offset: int, data: bytes) -> None:
        """The guest writes into the active volume; every checkpoint marks the clusters dirty."""
        vol = self.volumes[self.active[disk_id]]
        vol[offset : offset + len(data)] = data
        first, last = offset // CLUSTER, (offset + len(data) - 1) // CLUSTER
        for per_disk in self.dirty.values():
            if disk_id in per_disk:
                per_disk[disk_id].update(range(first, last + 1))

    def user_snapshots(self, vm_id: str) -> list[Snapshot]:
        return [s for s in self.snapshots[vm_id] if s.type != "active"]

    def open_transfers(self) -> list[ImageTransfer]:
        return [t for t in self.transfers.values() if t.phase == "transferring"]

    def expire(self, transfer_id: str) -> None:
        """The engine ends a transfer on its own (inactivity, host trouble)."""
        t = self.transfers[transfer_id]
        self.transfers[transfer_id] = dataclasses.replace(t, phase="finished_failure")

    def drop_checkpoint(self, vm_id: str, cp_id: str) -> None:
        """The checkpoint disappears (e.g. removed by another tool): the chain breaks."""
        self.checkpoints[vm_id] = [c for c in self.checkpoints[vm_id] if c.id != cp_id]

    # -- inventory calls ------------------------------------------------------------

    async def list_datacenters(self) -> list[DataCenter]:
        await self._call("list_datacenters")
        return list(self.datacenters)

    async def list_clusters(self) -> list[Cluster]:
        await self._call("list_clusters")
        return list(self.clusters)

    async def list_hosts(self) -> list[Host]:
        await self._call("list_hosts")
        return list(self.hosts)

    async def list_storage_domains(self) -> list[StorageDomain]:
        await self._call("list_storage_domains")
        return list(self.sds)

    async def list_tags(self) -> list[Tag]:
        await self._call("list_tags")
        return list(self.tags)

    def _vm_now(self, vm_id: str) -> Vm:
        """The VM as the engine shows it: its ``stop_time`` is the one its XML shows."""
        vm = self.vms[vm_id]
        stop = self.stop_times.get(vm_id)
        return dataclasses.replace(vm, stop_time=datetime.fromisoformat(stop)) if stop else vm

    def _inlined(self, owner: Any) -> Any:
        return dataclasses.replace(
            owner,
            disk_attachments=tuple(self._live_attachments(owner.id)),
            nics=tuple(self.nics.get(owner.id, [])),
        )

    async def list_vms(self) -> list[Vm]:
        await self._call("list_vms")
        return [self._vm_now(vm_id) for vm_id in self.vms]

    async def listed_vm(self, vm_id: str) -> Vm:
        """The VM with its attachments and NICs, as one listing call would inline them."""
        await self._call("listed_vm")
        if vm_id not in self.vms:
            raise NotFound(vm_id)
        vm: Vm = self._inlined(self._vm_now(vm_id))
        return vm

    async def get_vm_followed(self, vm_id: str) -> Vm:
        """``get_vm`` with attachments and NICs inlined (made of the three calls it replaces)."""
        vm = await self.get_vm(vm_id)
        atts = await self.disk_attachments(vm_id)
        return dataclasses.replace(
            vm, disk_attachments=tuple(atts), nics=tuple(await self.vm_nics(vm_id))
        )

    async def get_template_followed(self, template_id: str) -> Template:
        tpl = await self.get_template(template_id)
        atts = await self.template_disk_attachments(template_id)
        nics = await self.template_nics(template_id)
        return dataclasses.replace(tpl, disk_attachments=tuple(atts), nics=tuple(nics))

    async def listed_template(self, template_id: str) -> Template:
        await self._call("listed_template")
        if template_id not in self.templates:
            raise NotFound(template_id)
        tpl: Template = self._inlined(self.templates[template_id])
        return tpl

    async def vms_by_tag(self, tag_id: str) -> list[Vm]:
        await self._call("vms_by_tag")
        return [v for v in self.vms.values() if v.id in self.tagged.get(tag_id, [])]

    async def list_templates(self) -> list[Template]:
        await self._call("list_templates")
        return list(self.templates.values())

    async def storage_domain_disks(self, sd_id: str) -> list[Disk]:
        await self._call("storage_domain_disks")
        return [d for d in self.disks.values() if d.storage_domain_id == sd_id]

    async def find_vm(self, name: str) -> Vm | None:
        await self._call("find_vm")
        return next((v for v in self.vms.values() if v.name == name), None)

    async def get_vm(self, vm_id: str) -> Vm:
        await self._call("get_vm")
        seq = self.status_sequence.get(vm_id)
        if seq:
            self.vms[vm_id] = dataclasses.replace(self.vms[vm_id], status=seq.pop(0))
        if vm_id not in self.vms:
            raise NotFound(vm_id)
        return self._vm_now(vm_id)

    async def get_template(self, template_id: str) -> Template:
        await self._call("get_template")
        try:
            return self.templates[template_id]
        except KeyError:
            raise NotFound(template_id) from None

    async def get_disk(self, disk_id: str) -> Disk:
        await self._call("get_disk")
        try:
            return self.disks[disk_id]
        except KeyError:
            raise NotFound(disk_id) from None

    def _live_attachments(self, owner_id: str) -> list[DiskAttachment]:
        """The attachments with each disk's current image id (none for direct LUNs)."""
        return [
            dataclasses.replace(
                a,
                disk=dataclasses.replace(
                    a.disk,
                    image_id=None
                    if a.disk.id in self.lun_disks
                    else self.active.get(a.disk.id, a.disk.image_id),
                ),
            )
            for a in self.attachments.get(owner_id, [])
        ]

    def _snapshotted(self, owner_id: str) -> list[DiskAttachment]:
        """Attachments a snapshot covers: not shareable, not direct LUNs."""
        return [
            a
            for a in self.attachments[owner_id]
            if not a.disk.shareable and a.disk.id not in self.lun_disks
        ]

    async def disk_attachments(self, vm_id: str) -> list[DiskAttachment]:
        await self._call("disk_attachments")
        return self._live_attachments(vm_id)

    async def template_disk_attachments(self, template_id: str) -> list[DiskAttachment]:
        await self._call("template_disk_attachments")
        return self._live_attachments(template_id)

    async def vm_nics(self, vm_id: str) -> list[Nic]:
        await self._call("vm_nics")
        return list(self.nics.get(vm_id, []))

    async def template_nics(self, template_id: str) -> list[Nic]:
        await self._call("template_nics")
        return list(self.nics.get(template_id, []))

    # -- configuration files ----------------------------------------------------------

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
        await self._call("vm_ovf")
        return self._ovf(vm_id)

    async def vm_xml(self, vm_id: str) -> bytes:
        await self._call("vm_xml")
        vm = self.vms[vm_id]
        stop = (
            f"<stop_time>{self.stop_times[vm_id]}</stop_time>" if vm_id in self.stop_times else ""
        )
        return f"<?xml version='1.0' encoding='UTF-8'?>\n<vm id='{vm.id}'><name>{vm.name}</name><status>{vm.status}</status>{stop}</vm>\n".encode()

    async def vm_config(self, vm_id: str) -> tuple[str | None, bytes]:
        """(OVF, XML); the OVF None when ``vm_ovf`` refuses (not 404, not transient), as the
        XML of an engine without an OVF for the VM carries none."""
        return await _no_ovf_as_none(self.vm_ovf(vm_id)), await self.vm_xml(vm_id)

    async def template_config(self, template_id: str) -> tuple[str | None, bytes]:
        return await _no_ovf_as_none(self.template_ovf(template_id)), await self.template_xml(
            template_id
        )

    async def template_ovf(self, template_id: str) -> str:
        await self._call("template_ovf")
        return self._ovf(template_id)

    async def template_xml(self, template_id: str) -> bytes:
        await self._call("template_xml")
        return f"<template id='{template_id}'/>".encode()

    # -- snapshots ----------------------------------------------------------------------

    async def create_snapshot(
        self,
        vm_id: str,
        *,
        description: str,
        persist_memorystate: bool = False,
        disk_ids: list[str] | None = None,
    ) -> Snapshot:
        # With slow_snapshot_wait_s the snapshot exists at once, then a long wait for
        # "ok": a caller cancelled meanwhile never learns the id.
        await self._call(
            "create_snapshot", delay_s=0.0 if self.slow_snapshot_wait_s else self.latency.snapshot_s
        )
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
            await trio.sleep(self.slow_snapshot_wait_s)
        return snap

    async def list_snapshots(self, vm_id: str) -> list[Snapshot]:
        await self._call("list_snapshots")
        if vm_id not in self.snapshots:
            raise NotFound(vm_id)
        return list(self.snapshots[vm_id])

    async def snapshot_disks(self, vm_id: str, snapshot_id: str) -> list[Disk]:
        await self._call("snapshot_disks")
        mapping = self.snapshot_volumes[snapshot_id]
        return [
            dataclasses.replace(a.disk, image_id=mapping[a.disk.id], actual_size=4096)
            for a in self._snapshotted(vm_id)
        ]

    async def snapshot_ovf(self, vm_id: str, snapshot_id: str) -> str | None:
        await self._call("snapshot_ovf")
        return self._ovf(vm_id)

    async def remove_snapshot(self, vm_id: str, snapshot_id: str) -> None:
        await self._call("remove_snapshot", delay_s=self.latency.snapshot_s)
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

    async def list_all_snapshots_with_description_prefix(
        self, prefix: str
    ) -> list[tuple[str, Snapshot]]:
        await self._call("list_all_snapshots_with_description_prefix")
        return [
            (vm_id, s)
            for vm_id, snaps in self.snapshots.items()
            for s in snaps
            if s.description.startswith(prefix) and s.type != "active"
        ]

    # -- backups and checkpoints ----------------------------------------------------------

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
        await self._call(f"start_backup from={from_checkpoint_id}", delay_s=self.latency.snapshot_s)
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
        await self._call("backup_disks")
        disks = {a.disk.id: a.disk for a in self.attachments[vm_id]}
        return [
            dataclasses.replace(disks[d], backup_mode=m)
            for d, m in self.backup_modes[backup_id].items()
        ]

    async def finalize_backup(self, vm_id: str, backup_id: str) -> None:
        await self._call("finalize_backup", delay_s=self.latency.transfer_s)
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
        await self._call("list_checkpoints")
        return list(self.checkpoints.get(vm_id, []))

    # -- transfers --------------------------------------------------------------------------

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
        await self._call("start_transfer", delay_s=self.latency.transfer_s)
        assert direction in ("download", "upload") and format == "raw"
        if backup_id is not None:
            assert disk_id is not None and self.backups[backup_id].phase == "ready"
            vol = f"bk-{backup_id}-{disk_id}"
        elif snapshot_image_id is not None:
            vol = snapshot_image_id
        else:
            assert disk_id is not None
            vol = self.active[disk_id]
        tid = transfer_id or str(uuid.uuid4())
        t = ImageTransfer(
            id=tid,
            phase="transferring",
            direction=direction,
            format=format,
            transfer_url=f"fake://{tid}",
            disk_id=disk_id,
            inactivity_timeout=inactivity_timeout,
        )
        self.transfers[tid] = t
        self.transfer_volume[tid] = vol
        self.transfer_last_use[tid] = trio.current_time()
        if backup_id is not None:
            assert disk_id is not None
            self.transfer_backup[tid] = (backup_id, disk_id)
        return t

    def _transfer(self, transfer_id: str) -> ImageTransfer:
        try:
            return self.transfers[transfer_id]
        except KeyError:
            raise NotFound(transfer_id) from None

    async def get_transfer(self, transfer_id: str) -> ImageTransfer:
        await self._call("get_transfer")
        return self._transfer(transfer_id)

    async def list_transfers(self) -> list[ImageTransfer]:
        await self._call("list_transfers")
        return list(self.transfers.values())

    async def finalize_transfer(self, transfer_id: str) -> None:
        await self._call("finalize_transfer", delay_s=self.latency.transfer_s)
        t = self._transfer(transfer_id)
        if t.phase == "transferring":
            self.transfers[transfer_id] = dataclasses.replace(t, phase="finished_success")
        elif t.phase == "finished_failure":
            raise EngineError(f"transfer {transfer_id} failed")

    async def cancel_transfer(self, transfer_id: str) -> None:
        await self._call("cancel_transfer", delay_s=self.latency.transfer_s)
        t = self._transfer(transfer_id)
        if t.phase == "transferring":
            self.transfers[transfer_id] = dataclasses.replace(t, phase="finished_failure")
        if t.direction == "upload" and t.disk_id is not None:
            self._drop_disk(t.disk_id)  # a failed upload removes its disk

    # -- restoring: disks, VMs, templates --------------------------------------------------

    def _drop_disk(self, disk_id: str) -> None:
        self.disks.pop(disk_id, None)
        vol = self.active.pop(disk_id, None)
        if vol is not None:
            self.volumes.pop(vol, None)

    async def create_disk(
        self,
        *,
        alias: str,
        provisioned_size: int,
        format: str,
        sparse: bool,
        storage_domain: str,
        disk_id: str | None = None,
        backup: str | None = None,
        description: str = "",
        content_type: str = "data",
    ) -> Disk:
        await self._call("create_disk")
        if disk_id is not None and disk_id in self.disks:
            raise Conflict(f"disk {disk_id} exists")
        return self.add_disk(
            alias,
            provisioned_size,
            disk_id=disk_id,
            format=format,
            sparse=sparse,
            status="ok",
            storage_domain_id=storage_domain,
            backup=backup,
            description=description,
        )

    async def update_disk_description(self, disk_id: str, description: str) -> Disk:
        await self._call("update_disk_description")
        if disk_id not in self.disks:
            raise NotFound(disk_id)
        self.disks[disk_id] = dataclasses.replace(self.disks[disk_id], description=description)
        return self.disks[disk_id]

    async def remove_disk(self, disk_id: str) -> None:
        await self._call("remove_disk")
        if disk_id not in self.disks:
            raise NotFound(disk_id)
        self._drop_disk(disk_id)

    async def create_vm_from_ovf(
        self,
        *,
        ovf: str,
        cluster: str,
        name: str | None = None,
        regenerate_ids: bool = False,
        comment: str = "",
    ) -> Vm:
        await self._call("create_vm_from_ovf")
        vm_id = None if regenerate_ids else ovf_vm_id(ovf)
        vm_id = vm_id or str(uuid.uuid4())
        if vm_id in self.vms:
            raise Conflict(f"vm id {vm_id} exists")
        if any(v.name == name for v in self.vms.values()):
            raise Conflict(f"vm name {name} exists")
        self.ovfs.append((ovf, name, regenerate_ids))
        cid = next(c.id for c in self.clusters if cluster in (c.id, c.name))
        vm = Vm(id=vm_id, name=name or "x", status="down", cluster_id=cid, comment=comment)
        self.vms[vm_id] = vm
        self.attachments[vm_id] = []
        self.nics[vm_id] = []
        return vm

    async def attach_disk(
        self, vm_id: str, disk_id: str, *, interface: str, bootable: bool, active: bool
    ) -> DiskAttachment:
        await self._call("attach_disk")
        att = DiskAttachment(
            disk=self.disks[disk_id], interface=interface, bootable=bootable, active=active
        )
        self.attachments[vm_id].append(att)
        return att

    async def add_nic(
        self, vm_id: str, *, name: str, interface: str, mac: str | None, vnic_profile_id: str | None
    ) -> Nic:
        await self._call("add_nic")
        if mac and any(n.mac == mac for nics in self.nics.values() for n in nics):
            raise Conflict(f"MAC Address {mac} is already in use")
        nic = Nic(
            id=str(uuid.uuid4()),
            name=name,
            interface=interface,
            mac=mac or f"56:6f:99:99:99:{len(self.nics):02x}",
            vnic_profile_id=vnic_profile_id,
        )
        self.nics[vm_id].append(nic)
        return nic

    async def remove_vm(self, vm_id: str) -> None:
        """The VM goes, with its disks and NICs (refused while it runs, like the engine)."""
        await self._call("remove_vm")
        if vm_id not in self.vms:
            raise NotFound(vm_id)
        if self.vms[vm_id].status != "down":
            raise Conflict(f"Cannot remove VM. VM {self.vms[vm_id].name} is running.")
        self.vms.pop(vm_id)
        self.nics.pop(vm_id, None)
        for att in self.attachments.pop(vm_id, []):
            self._drop_disk(att.disk.id)

    async def start_vm(self, vm_id: str) -> Vm:
        await self._call("start_vm")
        self.vms[vm_id] = dataclasses.replace(self.vms[vm_id], status="up")
        return self.vms[vm_id]

    async def stop_vm(self, vm_id: str) -> Vm:
        await self._call("stop_vm")
        self.vms[vm_id] = dataclasses.replace(self.vms[vm_id], status="down")
        return self.vms[vm_id]

    async def update_vm_comment(self, vm_id: str, comment: str) -> Vm:
        await self._call("update_vm_comment")
        if vm_id not in self.vms:
            raise NotFound(vm_id)
        self.vms[vm_id] = dataclasses.replace(self.vms[vm_id], comment=comment)
        return self.vms[vm_id]

    async def rename_vm(self, vm_id: str, name: str) -> Vm:
        await self._call("rename_vm")
        if any(v.name == name and v.id != vm_id for v in self.vms.values()):
            raise Conflict(f"vm name {name} exists")
        self.vms[vm_id] = dataclasses.replace(self.vms[vm_id], name=name)
        return self.vms[vm_id]

    async def update_nic(
        self, vm_id: str, nic_id: str, *, mac: str | None = None, plugged: bool | None = None
    ) -> Nic:
        """The engine's rules: a new MAC must be free, and cannot be set on a NIC plugged
        into a running VM."""
        await self._call("update_nic")
        nics = self.nics[vm_id]
        i = next(i for i, n in enumerate(nics) if n.id == nic_id)
        n = nics[i]
        new_mac = mac or n.mac
        now_plugged = n.plugged if plugged is None else plugged
        if new_mac != n.mac:
            if any(o.mac == new_mac for owned in self.nics.values() for o in owned):
                raise Conflict(f"MAC Address {new_mac} is already in use")
            if self.vms[vm_id].status == "up" and n.plugged and now_plugged:
                raise Conflict("the MAC of a NIC plugged into a running VM cannot change")
        nics[i] = dataclasses.replace(n, mac=new_mac, plugged=now_plugged)
        return nics[i]

    async def create_template(self, *, vm_id: str, name: str, comment: str = "") -> Template:
        await self._call("create_template")
        tpl = Template(id=str(uuid.uuid4()), name=name, status="ok", comment=comment)
        self.templates[tpl.id] = tpl
        return tpl

    async def update_template_comment(self, template_id: str, comment: str) -> Template:
        await self._call("update_template_comment")
        if template_id not in self.templates:
            raise NotFound(template_id)
        self.templates[template_id] = dataclasses.replace(
            self.templates[template_id], comment=comment
        )
        return self.templates[template_id]

    async def remove_template(self, template_id: str) -> None:
        """The template goes, with its disks."""
        await self._call("remove_template")
        self.templates.pop(template_id, None)
        for att in self.attachments.pop(template_id, []):
            self._drop_disk(att.disk.id)

    async def create_template_from_ovf(
        self, *, ovf: str, cluster: str, name: str | None = None, comment: str = ""
    ) -> Template:
        """A template that takes every unattached disk the OVF names."""
        await self._call("create_template_from_ovf")
        tpl = Template(id=str(uuid.uuid4()), name=name or "t", status="ok", comment=comment)
        self.templates[tpl.id] = tpl
        used = {a.disk.id for atts in self.attachments.values() for a in atts}
        self.attachments[tpl.id] = [
            DiskAttachment(disk=d, interface="virtio_scsi", bootable=False)
            for d in self.disks.values()
            if d.id in ovf and d.id not in used
        ]
        self.template_ovfs.append(ovf)
        return tpl


# -- the inventory the VFS tests browse ----------------------------------------------------

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
DC = DataCenter(id="dc-1", name="Default", status="up")
CL1 = Cluster(id="cl-1", name="Default", datacenter_id="dc-1")
CL2 = Cluster(id="cl-2", name="mycluster", datacenter_id="dc-1")
HOST = Host(id="host-1", name="host1", address="localhost", status="up", cluster_id="cl-1")
SD = StorageDomain(
    id="sd-1", name="mydata", type="data", available=5 << 30, used=1 << 30, datacenter_ids=("dc-1",)
)
TAGS = [Tag(id="tag-1", name="bkup"), Tag(id="tag-2", name="other")]
VMS = [
    Vm(id="vm-1", name="myvm", status="down", cluster_id="cl-1", creation_time=T0),
    Vm(id="vm-2", name="runvm", status="up", cluster_id="cl-2", host_id="host-1", creation_time=T0),
    Vm(id="vm-3", name="odd/name", status="down", cluster_id="cl-1", creation_time=T0),
    Vm(id="vm-4", name="sleepy", status="suspended", cluster_id="cl-1", creation_time=T0),
]
TAGGED = {"tag-1": ["vm-1", "vm-3"], "tag-2": []}
TEMPLATES = [
    Template(id="tpl-1", name="mytemplate", status="ok", cluster_id="cl-1", creation_time=T0)
]
DISK_SIZE = 3 * 1024 * 1024 + 4096  # not a multiple of the read size: EOF handling matters


async def _no_ovf_as_none(call: Any) -> str | None:
    try:
        ovf: str = await call
    except NotFound:
        raise
    except EngineError as e:
        if is_transient(e):
            raise
        return None
    return ovf


def inventory_disk(vm_id: str, n: int) -> Disk:
    """Disk ``n`` (0..2) of a VM of the browsing inventory; aliases repeat on purpose."""
    return Disk(
        id=f"{vm_id}-d{n}",
        alias="disk" if n < 2 else "data",
        provisioned_size=DISK_SIZE,
        actual_size=1 << 20,
        storage_domain_id="sd-1",
        image_id=f"{vm_id}-d{n}-img",
    )


def inventory_engine() -> FakeEngine:
    """An engine to browse: one data center, two clusters, a host, a storage domain,
    two tags, four VMs (down, up, a ``/`` in the name, suspended) of three disks
    and one NIC each, and a template.

    Inventory only: the disks hold no volume data (the VFS tests read images
    through ``tests.support.fake_backups.FakeBackups``).
    """
    engine = FakeEngine()
    engine.datacenters = [DC]
    engine.clusters = [CL1, CL2]
    engine.hosts = [HOST]
    engine.sds = [SD]
    engine.tags = list(TAGS)
    engine.tagged = {k: list(v) for k, v in TAGGED.items()}
    for vm in VMS:
        engine.vms[vm.id] = vm
        disks = [inventory_disk(vm.id, n) for n in range(3)]
        for d in disks:
            engine.disks[d.id] = d
            assert d.image_id is not None
            engine.active[d.id] = d.image_id
        engine.attachments[vm.id] = [
            DiskAttachment(disk=d, interface="virtio_scsi", bootable=n == 0)
            for n, d in enumerate(disks)
        ]
        engine.nics[vm.id] = [Nic(id=f"{vm.id}-nic", name="nic1", mac="56:6f:00:00:00:01")]
    for tpl in TEMPLATES:
        engine.templates[tpl.id] = tpl
    return engine
