"""``manifest.json``: what a restore and a human need to know about a set, written once.

Owns the ``Manifest`` record (owner, disks, NICs, configuration file names,
and for a set read through an engine backup its place in a chain: set id,
checkpoints, parent set, per-disk backup mode and file format) and its JSON
form: ``to_json()`` writes it (key order and spelling as every rhvfs release
wrote it), ``Manifest.from_json()`` reads one back, bounded
(``MANIFEST_MAX_BYTES``) and checked, so a corrupt or foreign file becomes one
clear ``SetFormatError`` line: not JSON, not an rhvfs set, a newer
``format_version``, a missing or mistyped field, a disk that cannot be.

Reading is lenient where sets written by hand or by older releases leave
fields out (``alias`` defaults to the disk id, ``sparse``/``active`` to true,
``config_files.ovf`` to ``vm.ovf``); what it fills in is what a restore has
always assumed.

``build_manifest`` makes the manifest of a set from the owner's data
(``OwnerData``); ``parse_manifest`` reads one that must restore on its own (a
full set).

Must not: talk to the engine (callers pass the data in), do I/O, decide what a
restore does with the set.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import rhvfs
from rhvfs.backupset._names import MANIFEST_NAME, OVF_NAME, XML_NAME, SetType
from rhvfs.engine.types import Disk, DiskAttachment, Nic, Template, Vm
from rhvfs.errors import SetFormatError

MANIFEST_FORMAT = "rhvfs-backup-set"
#: The major version this release writes and the newest it reads.
MANIFEST_VERSION = 1
#: A manifest larger than this is not one (a set's is a few KiB per disk). It bounds the
#: memory a parse takes too (JSON's objects take up to ~20 times the text).
MANIFEST_MAX_BYTES = 4 * 1024 * 1024
#: More disks or NICs than this is not a VM (the engine allows far fewer).
MANIFEST_MAX_DEVICES = 1024
#: A disk larger than this is not one (qcow2 and the engine address 2**56 bytes at most).
MANIFEST_MAX_DISK_SIZE = 1 << 56
#: A string field longer than this is not one (names, ids, descriptions; ``.status``
#: and engine requests quote them).
MANIFEST_MAX_STRING = 64 * 1024
#: A file name longer than this (bytes, UTF-8) cannot be a file of the set.
_NAME_MAX = 255
#: Engine disk formats (the image files are raw data or qcow2 deltas, see ``file_format``).
DISK_FORMATS = ("raw", "cow")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

OwnerKind = Literal["vm", "template"]


@dataclasses.dataclass(frozen=True)
class OwnerData:
    """Everything the configuration files are made of, fetched from the engine at one time."""

    kind: str  # vm | template
    entity: Vm | Template
    attachments: tuple[DiskAttachment, ...]
    nics: tuple[Nic, ...]
    ovf: bytes
    xml: bytes
    cluster_names: Mapping[str, str]
    storage_domain_names: Mapping[str, str]
    ovf_available: bool = True


@dataclasses.dataclass(frozen=True)
class ManifestOwner:
    """The VM or template of a set. The fields from ``template_id`` on are written for VMs only."""

    id: str
    name: str
    status: str | None = None
    cluster_id: str | None = None
    cluster_name: str | None = None
    description: str | None = None
    memory: int | None = None  # bytes
    creation_time: str | None = None  # ISO 8601
    template_id: str | None = None
    os_type: str | None = None
    type: str | None = None
    cpu_sockets: int | None = None
    cpu_cores: int | None = None
    cpu_threads: int | None = None


@dataclasses.dataclass(frozen=True)
class ManifestDisk:
    """One disk of a set. ``size`` is the virtual size in bytes, ``file`` its image file.

    ``file_format`` and the three fields after it are written by sets read
    through an engine backup (all four, when any is set): ``raw`` full data or
    a ``qcow2`` delta whose backing file is ``backing_file``; ``chain_deltas``
    only by a flattened chain (``flatten_manifest``).
    """

    id: str
    alias: str
    file: str
    size: int
    format: str  # the engine's: raw | cow
    actual_size: int | None = None  # allocated bytes at backup time
    sparse: bool = True
    interface: str | None = None
    bootable: bool = False
    active: bool = True
    read_only: bool = False
    storage_domain_id: str | None = None
    storage_domain_name: str | None = None
    image_id: str | None = None
    content_type: str | None = None
    shareable: bool = False
    wipe_after_delete: bool = False
    backup: str | None = None  # incremental | none
    backup_mode: str = "full"  # full | incremental
    description: str = ""
    file_format: str | None = None  # raw | qcow2
    backing_file: str | None = None
    full_reason: str | None = None
    dirty_bytes: int | None = None
    chain_deltas: tuple[str, ...] | None = None

    @property
    def image_format(self) -> str:
        """The image file's format: ``file_format``, else told by the file name."""
        return self.file_format or ("qcow2" if self.file.endswith(".qcow2") else "raw")


