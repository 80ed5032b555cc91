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
owner (it refuses with anything but 404 or a transient error), the set still
gets a ``vm.ovf`` -- the placeholder ``rhvfs.backupset.missing_ovf``,
a well-formed empty envelope that names ``vm.xml`` -- and ``ovf_available``
is False, so the manifest says ``config_files.ovf: null``. That is what full
sets have always done: an owner the engine produces no OVF for must stay
backed up, and ``vm.xml`` carries its configuration. A 404 (the owner is gone) and transient errors
still fail the fetch: those are not "no OVF".

Must not: create anything on the engine, decide which disks a set contains
or what the files are called.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Protocol, TypeVar

import trio

from rhvfs.backupset import OwnerData, missing_ovf
from rhvfs.engine.types import Disk, Template, Vm
from rhvfs.errors import EngineError, NotFound, is_transient
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
        """The owner's data now; ``entity`` saves fetching the VM/template again."""
        engine = self.engine
        oid = owner.id
        if owner.kind == "vm":
            ent, atts, nics, ovf, xml, names = await gather(
                (lambda: _const(entity)) if entity is not None else (lambda: engine.get_vm(oid)),
                lambda: engine.disk_attachments(oid),
                lambda: engine.vm_nics(oid),
                lambda: self._ovf_or_none(engine.vm_ovf(oid), owner),
                lambda: engine.vm_xml(oid),
                self._names_maps,
            )
        else:
            ent, atts, nics, ovf, xml, names = await gather(
                (lambda: _const(entity))
                if entity is not None
                else (lambda: engine.get_template(oid)),
                lambda: engine.template_disk_attachments(oid),
                lambda: engine.template_nics(oid),
                lambda: self._ovf_or_none(engine.template_ovf(oid), owner),
                lambda: engine.template_xml(oid),
                self._names_maps,
            )
        return OwnerData(
            kind=owner.kind,
            entity=ent,
            attachments=tuple(atts),
            nics=tuple(nics),
            ovf=ovf.encode("utf-8") if ovf is not None else missing_ovf(owner.kind, owner.name),
            ovf_available=ovf is not None,
            xml=xml.encode("utf-8") if isinstance(xml, str) else bytes(xml),
            cluster_names=names[0],
            storage_domain_names=names[1],
        )

    async def summary(self, owner: Owner) -> OwnerData:
        """The owner's data from the latest engine listing, without OVF and XML (empty)."""
        engine = self.engine
        entity: Vm | Template
        if owner.kind == "vm":
            entity, names = await gather(lambda: engine.listed_vm(owner.id), self._names_maps)
        else:
            entity, names = await gather(lambda: engine.listed_template(owner.id), self._names_maps)
        atts, nics = entity.disk_attachments, entity.nics
        if atts is None or nics is None:  # an engine without follow=: one call each
            oid = owner.id
            if owner.kind == "vm":
                atts, nics = await gather(
                    lambda: engine.disk_attachments(oid), lambda: engine.vm_nics(oid)
                )
            else:
                atts, nics = await gather(
                    lambda: engine.template_disk_attachments(oid),
                    lambda: engine.template_nics(oid),
                )
        return OwnerData(
            kind=owner.kind,
            entity=entity,
            attachments=tuple(atts),
            nics=tuple(nics),
            ovf=b"",
            xml=b"",
            cluster_names=names[0],
            storage_domain_names=names[1],
        )

    async def _ovf_or_none(self, call: Awaitable[str], owner: Owner) -> str | None:
        """The OVF, or None when the engine has none (the set is still complete without it)."""
        try:
            return await call
        except NotFound:
            raise
        except EngineError as e:
            if is_transient(e):
                raise
            log.warning("no OVF for %s %s: %s", owner.kind, owner.name, e)
            return None

    async def _names_maps(self) -> tuple[dict[str, str], dict[str, str]]:
        now = trio.current_time()
        if self._names is not None and self._names[0] > now:
            return self._names[1], self._names[2]
        clusters, sds = await gather(self.engine.list_clusters, self.engine.list_storage_domains)
        c = {x.id: x.name for x in clusters}
        s = {x.id: x.name for x in sds}
        self._names = (now + NAMES_TTL_S, c, s)
        return c, s


async def _const(value: T) -> T:
    return value
