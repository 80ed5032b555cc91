"""Fakes for restore tests: an in-memory engine and a backup set generator."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import trio
import trio.lowlevel

from rhvfs.engine.types import (
    Cluster,
    Disk,
    DiskAttachment,
    ImageTransfer,
    Nic,
    StorageDomain,
    Template,
    Vm,
)
from rhvfs.errors import Conflict, NotFound

MiB = 1024 * 1024
VM_ID = "aaaaaaaa-0000-0000-0000-000000000001"
DISK_IDS = [
    "dddddddd-0000-0000-0000-000000000001",
    "dddddddd-0000-0000-0000-000000000002",
    "dddddddd-0000-0000-0000-000000000003",
]
SD_ID = "5d5d5d5d-0000-0000-0000-000000000001"
SD2_ID = "5d5d5d5d-0000-0000-0000-000000000002"
CLUSTER_ID = "c1c1c1c1-0000-0000-0000-000000000001"


def ovf_for(vm_id: str, name: str, disk_ids: list[str], macs: list[str]) -> bytes:
    files = "".join(f'<File ovf:href="{d}/i-{d[-4:]}" ovf:id="i-{d[-4:]}"/>' for d in disk_ids)
    disks = "".join(
        f'<Disk ovf:diskId="i-{d[-4:]}" ovf:fileRef="{d}/i-{d[-4:]}" ovf:size="1"/>'
        for d in disk_ids
    )
    items = "".join(
        f"<Item><rasd:ResourceType>17</rasd:ResourceType>"
        f"<rasd:HostResource>{d}/i-{d[-4:]}</rasd:HostResource></Item>"
        for d in disk_ids
    )
    items += "".join(
        f"<Item><rasd:ResourceType>10</rasd:ResourceType><rasd:MACAddress>{m}</rasd:MACAddress></Item>"
        for m in macs
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<ovf:Envelope xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1/" '
        'xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" '
        'xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" ovf:version="4.4.0.0">'
        f"<References>{files}</References>"
        f'<Section xsi:type="ovf:DiskSection_Type">{disks}</Section>'
        f'<Content ovf:id="out" xsi:type="ovf:VirtualSystem_Type"><Name>{name}</Name>'
        f'<Section ovf:id="{vm_id}" ovf:required="false" xsi:type="ovf:OperatingSystemSection_Type">'
        "<Description>other</Description></Section>"
        f'<Section xsi:type="ovf:VirtualHardwareSection_Type">{items}'
        "<Item><rasd:ResourceType>3</rasd:ResourceType></Item></Section>"
        "</Content></ovf:Envelope>\n"
    ).encode()


@dataclasses.dataclass
class SetFiles:
    files: dict[str, bytes]
    manifest: dict[str, Any]

    def image_names(self) -> list[str]:
        return [d["file"] for d in self.manifest["disks"]]


def make_set(
    *,
    sizes: tuple[int, ...] = (2 * MiB, 1 * MiB),
    name: str = "myvm",
    kind: str = "vm",
    seed: int = 1,
) -> SetFiles:
    rnd = random.Random(seed)
    disks = []
    files: dict[str, bytes] = {}
    for i, size in enumerate(sizes):
        did = DISK_IDS[i]
        data = bytearray(size)
        data[0 : size // 4] = rnd.randbytes(size // 4)  # data, then zeroes
        fname = f"disk{i}--{did}.raw"
        files[fname] = bytes(data)
        disks.append(
            {
                "id": did,
                "alias": f"disk{i}",
                "file": fname,
                "size": size,
                "actual_size": size,
                "format": "cow" if i == 0 else "raw",
                "sparse": True,
                "interface": "virtio_scsi" if i == 0 else "virtio",
                "bootable": i == 0,
                "active": True,
                "storage_domain": {"id": SD_ID, "name": "mydata"},
                "image_id": f"i-{did[-4:]}",
                "backup": "incremental" if i == 0 else "none",
            }
        )
    nics = [
        {
            "id": "n1",
            "name": "nic1",
            "interface": "virtio",
            "mac": "56:6f:00:00:00:01",
            "vnic_profile": {"id": "vp1", "name": "ovirtmgmt"},
        }
    ]
    manifest = {
        "format": "rhvfs-backup-set",
        "format_version": 1,
        "kind": kind,
        "set_type": "full",
        kind: {"id": VM_ID, "name": name, "cluster": {"id": CLUSTER_ID, "name": "Default"}},
        "disks": disks,
        "nics": nics,
        "config_files": {"ovf": "vm.ovf", "api_xml": "vm.xml"},
    }
    files["manifest.json"] = json.dumps(manifest, indent=2).encode() + b"   \n"
    files["vm.ovf"] = ovf_for(VM_ID, name, [str(d["id"]) for d in disks], ["56:6f:00:00:00:01"])
    files["vm.xml"] = b"<vm/>\n"
    return SetFiles(files=files, manifest=manifest)


def sha(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


class FakeEngine:
    """Just enough engine for restores: disks with content, VMs, NICs, templates."""

    def __init__(self, *, sd_available: int = 100 * MiB) -> None:
        self.clusters = [Cluster(id=CLUSTER_ID, name="Default"), Cluster(id="c2", name="mycluster")]
        self.sds = [
            StorageDomain(id=SD_ID, name="mydata", available=sd_available),
            StorageDomain(id=SD2_ID, name="other", available=sd_available),
        ]
        self.disks: dict[str, Disk] = {}
        self.content: dict[str, bytearray] = {}
        self.vms: dict[str, Vm] = {}
        self.attachments: dict[str, list[DiskAttachment]] = {}
        self.nics: dict[str, list[Nic]] = {}
        self.templates: dict[str, Template] = {}
        self.template_attachments: dict[str, list[DiskAttachment]] = {}
        self.template_ovfs: list[str] = []
        self.transfers: dict[str, tuple[str, str]] = {}  # id -> (disk id, phase)
        self.ovfs: list[tuple[str, str | None, bool]] = []
        self.calls: list[str] = []
        self.fail_on: set[str] = set()
        self.flushes = 0  # imageio flush requests of all uploads

    def _maybe_fail(self, what: str) -> None:
        self.calls.append(what)
        if what in self.fail_on:
            raise Conflict(f"injected failure of {what}")

    async def find_vm(self, name: str) -> Vm | None:
        return next((v for v in self.vms.values() if v.name == name), None)

    async def get_vm(self, vm_id: str) -> Vm:
        try:
            return self.vms[vm_id]
        except KeyError:
            raise NotFound(vm_id) from None

    async def get_disk(self, disk_id: str) -> Disk:
        try:
            return self.disks[disk_id]
        except KeyError:
            raise NotFound(disk_id) from None

    async def list_clusters(self) -> list[Cluster]:
        return list(self.clusters)

    async def list_storage_domains(self) -> list[StorageDomain]:
        return list(self.sds)

    async def list_templates(self) -> list[Template]:
        return list(self.templates.values())

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
        self._maybe_fail("create_disk")
        did = disk_id or str(uuid.uuid4())
        if did in self.disks:
            raise Conflict(f"disk {did} exists")
        await trio.lowlevel.checkpoint()
        disk = Disk(
            id=did,
            alias=alias,
            provisioned_size=provisioned_size,
            format=format,
            sparse=sparse,
            status="ok",
            storage_domain_id=storage_domain,
            backup=backup,
        )
        self.disks[did] = disk
        self.content[did] = bytearray(provisioned_size)
        return disk

    async def remove_disk(self, disk_id: str) -> None:
        self.calls.append("remove_disk")
        if disk_id not in self.disks:
            raise NotFound(disk_id)
        del self.disks[disk_id]
        del self.content[disk_id]

    async def start_transfer(
        self,
        *,
        disk_id: str | None = None,
        direction: str = "download",
        format: str = "raw",
        inactivity_timeout: int = 60,
        timeout_policy: str = "legacy",
    ) -> ImageTransfer:
        self._maybe_fail("start_transfer")
        assert disk_id is not None and direction == "upload" and format == "raw"
        tid = str(uuid.uuid4())
        self.transfers[tid] = (disk_id, "transferring")
        return ImageTransfer(id=tid, phase="transferring", transfer_url=f"fake://{disk_id}")

    async def finalize_transfer(self, transfer_id: str) -> None:
        self._maybe_fail("finalize_transfer")
        disk_id, _ = self.transfers[transfer_id]
        self.transfers[transfer_id] = (disk_id, "finished_success")

    async def cancel_transfer(self, transfer_id: str) -> None:
        disk_id, _ = self.transfers[transfer_id]
        self.transfers[transfer_id] = (disk_id, "finished_failure")
        self.disks.pop(disk_id, None)  # a failed upload removes its disk
        self.content.pop(disk_id, None)

    async def create_vm_from_ovf(
        self, *, ovf: str, cluster: str, name: str | None = None, regenerate_ids: bool = False
    ) -> Vm:
        self._maybe_fail("create_vm_from_ovf")
        vm_id = str(uuid.uuid4()) if regenerate_ids else VM_ID
        if vm_id in self.vms:
            raise Conflict(f"vm id {vm_id} exists")
        if any(v.name == name for v in self.vms.values()):
            raise Conflict(f"vm name {name} exists")
        self.ovfs.append((ovf, name, regenerate_ids))
        cid = next(c.id for c in self.clusters if cluster in (c.id, c.name))
        vm = Vm(id=vm_id, name=name or "x", status="down", cluster_id=cid)
        self.vms[vm_id] = vm
        self.attachments[vm_id] = []
        self.nics[vm_id] = []
        return vm

    async def attach_disk(
        self, vm_id: str, disk_id: str, *, interface: str, bootable: bool, active: bool
    ) -> DiskAttachment:
        self._maybe_fail("attach_disk")
        att = DiskAttachment(
            disk=self.disks[disk_id], interface=interface, bootable=bootable, active=active
        )
        self.attachments[vm_id].append(att)
        return att

    async def add_nic(
        self, vm_id: str, *, name: str, interface: str, mac: str | None, vnic_profile_id: str | None
    ) -> Nic:
        self._maybe_fail("add_nic")
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
        self.calls.append("remove_vm")
        self.vms.pop(vm_id)
        for att in self.attachments.pop(vm_id, []):
            self.disks.pop(att.disk.id, None)
            self.content.pop(att.disk.id, None)

    async def start_vm(self, vm_id: str) -> Vm:
        self.vms[vm_id] = dataclasses.replace(self.vms[vm_id], status="up")
        return self.vms[vm_id]

    async def create_template(self, *, vm_id: str, name: str) -> Template:
        self._maybe_fail("create_template")
        tpl = Template(id=str(uuid.uuid4()), name=name, status="ok")
        self.templates[tpl.id] = tpl
        return tpl

    async def remove_template(self, template_id: str) -> None:
        self.templates.pop(template_id, None)
        for att in self.template_attachments.pop(template_id, []):
            self.disks.pop(att.disk.id, None)
            self.content.pop(att.disk.id, None)

    async def create_template_from_ovf(
        self, *, ovf: str, cluster: str, name: str | None = None
    ) -> Template:
        self._maybe_fail("create_template_from_ovf")
        tpl = Template(id=str(uuid.uuid4()), name=name or "t", status="ok")
        self.templates[tpl.id] = tpl
        used = {a.disk.id for atts in self.attachments.values() for a in atts}
        self.template_attachments[tpl.id] = [
            DiskAttachment(disk=d, interface="virtio_scsi", bootable=False)
            for d in self.disks.values()
            if d.id in ovf and d.id not in used
        ]
        self.template_ovfs.append(ovf)
        return tpl

    async def template_disk_attachments(self, template_id: str) -> list[DiskAttachment]:
        return list(self.template_attachments.get(template_id, []))


class FakeImage:
    """Upload target writing into the fake engine's disk content."""

    def __init__(self, engine: FakeEngine, disk_id: str) -> None:
        self.buf = engine.content[disk_id]
        self.engine = engine
        self.put_bytes = 0

    async def write(self, offset: int, data: bytes, *, flush: bool = False) -> None:
        await trio.lowlevel.checkpoint()
        self.buf[offset : offset + len(data)] = data
        self.put_bytes += len(data)

    async def zero(self, offset: int, size: int, *, flush: bool = False) -> None:
        self.buf[offset : offset + size] = bytes(size)

    async def flush(self) -> None:
        self.engine.flushes += 1


def fake_opener(engine: FakeEngine) -> Any:
    @contextlib.asynccontextmanager
    async def opener(url: str, proxy_url: str | None) -> AsyncIterator[FakeImage]:
        yield FakeImage(engine, url.removeprefix("fake://"))

    return opener
