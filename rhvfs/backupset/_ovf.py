"""``vm.ovf``: the oVirt OVF of a set, read, checked and rewritten for a restore.

Owns the placeholder written when the engine has no OVF for an owner
(``missing_ovf``, recognised by ``PLACEHOLDER_MARK``), the parser that tells
whose OVF a file is (``parse_ovf``; a foreign or corrupt file is one clear
``SetFormatError`` line), the cross-check against the manifest
(``check_consistent``), and the rewrites a restore needs: an OVF built from the
manifest for a placeholder (``synthesize_ovf``), disks and NICs removed
(``strip_devices``), disk flags replaced (``set_disk_flags``), the template a
VM was made from replaced by Blank (``on_blank_template``, for an engine
without that template).

Every OVF a restore receives is untrusted: ``_parse_xml`` is the one way this
module parses XML, with ``defusedxml`` (no DTD, entities or external
references), bounded in size (``OVF_MAX_BYTES``), element count
(``OVF_MAX_ELEMENTS``) and depth (``OVF_MAX_DEPTH``), and any failure of the
parser -- an unknown or multi-byte encoding, malformed text, a forbidden
construct -- is one ``SetFormatError`` line.

Must not: talk to the engine, decide what to restore (see restore options).
"""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET  # building and writing trees only: parsing is _parse_xml's
from typing import Any
from xml.sax.saxutils import escape as _xml_escape
from xml.sax.saxutils import quoteattr

from defusedxml.ElementTree import DefusedXMLParser

from rhvfs.backupset._manifest import Manifest
from rhvfs.errors import RestoreError, SetFormatError

OVF_NS = "http://schemas.dmtf.org/ovf/envelope/1/"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
RASD_NS = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
#: An OVF larger than this is not one (the engine's are tens of KiB).
OVF_MAX_BYTES = 4 * 1024 * 1024
#: An OVF with more elements than this is not one (a VM with 100 disks has a few thousand).
OVF_MAX_ELEMENTS = 200_000
#: An OVF nested deeper than this is not one (the engine's are about 6 levels deep).
OVF_MAX_DEPTH = 64
#: The comment ``missing_ovf`` writes into an empty envelope when the engine returned no OVF.
PLACEHOLDER_MARK = b"rhvfs: the engine returned no OVF"


