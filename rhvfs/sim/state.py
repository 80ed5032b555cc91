"""The simulated engine's inventory: mutable records, one lock, JSON persistence.

Owns the engine's database (`<state-dir>/engine.json`): every record the REST
layer shows and the phase machines change. It knows nothing about HTTP, XML or
storage commands; callers hold `State.lock` while they read or mutate records
and call `State.save()` after a mutation (`api_base` says when long storage
work runs without it).

Volume model (oVirt's): a disk is a chain of volumes, base first; each volume
belongs to a VM snapshot (`snapshot_id`); the top volume is the active one and
belongs to the VM's `Active VM` snapshot (or to nobody for a floating disk).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import threading
import typing
import uuid
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)

ZERO_ID = "00000000-0000-0000-0000-000000000000"

T = TypeVar("T")


def new_id() -> str:
    return str(uuid.uuid4())


def now_iso() -> str:
    """Current time, zoned, millisecond precision (the engine's format)."""
    t = datetime.datetime.now(datetime.UTC)
    return t.replace(microsecond=t.microsecond // 1000 * 1000).isoformat()


def parse_iso(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text)


@dataclasses.dataclass
class DataCenter:
    id: str
    name: str
    description: str = ""


@dataclasses.dataclass
class Cluster:
    id: str
    name: str
    dc_id: str
    description: str = ""


@dataclasses.dataclass
class Host:
    id: str
    name: str
    address: str
    cluster_id: str
    status: str = "up"


@dataclasses.dataclass
class Network:
    id: str
    name: str
    dc_id: str


@dataclasses.dataclass
class VnicProfile:
    id: str
    name: str
    network_id: str


#: Storage types whose volumes are LVs: a new raw preallocated volume holds stale data.
BLOCK_STORAGE_TYPES = frozenset({"iscsi", "fcp"})


@dataclasses.dataclass
class StorageDomain:
    id: str
    name: str
    dc_id: str
    storage_type: str = "nfs"  # file (nfs, glusterfs, posixfs, localfs) or block (iscsi, fcp)
    address: str = "localhost"
    path: str = "/exports/data"
    capacity_bytes: int = 100 * 1024**3
    status: str = "active"
    master: bool = False


@dataclasses.dataclass
class Tag:
    id: str
    name: str
    description: str = ""
    parent_id: str = ZERO_ID


@dataclasses.dataclass
class Volume:
    id: str
    fmt: str  # "raw" | "cow"
    parent_id: str | None = None
    snapshot_id: str | None = None


@dataclasses.dataclass
class Disk:
    id: str
    alias: str
    sd_id: str
    provisioned_size: int
    sparse: bool = True
    backup: str = "none"  # "incremental" | "none"
    status: str = "ok"  # "ok" | "locked" | "illegal"
    description: str = ""
    content_type: str = "data"
    shareable: bool = False
    wipe_after_delete: bool = False
    volumes: list[Volume] = dataclasses.field(default_factory=list)
    # Why the disk is locked (for logs and 409 details): "transfer", "snapshot", ...
    lock_reason: str = ""

    @property
    def active(self) -> Volume:
        return self.volumes[-1]

    def volume(self, vol_id: str) -> Volume | None:
        return next((v for v in self.volumes if v.id == vol_id), None)

    def child_of(self, vol_id: str) -> Volume | None:
        return next((v for v in self.volumes if v.parent_id == vol_id), None)


@dataclasses.dataclass
class Attachment:
    disk_id: str
    interface: str = "virtio_scsi"
    bootable: bool = False
    active: bool = True
    read_only: bool = False
    pass_discard: bool = False


@dataclasses.dataclass
class Nic:
    id: str
    name: str
    mac: str
    vnic_profile_id: str | None = None
    interface: str = "virtio"
    linked: bool = True
    plugged: bool = True


@dataclasses.dataclass
class Snapshot:
    id: str
    vm_id: str
    description: str
    date: str
    status: str = "ok"  # ok | locked | in_preview
    type: str = "regular"  # active | regular | preview | stateless
    persist_memorystate: bool = False
    # The VM configuration (OVF) as it was when the snapshot was taken.
    ovf: str = ""


@dataclasses.dataclass
class Vm:
    id: str
    name: str
    cluster_id: str
    active_snapshot_id: str
    status: str = "down"
    description: str = ""
    comment: str = ""
    template_id: str = ZERO_ID
    memory_bytes: int = 1024**3
    cpu_sockets: int = 1
    cpu_cores: int = 1
    os_type: str = "other_linux"
    vm_type: str = "server"
    host_id: str | None = None
    creation_time: str = ""
    start_time: str | None = None
    stop_time: str | None = None
    tag_ids: list[str] = dataclasses.field(default_factory=list)
    attachments: list[Attachment] = dataclasses.field(default_factory=list)
    nics: list[Nic] = dataclasses.field(default_factory=list)
    # Snapshot ids in creation order, the active one included.
    snapshot_ids: list[str] = dataclasses.field(default_factory=list)

    def attachment(self, disk_id: str) -> Attachment | None:
        return next((a for a in self.attachments if a.disk_id == disk_id), None)


@dataclasses.dataclass
class Template:
    id: str
    name: str
    description: str = ""
    cluster_id: str | None = None
    status: str = "ok"
    memory_bytes: int = 1024**3
    os_type: str = "other_linux"
    attachments: list[Attachment] = dataclasses.field(default_factory=list)
    nics: list[Nic] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class ImageTransfer:
    id: str
    disk_id: str
    vol_id: str
    direction: str  # upload | download
    format: str  # raw | cow
    host_id: str
    phase: str = "initializing"
    shallow: bool = False
    backup_id: str | None = None
    inactivity_timeout: int = 60
    timeout_policy: str = "legacy"
    ticket_id: str | None = None
    export_id: str | None = None
    size: int = 0
    transferred: int = 0
    active: bool = False
    # What the daemon ticket points at (kept to re-add it on resume).
    ticket_url: str = ""
    dirty: bool = False
    # The engine stops renewing the ticket (fault injection: ticket expiry).
    ticket_expired: bool = False
    creation_date: str = ""
    finish_time: str | None = None


@dataclasses.dataclass
class Backup:
    id: str
    vm_id: str
    disk_ids: list[str]
    phase: str = "initializing"
    description: str = ""
    from_checkpoint_id: str | None = None
    to_checkpoint_id: str | None = None
    snapshot_id: str | None = None
    host_id: str | None = None
    creation_date: str = ""
    modified_date: str = ""
    # disk id -> "full" | "incremental"; cleared when the backup ends.
    modes: dict[str, str] = dataclasses.field(default_factory=dict)
    # The checkpoint id that `to_checkpoint_id` will show once ready.
    pending_checkpoint_id: str | None = None


@dataclasses.dataclass
class Checkpoint:
    id: str
    vm_id: str
    disk_ids: list[str]
    parent_id: str | None = None
    creation_date: str = ""
    state: str = "created"
    description: str = ""


@dataclasses.dataclass
class Event:
    id: int
    code: int
    description: str
    severity: str
    time: str
    custom_id: int | None = None
    origin: str = "oVirt"
    vm_id: str | None = None


_TABLES: dict[str, type] = {
    "datacenters": DataCenter,
    "clusters": Cluster,
    "hosts": Host,
    "networks": Network,
    "vnic_profiles": VnicProfile,
    "storage_domains": StorageDomain,
    "tags": Tag,
    "disks": Disk,
    "vms": Vm,
    "templates": Template,
    "snapshots": Snapshot,
    "transfers": ImageTransfer,
    "backups": Backup,
    "checkpoints": Checkpoint,
}


def _from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild a record (and its nested record lists) from `dataclasses.asdict`."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in data:
            continue
        value = data[f.name]
        hint = hints[f.name]
        args = typing.get_args(hint)
        if (
            typing.get_origin(hint) is list
            and args
            and dataclasses.is_dataclass(args[0])
            and isinstance(args[0], type)
        ):
            value = [_from_dict(args[0], v) for v in value]
        kwargs[f.name] = value
    return cls(**kwargs)


class State:
    """All records of the engine, keyed by id, guarded by one re-entrant lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.RLock()
        self.datacenters: dict[str, DataCenter] = {}
        self.clusters: dict[str, Cluster] = {}
        self.hosts: dict[str, Host] = {}
        self.networks: dict[str, Network] = {}
        self.vnic_profiles: dict[str, VnicProfile] = {}
        self.storage_domains: dict[str, StorageDomain] = {}
        self.tags: dict[str, Tag] = {}
        self.disks: dict[str, Disk] = {}
        self.vms: dict[str, Vm] = {}
        self.templates: dict[str, Template] = {}
        self.snapshots: dict[str, Snapshot] = {}
        self.transfers: dict[str, ImageTransfer] = {}
        self.backups: dict[str, Backup] = {}
        self.checkpoints: dict[str, Checkpoint] = {}
        self.events: list[Event] = []

    # persistence

    def save(self) -> None:
        with self.lock:
            doc: dict[str, Any] = {
                name: [dataclasses.asdict(r) for r in getattr(self, name).values()]
                for name in _TABLES
            }
            doc["events"] = [dataclasses.asdict(e) for e in self.events[-200:]]
            text = json.dumps(doc, indent=1, sort_keys=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(text)
            os.replace(tmp, self.path)

    @classmethod
    def load(cls, path: Path) -> State:
        state = cls(path)
        doc = json.loads(path.read_text())
        for name, record_cls in _TABLES.items():
            table = getattr(state, name)
            for data in doc.get(name, []):
                record: Any = _from_dict(record_cls, data)
                table[record.id] = record  # type: ignore[attr-defined]
        state.events = [_from_dict(Event, e) for e in doc.get("events", [])]
        return state

    # lookups

    def vm_of_disk(self, disk_id: str) -> Vm | None:
        for vm in self.vms.values():
            if vm.attachment(disk_id) is not None:
                return vm
        return None

    def disk_of_volume(self, vol_id: str) -> Disk | None:
        for disk in self.disks.values():
            if disk.volume(vol_id) is not None:
                return disk
        return None

    def template_of_disk(self, disk_id: str) -> Template | None:
        for t in self.templates.values():
            if any(a.disk_id == disk_id for a in t.attachments):
                return t
        return None

    def add_event(
        self,
        description: str,
        *,
        code: int = 0,
        severity: str = "normal",
        vm_id: str | None = None,
        custom_id: int | None = None,
        origin: str = "oVirt",
    ) -> Event:
        event_id = (self.events[-1].id + 1) if self.events else 1
        event = Event(
            id=event_id,
            code=code,
            description=description,
            severity=severity,
            time=now_iso(),
            vm_id=vm_id,
            custom_id=custom_id,
            origin=origin,
        )
        self.events.append(event)
        return event
