"""The seams the backup sessions code against: the engine, imageio, the block reader.

Structural ``Protocol``s of exactly what sessions use from ``rhvfs.engine``,
``rhvfs.imageio`` and ``rhvfs.cache`` (see their CONTRACT.md), so tests can
pass fakes and the packages stay decoupled. ``default_data_plane`` builds the
real ones. Must not: implement any I/O itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

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


class EngineLike(Protocol):
    async def get_vm(self, vm_id: str) -> Vm: ...
    async def listed_vm(self, vm_id: str) -> Vm: ...  # attachments and nics inlined
    async def listed_template(self, template_id: str) -> Template: ...
    async def get_vm_followed(self, vm_id: str) -> Vm: ...  # attachments and nics inlined
    async def get_template_followed(self, template_id: str) -> Template: ...
    async def vm_config(self, vm_id: str) -> tuple[str | None, bytes]: ...  # (ovf, xml)
    async def template_config(self, template_id: str) -> tuple[str | None, bytes]: ...
    async def get_template(self, template_id: str) -> Template: ...
    async def disk_attachments(self, vm_id: str) -> list[DiskAttachment]: ...
    async def template_disk_attachments(self, template_id: str) -> list[DiskAttachment]: ...
    async def vm_nics(self, vm_id: str) -> list[Nic]: ...
    async def template_nics(self, template_id: str) -> list[Nic]: ...
    async def list_clusters(self) -> list[Cluster]: ...
    async def list_storage_domains(self) -> list[StorageDomain]: ...
    async def vm_ovf(self, vm_id: str) -> str: ...
    async def vm_xml(self, vm_id: str) -> bytes: ...
    async def template_ovf(self, template_id: str) -> str: ...
    async def template_xml(self, template_id: str) -> bytes: ...
    async def create_snapshot(
        self,
        vm_id: str,
        *,
        description: str,
        persist_memorystate: bool = False,
        disk_ids: list[str] | None = None,
    ) -> Snapshot: ...
    async def list_snapshots(self, vm_id: str) -> list[Snapshot]: ...
    async def snapshot_disks(self, vm_id: str, snapshot_id: str) -> list[Disk]: ...
    async def snapshot_ovf(self, vm_id: str, snapshot_id: str) -> str | None: ...
    async def remove_snapshot(self, vm_id: str, snapshot_id: str) -> None: ...
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
    ) -> ImageTransfer: ...
    async def get_transfer(self, transfer_id: str) -> ImageTransfer: ...
    async def finalize_transfer(self, transfer_id: str) -> None: ...
    async def cancel_transfer(self, transfer_id: str) -> None: ...
    async def list_all_snapshots_with_description_prefix(
        self, prefix: str
    ) -> list[tuple[str, Snapshot]]: ...
    # gc of restores killed half-way (``_restore_leftovers``)
    async def list_vms(self) -> list[Vm]: ...
    async def list_transfers(self) -> list[ImageTransfer]: ...
    async def remove_vm(self, vm_id: str) -> None: ...
    async def stop_vm(self, vm_id: str) -> Vm: ...
    async def list_templates(self) -> list[Template]: ...
    async def remove_template(self, template_id: str) -> None: ...
    async def get_disk(self, disk_id: str) -> Disk: ...
    async def remove_disk(self, disk_id: str) -> None: ...


class ImageioClientLike(Protocol):
    @property
    def capabilities(self) -> Any: ...  # .max_readers
    async def extents(self) -> Sequence[Any]: ...
    async def read_into(self, offset: int, buf: memoryview) -> None: ...


class BlockSource(Protocol):
    async def read_into(self, offset: int, buf: memoryview) -> None: ...


class ReaderLike(Protocol):
    # Often a view of a cache buffer: use it before the next await (``rhvfs.cache``).
    async def read(self, offset: int, size: int, *, handle_id: int) -> bytes | memoryview: ...
    def forget_handle(self, handle_id: int) -> None: ...
    def statistics(self) -> Any: ...
    async def aclose(self) -> None: ...


#: ``open_imageio(transfer_url)`` -> async context manager of a client.
ImageioOpener = Callable[[str], AbstractAsyncContextManager[ImageioClientLike]]


class ReaderFactory(Protocol):
    async def __call__(
        self,
        source: BlockSource,
        *,
        size: int,
        extents: Sequence[Any],
        memory_budget: int,
        streams: int,
        nursery: Any,
    ) -> ReaderLike: ...


def default_data_plane(
    config: Config,
    *,
    imageio_opener: ImageioOpener | None = None,
    reader_factory: ReaderFactory | None = None,
) -> tuple[ImageioOpener, ReaderFactory]:
    """The given opener and reader factory (test seams), or the real ones for ``config``."""
    return (
        imageio_opener or default_imageio_opener(config),
        reader_factory or default_reader_factory(config),
    )


def default_imageio_opener(config: Config) -> ImageioOpener:
    def opener(url: str) -> AbstractAsyncContextManager[ImageioClientLike]:
        from rhvfs.imageio import open_imageio

        result: AbstractAsyncContextManager[ImageioClientLike] = open_imageio(
            url, cafile=config.cafile, secure=config.secure
        )
        return result

    return opener


def default_reader_factory(config: Config) -> ReaderFactory:
    from rhvfs.cache import SharedBudget

    # The readers of one manager share ``prefetch_memory`` for read-ahead, and twice
    # one reader's streams for GETs, fairly.
    shared = SharedBudget(config.prefetch_memory, streams=2 * config.prefetch_streams)

    async def factory(
        source: BlockSource,
        *,
        size: int,
        extents: Sequence[Any],
        memory_budget: int,
        streams: int,
        nursery: Any,
    ) -> ReaderLike:
        from rhvfs.cache import ImageReader, RetryPolicy

        reader = ImageReader(
            source,
            size=size,
            extents=list(extents),
            memory_budget=memory_budget,
            streams=streams,
            retry=RetryPolicy(
                tries=config.system_tries,
                interval_s=config.system_interval,
                timeout_s=config.system_timeout,
            ),
            shared=shared,
        )
        await reader.run(nursery)
        result: ReaderLike = reader
        return result

    return factory
