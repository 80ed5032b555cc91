"""What a backup set's configuration is made of: one fetch of an owner's data from the engine.

``OwnerDataSource.fetch`` gets a VM's or template's entity, disk attachments,
NICs, OVF and API XML concurrently, plus the cluster and storage-domain names
the manifest shows (cached for ``NAMES_TTL_S``), as one ``OwnerData``. The
full-backup manager and session and the incremental session all use it.
``summary`` is what listings use: the owner as the engine's latest listing
has it (``Engine.listed_vm``; no call per owner while that is fresh), without
OVF and XML (``OwnerData.ovf``/``xml`` empty): sizes and times of a set's
files never need them (``rhvfs.backupset.config_size_bounds``).

The OVF fallback (one rule for every set): when the engine has no OVF for the
owner (its all-content XML carries none), the set still
gets a ``vm.ovf`` -- the placeholder ``rhvfs.backupset.missing_ovf``,
a well-formed empty envelope that names ``vm.xml`` -- and ``ovf_available``
is False, so the manifest says ``config_files.ovf: null``. That is what full
sets have always done: an owner the engine produces no OVF for must stay
backed up, and ``vm.xml`` carries its configuration. A 404 (the owner is
gone) and transient errors still fail the fetch: those are not "no OVF".

Must not: create anything on the engine, decide which disks a set contains
or what the files are called.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Sequence
from typing import Protocol, TypeVar

import trio

from rhvfs.backupset import OwnerData, missing_ovf
from rhvfs.engine.types import Disk, DiskAttachment, Nic, Template, Vm
from rhvfs.sessions.core._gather import gather
from rhvfs.sessions.core._model import Owner
from rhvfs.sessions.core._ports import EngineLike

log = logging.getLogger(__name__)

T = TypeVar("T")
#: How long cluster and storage-domain names are reused (seconds).
NAMES_TTL_S = 60.0


class OwnerDataFetcher(Protocol):
    """``fetch`` as a dependency: ``(owner, entity already fetched or None) -> OwnerData``."""

    async def __call__(self, owner: Owner, entity: Vm | Template | None = None) -> OwnerData: ...


def image_disks(data: OwnerData) -> list[Disk]:
    """Disks a snapshot covers: image disks (a direct LUN has no volume), never shareable ones."""
    return [a.disk for a in data.attachments if not a.disk.shareable and a.disk.image_id]


class OwnerDataSource:
    """Fetches ``OwnerData`` from one engine; keeps the names maps for ``NAMES_TTL_S``."""

    def __init__(self, engine: EngineLike) -> None:
        self.engine = engine
        self._names: tuple[float, dict[str, str], dict[str, str]] | None = None

    async def __call__(self, owner: Owner, entity: Vm | Template | None = None) -> OwnerData:
        return await self.fetch(owner, entity)

    async def fetch(self, owner: Owner, entity: Vm | Template | None = None) -> OwnerData:
        """The owner's data now; ``entity`` (fetched already) is the one the data shows.

        Two engine calls: the entity with its attachments (disks) and NICs inlined
        (``follow=``), and its all-content XML with the OVF in it (``vm_config``).
        """
        engine = self.engine
        oid = owner.id
        if owner.kind == "vm":
            followed, config, names = await gather(
                lambda: engine.get_vm_followed(oid),
                lambda: self._config(engine.vm_config(oid), owner),
                self._names_maps,
            )
        else:
            followed, config, names = await gather(
                lambda: engine.get_template_followed(oid),
                lambda: self._config(engine.template_config(oid), owner),
                self._names_maps,
            )
        ovf, xml = config
        atts, nics = await self._collections(owner, followed)
        return OwnerData(
            kind=owner.kind,
            entity=_bare(entity if entity is not None else followed),
            attachments=tuple(atts),
            nics=tuple(nics),
            ovf=ovf.encode("utf-8") if ovf is not None else missing_ovf(owner.kind, owner.name),
            ovf_available=ovf is not None,
            xml=xml.encode("utf-8") if isinstance(xml, str) else bytes(xml),
            cluster_names=names[0],
            storage_domain_names=names[1],
        )

    async def _collections(
        self, owner: Owner, entity: Vm | Template
    ) -> tuple[Sequence[DiskAttachment], Sequence[Nic]]:
        """The entity's attachments and NICs: inlined, or (an engine without follow=) one
        call each."""
        atts, nics = entity.disk_attachments, entity.nics
        if atts is not None and nics is not None:
            return atts, nics
        engine, oid = self.engine, owner.id
        if owner.kind == "vm":
            atts, nics = await gather(
                lambda: engine.disk_attachments(oid), lambda: engine.vm_nics(oid)
            )
        else:
            atts, nics = await gather(
                lambda: engine.template_disk_attachments(oid),
                lambda: engine.template_nics(oid),
            )
        return atts, nics

    async def summary(self, owner: Owner) -> OwnerData:
        """The owner's data from the latest engine listing, without OVF and XML (empty)."""
        engine = self.engine
        entity: Vm | Template
        if owner.kind == "vm":
            entity, names = await gather(lambda: engine.listed_vm(owner.id), self._names_maps)
        else:
            entity, names = await gather(lambda: engine.listed_template(owner.id), self._names_maps)
        atts, nics = await self._collections(owner, entity)
        return OwnerData(
            kind=owner.kind,
            entity=_bare(entity),
            attachments=tuple(atts),
            nics=tuple(nics),
            ovf=b"",
            xml=b"",
            cluster_names=names[0],
            storage_domain_names=names[1],
        )

    async def _config(
        self, call: Awaitable[tuple[str | None, bytes]], owner: Owner
    ) -> tuple[str | None, bytes]:
        """(OVF, XML); the OVF None when the engine has none (the set is complete without it)."""
        ovf, xml = await call
        if ovf is None:
            log.warning("no OVF for %s %s: the engine returned none", owner.kind, owner.name)
        return ovf, xml

    async def _names_maps(self) -> tuple[dict[str, str], dict[str, str]]:
        now = trio.current_time()
        if self._names is not None and self._names[0] > now:
            return self._names[1], self._names[2]
        clusters, sds = await gather(self.engine.list_clusters, self.engine.list_storage_domains)
        c = {x.id: x.name for x in clusters}
        s = {x.id: x.name for x in sds}
        self._names = (now + NAMES_TTL_S, c, s)
        return c, s


def _bare(entity: Vm | Template) -> Vm | Template:
    """The entity without the collections a listing inlined (``OwnerData`` has its own)."""
    if entity.disk_attachments is None and entity.nics is None:
        return entity
    return dataclasses.replace(entity, disk_attachments=None, nics=None)
