"""Reading a backup set back: ``manifest.json`` and ``vm.ovf`` parsed and cross-checked.

Owns the restore-side view of a set (``SetManifest``: kind, owner, disks,
NICs, config file names) and the checks that turn a corrupt or foreign file
into one clear ``RestoreError`` line: not JSON, not an rhvfs set, a newer
format version, missing fields, an OVF that is not an oVirt OVF or that
describes another VM than the manifest.

The manifest format is written by ``rhvfs.backupset._build.build_manifest``.

Must not: talk to the engine, decide what to restore (see restore options).
"""

from __future__ import annotations

import dataclasses
import json
import re
import xml.etree.ElementTree as ET
from typing import Any

from rhvfs.errors import RestoreError

MANIFEST_FORMAT = "rhvfs-backup-set"
MANIFEST_VERSION = 1
OVF_NS = "http://schemas.dmtf.org/ovf/envelope/1/"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
RASD_NS = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_FORMATS = {"raw", "cow"}


@dataclasses.dataclass(frozen=True)
class SetDisk:
    """One disk of a set, as the manifest describes it. ``size`` is the virtual size in bytes."""

    id: str
    alias: str
    file: str
    size: int
    format: str
    sparse: bool
    interface: str | None
    bootable: bool
    active: bool
    storage_domain_id: str | None
    storage_domain_name: str | None
    image_id: str | None = None
    actual_size: int | None = None  # allocated bytes at backup time
    backup: str | None = None
    description: str = ""
    content_type: str | None = None


@dataclasses.dataclass(frozen=True)
class SetNic:
    id: str | None
    name: str
    interface: str | None
    mac: str | None
    vnic_profile_id: str | None
    vnic_profile_name: str | None
    network: str | None
    linked: bool = True
    plugged: bool = True


@dataclasses.dataclass(frozen=True)
class SetManifest:
    kind: str  # vm | template
    owner_id: str
    owner_name: str
    cluster_id: str | None
    cluster_name: str | None
    disks: tuple[SetDisk, ...]
    nics: tuple[SetNic, ...]
    ovf_file: str
    xml_file: str | None

    def disk_by_file(self, name: str) -> SetDisk | None:
        for d in self.disks:
            if d.file == name:
                return d
        return None

    def disk_keys(self) -> set[str]:
        return {d.id for d in self.disks} | {d.alias for d in self.disks}


@dataclasses.dataclass(frozen=True)
class OvfInfo:
    """What the OVF says about its owner (for the cross-check and for logs)."""

    vm_id: str | None
    name: str | None
    disk_ids: frozenset[str]
    is_template: bool
    #: rhvfs's own marker for "the engine gave no OVF": the restore builds one from the manifest.
    placeholder: bool = False


