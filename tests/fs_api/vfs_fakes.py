"""Small fakes of the engine inventory and of BackupManager, for VFS tests.

Not a simulator: just enough inventory to shape the tree, call counters to
check the bounded-calls promise, and deterministic image bytes to check data.
"""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import UTC, datetime
from typing import Any

from rhvfs.engine.types import (
    Cluster,
    DataCenter,
    Disk,
    DiskAttachment,
    Host,
    Nic,
    StorageDomain,
    Tag,
    Template,
    Vm,
)
from rhvfs.errors import VmStateError

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
TEMPLATES = [Template(id="tpl-1", name="mytemplate", status="ok", creation_time=T0)]
DISK_SIZE = 3 * 1024 * 1024 + 4096  # not a multiple of the read size: EOF handling matters


def disk(vm_id: str, n: int) -> Disk:
    return Disk(
        id=f"{vm_id}-d{n}",
        alias="disk" if n < 2 else "data",  # aliases repeat on purpose
        provisioned_size=DISK_SIZE,
        actual_size=1 << 20,
        storage_domain_id="sd-1",
        image_id=f"{vm_id}-d{n}-img",
    )


def image_bytes(owner_id: str, key: str, size: int) -> bytes:
    seed = hashlib.sha256(f"{owner_id}/{key}".encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


class FakeEngine:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.vms = list(VMS)

    async def _ret(self, name: str, value: Any) -> Any:
        self.calls.append(name)
        return value

    async def list_datacenters(self) -> list[DataCenter]:
        return await self._ret("list_datacenters", [DC])

    async def list_clusters(self) -> list[Cluster]:
        return await self._ret("list_clusters", [CL1, CL2])

    async def list_hosts(self) -> list[Host]:
        return await self._ret("list_hosts", [HOST])

    async def list_storage_domains(self) -> list[StorageDomain]:
        return await self._ret("list_storage_domains", [SD])

    async def list_tags(self) -> list[Tag]:
        return await self._ret("list_tags", TAGS)

    async def list_vms(self) -> list[Vm]:
        return await self._ret("list_vms", list(self.vms))

    async def vms_by_tag(self, tag_id: str) -> list[Vm]:
        return await self._ret("vms_by_tag", [v for v in self.vms if v.id in TAGGED[tag_id]])

    async def list_templates(self) -> list[Template]:
        return await self._ret("list_templates", TEMPLATES)

    async def disk_attachments(self, vm_id: str) -> list[DiskAttachment]:
        atts = [
            DiskAttachment(disk=disk(vm_id, n), interface="virtio_scsi", bootable=n == 0)
            for n in range(3)
        ]
        return await self._ret("disk_attachments", atts)

    async def vm_nics(self, vm_id: str) -> list[Nic]:
        return await self._ret(
            "vm_nics", [Nic(id=f"{vm_id}-nic", name="nic1", mac="56:6f:00:00:00:01")]
        )

    async def storage_domain_disks(self, sd_id: str) -> list[Disk]:
        return await self._ret("storage_domain_disks", [disk("vm-1", n) for n in range(3)])


@dataclasses.dataclass(frozen=True)
class FakeEntry:
    name: str
    key: str
    size: int
    blocks: int
    mtime_ns: int
    disk_id: str | None = None


class FakeBackups:
    """BackupManager stand-in: sets of three config files and three images per owner."""

    def __init__(self) -> None:
        self.opened: list[tuple[str, str]] = []
        self.released = 0
        self.list_calls = 0
        self.sessions: dict[str, int] = {}  # owner id -> open handles
        self._handles: dict[int, tuple[Any, str]] = {}
        self._next = 100

    def _config(self, owner: Any, key: str) -> bytes:
        return f"{key} of {owner.kind} {owner.name}\n".encode()

    async def list_set(self, owner: Any) -> list[FakeEntry]:
        self.list_calls += 1
        mtime = 1_700_000_000 * 10**9
        entries = [
            FakeEntry(name, f"config:{name}", len(self._config(owner, f"config:{name}")), 1, mtime)
            for name in ("vm.ovf", "vm.xml", "manifest.json")
        ]
        for n in range(3):
            d = disk(owner.id, n)
            entries.append(
                FakeEntry(f"{d.alias}--{d.id}.raw", f"disk:{d.id}", DISK_SIZE, 2048, mtime, d.id)
            )
        return entries

    async def list_disk_files(self, owner: Any) -> list[FakeEntry]:
        entries = [e for e in await self.list_set(owner) if e.disk_id]
        # "<alias>.raw", "--<diskid>" added when aliases collide (as the contract says)
        return [
            dataclasses.replace(e, name="data.raw") if e.name.startswith("data--") else e
            for e in entries
        ]

    async def open(self, owner: Any, key: str, *, reader_pid: int = 0) -> int:
        if owner.id == "vm-4":
            raise VmStateError("VM sleepy is suspended: resume or power it off to back it up")
        self.opened.append((owner.id, key))
        self.sessions[owner.id] = self.sessions.get(owner.id, 0) + 1
        self._next += 1
        self._handles[self._next] = (owner, key)
        return self._next

    async def read(self, handle: int, offset: int, size: int) -> bytes:
        owner, key = self._handles[handle]
        if key.startswith("config:"):
            data = self._config(owner, key)
        else:
            data = image_bytes(owner.id, key, DISK_SIZE)
        return data[offset : offset + size]

    async def release(self, handle: int) -> None:
        owner, _ = self._handles.pop(handle)
        self.released += 1
        self.sessions[owner.id] -= 1

    def status(self) -> dict[str, Any]:
        return {
            "open_handles": len(self._handles),
            "owners": sorted(k for k, v in self.sessions.items() if v),
        }