@dataclasses.dataclass(frozen=True)
class ManifestNic:
    id: str | None
    name: str
    interface: str | None = None
    mac: str | None = None
    vnic_profile_id: str | None = None
    vnic_profile_name: str | None = None
    network: str | None = None
    linked: bool = True
    plugged: bool = True


@dataclasses.dataclass(frozen=True)
class ConfigFiles:
    """The set's configuration file names. ``ovf`` is None when the engine had no OVF (the
    set's ``vm.ovf`` is then rhvfs's placeholder); ``manifest`` is named by engine-backup sets."""

    ovf: str | None = OVF_NAME
    api_xml: str | None = XML_NAME
    manifest: str | None = None


@dataclasses.dataclass(frozen=True)
class ParentSet:
    set_id: str
    set_type: str | None = None
    manifest: str | None = None


@dataclasses.dataclass(frozen=True)
class SetLineage:
    """Where a set read through an engine backup sits in its chain."""

    set_id: str | None
    backup_id: str | None = None
    from_checkpoint_id: str | None = None
    to_checkpoint_id: str | None = None
    parent: ParentSet | None = None
    full_set_id: str | None = None
    warnings: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class PointInTime:
    """Which point in time a ``@rhv/`` set holds, named before its data is read.

    Reading the configuration creates nothing on the engine; the first image
    opened takes the snapshot (``method`` "snapshot"; its description carries
    ``read_id``) or starts the engine backup (``method`` "backup", backup id =
    ``read_id``) -- or reads a template's disks directly ("template"). Each
    disk's data then comes from the volume the manifest names as its
    ``image_id``; a read that finds another volume fails instead of mixing.
    ``configuration_time`` is when the configuration files were taken (ISO 8601).
    """

    read_id: str
    method: str
    configuration_time: str


