"""What is in each directory of the tree (design.md §3).

Each directory is a ``lister``: an async function returning its children as
``Node`` values, computed from the cached inventory (``Inventory``) and, for
``@rhv/`` and ``disks/``, from ``BackupSets`` listings. Inode numbers come from
the ``InodeTable`` keyed by engine ids, never by names or discovery order.

Symlinks are relative (``../../vms/<vm>``) so they resolve under any mountpoint.

Must not: start backup sessions (listing never opens), cache anything itself
(``Inventory`` and the tree do), or know about FUSE.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import rhvfs
from rhvfs.backupset import SET_DIRS, SetKind, disk_mode, set_support
from rhvfs.engine.types import (
    INLINED_FIELDS,
    Cluster,
    DataCenter,
    DiskAttachment,
    Host,
    StorageDomain,
    Tag,
    Template,
    Vm,
)
from rhvfs.redact import redact
from rhvfs.vfs.backend import BackupSets, LocalOwner, OwnerFactory, OwnerKind
from rhvfs.vfs.inventory import Inventory
from rhvfs.vfs.names import ROOT_INODE, InodeTable, escape
from rhvfs.vfs.nodes import FIXED_MTIME_NS, DataRef, Kind, Node, render_json, time_ns

Lister = Callable[[], Awaitable[list[Node]]]

TOP_DIRS = (
    "datacenters",
    "clusters",
    "hosts",
    "storagedomains",
    "tags",
    "templates",
    "vms",
    "restore",
)
CONTROL_DIR = ".rhvfs"
_FULL_DIR = SET_DIRS[SetKind.FULL]
_SINCE_DIR = SET_DIRS[SetKind.SINCE]
STATUS_FILE = "status.json"


def unique_names(items: Iterable[tuple[str, str]], *, suffix: str = "") -> dict[str, str]:
    """File names for ``(id, engine_name)`` pairs: escaped, and ``--<id>`` added on clashes."""
    pairs = list(items)
    first = {eid: escape(name + suffix) for eid, name in pairs}
    clashes = Counter(first.values())
    out: dict[str, str] = {}
    for eid, name in pairs:
        out[eid] = first[eid] if clashes[first[eid]] == 1 else escape(f"{name}--{eid}{suffix}")
    return out


def _asdict(value: Any) -> dict[str, Any]:
    """An engine value's own fields (not the collections a listing inlined into it)."""
    doc = dataclasses.asdict(value)
    for name in INLINED_FIELDS:
        doc.pop(name, None)
    return doc


def _by_name(nodes: Iterable[Node]) -> list[Node]:
    return sorted(nodes, key=lambda n: n.name)


def _mode(a: DiskAttachment) -> tuple[str, str | None]:
    """What incremental sets hold of the attached disk (``rhvfs.backupset.disk_mode``)."""
    return disk_mode(a.disk.format, a.disk.backup, shareable=a.disk.shareable)


def _fixed_mtime(entity: Any) -> int:
    return FIXED_MTIME_NS


def _creation_mtime(entity: Any) -> int:
    return time_ns(entity.creation_time)


