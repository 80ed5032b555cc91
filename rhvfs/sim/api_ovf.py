"""The VM configuration as an OVF document (engine layout), and reading one back.

Owns `make_ovf` (what `all_content=true` shows in `initialization/configuration`)
and `parse_ovf` (what `POST /vms` with a configuration imports), following
ovirt-api-subset.md §3.16: the VM id on the OperatingSystemSection, disk ids
in `ovf:diskId` are image ids, `fileRef` is `<disk id>/<image id>`. Pure
functions over the state; no HTTP, no storage.
"""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET

from rhvfs.sim.api_base import Engine
from rhvfs.sim.state import Vm

OVF = "http://schemas.dmtf.org/ovf/envelope/1/"
RASD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
VSSD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
XSI = "http://www.w3.org/2001/XMLSchema-instance"

ET.register_namespace("ovf", OVF)
ET.register_namespace("rasd", RASD)
ET.register_namespace("vssd", VSSD)
ET.register_namespace("xsi", XSI)

_IFACE_TO_OVF = {
    "virtio": "VirtIO",
    "virtio_scsi": "VirtIO_SCSI",
    "sata": "SATA",
    "ide": "IDE",
    "spapr_vscsi": "SPAPR_VSCSI",
}
_OVF_TO_IFACE = {v: k for k, v in _IFACE_TO_OVF.items()}
GIB = 1024**3


def _o(name: str) -> str:
    return f"{{{OVF}}}{name}"


def _r(name: str) -> str:
    return f"{{{RASD}}}{name}"


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    elem = ET.SubElement(parent, tag, attrs)
    if text is not None:
        elem.text = text
    return elem