@dataclasses.dataclass(frozen=True)
class Manifest:
    """A set's ``manifest.json``. ``lineage`` is None for a snapshot-based ``@rhv/`` set;
    ``chain`` is set only on a flattened chain (the set ids it was made of)."""

    kind: OwnerKind
    owner: ManifestOwner
    disks: tuple[ManifestDisk, ...]
    nics: tuple[ManifestNic, ...] = ()
    set_type: SetType = SetType.FULL
    format_version: int = MANIFEST_VERSION
    rhvfs_version: str | None = None
    backup_time: str | None = None  # ISO 8601
    session_id: str | None = None
    snapshot_id: str | None = None
    checkpoint_id: str | None = None
    config_files: ConfigFiles = ConfigFiles()
    lineage: SetLineage | None = None
    chain: tuple[str, ...] | None = None
    point_in_time: PointInTime | None = None

    # -- what a restore asks ---------------------------------------------------------

    @property
    def owner_id(self) -> str:
        return self.owner.id

    @property
    def owner_name(self) -> str:
        return self.owner.name

    @property
    def cluster_id(self) -> str | None:
        return self.owner.cluster_id

    @property
    def cluster_name(self) -> str | None:
        return self.owner.cluster_name

    @property
    def ovf_file(self) -> str:
        """The file holding the OVF (``vm.ovf`` also when it is the no-OVF placeholder)."""
        return self.config_files.ovf or OVF_NAME

    @property
    def xml_file(self) -> str | None:
        return self.config_files.api_xml

    def disk_by_file(self, name: str) -> ManifestDisk | None:
        for d in self.disks:
            if d.file == name:
                return d
        return None

    def disk_keys(self) -> set[str]:
        return {d.id for d in self.disks} | {d.alias for d in self.disks}

    # -- JSON ------------------------------------------------------------------------

    def to_json(self) -> bytes:
        """The ``manifest.json`` bytes: indented JSON, keys in the order rhvfs always wrote."""
        o = self.owner
        owner: dict[str, object] = {
            "id": o.id,
            "name": o.name,
            "status": o.status,
            "cluster": {"id": o.cluster_id, "name": o.cluster_name},
            "description": o.description,
            "memory": o.memory,
            "creation_time": o.creation_time,
        }
        if self.kind == "vm":
            owner["template_id"] = o.template_id
            owner["os_type"] = o.os_type
            owner["type"] = o.type
            owner["cpu"] = {
                "sockets": o.cpu_sockets,
                "cores": o.cpu_cores,
                "threads": o.cpu_threads,
            }
        config: dict[str, object] = {
            "ovf": self.config_files.ovf,
            "api_xml": self.config_files.api_xml,
        }
        if self.config_files.manifest is not None:
            config["manifest"] = self.config_files.manifest
        doc: dict[str, object] = {
            "format": MANIFEST_FORMAT,
            "format_version": self.format_version,
            "rhvfs_version": self.rhvfs_version,
            "kind": self.kind,
            "set_type": str(self.set_type),
            "backup_time": self.backup_time,
            "session_id": self.session_id,
            "snapshot_id": self.snapshot_id,
            "checkpoint_id": self.checkpoint_id,
            self.kind: owner,
            "disks": [_disk_doc(d) for d in self.disks],
            "nics": [_nic_doc(n) for n in self.nics],
            "config_files": config,
        }
        lineage = self.lineage
        if lineage is not None:
            parent = lineage.parent
            doc["set_id"] = lineage.set_id
            doc["backup_id"] = lineage.backup_id
            doc["from_checkpoint_id"] = lineage.from_checkpoint_id
            doc["to_checkpoint_id"] = lineage.to_checkpoint_id
            doc["parent_set"] = (
                None
                if parent is None
                else {
                    "set_id": parent.set_id,
                    "set_type": parent.set_type,
                    "manifest": parent.manifest,
                }
            )
            doc["full_set_id"] = lineage.full_set_id
            doc["warnings"] = list(lineage.warnings)
        if self.chain is not None:
            doc["chain"] = list(self.chain)
        if self.point_in_time is not None:
            pit = self.point_in_time
            doc["point_in_time"] = {
                "read_id": pit.read_id,
                "method": pit.method,
                "configuration_time": pit.configuration_time,
            }
        return (json.dumps(doc, indent=2) + "\n").encode("utf-8")

    @staticmethod
    def from_json(data: bytes, *, name: str = MANIFEST_NAME) -> Manifest:
        """Read and check a manifest; ``SetFormatError`` (naming ``name``) when it is none."""
        if len(data) > MANIFEST_MAX_BYTES:
            raise SetFormatError(
                f"{name} is {len(data)} bytes, more than a manifest's {MANIFEST_MAX_BYTES}"
            )
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise SetFormatError(
                f"{name} is not valid JSON ({e}); corrupt or truncated copy?"
            ) from None
        return _Reader(name).manifest(doc)