def _req(doc: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in doc:
        raise RestoreError(f"manifest.json: {where} has no {key!r}")
    value = doc[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise RestoreError(
            f"manifest.json: {where}.{key} has the wrong type ({type(value).__name__})"
        )
    return value


def parse_manifest(data: bytes) -> SetManifest:
    """Parse and validate ``manifest.json``; raises ``RestoreError`` with one clear line."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RestoreError(
            f"manifest.json is not valid JSON ({e}); corrupt or truncated copy?"
        ) from None
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
        raise RestoreError(
            "manifest.json is not an rhvfs backup set manifest (no format rhvfs-backup-set)"
        )
    version = doc.get("format_version")
    if not isinstance(version, int) or version > MANIFEST_VERSION:
        raise RestoreError(
            f"manifest.json has format_version {version!r}; this rhvfs reads {MANIFEST_VERSION}"
        )
    kind = doc.get("kind")
    if kind not in ("vm", "template"):
        raise RestoreError(f"manifest.json: kind must be vm or template, not {kind!r}")
    if doc.get("set_type", "full") != "full":
        raise RestoreError(
            f"manifest.json: set_type {doc.get('set_type')!r} cannot be restored alone"
        )
    owner = _req(doc, kind, dict, "the set")
    owner_id = _req(owner, "id", str, kind)
    owner_name = _req(owner, "name", str, kind)
    cluster = owner.get("cluster") or {}
    if not isinstance(cluster, dict):
        raise RestoreError(f"manifest.json: {kind}.cluster has the wrong type")
    disks = []
    seen: set[str] = set()
    for i, d in enumerate(_req(doc, "disks", list, "the set")):
        where = f"disks[{i}]"
        if not isinstance(d, dict):
            raise RestoreError(f"manifest.json: {where} is not an object")
        disk_id = _req(d, "id", str, where)
        if not _UUID.match(disk_id):
            raise RestoreError(f"manifest.json: {where}.id {disk_id!r} is not a UUID")
        if disk_id in seen:
            raise RestoreError(f"manifest.json: disk {disk_id} is listed twice")
        seen.add(disk_id)
        size = _req(d, "size", int, where)
        if size <= 0:
            raise RestoreError(f"manifest.json: {where}.size must be positive, not {size}")
        fmt = _req(d, "format", str, where)
        if fmt not in _FORMATS:
            raise RestoreError(f"manifest.json: {where}.format must be raw or cow, not {fmt!r}")
        file_name = _req(d, "file", str, where)
        if "/" in file_name or file_name in ("", ".", ".."):
            raise RestoreError(f"manifest.json: {where}.file {file_name!r} is not a file name")
        sd = d.get("storage_domain") or {}
        disks.append(
            SetDisk(
                id=disk_id,
                alias=str(d.get("alias") or disk_id),
                file=file_name,
                size=size,
                format=fmt,
                sparse=bool(d.get("sparse", True)),
                interface=d.get("interface") or None,
                bootable=bool(d.get("bootable", False)),
                active=bool(d.get("active", True)),
                storage_domain_id=sd.get("id") if isinstance(sd, dict) else None,
                storage_domain_name=sd.get("name") if isinstance(sd, dict) else None,
                image_id=d.get("image_id"),
                actual_size=d["actual_size"] if isinstance(d.get("actual_size"), int) else None,
                backup=d.get("backup"),
                description=str(d.get("description") or ""),
                content_type=d.get("content_type"),
            )
        )
    files = [d.file for d in disks]
    if len(set(files)) != len(files):
        raise RestoreError("manifest.json: two disks share one file name")
    nics = []
    for i, n in enumerate(doc.get("nics") or []):
        if not isinstance(n, dict):
            raise RestoreError(f"manifest.json: nics[{i}] is not an object")
        profile = n.get("vnic_profile") or {}
        nics.append(
            SetNic(
                id=n.get("id"),
                name=_req(n, "name", str, f"nics[{i}]"),
                interface=n.get("interface"),
                mac=n.get("mac"),
                vnic_profile_id=profile.get("id"),
                vnic_profile_name=profile.get("name"),
                network=n.get("network"),
                linked=bool(n.get("linked", True)),
                plugged=bool(n.get("plugged", True)),
            )
        )
    cfg = doc.get("config_files") or {}
    return SetManifest(
        kind=kind,
        owner_id=owner_id,
        owner_name=owner_name,
        cluster_id=cluster.get("id"),
        cluster_name=cluster.get("name"),
        disks=tuple(disks),
        nics=tuple(nics),
        ovf_file=str(cfg.get("ovf") or "vm.ovf"),
        xml_file=cfg.get("api_xml"),
    )


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _attr(el: ET.Element, name: str) -> str | None:
    return el.get(f"{{{OVF_NS}}}{name}")


def parse_ovf(data: bytes) -> OvfInfo:
    """Parse an oVirt OVF far enough to know whose it is; raises ``RestoreError`` if it is not one."""
    text = data.rstrip()  # backup sets pad config files with trailing whitespace
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise RestoreError(
            f"vm.ovf is not well-formed XML ({e}); corrupt or truncated copy?"
        ) from None
    if root.tag != f"{{{OVF_NS}}}Envelope":
        raise RestoreError(f"vm.ovf is not an OVF envelope (root element {root.tag!r})")
    if len(root) == 0 and PLACEHOLDER_MARK in text:
        return OvfInfo(
            vm_id=None, name=None, disk_ids=frozenset(), is_template=False, placeholder=True
        )
    content = next((el for el in root if _local(el.tag) in ("Content", "VirtualSystem")), None)
    if content is None:
        raise RestoreError("vm.ovf has no Content section: not an oVirt VM or template OVF")
    xsi_type = content.get(f"{{{XSI_NS}}}type", "")
    is_template = "Template" in xsi_type
    name_el = next((el for el in content if _local(el.tag) == "Name"), None)
    vm_id: str | None = None
    for section in content.iter():
        if _local(section.tag) == "Section" and section.get(f"{{{XSI_NS}}}type", "").endswith(
            "OperatingSystemSection_Type"
        ):
            vm_id = _attr(section, "id")
    disk_ids: set[str] = set()
    for el in root.iter():
        if _local(el.tag) == "Disk":
            ref = _attr(el, "fileRef")
            if ref:
                disk_ids.add(ref.split("/")[0])
        elif el.tag == f"{{{RASD_NS}}}HostResource" and el.text and "/" in el.text:
            disk_ids.add(el.text.split("/")[0])
    return OvfInfo(
        vm_id=vm_id,
        name=name_el.text if name_el is not None else None,
        disk_ids=frozenset(disk_ids),
        is_template=is_template,
    )


def check_consistent(manifest: SetManifest, ovf: OvfInfo) -> None:
    """Refuse an OVF that describes another VM or other disks than the manifest."""
    if ovf.vm_id is not None and ovf.vm_id != manifest.owner_id:
        raise RestoreError(
            f"vm.ovf belongs to {ovf.vm_id}, but manifest.json to {manifest.kind} "
            f"{manifest.owner_id} ({manifest.owner_name}): files of two different sets?"
        )
    extra = {d.id for d in manifest.disks} - ovf.disk_ids if ovf.disk_ids else set()
    if extra:
        raise RestoreError(
            f"manifest.json lists disk(s) {', '.join(sorted(extra))} that vm.ovf does not: "
            "files of two different sets?"
        )


#: The comment ``setfiles`` writes into an empty envelope when the engine returned no OVF.
PLACEHOLDER_MARK = b"rhvfs: the engine returned no OVF"
_IFACE_TO_OVF = {"virtio": "VirtIO", "virtio_scsi": "VirtIO_SCSI", "sata": "SATA", "ide": "IDE"}
_NIC_SUBTYPE = {"rtl8139": "1", "e1000": "2", "virtio": "3"}


def synthesize_ovf(manifest: SetManifest) -> str:
    """An engine-layout OVF built from the manifest, for sets whose OVF is rhvfs's placeholder.

    Carries what the manifest knows: name, id, disks (interface, boot, alias)
    and NICs; CPU, memory and OS take the engine's defaults.
    """
    from xml.sax.saxutils import quoteattr

    files, disks, items = [], [], []
    for d in manifest.disks:
        image = d.image_id or d.id
        ref = f"{d.id}/{image}"
        files.append(f"<File ovf:href={quoteattr(ref)} ovf:id={quoteattr(image)}/>")
        disks.append(
            f"<Disk ovf:diskId={quoteattr(image)} ovf:fileRef={quoteattr(ref)} "
            f'ovf:size="{-(-d.size // 2**30)}" '
            f'ovf:volume-format="{"COW" if d.format == "cow" else "RAW"}" '
            f'ovf:volume-type="{"Sparse" if d.sparse else "Preallocated"}" '
            f"ovf:disk-interface={quoteattr(_IFACE_TO_OVF.get(d.interface or '', 'VirtIO_SCSI'))} "
            f'ovf:boot="{"true" if d.bootable else "false"}" ovf:disk-alias={quoteattr(d.alias)}/>'
        )
        items.append(
            "<Item><rasd:ResourceType>17</rasd:ResourceType>"
            f"<rasd:InstanceId>{image}</rasd:InstanceId>"
            f"<rasd:HostResource>{ref}</rasd:HostResource>"
            f"<IsPlugged>{'true' if d.active else 'false'}</IsPlugged></Item>"
        )
    for n in manifest.nics:
        items.append(
            "<Item><rasd:ResourceType>10</rasd:ResourceType>"
            f"<rasd:ResourceSubType>{_NIC_SUBTYPE.get(n.interface or '', '3')}</rasd:ResourceSubType>"
            f"<rasd:Name>{_xml_text(n.name)}</rasd:Name>"
            f"<rasd:Connection>{_xml_text(n.network or n.vnic_profile_name or '')}</rasd:Connection>"
            + (f"<rasd:MACAddress>{_xml_text(n.mac)}</rasd:MACAddress>" if n.mac else "")
            + "</Item>"
        )
    kind = "ovf:VirtualSystem_Type"  # the engine's layout for templates too
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<ovf:Envelope xmlns:ovf="{OVF_NS}" xmlns:rasd="{RASD_NS}" '
        f'xmlns:vssd="{_NS_PREFIXES_VSSD}" xmlns:xsi="{XSI_NS}" ovf:version="4.4.0.0">'
        f"<References>{''.join(files)}</References>"
        f'<Section xsi:type="ovf:DiskSection_Type"><Info>List of Virtual Disks</Info>{"".join(disks)}</Section>'
        f'<Content ovf:id="out" xsi:type="{kind}"><Name>{_xml_text(manifest.owner_name)}</Name>'
        f'<Section ovf:id="{manifest.owner_id}" ovf:required="false" '
        'xsi:type="ovf:OperatingSystemSection_Type"><Info>Guest Operating System</Info>'
        "<Description>other_linux</Description></Section>"
        '<Section xsi:type="ovf:VirtualHardwareSection_Type"><Info>hardware</Info>'
        f"{''.join(items)}</Section></Content></ovf:Envelope>\n"
    )


def _xml_text(text: str) -> str:
    from xml.sax.saxutils import escape

    return escape(text)


_NS_PREFIXES_VSSD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"

_NS_PREFIXES = {
    "ovf": OVF_NS,
    "rasd": RASD_NS,
    "vssd": "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData",
    "xsi": XSI_NS,
}
#: rasd:ResourceType of the devices the restore re-creates itself: 17 disk, 10 NIC.
_DEVICE_TYPES = {"17", "10"}


def strip_devices(data: bytes) -> str:
    """The OVF without disks and NICs (files, disk section entries, disk/NIC items).

    The restore attaches the uploaded disks and adds the NICs itself, with the
    interface, flags and MAC addresses the options ask for; leaving them in
    would make the engine attach disks by their old ids with the old settings.
    """
    for prefix, uri in _NS_PREFIXES.items():
        ET.register_namespace(prefix, uri)
    root = ET.fromstring(data.rstrip())
    for parent in list(root.iter()):
        for child in list(parent):
            tag = _local(child.tag)
            if (tag == "File" and _local(parent.tag) == "References") or tag == "Disk":
                parent.remove(child)
            elif tag == "Item":
                rtype = child.find(f"{{{RASD_NS}}}ResourceType")
                if rtype is not None and (rtype.text or "").strip() in _DEVICE_TYPES:
                    parent.remove(child)
    return ET.tostring(root, encoding="unicode")


def set_disk_flags(ovf: str, flags: dict[str, tuple[str, bool, bool]]) -> str:
    """The OVF with each disk's interface, boot flag and plugged state replaced.

    ``flags`` maps a disk id (the part before ``/`` of ``ovf:fileRef`` and
    ``rasd:HostResource``) to ``(interface, bootable, active)``, with the
    interface in the API's spelling (``virtio_scsi``).
    """
    for prefix, uri in _NS_PREFIXES.items():
        ET.register_namespace(prefix, uri)
    root = ET.fromstring(ovf.encode("utf-8"))
    for el in root.iter():
        tag = _local(el.tag)
        if tag == "Disk":
            disk_id = (_attr(el, "fileRef") or "").split("/")[0]
            if disk_id in flags:
                iface, boot, _ = flags[disk_id]
                el.set(f"{{{OVF_NS}}}disk-interface", _IFACE_TO_OVF.get(iface, "VirtIO_SCSI"))
                el.set(f"{{{OVF_NS}}}boot", "true" if boot else "false")
        elif tag == "Item":
            host = el.find(f"{{{RASD_NS}}}HostResource")
            disk_id = (host.text or "").split("/")[0] if host is not None else ""
            if disk_id in flags:
                plugged = next((c for c in el if _local(c.tag) == "IsPlugged"), None)
                if plugged is None:
                    plugged = ET.SubElement(el, "IsPlugged")
                plugged.text = "true" if flags[disk_id][2] else "false"
    return ET.tostring(root, encoding="unicode")
