"""What the VFS needs from the layers below it, as Protocols.

The VFS reads the inventory through ``EngineInventory`` (a subset of
``rhvfs.engine.Engine``) and gets backup-set listings and image data only
through ``BackupSets`` (``rhvfs.sessions.BackupManager``, see
rhvfs/sessions/CONTRACT.md). Tests pass small fakes that satisfy these.

Must not: import ovirtsdk4, httpx or pyfuse3.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal, Protocol

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

OwnerKind = Literal["vm", "template"]


@dataclasses.dataclass(frozen=True)
class LocalOwner:
    """Stand-in with the fields of ``rhvfs.sessions.Owner`` (used when none is injected)."""

    kind: OwnerKind
    id: str
    name: str


#: Builds the owner value BackupSets expects: ``(kind, id, name) -> Owner``.
OwnerFactory = Callable[[OwnerKind, str, str], Any]


class SetEntryLike(Protocol):
    """The fields of ``rhvfs.sessions.SetEntry`` the VFS uses."""

    @property
    def name(self) -> str: ...
    @property
    def key(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def blocks(self) -> int: ...
    @property
    def mtime_ns(self) -> int: ...


class EngineInventory(Protocol):
    async def list_datacenters(self) -> list[DataCenter]: ...
    async def list_clusters(self) -> list[Cluster]: ...
    async def list_hosts(self) -> list[Host]: ...
    async def list_storage_domains(self) -> list[StorageDomain]: ...
    async def list_tags(self) -> list[Tag]: ...
    async def list_vms(self) -> list[Vm]: ...
    async def vms_by_tag(self, tag_id: str) -> list[Vm]: ...
    async def list_templates(self) -> list[Template]: ...
    async def disk_attachments(self, vm_id: str) -> list[DiskAttachment]: ...
    async def vm_nics(self, vm_id: str) -> list[Nic]: ...
    async def storage_domain_disks(self, sd_id: str) -> list[Disk]: ...


class BackupSets(Protocol):
    async def list_set(self, owner: Any) -> list[Any]: ...
    async def list_disk_files(self, owner: Any) -> list[Any]: ...
    async def open(self, owner: Any, key: str, *, reader_pid: int = 0) -> int: ...
    async def read(self, handle: int, offset: int, size: int) -> bytes | memoryview: ...
    async def release(self, handle: int) -> None: ...
    def status(self) -> dict[str, Any]: ...