def _disk_doc(d: ManifestDisk) -> dict[str, object]:
    doc: dict[str, object] = {
        "id": d.id,
        "alias": d.alias,
        "file": d.file,
        "size": d.size,
        "actual_size": d.actual_size,
        "format": d.format,
        "sparse": d.sparse,
        "interface": d.interface,
        "bootable": d.bootable,
        "active": d.active,
        "read_only": d.read_only,
        "storage_domain": {"id": d.storage_domain_id, "name": d.storage_domain_name},
        "image_id": d.image_id,
        "content_type": d.content_type,
        "shareable": d.shareable,
        "wipe_after_delete": d.wipe_after_delete,
        "backup": d.backup,
        "backup_mode": d.backup_mode,
        "description": d.description,
    }
    if (d.file_format, d.backing_file, d.full_reason, d.dirty_bytes) != (None, None, None, None):
        doc["file_format"] = d.file_format
        doc["backing_file"] = d.backing_file
        doc["full_reason"] = d.full_reason
        doc["dirty_bytes"] = d.dirty_bytes
    if d.chain_deltas is not None:
        doc["chain_deltas"] = list(d.chain_deltas)
    return doc


def _nic_doc(n: ManifestNic) -> dict[str, object]:
    return {
        "id": n.id,
        "name": n.name,
        "interface": n.interface,
        "mac": n.mac,
        "vnic_profile": {"id": n.vnic_profile_id, "name": n.vnic_profile_name},
        "network": n.network,
        "linked": n.linked,
        "plugged": n.plugged,
    }


# -- reading ------------------------------------------------------------------------

T = TypeVar("T")
_Obj = dict[str, Any]


def _short(value: Any) -> str:
    """A value quoted in an error: its repr, at most 80 characters."""
    text = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    return text if len(text) <= 80 else text[:80] + "..."


