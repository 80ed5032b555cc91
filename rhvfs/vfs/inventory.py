"""The engine inventory, cached for ``listing_ttl`` seconds per collection.

Every directory of the tree is computed from these cached collections, so a
listing costs at most one engine call per collection (``/vms`` is one
``list_vms``; ``/clusters/<c>/vms`` reuses it), however many entries it has.
``list_vms`` inlines each VM's disk attachments and NICs (``Vm.disk_attachments``,
``Vm.nics``), so ``vm.json`` needs no call per VM; ``disk_attachments`` and
``vm_nics`` here serve engines that refuse ``follow=``. Concurrent requests for
the same collection share one engine call.

The mount's ``VmSelection`` (``rhvfs.selection``) is applied here, to every
list of VMs the tree is built from (``vms``, ``vms_by_tag``): a VM outside it
appears nowhere. It costs no call per VM: the clusters and data centers (when
it names some) and one ``vms_by_tag`` per selected tag, all cached as above.

Must not: know about file names, inodes or FUSE.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from rhvfs.engine.types import (
    Cluster,
    DataCenter,
    Disk,
    DiskAttachment,
    EngineProduct,
    Host,
    Nic,
    StorageDomain,
    Tag,
    Template,
    Vm,
)
from rhvfs.errors import RhvfsError
from rhvfs.selection import VmSelection
from rhvfs.vfs.backend import EngineInventory

log = logging.getLogger(__name__)

T = TypeVar("T")


class _Entry:
    __slots__ = ("expires", "lock", "value")

    def __init__(self) -> None:
        self.lock = trio.Lock()
        self.value: Any = None
        self.expires = -1.0


class Inventory:
    """TTL cache in front of the engine's list calls (keyed by call and argument)."""

    def __init__(
        self, engine: EngineInventory, *, ttl_s: float, selection: VmSelection | None = None
    ) -> None:
        self._engine = engine
        self._ttl_s = ttl_s
        self.selection = selection or VmSelection()
        self._entries: dict[tuple[str, str], _Entry] = {}
        self.calls = 0  # engine calls made, for tests and status
        self.product: EngineProduct | None = None  # once ``engine_product`` found it

    async def _get(self, key: tuple[str, str], fetch: Callable[[], Awaitable[T]]) -> T:
        entry = self._entries.setdefault(key, _Entry())
        async with entry.lock:
            if trio.current_time() >= entry.expires:
                started = trio.current_time()
                entry.value = await fetch()
                self.calls += 1
                now = trio.current_time()
                log.debug("engine %s(%s) took %.3f s", key[0], key[1], now - started)
                entry.expires = now + self._ttl_s
            return entry.value  # type: ignore[no-any-return]

    def invalidate(self) -> None:
        self._entries.clear()

    def engine_calls(self) -> dict[str, Any]:
        """For status.json: the engine's calls so far (``total``, ``by_kind``), when the
        engine counts them, and the inventory fetches of this tree (``listings``)."""
        doc: dict[str, Any] = {"listings": self.calls}
        stats = getattr(self._engine, "statistics", None)
        if stats is not None:
            engine = stats()
            doc["total"] = engine.get("requests", 0)
            doc["by_kind"] = engine.get("requests_by_kind", {})
        return doc

    async def engine_product(self) -> EngineProduct | None:
        """The engine's product name and version, asked once (kept for the mount's life);
        None from an engine facade that cannot say, or when the engine did not answer."""
        fetch = getattr(self._engine, "product_info", None)
        if self.product is None and fetch is not None:
            try:
                self.product = await fetch()
            except RhvfsError as e:
                log.debug("engine product version not known: %s", e)
        return self.product

    async def datacenters(self) -> list[DataCenter]:
        return await self._get(("list_datacenters", ""), self._engine.list_datacenters)

    async def clusters(self) -> list[Cluster]:
        return await self._get(("list_clusters", ""), self._engine.list_clusters)

    async def hosts(self) -> list[Host]:
        return await self._get(("list_hosts", ""), self._engine.list_hosts)

    async def storage_domains(self) -> list[StorageDomain]:
        return await self._get(("list_storage_domains", ""), self._engine.list_storage_domains)

    async def tags(self) -> list[Tag]:
        return await self._get(("list_tags", ""), self._engine.list_tags)

    async def vms(self) -> list[Vm]:
        """The selected VMs."""
        return await self._selected(await self._get(("list_vms", ""), self._engine.list_vms))

    async def templates(self) -> list[Template]:
        return await self._get(("list_templates", ""), self._engine.list_templates)

    async def vms_by_tag(self, tag_id: str) -> list[Vm]:
        """The selected VMs carrying the tag ``tag_id``."""
        return await self._selected(await self._all_vms_by_tag(tag_id))

    async def _all_vms_by_tag(self, tag_id: str) -> list[Vm]:
        return await self._get(("vms_by_tag", tag_id), lambda: self._engine.vms_by_tag(tag_id))

    async def _selected(self, vms: list[Vm]) -> list[Vm]:
        sel = self.selection
        if sel.everything:
            return vms
        clusters = await self.clusters() if sel.needs_clusters else []
        datacenters = await self.datacenters() if sel.datacenters else []
        tagged: set[str] = set()
        if sel.tags:
            for tag in await self.tags():
                if tag.name in sel.tags:
                    tagged.update(vm.id for vm in await self._all_vms_by_tag(tag.id))
        return sel.select(vms, clusters=clusters, datacenters=datacenters, tagged=tagged)

    async def disk_attachments(self, vm_id: str) -> list[DiskAttachment]:
        return await self._get(
            ("disk_attachments", vm_id), lambda: self._engine.disk_attachments(vm_id)
        )

    async def vm_nics(self, vm_id: str) -> list[Nic]:
        return await self._get(("vm_nics", vm_id), lambda: self._engine.vm_nics(vm_id))

    async def storage_domain_disks(self, sd_id: str) -> list[Disk]:
        return await self._get(
            ("storage_domain_disks", sd_id), lambda: self._engine.storage_domain_disks(sd_id)
        )
