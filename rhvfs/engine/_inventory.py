"""Inventory reads: data centers, clusters, hosts, storage domains, tags, VMs, templates, disks, NICs.

Bounded: one list call per collection, never one call per VM (per-disk GETs
only for the disks of one VM or template). ``list_vms`` and ``list_templates``
inline each entity's disk attachments (with their disks), NICs and (VMs) tags
with ``follow=`` (API 4.2+; an engine that refuses it gets plain lists), and
keep that listing as "the latest listing": ``listed_vm``/``listed_template``
answer from it while it is younger than ``config.listing_ttl`` (one list call
refreshes it for every entity at once), so set listings cost no call per VM.
An entity missing from it (created since), or one rhvfs changed since its
entry was asked for (``forget_listed``/``changing``: snapshots and backups it
creates or removes; ``keeps_answer``), is fetched by itself. Read-only; all
calls are retried on transient failures. The root tag and the Blank template
are filtered out.
"""

from __future__ import annotations

import io
import logging
from typing import Any

import ovirtsdk4
import ovirtsdk4.http
import ovirtsdk4.readers
import ovirtsdk4.xml
import trio

from rhvfs.engine import _convert as convert
from rhvfs.engine import types as t
from rhvfs.engine._core import EngineCore
from rhvfs.errors import EngineError

log = logging.getLogger(__name__)

ROOT_TAG_ID = "00000000-0000-0000-0000-000000000000"
BLANK_TEMPLATE_ID = "00000000-0000-0000-0000-000000000000"


