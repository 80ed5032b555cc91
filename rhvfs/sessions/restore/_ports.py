"""The seams of a restore: the engine methods it uses, the upload opener, the services.

``RestoreEngine`` is the structural subset of ``rhvfs.engine.Engine`` that
restores call (tests pass fakes); ``default_upload_opener`` opens the real
imageio client for a transfer; ``RestoreServices`` is what a session and its
parts take from the ``RestoreManager`` (engine, opener, staging, the nursery,
the timers' settings).

Must not: implement any I/O itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from rhvfs.config import Config
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
from rhvfs.sessions.core._events import EngineEvents
from rhvfs.sessions.core._journal import Journal
from rhvfs.sessions.restore._memory import ConfigMemory
from rhvfs.sessions.restore._staging import StagingArea
from rhvfs.sessions.restore._upload import UploadTarget


class RestoreEngine(Protocol):
    """The engine methods a restore uses (``rhvfs.engine.Engine`` satisfies it)."""

    async def find_vm(self, name: str) -> Vm | None: ...
    async def list_vms(self) -> list[Vm]: ...
    async def get_vm(self, vm_id: str) -> Vm: ...
    async def get_template(self, template_id: str) -> Template: ...
    async def get_disk(self, disk_id: str) -> Disk: ...
    async def list_clusters(self) -> list[Cluster]: ...
    async def list_storage_domains(self) -> list[StorageDomain]: ...
    async def list_templates(self) -> list[Template]: ...
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
    ) -> Disk: ...
    async def remove_disk(self, disk_id: str) -> None: ...
    async def update_disk_description(self, disk_id: str, description: str) -> Disk: ...
    async def start_transfer(
        self,
        *,
        disk_id: str | None = None,
        direction: str = "download",
        format: str = "raw",
        inactivity_timeout: int = 60,
        timeout_policy: str = "legacy",
        transfer_id: str | None = None,
    ) -> ImageTransfer: ...
    async def get_transfer(self, transfer_id: str) -> ImageTransfer: ...
    async def list_transfers(self) -> list[ImageTransfer]: ...
    async def finalize_transfer(self, transfer_id: str) -> None: ...
    async def cancel_transfer(self, transfer_id: str) -> None: ...
    async def create_vm_from_ovf(
        self,
        *,
        ovf: str,
        cluster: str,
        name: str | None = None,
        regenerate_ids: bool = False,
        comment: str = "",
    ) -> Vm: ...
    async def attach_disk(
        self, vm_id: str, disk_id: str, *, interface: str, bootable: bool, active: bool
    ) -> DiskAttachment: ...
    async def add_nic(
        self, vm_id: str, *, name: str, interface: str, mac: str | None, vnic_profile_id: str | None
    ) -> Nic: ...
    async def update_vm_comment(self, vm_id: str, comment: str) -> Vm: ...
    async def remove_vm(self, vm_id: str) -> None: ...
    async def start_vm(self, vm_id: str) -> Vm: ...
    async def stop_vm(self, vm_id: str) -> Vm: ...
    async def rename_vm(self, vm_id: str, name: str) -> Vm: ...
    async def disk_attachments(self, vm_id: str) -> list[DiskAttachment]: ...
    async def vm_nics(self, vm_id: str) -> list[Nic]: ...
    async def update_nic(
        self, vm_id: str, nic_id: str, *, mac: str | None = None, plugged: bool | None = None
    ) -> Nic: ...
    async def update_template_comment(self, template_id: str, comment: str) -> Template: ...
    async def remove_template(self, template_id: str) -> None: ...
    async def create_template_from_ovf(
        self, *, ovf: str, cluster: str, name: str | None = None, comment: str = ""
    ) -> Template: ...
    async def template_disk_attachments(self, template_id: str) -> list[DiskAttachment]: ...

    # ``template_name`` on a VM set also needs ``create_template(vm_id, *, name, comment="")
    # -> Template``
    # (a template made from the restored VM, returned once ok; ``rhvfs.engine.Engine`` has
    # it). It is looked up at run time, so engines without it still restore VMs and refuse
    # that option (ENOTSUP) before changing anything.


#: ``opener(transfer_url, proxy_url)`` -> async context manager of an upload target.
UploadOpener = Callable[[str, str | None], AbstractAsyncContextManager[UploadTarget]]


def default_upload_opener(config: Config) -> UploadOpener:
    def opener(url: str, proxy_url: str | None) -> AbstractAsyncContextManager[UploadTarget]:
        from rhvfs.imageio import open_imageio

        cm: AbstractAsyncContextManager[Any] = open_imageio(
            url, cafile=config.cafile, secure=config.secure, proxy_url=proxy_url, connections=4
        )
        return cm

    return opener


class RestoreServices(Protocol):
    """What the sessions of a mount share (``RestoreManager`` provides it).

    The timer settings are read at each use, so a change applies to running
    restores (tests shorten them).
    """

    engine: RestoreEngine
    opener: UploadOpener
    staging: StagingArea
    #: the memory budget of every restore's configuration files (``staging_memory``)
    config_memory: ConfigMemory
    config: Config
    #: the mount's journal: what unfinished restores created (None: not journaled)
    journal: Journal | None
    #: seconds: an image complete by evidence is finalized once closed this long (and a
    #: chain settles after this long without directory activity)
    close_grace_s: float
    #: seconds between flushes of an idle upload
    keepalive_s: float
    #: seconds the call that completes a set waits for its outcome (0: it does not wait)
    outcome_timeout_s: float
    #: seconds without directory activity after which a set lacking only disks ends
    partial_set_timeout_s: float
    #: where restores post their start, end and failure (None: they post nothing)
    events: EngineEvents | None

    @property
    def restore_defaults(self) -> Mapping[str, str]:
        """The mount's restore options, under each directory's options file."""
        ...

    @property
    def inactivity_timeout_s(self) -> int:
        """The engine's inactivity timeout for an upload transfer (seconds)."""
        ...

    def errno_for(self, exc: BaseException) -> int:
        """The errno a filesystem call returns for ``exc`` (shown by name in ``.status``)."""
        ...

    def spawn(self, fn: Callable[[], Awaitable[object]]) -> None:
        """Run ``fn()`` in the background (the manager's nursery)."""
        ...

    async def start(self, fn: Callable[..., Awaitable[object]], *args: Any) -> Any:
        """``nursery.start(fn, *args)`` in the manager's nursery: the value ``fn`` started with."""
        ...