class _Reader:
    """Checks one parsed manifest document; every error names the file and the field."""

    def __init__(self, name: str) -> None:
        self.name = name

    def fail(self, text: str) -> SetFormatError:
        return SetFormatError(f"{self.name}: {text}")

    def req(self, doc: _Obj, key: str, kind: type[T], where: str) -> T:
        if key not in doc:
            raise self.fail(f"{where} has no {key!r}")
        return self.typed(doc[key], kind, f"{where}.{key}")

    def typed(self, value: Any, kind: type[T], where: str) -> T:
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.fail(f"{where} has the wrong type ({type(value).__name__})")
        if isinstance(value, str) and len(value) > MANIFEST_MAX_STRING:
            raise self.fail(
                f"{where} is {len(value)} characters long (at most {MANIFEST_MAX_STRING})"
            )
        return value

    def items(self, value: Any, where: str) -> list[Any]:
        """A list of at most ``MANIFEST_MAX_DEVICES`` entries."""
        items = self.typed(value, list, where)
        if len(items) > MANIFEST_MAX_DEVICES:
            raise self.fail(f"{where} has {len(items)} entries (at most {MANIFEST_MAX_DEVICES})")
        return items

    def opt(self, doc: _Obj, key: str, kind: type[T], where: str) -> T | None:
        value = doc.get(key)
        return None if value is None else self.typed(value, kind, f"{where}.{key}")

    def flag(self, doc: _Obj, key: str, default: bool, where: str) -> bool:
        """A flag: ``default`` when absent, false when null (as restores always read it)."""
        value = doc.get(key, default)
        return False if value is None else self.typed(value, bool, f"{where}.{key}")

    def obj(self, doc: _Obj, key: str, where: str) -> _Obj:
        """A nested object, ``{}`` when absent or null."""
        value = doc.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(f"{where}.{key} has the wrong type")
        return value

    def strings(self, doc: _Obj, key: str, where: str) -> tuple[str, ...]:
        items = self.items(doc.get(key) or [], f"{where}.{key}")
        return tuple(self.typed(x, str, f"{where}.{key}[{i}]") for i, x in enumerate(items))

    def manifest(self, doc: Any) -> Manifest:
        if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
            raise SetFormatError(
                f"{self.name} is not an rhvfs backup set manifest (no format {MANIFEST_FORMAT})"
            )
        version = doc.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or version > MANIFEST_VERSION:
            raise SetFormatError(
                f"{self.name} has format_version {_short(version)}; this rhvfs reads {MANIFEST_VERSION}"
            )
        kind = doc.get("kind")
        if kind not in ("vm", "template"):
            raise self.fail(f"kind must be vm or template, not {_short(kind)}")
        set_type = doc.get("set_type", "full")
        if set_type not in tuple(SetType):
            raise self.fail(f"set_type must be {', '.join(SetType)}, not {_short(set_type)}")
        owner = self.owner(self.req(doc, kind, dict, "the set"), kind)
        disks = tuple(
            self.disk(d, f"disks[{i}]")
            for i, d in enumerate(self.items(self.req(doc, "disks", list, "the set"), "disks"))
        )
        seen: set[str] = set()
        for d in disks:
            if d.id in seen:
                raise self.fail(f"disk {d.id} is listed twice")
            seen.add(d.id)
        if len({d.file for d in disks}) != len(disks):
            raise self.fail("two disks share one file name")
        nics = tuple(
            self.nic(n, f"nics[{i}]")
            for i, n in enumerate(self.items(doc.get("nics") or [], "the set.nics"))
        )
        cfg = self.obj(doc, "config_files", "the set")
        return Manifest(
            kind=kind,
            owner=owner,
            disks=disks,
            nics=nics,
            set_type=SetType(set_type),
            format_version=version,
            rhvfs_version=self.opt(doc, "rhvfs_version", str, "the set"),
            backup_time=self.opt(doc, "backup_time", str, "the set"),
            session_id=self.opt(doc, "session_id", str, "the set"),
            snapshot_id=self.opt(doc, "snapshot_id", str, "the set"),
            checkpoint_id=self.opt(doc, "checkpoint_id", str, "the set"),
            config_files=ConfigFiles(
                ovf=self.opt(cfg, "ovf", str, "config_files"),
                api_xml=self.opt(cfg, "api_xml", str, "config_files"),
                manifest=self.opt(cfg, "manifest", str, "config_files"),
            ),
            lineage=self.lineage(doc),
            chain=self.strings(doc, "chain", "the set") if "chain" in doc else None,
            point_in_time=self.point_in_time(doc),
        )

    def point_in_time(self, doc: _Obj) -> PointInTime | None:
        pit = self.obj(doc, "point_in_time", "the set")
        if not pit:
            return None
        return PointInTime(
            read_id=self.req(pit, "read_id", str, "point_in_time"),
            method=self.req(pit, "method", str, "point_in_time"),
            configuration_time=self.req(pit, "configuration_time", str, "point_in_time"),
        )

    def owner(self, doc: _Obj, kind: str) -> ManifestOwner:
        cluster = doc.get("cluster") or {}
        if not isinstance(cluster, dict):
            raise self.fail(f"{kind}.cluster has the wrong type")
        cpu = self.obj(doc, "cpu", kind)
        return ManifestOwner(
            id=self.req(doc, "id", str, kind),
            name=self.req(doc, "name", str, kind),
            status=self.opt(doc, "status", str, kind),
            cluster_id=self.opt(cluster, "id", str, f"{kind}.cluster"),
            cluster_name=self.opt(cluster, "name", str, f"{kind}.cluster"),
            description=self.opt(doc, "description", str, kind),
            memory=self.opt(doc, "memory", int, kind),
            creation_time=self.opt(doc, "creation_time", str, kind),
            template_id=self.opt(doc, "template_id", str, kind),
            os_type=self.opt(doc, "os_type", str, kind),
            type=self.opt(doc, "type", str, kind),
            cpu_sockets=self.opt(cpu, "sockets", int, f"{kind}.cpu"),
            cpu_cores=self.opt(cpu, "cores", int, f"{kind}.cpu"),
            cpu_threads=self.opt(cpu, "threads", int, f"{kind}.cpu"),
        )

    def disk(self, d: Any, where: str) -> ManifestDisk:
        if not isinstance(d, dict):
            raise self.fail(f"{where} is not an object")
        disk_id = self.req(d, "id", str, where)
        if not _UUID.match(disk_id):
            raise self.fail(f"{where}.id {_short(disk_id)} is not a UUID")
        size = self.req(d, "size", int, where)
        if not 0 < size <= MANIFEST_MAX_DISK_SIZE:
            raise self.fail(
                f"{where}.size must be positive and at most {MANIFEST_MAX_DISK_SIZE}, not {size}"
            )
        fmt = self.req(d, "format", str, where)
        if fmt not in DISK_FORMATS:
            raise self.fail(f"{where}.format must be raw or cow, not {_short(fmt)}")
        file_name = self.req(d, "file", str, where)
        if (
            "/" in file_name
            or "\0" in file_name
            or file_name in ("", ".", "..")
            or len(file_name.encode("utf-8", "surrogatepass")) > _NAME_MAX
        ):
            raise self.fail(f"{where}.file {file_name[:80]!r} is not a file name")
        sd = self.obj(d, "storage_domain", where)
        file_format = self.opt(d, "file_format", str, where)
        if file_format not in (None, "raw", "qcow2"):
            raise self.fail(f"{where}.file_format must be raw or qcow2, not {_short(file_format)}")
        return ManifestDisk(
            id=disk_id,
            alias=self.opt(d, "alias", str, where) or disk_id,
            file=file_name,
            size=size,
            format=fmt,
            actual_size=self.opt(d, "actual_size", int, where),
            sparse=self.flag(d, "sparse", True, where),
            interface=self.opt(d, "interface", str, where) or None,
            bootable=self.flag(d, "bootable", False, where),
            active=self.flag(d, "active", True, where),
            read_only=self.flag(d, "read_only", False, where),
            storage_domain_id=self.opt(sd, "id", str, f"{where}.storage_domain"),
            storage_domain_name=self.opt(sd, "name", str, f"{where}.storage_domain"),
            image_id=self.opt(d, "image_id", str, where),
            content_type=self.opt(d, "content_type", str, where),
            shareable=self.flag(d, "shareable", False, where),
            wipe_after_delete=self.flag(d, "wipe_after_delete", False, where),
            backup=self.opt(d, "backup", str, where),
            backup_mode=self.opt(d, "backup_mode", str, where) or "full",
            description=self.opt(d, "description", str, where) or "",
            file_format=file_format,
            backing_file=self.opt(d, "backing_file", str, where),
            full_reason=self.opt(d, "full_reason", str, where),
            dirty_bytes=self.opt(d, "dirty_bytes", int, where),
            chain_deltas=self.strings(d, "chain_deltas", where) if "chain_deltas" in d else None,
        )

    def nic(self, n: Any, where: str) -> ManifestNic:
        if not isinstance(n, dict):
            raise self.fail(f"{where} is not an object")
        profile = self.obj(n, "vnic_profile", where)
        return ManifestNic(
            id=self.opt(n, "id", str, where),
            name=self.req(n, "name", str, where),
            interface=self.opt(n, "interface", str, where),
            mac=self.opt(n, "mac", str, where),
            vnic_profile_id=self.opt(profile, "id", str, f"{where}.vnic_profile"),
            vnic_profile_name=self.opt(profile, "name", str, f"{where}.vnic_profile"),
            network=self.opt(n, "network", str, where),
            linked=self.flag(n, "linked", True, where),
            plugged=self.flag(n, "plugged", True, where),
        )

    def lineage(self, doc: _Obj) -> SetLineage | None:
        keys = ("set_id", "backup_id", "from_checkpoint_id", "to_checkpoint_id", "parent_set")
        if not any(k in doc for k in (*keys, "full_set_id", "warnings")):
            return None
        parent_doc = self.obj(doc, "parent_set", "the set")
        parent = None
        if parent_doc:
            parent = ParentSet(
                set_id=self.req(parent_doc, "set_id", str, "parent_set"),
                set_type=self.opt(parent_doc, "set_type", str, "parent_set"),
                manifest=self.opt(parent_doc, "manifest", str, "parent_set"),
            )
        return SetLineage(
            set_id=self.opt(doc, "set_id", str, "the set"),
            backup_id=self.opt(doc, "backup_id", str, "the set"),
            from_checkpoint_id=self.opt(doc, "from_checkpoint_id", str, "the set"),
            to_checkpoint_id=self.opt(doc, "to_checkpoint_id", str, "the set"),
            parent=parent,
            full_set_id=self.opt(doc, "full_set_id", str, "the set"),
            warnings=self.strings(doc, "warnings", "the set"),
        )