def missing_ovf(kind: str, name: str) -> bytes:
    """A well-formed, empty OVF envelope for an owner the engine has no OVF for."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<!-- {PLACEHOLDER_MARK.decode()} for {kind} {_xml_comment(name)}; see vm.xml -->\n"
        '<ovf:Envelope xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1/" ovf:version="0.9"/>\n'
    ).encode()


def _xml_comment(text: str) -> str:
    return text.replace("--", "- -")


@dataclasses.dataclass(frozen=True)
class OvfInfo:
    """What the OVF says about its owner (for the cross-check and for logs)."""

    vm_id: str | None
    name: str | None
    disk_ids: frozenset[str]
    is_template: bool
    #: rhvfs's own marker for "the engine gave no OVF": the restore builds one from the manifest.
    placeholder: bool = False
    #: the VM's or template's comment (what a restore gives back to the object it made)
    comment: str = ""
    #: the template a VM was made from (``<TemplateId>``; ``BLANK_TEMPLATE_ID``: none)
    template_id: str | None = None
    template_name: str | None = None


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _attr(el: ET.Element, name: str) -> str | None:
    return el.get(f"{{{OVF_NS}}}{name}")


class _Limits(SetFormatError):
    """An OVF past ``OVF_MAX_ELEMENTS`` or ``OVF_MAX_DEPTH`` (raised while parsing)."""


class _BoundedBuilder(ET.TreeBuilder):
    """A tree builder that stops a document with too many or too deeply nested elements
    as it is parsed, before the tree takes the memory."""

    def __init__(self) -> None:
        super().__init__()
        self._count = 0
        self._depth = 0

    def start(self, tag: Any, attrs: Any) -> ET.Element:
        self._count += 1
        self._depth += 1
        if self._count > OVF_MAX_ELEMENTS:
            raise _Limits(f"more than {OVF_MAX_ELEMENTS} elements")
        if self._depth > OVF_MAX_DEPTH:
            raise _Limits(f"elements nested more than {OVF_MAX_DEPTH} deep")
        return super().start(tag, attrs)

    def end(self, tag: Any) -> ET.Element:
        self._depth -= 1
        return super().end(tag)


def _clip(text: object, limit: int = 80) -> str:
    s = str(text)
    return s if len(s) <= limit else s[:limit] + "..."


def _parse_xml(data: bytes, what: str = "vm.ovf") -> ET.Element:
    """The root element of an untrusted XML document; ``SetFormatError`` for anything the
    parser refuses or fails on (see the module docstring)."""
    if len(data) > OVF_MAX_BYTES:
        raise SetFormatError(f"{what} is {len(data)} bytes, more than an OVF's {OVF_MAX_BYTES}")
    try:
        parser = DefusedXMLParser(
            target=_BoundedBuilder(), forbid_dtd=True, forbid_entities=True, forbid_external=True
        )
        parser.feed(data)
        root = parser.close()
    except _Limits as e:
        raise SetFormatError(f"{what} is not an OVF: {e.detail}") from None
    except Exception as e:  # ParseError, defusedxml's refusals, LookupError/ValueError (encodings)
        raise SetFormatError(
            f"{what} is not well-formed XML ({_clip(e, 200)}); corrupt or truncated copy?"
        ) from None
    if not isinstance(root, ET.Element):
        raise SetFormatError(f"{what} is not well-formed XML (no root element)")
    return root


def parse_ovf(data: bytes) -> OvfInfo:
    """Parse an oVirt OVF far enough to know whose it is; ``SetFormatError`` if it is not one."""
    text = bytes(data).rstrip()  # backup sets pad config files with trailing whitespace
    root = _parse_xml(text)
    if root.tag != f"{{{OVF_NS}}}Envelope":
        raise SetFormatError(f"vm.ovf is not an OVF envelope (root element {_clip(root.tag)!r})")
    if len(root) == 0 and PLACEHOLDER_MARK in text:
        return OvfInfo(
            vm_id=None, name=None, disk_ids=frozenset(), is_template=False, placeholder=True
        )
    content = next((el for el in root if _local(el.tag) in ("Content", "VirtualSystem")), None)
    if content is None:
        raise SetFormatError("vm.ovf has no Content section: not an oVirt VM or template OVF")
    xsi_type = content.get(f"{{{XSI_NS}}}type", "")
    is_template = "Template" in xsi_type
    name_el = next((el for el in content if _local(el.tag) == "Name"), None)
    comment_el = next((el for el in content if _local(el.tag) == "Comment"), None)
    template_el = next((el for el in content if _local(el.tag) == "TemplateId"), None)
    template_name_el = next((el for el in content if _local(el.tag) == "TemplateName"), None)
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
        comment=(comment_el.text or "") if comment_el is not None else "",
        template_id=((template_el.text or "").strip() or None) if template_el is not None else None,
        template_name=template_name_el.text if template_name_el is not None else None,
    )


def check_consistent(manifest: Manifest, ovf: OvfInfo) -> None:
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


_IFACE_TO_OVF = {"virtio": "VirtIO", "virtio_scsi": "VirtIO_SCSI", "sata": "SATA", "ide": "IDE"}
_NIC_SUBTYPE = {"rtl8139": "1", "e1000": "2", "virtio": "3"}


def synthesize_ovf(manifest: Manifest) -> str:
    """An engine-layout OVF built from the manifest, for sets whose OVF is rhvfs's placeholder.

    Carries what the manifest knows: name, id, disks (interface, boot, alias)
    and NICs; CPU, memory and OS take the engine's defaults.
    """
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
    return _xml_escape(text)


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
    root = _parse_xml(bytes(data).rstrip())
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


#: The id of the Blank template (a VM on no template).
BLANK_TEMPLATE_ID = "00000000-0000-0000-0000-000000000000"


def on_blank_template(data: bytes) -> bytes:
    """The OVF of a VM made independent of its template: ``<TemplateId>`` the Blank
    template's, ``<TemplateName>`` ``Blank`` (what the engine writes for such a VM)."""
    for prefix, uri in _NS_PREFIXES.items():
        ET.register_namespace(prefix, uri)
    root = _parse_xml(bytes(data).rstrip())
    for el in root.iter():
        tag = _local(el.tag)
        if tag == "TemplateId":
            el.text = BLANK_TEMPLATE_ID
        elif tag == "TemplateName":
            el.text = "Blank"
    return ET.tostring(root, encoding="unicode").encode("utf-8")


def set_disk_flags(ovf: str, flags: dict[str, tuple[str, bool, bool]]) -> str:
    """The OVF with each disk's interface, boot flag and plugged state replaced.

    ``flags`` maps a disk id (the part before ``/`` of ``ovf:fileRef`` and
    ``rasd:HostResource``) to ``(interface, bootable, active)``, with the
    interface in the API's spelling (``virtio_scsi``).
    """
    for prefix, uri in _NS_PREFIXES.items():
        ET.register_namespace(prefix, uri)
    root = _parse_xml(ovf.encode("utf-8"))
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