def search_value(text: str) -> str:
    """Quote a value for the engine search language when it holds spaces or quotes."""
    if text and all(c.isalnum() or c in "-_.@:" for c in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# What the SDK sends for ``all_content=True`` where a service's ``get``/``list`` has
# that parameter (VmService.get, VmsService.list, SnapshotsService.list): both the
# header and the query parameter. TemplateService.get, TemplatesService.list and
# SnapshotService.get have no such parameter and silently drop it (they swallow
# **kwargs), so every all-content read passes these explicitly instead.
ALL_CONTENT_HEADERS: dict[str, str] = {"All-Content": "true"}
ALL_CONTENT_QUERY: dict[str, str] = {"all_content": "true"}


def all_content() -> dict[str, dict[str, str]]:
    """Keyword arguments that make any SDK ``get``/``list`` return the heavy fields (the OVF)."""
    return {"headers": dict(ALL_CONTENT_HEADERS), "query": dict(ALL_CONTENT_QUERY)}


def raw_get(
    conn: ovirtsdk4.Connection,
    path: str,
    query: dict[str, str] | None = None,
    *,
    headers: dict[str, str] | None = None,
) -> bytes:
    """GET ``path`` (relative to the API root) and return the body exactly as the engine sent it."""
    request = ovirtsdk4.http.Request(
        method="GET", path=path, query=query or {}, headers=headers or {}
    )
    context = conn.send(request)
    response = conn.wait(context)
    code = response.code
    if code == 200:
        body = response.body
        return body if isinstance(body, bytes) else str(body).encode()
    msg = f"HTTP response code is {code}."
    cls: type[ovirtsdk4.Error] = ovirtsdk4.Error
    if code in (401, 403):
        cls = ovirtsdk4.AuthError
    elif code == 404:
        cls = ovirtsdk4.NotFoundError
    err = cls(msg)
    err.code = code
    raise err


#: What ``list_vms`` / ``list_templates`` inline (one call instead of three per entity).
#: NICs come with their vnic profile and its network, so naming them needs no call either.
VM_FOLLOW = "disk_attachments.disk,nics.vnic_profile.network,tags"
TEMPLATE_FOLLOW = "disk_attachments.disk,nics.vnic_profile.network"


class _Listing:
    """The latest listing of one collection: entities by id (only with their collections
    inlined), each with the change epoch its call began at (``EngineCore.keeps_answer``
    tells whether it still answers), and when the listing was taken."""

    __slots__ = ("by_id", "lock", "taken")

    def __init__(self) -> None:
        self.by_id: dict[str, tuple[Any, int]] = {}
        self.taken: float | None = None  # trio time; None: never listed (or invalidated)
        self.lock = trio.Lock()


class InventoryMixin(EngineCore):
    _profiles_cache: tuple[float, list[t.VnicProfile]] | None = None
    _follow_refused: bool = False  # the engine answered 400 to follow=: plain lists

    async def list_datacenters(self) -> list[t.DataCenter]:
        items = await self.call(
            lambda c: c.system_service().data_centers_service().list(), "list data centers"
        )
        return [convert.datacenter(x) for x in items]

    async def list_clusters(self) -> list[t.Cluster]:
        items = await self.call(
            lambda c: c.system_service().clusters_service().list(), "list clusters"
        )
        return [convert.cluster(x) for x in items]

    async def list_hosts(self) -> list[t.Host]:
        items = await self.call(lambda c: c.system_service().hosts_service().list(), "list hosts")
        return [convert.host(x) for x in items]

    async def list_storage_domains(self) -> list[t.StorageDomain]:
        items = await self.call(
            lambda c: c.system_service().storage_domains_service().list(), "list storage domains"
        )
        return [convert.storage_domain(x) for x in items]

    async def list_tags(self) -> list[t.Tag]:
        items = await self.call(lambda c: c.system_service().tags_service().list(), "list tags")
        return [convert.tag(x) for x in items if x.id != ROOT_TAG_ID]

    async def get_tag(self, tag_id: str) -> t.Tag:
        item = await self.call(
            lambda c: c.system_service().tags_service().tag_service(tag_id).get(),
            f"get tag {tag_id}",
        )
        return convert.tag(item)

    async def _list_followed(self, service: Any, follow: str, what: str) -> tuple[list[Any], bool]:
        """``service.list(follow=...)``; (items, True), or (plain items, False) on an engine
        that refuses ``follow`` (400; remembered for the mount)."""
        if not self._follow_refused:
            try:
                items = await self.call(lambda c: service(c).list(follow=follow), what)
                return list(items), True
            except EngineError as exc:
                if exc.code != 400:
                    raise
                log.info("engine refused follow=%s (%s); listing without it", follow, exc)
                self._follow_refused = True
        return list(await self.call(lambda c: service(c).list(), what)), False

    async def _inlined(self, x: Any) -> tuple[tuple[t.DiskAttachment, ...], tuple[t.Nic, ...]]:
        """A followed entity's attachments (disks filled) and NICs, converted (no call but,
        once per ``listing_ttl``, the vnic profiles)."""
        atts = await self._attachments_with_disks(list(x.disk_attachments or ()))
        nics = await self._nics(list(x.nics or ()))
        return tuple(atts), tuple(nics)

    async def _vm_followed(self, x: Any, followed: bool) -> t.Vm:
        if not followed:
            return convert.vm(x)
        atts, nics = await self._inlined(x)
        tags = tuple(tag.id for tag in (x.tags or ()) if tag.id and tag.id != ROOT_TAG_ID)
        return convert.vm(x, tag_ids=tags, attachments=atts, nics=nics)

    async def list_vms(self) -> list[t.Vm]:
        """Every VM with its attachments, NICs and tag ids inlined (one call); also taken as
        the latest listing ``listed_vm`` answers from."""
        since = self.change_epoch
        items, followed = await self._list_followed(
            lambda c: c.system_service().vms_service(), VM_FOLLOW, "list vms"
        )
        vms = [await self._vm_followed(x, followed) for x in items]
        self._remember(self._vm_listing, vms, followed, since)
        return vms

    @property
    def _vm_listing(self) -> _Listing:
        return self._listing("vms")

    @property
    def _template_listing(self) -> _Listing:
        return self._listing("templates")

    def _listing(self, kind: str) -> _Listing:
        listing: _Listing | None = self._listings.get(kind)
        if listing is None:
            listing = self._listings[kind] = _Listing()
        return listing

    def _remember(self, listing: _Listing, items: list[Any], followed: bool, since: int) -> None:
        """Keep a listing begun at change epoch ``since``; the entry of an entity rhvfs
        changed meanwhile (or is changing) does not answer (``keeps_answer``): it may show
        the entity in the middle of the change."""
        if not followed:
            return  # without inlined collections a listing answers nothing per entity
        listing.by_id = {x.id: (x, since) for x in items}
        listing.taken = trio.current_time()

    def invalidate_listings(self) -> None:
        """Forget the latest listings: the next ``listed_*`` lists again."""
        self._vm_listing.taken = self._template_listing.taken = None

    def _fresh(self, listing: _Listing) -> bool:
        taken = listing.taken
        return taken is not None and trio.current_time() - taken < self.config.listing_ttl

    async def _from_listing(
        self, listing: _Listing, entity_id: str, relist: Any, fetch: Any
    ) -> Any:
        if not self._fresh(listing):
            async with listing.lock:  # concurrent callers share one list call
                if not self._fresh(listing):
                    await relist()
        if entity_id in listing.by_id:
            item, asked_at = listing.by_id[entity_id]
            if self.keeps_answer(entity_id, asked_at):
                return item
        since = self.change_epoch
        item = await fetch(entity_id)
        if item.disk_attachments is not None and listing.taken is not None:
            listing.by_id[entity_id] = (item, since)
        return item

    async def listed_vm(self, vm_id: str) -> t.Vm:
        """The VM as the latest listing has it (attachments and NICs inlined), listing again
        when it is older than ``listing_ttl``; a VM not in it, or changed by rhvfs since, is
        fetched by itself (one GET with follow). ``NotFound`` if it is gone."""
        vm: t.Vm = await self._from_listing(
            self._vm_listing, vm_id, self.list_vms, self.get_vm_followed
        )
        return vm

    async def get_vm_followed(self, vm_id: str) -> t.Vm:
        """One VM with its attachments, NICs and tag ids inlined (one call)."""
        if self._follow_refused:
            return await self.get_vm(vm_id)
        item = await self.call(
            lambda c: c.system_service().vms_service().vm_service(vm_id).get(follow=VM_FOLLOW),
            f"get vm {vm_id}",
        )
        return await self._vm_followed(item, True)

    async def get_vm(self, vm_id: str) -> t.Vm:
        item = await self.call(
            lambda c: c.system_service().vms_service().vm_service(vm_id).get(), f"get vm {vm_id}"
        )
        return convert.vm(item)

    async def find_vm(self, name: str) -> t.Vm | None:
        query = f"name={search_value(name)}"
        items = await self.call(
            lambda c: c.system_service().vms_service().list(search=query, case_sensitive=True),
            f"find vm {name!r}",
        )
        for x in items:
            if x.name == name:
                return convert.vm(x)
        return None

    async def vms_by_tag(self, tag_id: str) -> list[t.Vm]:
        """VMs carrying the tag: one ``search=tag=<name>`` list, filtered by each VM's tag links when inlined."""
        tag = await self.get_tag(tag_id)
        query = f"tag={search_value(tag.name)}"
        try:
            items = await self.call(
                lambda c: c.system_service().vms_service().list(search=query),
                f"list vms with tag {tag.name!r}",
            )
        except EngineError as exc:
            if exc.code != 400:
                raise
            log.info("engine rejected search %r (%s); listing each VM's tags instead", query, exc)
            return await self._vms_by_tag_slow(tag_id)
        return [convert.vm(x, tag_ids=(tag_id,)) for x in items]

    async def _vms_by_tag_slow(self, tag_id: str) -> list[t.Vm]:
        vms = await self.list_vms()
        result: list[t.Vm] = []
        for vm in vms:
            tags = await self.vm_tags(vm.id)
            if any(x.id == tag_id for x in tags):
                result.append(vm)
        return result

    async def vm_tags(self, vm_id: str) -> list[t.Tag]:
        items = await self.call(
            lambda c: c.system_service().vms_service().vm_service(vm_id).tags_service().list(),
            f"list tags of vm {vm_id}",
        )
        return [convert.tag(x) for x in items]

    async def _template_followed(self, x: Any, followed: bool) -> t.Template:
        if not followed:
            return convert.template(x)
        atts, nics = await self._inlined(x)
        return convert.template(x, attachments=atts, nics=nics)

    async def list_templates(self) -> list[t.Template]:
        """Every template (not Blank) with attachments and NICs inlined (one call); also
        taken as the latest listing ``listed_template`` answers from."""
        since = self.change_epoch
        items, followed = await self._list_followed(
            lambda c: c.system_service().templates_service(), TEMPLATE_FOLLOW, "list templates"
        )
        templates = [
            await self._template_followed(x, followed) for x in items if x.id != BLANK_TEMPLATE_ID
        ]
        self._remember(self._template_listing, templates, followed, since)
        return templates

    async def listed_template(self, template_id: str) -> t.Template:
        """``listed_vm`` for templates."""
        tpl: t.Template = await self._from_listing(
            self._template_listing, template_id, self.list_templates, self.get_template_followed
        )
        return tpl

    async def get_template_followed(self, template_id: str) -> t.Template:
        if self._follow_refused:
            return await self.get_template(template_id)
        item = await self.call(
            lambda c: (
                c.system_service()
                .templates_service()
                .template_service(template_id)
                .get(follow=TEMPLATE_FOLLOW)
            ),
            f"get template {template_id}",
        )
        return await self._template_followed(item, True)

    async def get_template(self, template_id: str) -> t.Template:
        item = await self.call(
            lambda c: c.system_service().templates_service().template_service(template_id).get(),
            f"get template {template_id}",
        )
        return convert.template(item)

    async def get_disk(self, disk_id: str) -> t.Disk:
        item = await self.call(
            lambda c: c.system_service().disks_service().disk_service(disk_id).get(),
            f"get disk {disk_id}",
        )
        return convert.disk(item)

    async def _attachments_with_disks(self, items: list[Any]) -> list[t.DiskAttachment]:
        """Fill each attachment's disk: inlined when the engine followed the link, else one GET per disk (concurrent)."""
        disks: dict[int, t.Disk] = {}
        errors: list[EngineError] = []

        async def fetch(i: int, disk_id: str) -> None:
            # Errors are collected, not raised, so callers see a plain rhvfs error
            # (e.g. NotFound) instead of an ExceptionGroup.
            try:
                disks[i] = await self.get_disk(disk_id)
            except EngineError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            for i, att in enumerate(items):
                ref = att.disk
                if ref is not None and ref.provisioned_size is not None:
                    disks[i] = convert.disk(ref)
                else:
                    nursery.start_soon(fetch, i, ref.id if ref is not None else att.id)
        if errors:
            raise errors[0]
        return [convert.disk_attachment(att, disks[i]) for i, att in enumerate(items)]

    async def disk_attachments(self, vm_id: str) -> list[t.DiskAttachment]:
        items = await self.call(
            lambda c: (
                c.system_service().vms_service().vm_service(vm_id).disk_attachments_service().list()
            ),
            f"list disk attachments of vm {vm_id}",
        )
        return await self._attachments_with_disks(list(items))

    async def template_disk_attachments(self, template_id: str) -> list[t.DiskAttachment]:
        items = await self.call(
            lambda c: (
                c.system_service()
                .templates_service()
                .template_service(template_id)
                .disk_attachments_service()
                .list()
            ),
            f"list disk attachments of template {template_id}",
        )
        return await self._attachments_with_disks(list(items))

    async def storage_domain_disks(self, sd_id: str) -> list[t.Disk]:
        items = await self.call(
            lambda c: (
                c.system_service()
                .storage_domains_service()
                .storage_domain_service(sd_id)
                .disks_service()
                .list()
            ),
            f"list disks of storage domain {sd_id}",
        )
        return [convert.disk(x) for x in items]

    async def list_disks(self) -> list[t.Disk]:
        items = await self.call(lambda c: c.system_service().disks_service().list(), "list disks")
        return [convert.disk(x) for x in items]

    async def cluster_networks(self, cluster_id: str) -> list[t.Network]:
        """The networks attached to a cluster, with their usages there (``management``...)."""
        items = await self.call(
            lambda c: (
                c.system_service().clusters_service().cluster_service(cluster_id)
                .networks_service().list()
            ),
            f"list networks of cluster {cluster_id}",
        )  # fmt: skip
        return [convert.network(x) for x in items]

    async def list_vnic_profiles(self) -> list[t.VnicProfile]:
        profiles = await self.call(
            lambda c: c.system_service().vnic_profiles_service().list(), "list vnic profiles"
        )
        networks: dict[str, str] = {}
        if any(p.network is not None and not p.network.name for p in profiles):
            nets = await self.call(
                lambda c: c.system_service().networks_service().list(), "list networks"
            )
            networks = {n.id: n.name for n in nets}
        result = [convert.vnic_profile(p, network_names=networks) for p in profiles]
        self._profiles_cache = (trio.current_time(), result)
        return result

    async def _cached_vnic_profiles(self) -> list[t.VnicProfile]:
        """Profiles for naming NICs; reused for ``config.listing_ttl`` seconds (they rarely change)."""
        cached = self._profiles_cache
        if cached is not None and trio.current_time() - cached[0] < self.config.listing_ttl:
            return list(cached[1])
        return await self.list_vnic_profiles()

    async def _nics(self, items: list[Any]) -> list[t.Nic]:
        refs = [x.vnic_profile for x in items if x.vnic_profile is not None]
        profiles: dict[str, t.VnicProfile] = {}
        if all(r.name and r.network is not None and r.network.name for r in refs):
            profiles = {r.id: convert.vnic_profile(r) for r in refs}  # inlined by follow=
        elif refs:
            profiles = {p.id: p for p in await self._cached_vnic_profiles()}
        return [convert.nic(x, profiles=profiles) for x in items]

    async def vm_nics(self, vm_id: str) -> list[t.Nic]:
        items = await self.call(
            lambda c: c.system_service().vms_service().vm_service(vm_id).nics_service().list(),
            f"list nics of vm {vm_id}",
        )
        return await self._nics(list(items))

    async def template_nics(self, template_id: str) -> list[t.Nic]:
        items = await self.call(
            lambda c: (
                c.system_service()
                .templates_service()
                .template_service(template_id)
                .nics_service()
                .list()
            ),
            f"list nics of template {template_id}",
        )
        return await self._nics(list(items))

    @staticmethod
    def _ovf_of(obj: Any, what: str) -> str:
        init = obj.initialization
        conf = init.configuration if init is not None else None
        if conf is None or not conf.data:
            raise EngineError(f"{what}: the engine returned no OVF configuration")
        return str(conf.data)

    async def vm_ovf(self, vm_id: str) -> str:
        what = f"get ovf of vm {vm_id}"
        item = await self.call(
            lambda c: c.system_service().vms_service().vm_service(vm_id).get(**all_content()), what
        )
        return self._ovf_of(item, what)

    async def template_ovf(self, template_id: str) -> str:
        what = f"get ovf of template {template_id}"
        item = await self.call(
            lambda c: (
                c.system_service()
                .templates_service()
                .template_service(template_id)
                .get(**all_content())
            ),
            what,
        )
        return self._ovf_of(item, what)

    async def vm_xml(self, vm_id: str) -> bytes:
        return await self.call(
            lambda c: raw_get(c, f"/vms/{vm_id}", **all_content()), f"get xml of vm {vm_id}"
        )

    async def vm_config(self, vm_id: str) -> tuple[str | None, bytes]:
        """The VM's OVF (None when the engine has none) and API XML: one all-content GET
        (the XML holds the OVF), where ``vm_ovf`` and ``vm_xml`` are one each."""
        xml = await self.vm_xml(vm_id)
        return _ovf_in(xml, ovirtsdk4.readers.VmReader, f"vm {vm_id}"), xml

    async def template_config(self, template_id: str) -> tuple[str | None, bytes]:
        """``vm_config`` for a template."""
        xml = await self.template_xml(template_id)
        return _ovf_in(xml, ovirtsdk4.readers.TemplateReader, f"template {template_id}"), xml

    async def template_xml(self, template_id: str) -> bytes:
        return await self.call(
            lambda c: raw_get(c, f"/templates/{template_id}", **all_content()),
            f"get xml of template {template_id}",
        )


def _ovf_in(xml: bytes, reader: Any, what: str) -> str | None:
    """The OVF inside an all-content API XML (``initialization.configuration.data``)."""
    try:
        source = ovirtsdk4.xml.XmlReader(io.BytesIO(xml))
        try:
            obj = reader.read_one(source)
        finally:
            source.close()
    except Exception as exc:  # the SDK's parser raises plain errors on malformed XML
        raise EngineError(f"{what}: cannot parse the engine's XML ({exc})") from exc
    init = obj.initialization if obj is not None else None
    conf = init.configuration if init is not None else None
    return str(conf.data) if conf is not None and conf.data else None