def make_ovf(e: Engine, vm: Vm) -> str:
    st = e.state
    env = ET.Element(_o("Envelope"), {_o("version"): "4.4"})
    refs = _sub(env, "References")
    disk_section = _sub(env, "Section", **{f"{{{XSI}}}type": "ovf:DiskSection_Type"})
    _sub(disk_section, "Info", "List of Virtual Disks")
    for a in vm.attachments:
        d = st.disks.get(a.disk_id)
        if d is None:
            continue
        vol = d.active
        file_ref = f"{d.id}/{vol.id}"
        _sub(
            refs,
            "File",
            **{
                _o("href"): file_ref,
                _o("id"): vol.id,
                _o("size"): str(d.provisioned_size),
                _o("description"): d.description,
                _o("disk_storage_type"): "IMAGE",
            },
        )
        _sub(
            disk_section,
            "Disk",
            **{
                _o("diskId"): vol.id,
                _o("disk-id"): d.id,
                _o("size"): str(max(1, -(-d.provisioned_size // GIB))),
                _o("capacity"): str(d.provisioned_size),
                _o("actual_size"): "1",
                _o("vm_snapshot_id"): vol.snapshot_id or "",
                _o("parentRef"): "",
                _o("fileRef"): file_ref,
                _o("format"): "http://www.vmware.com/specifications/vmdk.html#sparse",
                _o("volume-format"): "COW" if vol.fmt == "cow" else "RAW",
                _o("volume-type"): "Sparse" if d.sparse else "Preallocated",
                _o("disk-interface"): _IFACE_TO_OVF.get(a.interface, "VirtIO"),
                _o("read-only"): str(a.read_only).lower(),
                _o("boot"): str(a.bootable).lower(),
                _o("pass-discard"): str(a.pass_discard).lower(),
                _o("disk-alias"): d.alias,
                _o("disk-description"): d.description,
                _o("wipe-after-delete"): str(d.wipe_after_delete).lower(),
                _o("backup"): d.backup,
            },
        )
    content = _sub(
        env,
        "Content",
        **{_o("id"): "out", f"{{{XSI}}}type": "ovf:VirtualSystem_Type"},
    )
    _sub(content, "Name", vm.name)
    _sub(content, "Description", vm.description)
    _sub(content, "Comment", vm.comment)
    _sub(content, "CreationDate", vm.creation_time)
    _sub(content, "TemplateId", vm.template_id)
    tmpl = st.templates.get(vm.template_id)
    _sub(content, "TemplateName", tmpl.name if tmpl else "Blank")
    _sub(content, "VmType", {"desktop": "0", "server": "1"}.get(vm.vm_type, "1"))
    _sub(content, "IsStateless", "false")
    _sub(content, "ClusterName", st.clusters[vm.cluster_id].name)
    os_section = _sub(
        content,
        "Section",
        **{
            _o("id"): vm.id,
            _o("required"): "false",
            f"{{{XSI}}}type": "ovf:OperatingSystemSection_Type",
        },
    )
    _sub(os_section, "Info", "Guest Operating System")
    _sub(os_section, "Description", vm.os_type)
    hw = _sub(content, "Section", **{f"{{{XSI}}}type": "ovf:VirtualHardwareSection_Type"})
    _sub(hw, "Info", f"{vm.cpu_sockets * vm.cpu_cores} CPU, {vm.memory_bytes // 2**20} Memory")
    cpu = _sub(hw, "Item")
    _sub(cpu, _r("Caption"), f"{vm.cpu_sockets * vm.cpu_cores} virtual cpu")
    _sub(cpu, _r("InstanceId"), "1")
    _sub(cpu, _r("ResourceType"), "3")
    _sub(cpu, _r("num_of_sockets"), str(vm.cpu_sockets))
    _sub(cpu, _r("cpu_per_socket"), str(vm.cpu_cores))
    _sub(cpu, _r("threads_per_cpu"), "1")
    _sub(cpu, _r("VirtualQuantity"), str(vm.cpu_sockets * vm.cpu_cores))
    mem = _sub(hw, "Item")
    _sub(mem, _r("Caption"), f"{vm.memory_bytes // 2**20} MB of memory")
    _sub(mem, _r("InstanceId"), "2")
    _sub(mem, _r("ResourceType"), "4")
    _sub(mem, _r("AllocationUnits"), "MegaBytes")
    _sub(mem, _r("VirtualQuantity"), str(vm.memory_bytes // 2**20))
    for a in vm.attachments:
        d = st.disks.get(a.disk_id)
        if d is None:
            continue
        item = _sub(hw, "Item")
        _sub(item, _r("Caption"), d.alias)
        _sub(item, _r("InstanceId"), d.active.id)
        _sub(item, _r("ResourceType"), "17")
        _sub(item, _r("HostResource"), f"{d.id}/{d.active.id}")
        _sub(item, _r("Parent"), "00000000-0000-0000-0000-000000000000")
        _sub(item, _r("Template"), "00000000-0000-0000-0000-000000000000")
        _sub(item, _r("ApplicationList"), "")
        _sub(item, _r("StorageId"), d.sd_id)
        _sub(item, _r("StoragePoolId"), st.storage_domains[d.sd_id].dc_id)
        _sub(item, "Type", "disk")
        _sub(item, "Device", "disk")
        _sub(item, "IsPlugged", str(a.active).lower())
        _sub(item, "IsReadOnly", str(a.read_only).lower())
    for n in vm.nics:
        item = _sub(hw, "Item")
        profile = st.vnic_profiles.get(n.vnic_profile_id or "")
        net = st.networks.get(profile.network_id) if profile else None
        _sub(item, _r("Caption"), f"Ethernet adapter on {net.name if net else ''}")
        _sub(item, _r("InstanceId"), n.id)
        _sub(item, _r("ResourceType"), "10")
        _sub(item, _r("OtherResourceType"), net.name if net else "")
        _sub(
            item,
            _r("ResourceSubType"),
            {"virtio": "3", "e1000": "2", "rtl8139": "1"}.get(n.interface, "3"),
        )
        _sub(item, _r("Connection"), net.name if net else "")
        _sub(item, _r("Linked"), str(n.linked).lower())
        _sub(item, _r("Name"), n.name)
        _sub(item, _r("MACAddress"), n.mac)
        _sub(item, "Type", "interface")
        _sub(item, "Device", "bridge")
        _sub(item, "IsPlugged", str(n.plugged).lower())
    snaps = _sub(content, "Section", **{f"{{{XSI}}}type": "ovf:SnapshotsSection_Type"})
    for sid in vm.snapshot_ids:
        s = st.snapshots.get(sid)
        if s is None:
            continue
        item = _sub(snaps, "Snapshot", **{_o("id"): s.id})
        _sub(item, "Type", s.type.upper() if s.type != "regular" else "REGULAR")
        _sub(item, "Description", s.description)
        _sub(item, "CreationDate", s.date)
    return ET.tostring(env, encoding="unicode", xml_declaration=True)


@dataclasses.dataclass(frozen=True)
class OvfDisk:
    disk_id: str
    image_id: str
    interface: str
    bootable: bool
    alias: str
    read_only: bool = False
    active: bool = True


@dataclasses.dataclass(frozen=True)
class OvfNic:
    name: str
    mac: str
    network: str
    interface: str


@dataclasses.dataclass(frozen=True)
class OvfVm:
    vm_id: str | None
    name: str | None
    description: str
    memory_bytes: int | None
    cpu_sockets: int | None
    cpu_cores: int | None
    os_type: str | None
    disks: tuple[OvfDisk, ...]
    nics: tuple[OvfNic, ...]
    comment: str = ""
    #: the template the VM was made from (None: none named; the zero id: Blank)
    template_id: str | None = None


def _text(elem: ET.Element | None, path: str) -> str | None:
    if elem is None:
        return None
    found = elem.find(path)
    return found.text if found is not None else None


def parse_ovf(text: str) -> OvfVm:
    """Raises ValueError when `text` is not an OVF envelope."""
    try:
        root = ET.fromstring(text.encode() if isinstance(text, str) else text)
    except ET.ParseError as e:
        raise ValueError(f"not XML: {e}") from e
    if root.tag != _o("Envelope"):
        raise ValueError(f"not an OVF envelope: {root.tag}")
    xsi_type = f"{{{XSI}}}type"
    content = root.find("Content")
    if content is None:
        raise ValueError("OVF has no Content")
    sections = {s.get(xsi_type, ""): s for s in content.findall("Section")}
    os_section = sections.get("ovf:OperatingSystemSection_Type")
    vm_id = os_section.get(_o("id")) if os_section is not None else None
    disks_by_image: dict[str, ET.Element] = {}
    for s in root.findall("Section"):
        if s.get(xsi_type) == "ovf:DiskSection_Type":
            for disk_elem in s.findall("Disk"):
                disks_by_image[disk_elem.get(_o("diskId"), "")] = disk_elem
    hw = sections.get("ovf:VirtualHardwareSection_Type")
    memory = sockets = cores = None
    disks: list[OvfDisk] = []
    nics: list[OvfNic] = []
    items = hw.findall("Item") if hw is not None else []
    for item in items:
        rtype = _text(item, _r("ResourceType"))
        if rtype == "3":
            sockets = int(_text(item, _r("num_of_sockets")) or 1)
            cores = int(_text(item, _r("cpu_per_socket")) or 1)
        elif rtype == "4":
            memory = int(_text(item, _r("VirtualQuantity")) or 1024) * 2**20
        elif rtype == "17":
            host_resource = _text(item, _r("HostResource")) or ""
            disk_id, _, image_id = host_resource.partition("/")
            d: ET.Element | None = disks_by_image.get(image_id) or disks_by_image.get(
                _text(item, _r("InstanceId")) or ""
            )
            iface = _OVF_TO_IFACE.get(
                d.get(_o("disk-interface"), "VirtIO") if d is not None else "VirtIO", "virtio"
            )
            disks.append(
                OvfDisk(
                    disk_id=disk_id,
                    image_id=image_id,
                    interface=iface,
                    bootable=(d is not None and d.get(_o("boot")) == "true"),
                    alias=(d.get(_o("disk-alias"), "") if d is not None else ""),
                    read_only=(_text(item, "IsReadOnly") == "true"),
                    active=(_text(item, "IsPlugged") != "false"),
                )
            )
        elif rtype == "10":
            subtype = _text(item, _r("ResourceSubType")) or "3"
            nics.append(
                OvfNic(
                    name=_text(item, _r("Name")) or "nic1",
                    mac=_text(item, _r("MACAddress")) or "",
                    network=_text(item, _r("Connection")) or "",
                    interface={"1": "rtl8139", "2": "e1000", "3": "virtio"}.get(subtype, "virtio"),
                )
            )
    return OvfVm(
        vm_id=vm_id,
        name=_text(content, "Name"),
        description=_text(content, "Description") or "",
        comment=_text(content, "Comment") or "",
        template_id=_text(content, "TemplateId"),
        memory_bytes=memory,
        cpu_sockets=sockets,
        cpu_cores=cores,
        os_type=_text(os_section, "Description"),
        disks=tuple(disks),
        nics=tuple(nics),
    )