class Layout:
    """Builds the nodes of every directory. One per mount (or per ``rhvfs ls``)."""

    def __init__(
        self,
        inventory: Inventory,
        backups: BackupSets,
        table: InodeTable,
        *,
        owner_factory: OwnerFactory = LocalOwner,
        status_info: Callable[[], dict[str, Any]] | None = None,
        restore_dir: bool = True,
    ) -> None:
        """``restore_dir`` False leaves ``restore/`` out of the root (a read-only mount)."""
        self.inv = inventory
        self.backups = backups
        self.table = table
        self._owner_factory = owner_factory
        self._status_info = status_info or (lambda: {})
        self.top_dirs = TOP_DIRS if restore_dir else tuple(d for d in TOP_DIRS if d != "restore")

    # -- node builders -------------------------------------------------------

    def _dir(
        self, ident: tuple[str, str, str], name: str, lister: Lister, mtime_ns: int = FIXED_MTIME_NS
    ) -> Node:
        return Node(self.table.inode(*ident), Kind.DIR, name, mtime_ns=mtime_ns, lister=lister)

    def _set_dir(
        self, ident: tuple[str, str, str], name: str, lister: Lister, owner: Any, mtime_ns: int
    ) -> Node:
        """``@rhv/`` or ``disks/``: listed anew whenever a read of the owner's set ended
        (a running VM's files then show a new time, so tools read them again)."""
        node = self._dir(ident, name, lister, mtime_ns)
        generation = getattr(self.backups, "set_generation", None)
        if generation is not None:
            node.generation = lambda: int(generation(owner))
        return node

    def _file(
        self,
        ident: tuple[str, str, str],
        name: str,
        content: bytes,
        base_mtime_ns: int = FIXED_MTIME_NS,
    ) -> Node:
        node = Node(self.table.inode(*ident), Kind.FILE, name)
        node.set_content(content, base_mtime_ns=base_mtime_ns)
        return node

    def _link(self, ident: tuple[str, str, str], name: str, target: str, mtime_ns: int) -> Node:
        return Node(
            self.table.inode(*ident),
            Kind.LINK,
            name,
            mtime_ns=mtime_ns,
            target=target,
            size=len(target.encode("utf-8")),
        )

    def _entity_dirs(
        self,
        entities: Sequence[Any],
        kind: str,
        make_lister: Callable[[Any], Lister],
        *,
        sub: str = "",
        mtime: Callable[[Any], int] = _fixed_mtime,
    ) -> list[Node]:
        """One directory per engine entity (anything with ``id`` and ``name``), by name."""
        names = unique_names((e.id, e.name) for e in entities)
        return _by_name(
            self._dir((kind, e.id, sub), names[e.id], make_lister(e), mtime(e)) for e in entities
        )

    @staticmethod
    def _static(path: str) -> tuple[str, str, str]:
        return ("static", "", path)

    # -- root -----------------------------------------------------------------

    def root(self) -> Node:
        return Node(ROOT_INODE, Kind.DIR, "", lister=self._root)

    def top_ino(self, name: str) -> int:
        """The inode of top-level directory ``name`` (one of ``TOP_DIRS``), before any listing."""
        return self.table.inode(*self._static(f"/{name}"))

    async def _root(self) -> list[Node]:
        listers: dict[str, Lister] = {
            "datacenters": self._datacenters,
            "clusters": self._clusters,
            "hosts": self._hosts,
            "storagedomains": self._storage_domains,
            "tags": self._tags,
            "templates": self._templates,
            "vms": self._vms,
            "restore": self._restore,
        }
        nodes = [self._dir(self._static(f"/{name}"), name, listers[name]) for name in self.top_dirs]
        nodes.append(self._dir(self._static(f"/{CONTROL_DIR}"), CONTROL_DIR, self._control))
        return _by_name(nodes)

    async def _restore(self) -> list[Node]:
        # Empty and read-only here; a mount with restores hands restore/ to ``RestoreTree``.
        return []

    async def _control(self) -> list[Node]:
        node = Node(
            self.table.inode(*self._static(f"/{CONTROL_DIR}/{STATUS_FILE}")), Kind.FILE, STATUS_FILE
        )
        node.refresh = self._status_content
        node.set_content(self._status_content(), base_mtime_ns=FIXED_MTIME_NS)
        return [node]

    def _status_content(self) -> bytes:
        info: dict[str, Any] = {"rhvfs_version": rhvfs.__version__, "pid": os.getpid()}
        info.update(self._status_info())
        product = self.inv.product
        info["engine"] = dataclasses.asdict(product) if product is not None else None
        info["sessions"] = self.backups.status()
        info["engine_calls"] = self.inv.engine_calls()
        return redact(render_json(info).decode()).encode()  # error texts may quote a URL

    # -- VMs --------------------------------------------------------------------

    async def vm_names(self) -> dict[str, str]:
        return unique_names((vm.id, vm.name) for vm in await self.inv.vms())

    async def _vms(self) -> list[Node]:
        vms = await self.inv.vms()
        return self._entity_dirs(
            vms, "vm", lambda vm: self._vm_lister(vm.id), mtime=_creation_mtime
        )

    def _vm_lister(self, vm_id: str) -> Lister:
        async def lister() -> list[Node]:
            vm = next((v for v in await self.inv.vms() if v.id == vm_id), None)
            if vm is None:
                return []
            owner = self._owner("vm", vm.id, vm.name)
            mtime = time_ns(vm.creation_time)
            return [
                self._set_dir(
                    ("vm", vm.id, _FULL_DIR),
                    _FULL_DIR,
                    self._set_lister("vm", owner, vm.id),
                    owner,
                    mtime,
                ),
                self._set_dir(
                    ("vm", vm.id, "disks"),
                    "disks",
                    self._disks_lister("vm", owner, vm.id),
                    owner,
                    mtime,
                ),
                self._file(("vm", vm.id, "vm.json"), "vm.json", await self._vm_json(vm), mtime),
                *self._incremental_dirs(owner, vm.id, mtime),
            ]

        return lister

    # -- incremental sets (issue 5; rhvfs/sessions/incremental/_manager.py) -------------
    # Listing one of these directories starts that set's engine backup: the
    # file sizes are the dirty extents, known only once the backup is ready.
    # So the three set directories are hidden from the VM directory's listing
    # and reached by name only (``tar -cf x -C /mnt/vms/web01 @rhv-incremental``,
    # ``tags/bkup/*/@rhv-incremental``): a ``find`` or ``restic backup`` of a
    # whole VM directory must not start engine backups and checkpoints.

    def _incremental_dirs(self, owner: Any, vm_id: str, mtime: int) -> list[Node]:
        if not hasattr(self.backups, "list_incremental"):
            return []
        dirs = [
            self._dir(
                ("vm", vm_id, SET_DIRS[kind]),
                SET_DIRS[kind],
                self._incremental_lister(owner, vm_id, kind, None),
                mtime,
            )
            for kind in (SetKind.INCREMENTAL, SetKind.DIFFERENTIAL)
        ]
        for node in dirs:
            node.lists_with_side_effects = True
        dirs.append(
            self._dir(("vm", vm_id, _SINCE_DIR), _SINCE_DIR, self._since_lister(owner, vm_id))
        )
        for node in dirs:
            node.hidden = True
        return dirs

    def _incremental_lister(self, owner: Any, vm_id: str, kind: str, since: str | None) -> Lister:
        async def lister() -> list[Node]:
            sets: Any = self.backups
            entries = await sets.list_incremental(owner, kind, since)
            set_kind = kind if since is None else f"since:{since}"
            return self._entries("vm", vm_id, set_kind, owner, entries)

        return lister

    def _since_lister(self, owner: Any, vm_id: str) -> Lister:
        async def lister() -> list[Node]:
            sets: Any = self.backups
            nodes = [
                self._dir(
                    ("vm", vm_id, f"{_SINCE_DIR}/{cp}"),
                    escape(cp),
                    self._incremental_lister(owner, vm_id, SetKind.SINCE, cp),
                )
                for cp in await sets.since_checkpoints(owner)
            ]
            for node in nodes:
                node.lists_with_side_effects = True
            return nodes

        return lister

    async def _vm_json(self, vm: Vm) -> bytes:
        clusters = {c.id: c for c in await self.inv.clusters()}
        hosts = {h.id: h for h in await self.inv.hosts()}
        # Inlined by the listing (no call per VM); fetched only from an engine without follow=.
        attachments = (
            vm.disk_attachments
            if vm.disk_attachments is not None
            else await self.inv.disk_attachments(vm.id)
        )
        nics = vm.nics if vm.nics is not None else await self.inv.vm_nics(vm.id)
        cluster = clusters.get(vm.cluster_id or "")
        host = hosts.get(vm.host_id or "")
        summary = {
            "id": vm.id,
            "name": vm.name,
            "status": vm.status,
            "description": vm.description,
            "comment": vm.comment,
            "cluster": {"id": vm.cluster_id, "name": cluster.name if cluster else None},
            "host": {"id": vm.host_id, "name": host.name if host else None} if vm.host_id else None,
            "template_id": vm.template_id,
            "memory": vm.memory,
            "cpu": {"sockets": vm.cpu_sockets, "cores": vm.cpu_cores, "threads": vm.cpu_threads},
            "os_type": vm.os_type,
            "type": vm.type,
            "creation_time": vm.creation_time.isoformat() if vm.creation_time else None,
            "disks": [
                {
                    "id": a.disk.id,
                    "alias": a.disk.alias,
                    "provisioned_size": a.disk.provisioned_size,
                    "actual_size": a.disk.actual_size,
                    "format": a.disk.format,
                    "sparse": a.disk.sparse,
                    "status": a.disk.status,
                    "storage_domain_id": a.disk.storage_domain_id,
                    "interface": a.interface,
                    "bootable": a.bootable,
                    "active": a.active,
                    # the disk's incremental backup setting, and what incremental sets get
                    "backup": a.disk.backup,
                    "backup_mode": _mode(a)[0],
                    "backup_mode_reason": _mode(a)[1],
                }
                for a in attachments
            ],
            "nics": [_asdict(nic) for nic in nics],
            # which set directories work for this VM now, and why not
            "sets": set_support(
                vm.status, [(a.disk.format, a.disk.backup, a.disk.shareable) for a in attachments]
            ),
        }
        return render_json(summary)

    def _owner(self, kind: OwnerKind, eid: str, name: str) -> Any:
        return self._owner_factory(kind, eid, name)

    def _set_lister(self, kind: OwnerKind, owner: Any, eid: str) -> Lister:
        async def lister() -> list[Node]:
            return self._entries(kind, eid, "set", owner, await self.backups.list_set(owner))

        return lister

    def _disks_lister(self, kind: OwnerKind, owner: Any, eid: str) -> Lister:
        async def lister() -> list[Node]:
            entries = await self.backups.list_disk_files(owner)
            return self._entries(kind, eid, "disk", owner, entries)

        return lister

    def _entries(
        self, kind: str, eid: str, set_kind: str, owner: Any, entries: list[Any]
    ) -> list[Node]:
        return [
            Node(
                self.table.inode(kind, eid, f"{set_kind}:{e.key}"),
                Kind.FILE,
                e.name,
                mtime_ns=e.mtime_ns,
                size=e.size,
                blocks=e.blocks,
                data=DataRef(owner, e.key),
            )
            for e in entries
        ]

    async def _vm_links(
        self, vms: Iterable[Vm], *, up: int, ident_kind: str, ident_sub: str
    ) -> list[Node]:
        names = await self.vm_names()
        prefix = "../" * up + "vms/"
        nodes = []
        for vm in vms:
            name = names.get(vm.id) or escape(vm.name)
            nodes.append(
                self._link(
                    (ident_kind, vm.id, ident_sub), name, prefix + name, time_ns(vm.creation_time)
                )
            )
        return _by_name(nodes)

    # -- templates ------------------------------------------------------------

    async def _templates(self) -> list[Node]:
        templates = await self.inv.templates()
        return self._entity_dirs(
            templates, "template", self._template_lister, mtime=_creation_mtime
        )

    def _template_lister(self, t: Template) -> Lister:
        async def lister() -> list[Node]:
            owner = self._owner("template", t.id, t.name)
            mtime = time_ns(t.creation_time)
            return [
                self._set_dir(
                    ("template", t.id, _FULL_DIR),
                    _FULL_DIR,
                    self._set_lister("template", owner, t.id),
                    owner,
                    mtime,
                ),
                self._set_dir(
                    ("template", t.id, "disks"),
                    "disks",
                    self._disks_lister("template", owner, t.id),
                    owner,
                    mtime,
                ),
                self._file(
                    ("template", t.id, "json"), "template.json", render_json(_asdict(t)), mtime
                ),
            ]

        return lister

    # -- datacenters and clusters ------------------------------------------

    async def _datacenters(self) -> list[Node]:
        return self._entity_dirs(await self.inv.datacenters(), "dc", self._dc_lister)

    def _dc_lister(self, dc: DataCenter) -> Lister:
        async def lister() -> list[Node]:
            return [
                self._dir(("dc", dc.id, "clusters"), "clusters", self._dc_clusters_lister(dc)),
                self._file(("dc", dc.id, "json"), "datacenter.json", render_json(_asdict(dc))),
                self._dir(("dc", dc.id, "hosts"), "hosts", self._dc_links(dc, "hosts")),
                self._dir(
                    ("dc", dc.id, "storagedomains"), "storagedomains", self._dc_sds_lister(dc)
                ),
                self._dir(("dc", dc.id, "templates"), "templates", self._dc_links(dc, "templates")),
                self._dir(("dc", dc.id, "vms"), "vms", self._dc_links(dc, "vms")),
            ]

        return lister

    def _dc_links(self, dc: DataCenter, top: str) -> Lister:
        """``datacenters/<dc>/<top>/``: symlinks to the ``/<top>/`` entries (hosts, templates,
        VMs) of the data center's clusters, from the cached listings (no call per entry)."""

        async def lister() -> list[Node]:
            in_dc = {c.id for c in await self.inv.clusters() if c.datacenter_id == dc.id}
            if top == "vms":
                vms = [vm for vm in await self.inv.vms() if vm.cluster_id in in_dc]
                return await self._vm_links(
                    vms, up=3, ident_kind="vm-link", ident_sub=f"dc:{dc.id}"
                )
            entities: Sequence[Host | Template]
            if top == "hosts":
                entities = await self.inv.hosts()
                mtime: Callable[[Any], int] = _fixed_mtime
            else:
                entities = await self.inv.templates()
                mtime = _creation_mtime
            names = unique_names((e.id, e.name) for e in entities)  # as /<top>/ names them
            return _by_name(
                self._link(
                    (f"{top}-link", e.id, dc.id),
                    names[e.id],
                    f"../../../{top}/{names[e.id]}",
                    mtime(e),
                )
                for e in entities
                if e.cluster_id in in_dc
            )

        return lister

    def _dc_clusters_lister(self, dc: DataCenter) -> Lister:
        async def lister() -> list[Node]:
            clusters = [c for c in await self.inv.clusters() if c.datacenter_id == dc.id]
            return self._entity_dirs(
                clusters, "cluster", lambda c: self._cluster_lister(c, up=5, sub="dc"), sub="dc"
            )

        return lister

    def _dc_sds_lister(self, dc: DataCenter) -> Lister:
        async def lister() -> list[Node]:
            sds = await self.inv.storage_domains()
            names = unique_names((sd.id, sd.name) for sd in sds)
            return _by_name(
                self._link(
                    ("sd-link", sd.id, dc.id),
                    names[sd.id],
                    f"../../../storagedomains/{names[sd.id]}",
                    FIXED_MTIME_NS,
                )
                for sd in sds
                if dc.id in sd.datacenter_ids
            )

        return lister

    async def _clusters(self) -> list[Node]:
        clusters = await self.inv.clusters()
        return self._entity_dirs(
            clusters, "cluster", lambda c: self._cluster_lister(c, up=3, sub="")
        )

    def _cluster_lister(self, cluster: Cluster, *, up: int, sub: str) -> Lister:
        async def vms_lister() -> list[Node]:
            vms = [vm for vm in await self.inv.vms() if vm.cluster_id == cluster.id]
            return await self._vm_links(
                vms, up=up, ident_kind="vm-link", ident_sub=f"cluster{sub}:{cluster.id}"
            )

        async def lister() -> list[Node]:
            return [
                self._file(
                    ("cluster", cluster.id, f"json{sub}"),
                    "cluster.json",
                    render_json(_asdict(cluster)),
                ),
                self._dir(("cluster", cluster.id, f"vms{sub}"), "vms", vms_lister),
            ]

        return lister

    # -- hosts, storage domains, tags ----------------------------------------

    async def _hosts(self) -> list[Node]:
        return self._entity_dirs(await self.inv.hosts(), "host", self._host_lister)

    def _host_lister(self, host: Host) -> Lister:
        async def vms_lister() -> list[Node]:
            vms = [vm for vm in await self.inv.vms() if vm.host_id == host.id]
            return await self._vm_links(
                vms, up=3, ident_kind="vm-link", ident_sub=f"host:{host.id}"
            )

        async def lister() -> list[Node]:
            return [
                self._file(("host", host.id, "json"), "host.json", render_json(_asdict(host))),
                self._dir(("host", host.id, "vms"), "vms", vms_lister),
            ]

        return lister

    async def _storage_domains(self) -> list[Node]:
        return self._entity_dirs(await self.inv.storage_domains(), "sd", self._sd_lister)

    def _sd_lister(self, sd: StorageDomain) -> Lister:
        async def disks_lister() -> list[Node]:
            disks = await self.inv.storage_domain_disks(sd.id)
            names = unique_names(((d.id, d.alias) for d in disks), suffix=".json")
            return _by_name(
                self._file(("sd-disk", d.id, sd.id), names[d.id], render_json(_asdict(d)))
                for d in disks
            )

        async def lister() -> list[Node]:
            free = f"{sd.available}\n" if sd.available is not None else "unknown\n"
            return [
                self._dir(("sd", sd.id, "disks"), "disks", disks_lister),
                self._file(("sd", sd.id, "free_space"), "free_space", free.encode()),
                self._file(("sd", sd.id, "json"), "storagedomain.json", render_json(_asdict(sd))),
            ]

        return lister

    async def _tags(self) -> list[Node]:
        return self._entity_dirs(await self.inv.tags(), "tag", self._tag_lister)

    def _tag_lister(self, tag: Tag) -> Lister:
        async def lister() -> list[Node]:
            vms = await self.inv.vms_by_tag(tag.id)
            return await self._vm_links(vms, up=2, ident_kind="vm-link", ident_sub=f"tag:{tag.id}")

        return lister