def parse_manifest(data: bytes, *, name: str = MANIFEST_NAME) -> Manifest:
    """Read the manifest of a set restored on its own: a full set (see ``Manifest.from_json``)."""
    manifest = Manifest.from_json(data, name=name)
    if manifest.set_type != SetType.FULL:
        raise SetFormatError(
            f"{name}: set_type {str(manifest.set_type)!r} cannot be restored alone"
        )
    return manifest


# -- writing ------------------------------------------------------------------------


def build_manifest(
    data: OwnerData,
    *,
    disks: Sequence[Disk],
    file_names: Mapping[str, str],
    snapshot_id: str | None,
    backup_time: datetime,
    session_id: str | None,
) -> Manifest:
    """The manifest of a full set. ``disks`` are the disks as of the snapshot (their volume
    ids); ``file_names`` maps each disk id to its image file."""
    entity = data.entity
    atts = {a.disk.id: a for a in data.attachments}
    vm = entity if isinstance(entity, Vm) else None
    owner = ManifestOwner(
        id=entity.id,
        name=entity.name,
        status=entity.status,
        cluster_id=entity.cluster_id,
        cluster_name=data.cluster_names.get(entity.cluster_id or "", None),
        description=entity.description,
        memory=entity.memory,
        creation_time=_iso(entity.creation_time),
        template_id=vm.template_id if vm else None,
        os_type=vm.os_type if vm else None,
        type=vm.type if vm else None,
        cpu_sockets=vm.cpu_sockets if vm else None,
        cpu_cores=vm.cpu_cores if vm else None,
        cpu_threads=vm.cpu_threads if vm else None,
    )
    return Manifest(
        kind="vm" if data.kind == "vm" else "template",
        owner=owner,
        disks=tuple(
            _manifest_disk(
                atts[d.id] if d.id in atts else DiskAttachment(disk=d),
                disk=d,
                file_name=file_names[d.id],
                storage_domain_names=data.storage_domain_names,
            )
            for d in disks
        ),
        nics=tuple(_manifest_nic(n) for n in data.nics),
        set_type=SetType.FULL,
        rhvfs_version=rhvfs.__version__,
        backup_time=_iso(backup_time),
        session_id=session_id,
        snapshot_id=snapshot_id,
        checkpoint_id=None,
        config_files=ConfigFiles(ovf=OVF_NAME if data.ovf_available else None, api_xml=XML_NAME),
    )


