"""Backup sets made in memory, as rhvfs writes them, for restore tests.

``make_set`` builds a full set (manifest, OVF, API XML, raw images: data then
zeroes) of a VM with ``DISK_IDS``; ``build_chain`` a chain of sets of the same VM
(full ``c0``, incrementals ``c1``, ``c2`` and differential ``d3``) named as
``rhvfs.sessions.incremental`` names them, with qcow2 deltas synthesized by
``Qcow2Delta`` (disk0 incremental-enabled, disk1 raw ``backup=none``: full data
in every set). Must not: talk to an engine.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import random
import uuid
from dataclasses import dataclass
from typing import Any

from rhvfs.backupset._qcow2 import Change, Qcow2Delta
from tests.support.data import MiB, sha
from tests.support.fake_engine import CLUSTER, CLUSTER_ID, SD_ID

VM_ID = "aaaaaaaa-0000-0000-0000-000000000001"
DISK_IDS = [
    "dddddddd-0000-0000-0000-000000000001",
    "dddddddd-0000-0000-0000-000000000002",
    "dddddddd-0000-0000-0000-000000000003",
]


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


def sim_set(name: str, *, macs: tuple[str, ...] = ("56:6f:7a:00:00:01",)) -> SetFiles:
    """``make_set`` for the simulator: fresh VM and disk ids, the simulator's cluster and
    storage domain by name, disk interfaces virtio_scsi and sata, one NIC per MAC
    (``nic1``, ``nic2``, ..., on no profile)."""
    s = make_set(name=name, seed=7)
    doc = s.manifest
    doc["vm"]["id"] = str(uuid.uuid4())
    doc["vm"]["cluster"] = {"id": None, "name": "Default"}
    for d, iface in zip(doc["disks"], ("virtio_scsi", "sata"), strict=True):
        new_id = str(uuid.uuid4())
        data = s.files.pop(d["file"])
        d["id"], d["file"] = new_id, f"{d['alias']}--{new_id}.raw"
        s.files[d["file"]] = data
        d["storage_domain"] = {"id": None, "name": "mydata"}
        d["interface"] = iface
    doc["nics"] = [
        {"name": f"nic{i}", "interface": "virtio", "mac": mac} for i, mac in enumerate(macs, 1)
    ]
    s.files["manifest.json"] = json.dumps(doc).encode()
    s.files["vm.ovf"] = ovf_for(doc["vm"]["id"], name, [d["id"] for d in doc["disks"]], list(macs))
    return s


@dataclass
class ChainSet:
    set_id: str
    files: dict[str, bytes]
    state: dict[str, bytes]  # disk id -> content at this set


async def _delta(image: bytes, changes: list[Change], backing: str) -> bytes:
    fmt = "raw" if backing.endswith(".raw") else "qcow2"
    q = Qcow2Delta(
        virtual_size=len(image), changes=changes, backing_file=backing, backing_format=fmt
    )

    async def fetch(offset: int, length: int) -> bytes:
        return image[offset : offset + length]

    return await q.read(0, q.size, fetch)


class ChainMaker:
    """Full set c0, then incremental/differential sets of the same VM."""

    def __init__(self) -> None:
        base = make_set(sizes=(2 * MiB, 1 * MiB))
        self.doc = base.manifest
        self.ovf = base.files["vm.ovf"]
        self.state = {d["id"]: base.files[d["file"]] for d in self.doc["disks"]}
        self.rng = random.Random(5)
        self.sets: list[ChainSet] = []
        files = {f"disk{i}--{d}--c0.raw": self.state[d] for i, d in enumerate(DISK_IDS[:2])}
        self.sets.append(ChainSet("c0", self._config("c0", None, {}, files), dict(self.state)))

    def _config(
        self,
        set_id: str,
        parent: ChainSet | None,
        deltas: dict[str, str],  # disk id -> backing file, for disks stored as deltas
        files: dict[str, bytes],
    ) -> dict[str, bytes]:
        doc = copy.deepcopy(self.doc)
        doc.update(
            set_type="full"
            if parent is None
            else ("differential" if set_id[0] == "d" else "incremental"),
            set_id=set_id,
            checkpoint_id=set_id,
            parent_set=None if parent is None else {"set_id": parent.set_id},
            full_set_id="c0",
            config_files={
                "ovf": f"vm--{set_id}.ovf",
                "api_xml": f"vm--{set_id}.xml",
                "manifest": f"manifest--{set_id}.json",
            },
        )
        for i, d in enumerate(doc["disks"]):
            delta = d["id"] in deltas
            d["file"] = f"disk{i}--{d['id']}--{set_id}." + ("qcow2" if delta else "raw")
            d["file_format"] = "qcow2" if delta else "raw"
            d["backing_file"] = deltas.get(d["id"])
        out = dict(files)
        out[f"manifest--{set_id}.json"] = json.dumps(doc, indent=2).encode()
        out[f"vm--{set_id}.ovf"] = self.ovf
        out[f"vm--{set_id}.xml"] = b"<vm/>\n"
        return out

    def write(self) -> list[Change]:
        """Guest writes on both disks; the changes of disk0 (cluster aligned)."""
        changes = []
        for did in DISK_IDS[:2]:
            img = bytearray(self.state[did])
            for _ in range(3):
                start = self.rng.randrange(0, len(img) // CLUSTER) * CLUSTER
                img[start : start + CLUSTER] = self.rng.randbytes(CLUSTER)
                if did == DISK_IDS[0]:
                    changes.append(Change(start, CLUSTER))
            if did == DISK_IDS[0]:  # one range written with zeroes: a "reads as zero" cluster
                img[0:CLUSTER] = bytes(CLUSTER)
                changes.append(Change(0, CLUSTER, zero=True))
            self.state[did] = bytes(img)
        return changes

    async def add(self, set_id: str, parent: ChainSet, changes: list[Change]) -> ChainSet:
        d0, d1 = DISK_IDS[:2]
        parent_doc = json.loads(parent.files[f"manifest--{parent.set_id}.json"])
        backing = parent_doc["disks"][0]["file"]
        files = {
            f"disk0--{d0}--{set_id}.qcow2": await _delta(self.state[d0], changes, backing),
            f"disk1--{d1}--{set_id}.raw": self.state[d1],
        }
        s = ChainSet(set_id, self._config(set_id, parent, {d0: backing}, files), dict(self.state))
        self.sets.append(s)
        return s


async def build_chain() -> tuple[ChainMaker, list[ChainSet]]:
    m = ChainMaker()
    c0 = m.sets[0]
    all_changes = m.write()
    c1 = await m.add("c1", c0, all_changes)
    more = m.write()
    all_changes += more
    c2 = await m.add("c2", c1, more)
    # a differential holds every change since the full set
    all_changes += m.write()
    d3 = await m.add("d3", c0, all_changes)
    return m, [c0, c1, c2, d3]


def expected(s: ChainSet) -> dict[str, str]:
    return {f"disk{i}": sha(s.state[d]) for i, d in enumerate(DISK_IDS[:2])}
