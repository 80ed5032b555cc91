"""Plain values that cross the engine boundary.

No ovirtsdk4 type ever leaves ``rhvfs.engine``: the facade converts SDK objects
into these frozen dataclasses. Sizes are bytes; times are aware datetimes (UTC).
Enum-like fields keep the engine's lowercase spelling (``"up"``, ``"cow"``,
``"finished_success"``) so logs and status files read like the engine's own.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime


@dataclasses.dataclass(frozen=True)
class DataCenter:
    id: str
    name: str
    description: str = ""
    status: str | None = None


@dataclasses.dataclass(frozen=True)
class Cluster:
    id: str
    name: str
    datacenter_id: str | None = None
    description: str = ""


@dataclasses.dataclass(frozen=True)
class Host:
    id: str
    name: str
    address: str = ""
    status: str | None = None
    cluster_id: str | None = None


@dataclasses.dataclass(frozen=True)
class StorageDomain:
    id: str
    name: str
    type: str | None = None  # data, iso, export...
    storage_type: str | None = None  # nfs, iscsi...
    available: int | None = None  # bytes
    used: int | None = None  # bytes
    committed: int | None = None  # bytes
    status: str | None = None
    datacenter_ids: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Tag:
    id: str
    name: str
    description: str = ""
    parent_id: str | None = None


@dataclasses.dataclass(frozen=True)
class Vm:
    id: str
    name: str
    status: str | None  # up, down, paused, suspended, image_locked...
    cluster_id: str | None = None
    template_id: str | None = None
    host_id: str | None = None
    description: str = ""
    comment: str = ""
    memory: int | None = None  # bytes
    cpu_sockets: int | None = None
    cpu_cores: int | None = None
    cpu_threads: int | None = None
    os_type: str | None = None
    type: str | None = None  # server, desktop, high_performance
    creation_time: datetime | None = None
    tag_ids: tuple[str, ...] = ()
    stop_time: datetime | None = None  # when it last stopped running (None: unknown/never)
    #: Inlined by a listing (``list_vms``: ``follow=``); None when not fetched with the VM.
    disk_attachments: tuple[DiskAttachment, ...] | None = dataclasses.field(
        default=None, repr=False, compare=False
    )
    nics: tuple[Nic, ...] | None = dataclasses.field(default=None, repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class Template:
    id: str
    name: str
    status: str | None = None
    cluster_id: str | None = None
    description: str = ""
    memory: int | None = None
    creation_time: datetime | None = None
    comment: str = ""
    #: Inlined by a listing (``list_templates``: ``follow=``); None when not fetched with it.
    disk_attachments: tuple[DiskAttachment, ...] | None = dataclasses.field(
        default=None, repr=False, compare=False
    )
    nics: tuple[Nic, ...] | None = dataclasses.field(default=None, repr=False, compare=False)


#: Fields of ``Vm``/``Template`` that are collections fetched with them, not their own values
#: (left out of equality and repr: a listed VM equals the same VM fetched alone).
INLINED_FIELDS = ("disk_attachments", "nics")


@dataclasses.dataclass(frozen=True)
class Disk:
    """A disk (or, from a snapshot/backup listing, a disk as of that point in time).

    ``image_id`` is the volume id: the active volume for a live disk, the
    snapshot's volume when listed under a snapshot.
    """

    id: str
    alias: str
    provisioned_size: int  # virtual size, bytes
    actual_size: int | None = None  # allocated bytes
    format: str = "raw"  # raw | cow
    sparse: bool = True
    status: str | None = None  # ok | locked | illegal
    backup: str | None = None  # incremental | none
    backup_mode: str | None = None  # full | incremental (only inside a backup)
    image_id: str | None = None
    storage_domain_id: str | None = None
    description: str = ""
    content_type: str | None = None
    shareable: bool = False
    wipe_after_delete: bool = False


@dataclasses.dataclass(frozen=True)
class DiskAttachment:
    """How a disk is attached to a VM or template (attachment id == disk id)."""

    disk: Disk
    interface: str | None = None  # virtio, virtio_scsi, sata, ide
    bootable: bool = False
    active: bool = True
    read_only: bool = False
    pass_discard: bool = False
    logical_name: str | None = None


@dataclasses.dataclass(frozen=True)
class Nic:
    id: str
    name: str
    interface: str | None = None  # virtio, e1000, rtl8139
    mac: str | None = None
    vnic_profile_id: str | None = None
    vnic_profile_name: str | None = None
    network_name: str | None = None
    linked: bool = True
    plugged: bool = True


@dataclasses.dataclass(frozen=True)
class VnicProfile:
    id: str
    name: str
    network_id: str | None = None
    network_name: str | None = None


@dataclasses.dataclass(frozen=True)
class Snapshot:
    id: str
    description: str
    status: str | None = None  # ok | locked | in_preview
    type: str | None = None  # active | regular | preview | stateless
    date: datetime | None = None
    persist_memorystate: bool = False
    vm_id: str | None = None


@dataclasses.dataclass(frozen=True)
class ImageTransfer:
    id: str
    phase: str | None  # initializing, transferring, finished_success...
    direction: str | None = None
    format: str | None = None
    # They carry the ticket, a bearer credential: kept out of repr (and so of any log line).
    transfer_url: str | None = dataclasses.field(default=None, repr=False)
    proxy_url: str | None = dataclasses.field(default=None, repr=False)
    disk_id: str | None = None  # from <image id=...>
    host_id: str | None = None
    inactivity_timeout: int | None = None
    transferred: int | None = None
    active: bool | None = None


@dataclasses.dataclass(frozen=True)
class Backup:
    id: str
    phase: str | None  # initializing, starting, ready, finalizing, succeeded, failed
    vm_id: str | None = None
    from_checkpoint_id: str | None = None
    to_checkpoint_id: str | None = None
    description: str = ""
    creation_date: datetime | None = None
    snapshot_id: str | None = None


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    id: str
    parent_id: str | None = None
    state: str | None = None  # created | invalid
    creation_date: datetime | None = None
    description: str = ""
    vm_id: str | None = None


@dataclasses.dataclass(frozen=True)
class EngineProduct:
    """What the engine says it is (``GET /ovirt-engine/api``: ``product_info``)."""

    name: str | None  # "oVirt Engine", "Red Hat Virtualization Manager"
    version: str | None  # "4.5.5-1.el8"