def _manifest_disk(
    att: DiskAttachment,
    *,
    disk: Disk,
    file_name: str,
    storage_domain_names: Mapping[str, str],
) -> ManifestDisk:
    sd_id = disk.storage_domain_id or att.disk.storage_domain_id
    return ManifestDisk(
        id=disk.id,
        alias=disk.alias or att.disk.alias,
        file=file_name,
        size=disk.provisioned_size,
        actual_size=disk.actual_size,
        format=disk.format,
        sparse=disk.sparse,
        interface=att.interface,
        bootable=att.bootable,
        active=att.active,
        read_only=att.read_only,
        storage_domain_id=sd_id,
        storage_domain_name=storage_domain_names.get(sd_id or "", None),
        image_id=disk.image_id,
        content_type=disk.content_type or att.disk.content_type,
        shareable=disk.shareable,
        wipe_after_delete=disk.wipe_after_delete,
        backup=att.disk.backup,
        backup_mode="full",
        description=att.disk.description,
    )


def _manifest_nic(nic: Nic) -> ManifestNic:
    return ManifestNic(
        id=nic.id,
        name=nic.name,
        interface=nic.interface,
        mac=nic.mac,
        vnic_profile_id=nic.vnic_profile_id,
        vnic_profile_name=nic.vnic_profile_name,
        network=nic.network_name,
        linked=nic.linked,
        plugged=nic.plugged,
    )


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(UTC).isoformat()
