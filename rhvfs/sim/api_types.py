"""State records -> `ovirtsdk4.types` objects, as the engine shows them.

Owns the field-by-field mapping of every entity (with hrefs on the entity and
on its nested references). Pure reads of the state; the caller holds the
lock. No HTTP, no mutation.
"""

from __future__ import annotations

from typing import Any

from ovirtsdk4 import types

from rhvfs.sim.api_base import (
    Engine,
    allocated_bytes,
    enum,
    href,
    ref_cluster,
    ref_dc,
    ref_disk,
    ref_host,
    ref_network,
    ref_sd,
    ref_snapshot,
    ref_template,
    ref_vm,
    ref_vnic_profile,
    sd_committed_bytes,
    sd_used_bytes,
    with_href,
)
from rhvfs.sim.state import (
    ZERO_ID,
    Attachment,
    Backup,
    Checkpoint,
    Cluster,
    DataCenter,
    Disk,
    Host,
    ImageTransfer,
    Network,
    Nic,
    Snapshot,
    StorageDomain,
    Tag,
    Template,
    Vm,
    VnicProfile,
    Volume,
    parse_iso,
)

VERSION = types.Version(major=4, minor=7)


def datacenter(e: Engine, dc: DataCenter) -> types.DataCenter:
    return with_href(
        types.DataCenter(
            id=dc.id,
            name=dc.name,
            description=dc.description,
            local=False,
            status=types.DataCenterStatus.UP,
            storage_format=types.StorageFormat.V5,
            version=VERSION,
            supported_versions=[VERSION],
            quota_mode=types.QuotaModeType.DISABLED,
        ),
        href("datacenters", dc.id),
    )


def cluster(e: Engine, c: Cluster) -> types.Cluster:
    return with_href(
        types.Cluster(
            id=c.id,
            name=c.name,
            description=c.description,
            cpu=types.Cpu(architecture=types.Architecture.X86_64, type="Intel Nehalem Family"),
            version=VERSION,
            data_center=ref_dc(c.dc_id),
        ),
        href("clusters", c.id),
    )


def host(e: Engine, h: Host) -> types.Host:
    return with_href(
        types.Host(
            id=h.id,
            name=h.name,
            address=h.address,
            status=enum(types.HostStatus, h.status),
            cluster=ref_cluster(h.cluster_id),
            port=54321,
            type=types.HostType.RHEL,
        ),
        href("hosts", h.id),
    )


#: The network every cluster of a data center uses for management (the engine's default name).
MANAGEMENT_NETWORK = "ovirtmgmt"


def network(e: Engine, n: Network, *, in_cluster: bool = False) -> types.Network:
    """A network; listed under a cluster, the management network also has usage ``management``."""
    usages = [types.NetworkUsage.VM]
    if in_cluster and n.name == MANAGEMENT_NETWORK:
        usages = [types.NetworkUsage.MANAGEMENT, types.NetworkUsage.DISPLAY, *usages]
    return with_href(
        types.Network(id=n.id, name=n.name, data_center=ref_dc(n.dc_id), usages=usages),
        href("networks", n.id),
    )


def vnic_profile(e: Engine, p: VnicProfile) -> types.VnicProfile:
    return with_href(
        types.VnicProfile(id=p.id, name=p.name, network=ref_network(p.network_id)),
        href("vnicprofiles", p.id),
    )


def storage_domain(
    e: Engine, sd: StorageDomain, *, with_status: bool = False
) -> types.StorageDomain:
    used = sd_used_bytes(e, sd.id)
    return with_href(
        types.StorageDomain(
            id=sd.id,
            name=sd.name,
            type=types.StorageDomainType.DATA,
            storage=types.HostStorage(
                type=enum(types.StorageType, sd.storage_type), address=sd.address, path=sd.path
            ),
            storage_format=types.StorageFormat.V5,
            available=max(sd.capacity_bytes - used, 0),
            used=used,
            committed=sd_committed_bytes(e, sd.id),
            block_size=512,
            master=sd.master,
            backup=False,
            wipe_after_delete=False,
            external_status=types.ExternalStatus.OK,
            status=enum(types.StorageDomainStatus, sd.status) if with_status else None,
            data_centers=[ref_dc(sd.dc_id)],
            data_center=ref_dc(sd.dc_id) if with_status else None,
        ),
        href("storagedomains", sd.id),
    )


def tag(e: Engine, t: Tag) -> types.Tag:
    return with_href(
        types.Tag(
            id=t.id,
            name=t.name,
            description=t.description,
            parent=with_href(types.Tag(id=t.parent_id), href("tags", t.parent_id))
            if t.id != ZERO_ID
            else None,
        ),
        href("tags", t.id),
    )


def root_tag() -> types.Tag:
    return with_href(types.Tag(id=ZERO_ID, name="root", description="root"), href("tags", ZERO_ID))


def disk(
    e: Engine, d: Disk, *, volume: Volume | None = None, backup_mode: str | None = None
) -> types.Disk:
    """A disk; `volume` shows it as of that volume (snapshot disks)."""
    vol = volume or d.active
    chain_ids = []
    for v in d.volumes:
        chain_ids.append(v.id)
        if v.id == vol.id:
            break
    actual = allocated_bytes(e, d, chain_ids if volume is not None else None)
    snapshot = None
    # Only snapshot disks name their VM (a scan of all VMs: not for plain disks).
    vm = e.state.vm_of_disk(d.id) if volume is not None and volume.snapshot_id else None
    if volume is not None and volume.snapshot_id and vm is not None:
        snapshot = ref_snapshot(vm.id, volume.snapshot_id)
    return with_href(
        types.Disk(
            id=d.id,
            **_volume_fields(d, vol, actual),
            backup=types.DiskBackup(d.backup),
            backup_mode=enum(types.DiskBackupMode, backup_mode),
            image_id=vol.id,
            qcow_version=types.QcowVersion.QCOW2_V3 if vol.fmt == "cow" else None,
            shareable=d.shareable,
            wipe_after_delete=d.wipe_after_delete,
            propagate_errors=False,
            storage_domains=[ref_sd(d.sd_id)],
            snapshot=snapshot,
            disk_profile=with_href(types.DiskProfile(id=d.sd_id), href("diskprofiles", d.sd_id)),
        ),
        href("disks", d.id),
    )


def _volume_fields(d: Disk, vol: Volume, actual: int) -> dict[str, Any]:
    """The fields a disk and a disk snapshot (one of its volumes) share."""
    return {
        "name": d.alias,
        "alias": d.alias,
        "description": d.description,
        "provisioned_size": d.provisioned_size,
        "actual_size": actual,
        "total_size": actual,
        "format": types.DiskFormat(vol.fmt),
        "sparse": d.sparse,
        "status": types.DiskStatus(d.status),
        "storage_type": types.DiskStorageType.IMAGE,
        "content_type": enum(types.DiskContentType, d.content_type),
    }


def disk_snapshot(e: Engine, d: Disk, vol: Volume) -> types.DiskSnapshot:
    actual = allocated_bytes(e, d, [vol.id])
    vm = e.state.vm_of_disk(d.id)
    snapshot = None
    if vol.snapshot_id and vm is not None:
        snapshot = ref_snapshot(vm.id, vol.snapshot_id)
    return with_href(
        types.DiskSnapshot(
            id=vol.id,
            **_volume_fields(d, vol, actual),
            image_id=vol.id,
            disk=ref_disk(d.id),
            parent=with_href(
                types.DiskSnapshot(id=vol.parent_id),
                href("storagedomains", d.sd_id, "disksnapshots", vol.parent_id),
            )
            if vol.parent_id
            else None,
            snapshot=snapshot,
            storage_domain=ref_sd(d.sd_id),
            storage_domains=[ref_sd(d.sd_id)],
        ),
        href("storagedomains", d.sd_id, "disksnapshots", vol.id),
    )


def attachment(e: Engine, owner: str, owner_id: str, a: Attachment) -> types.DiskAttachment:
    is_vm = owner == "vms"
    return with_href(
        types.DiskAttachment(
            id=a.disk_id,
            active=a.active,
            bootable=a.bootable,
            interface=types.DiskInterface(a.interface),
            pass_discard=a.pass_discard,
            read_only=a.read_only,
            uses_scsi_reservation=False,
            disk=ref_disk(a.disk_id),
            vm=ref_vm(owner_id) if is_vm else None,
            template=ref_template(owner_id) if not is_vm else None,
        ),
        href(owner, owner_id, "diskattachments", a.disk_id),
    )


def nic(e: Engine, owner: str, owner_id: str, n: Nic) -> types.Nic:
    return with_href(
        types.Nic(
            id=n.id,
            name=n.name,
            interface=types.NicInterface(n.interface),
            linked=n.linked,
            plugged=n.plugged,
            mac=types.Mac(address=n.mac) if n.mac else None,
            vnic_profile=ref_vnic_profile(n.vnic_profile_id) if n.vnic_profile_id else None,
            vm=ref_vm(owner_id) if owner == "vms" else None,
        ),
        href(owner, owner_id, "nics", n.id),
    )


def _configuration(ovf: str) -> types.Initialization:
    return types.Initialization(
        configuration=types.Configuration(type=types.ConfigurationType.OVF, data=ovf)
    )


def vm(e: Engine, v: Vm, *, all_content: bool = False) -> types.Vm:
    from rhvfs.sim import api_ovf

    running = v.status not in ("down", "image_locked", "suspended")
    return with_href(
        types.Vm(
            id=v.id,
            name=v.name,
            description=v.description,
            comment=v.comment,
            status=types.VmStatus(v.status),
            type=types.VmType(v.vm_type),
            origin="ovirt",
            memory=v.memory_bytes,
            cpu=types.Cpu(
                architecture=types.Architecture.X86_64,
                topology=types.CpuTopology(sockets=v.cpu_sockets, cores=v.cpu_cores, threads=1),
            ),
            os=types.OperatingSystem(
                type=v.os_type,
                boot=types.Boot(devices=[types.BootDevice.HD]),
            ),
            stateless=False,
            delete_protected=False,
            high_availability=types.HighAvailability(enabled=False, priority=0),
            creation_time=parse_iso(v.creation_time) if v.creation_time else None,
            start_time=parse_iso(v.start_time) if v.start_time else None,
            stop_time=parse_iso(v.stop_time) if v.stop_time else None,
            cluster=ref_cluster(v.cluster_id),
            template=ref_template(v.template_id),
            original_template=ref_template(v.template_id),
            host=ref_host(v.host_id) if (running and v.host_id) else None,
            initialization=_configuration(api_ovf.make_ovf(e, v)) if all_content else None,
        ),
        href("vms", v.id),
    )


def template(e: Engine, t: Template) -> types.Template:
    return with_href(
        types.Template(
            id=t.id,
            name=t.name,
            description=t.description,
            comment=t.comment,
            status=types.TemplateStatus(t.status),
            version=types.TemplateVersion(
                version_number=1,
                version_name="base version",
                base_template=ref_template(t.id),
            ),
            cluster=ref_cluster(t.cluster_id) if t.cluster_id else None,
            memory=t.memory_bytes,
            cpu=types.Cpu(
                architecture=types.Architecture.X86_64,
                topology=types.CpuTopology(sockets=1, cores=1, threads=1),
            ),
            os=types.OperatingSystem(type=t.os_type),
            type=types.VmType.SERVER,
        ),
        href("templates", t.id),
    )


def blank_template() -> types.Template:
    """The Blank template (all-zero id), which always exists."""
    return with_href(
        types.Template(
            id=ZERO_ID,
            name="Blank",
            description="Blank template",
            status=types.TemplateStatus.OK,
            version=types.TemplateVersion(version_number=1, version_name="base version"),
            memory=1024**3,
            type=types.VmType.SERVER,
            os=types.OperatingSystem(type="other"),
        ),
        href("templates", ZERO_ID),
    )


def snapshot(e: Engine, s: Snapshot, *, all_content: bool = False) -> types.Snapshot:
    return with_href(
        types.Snapshot(
            id=s.id,
            description=s.description,
            date=parse_iso(s.date),
            snapshot_status=types.SnapshotStatus(s.status),
            snapshot_type=types.SnapshotType(s.type),
            persist_memorystate=s.persist_memorystate,
            vm=ref_vm(s.vm_id),
            initialization=_configuration(s.ovf) if (all_content and s.ovf) else None,
        ),
        href("vms", s.vm_id, "snapshots", s.id),
    )


def transfer(e: Engine, t: ImageTransfer) -> types.ImageTransfer:
    h = e.state.hosts.get(t.host_id)
    show_urls = t.ticket_id is not None and t.phase not in ("initializing",)
    transfer_url = proxy_url = None
    if show_urls and h is not None and t.ticket_id is not None:
        transfer_url = proxy_url = e.dataplane.image_url(t.ticket_id)
    return with_href(
        types.ImageTransfer(
            id=t.id,
            phase=types.ImageTransferPhase(t.phase),
            direction=types.ImageTransferDirection(t.direction),
            format=types.DiskFormat(t.format),
            shallow=t.shallow,
            inactivity_timeout=t.inactivity_timeout,
            timeout_policy=types.ImageTransferTimeoutPolicy(t.timeout_policy),
            active=t.active,
            transferred=t.transferred,
            transfer_url=transfer_url,
            proxy_url=proxy_url,
            host=ref_host(t.host_id),
            image=types.Image(id=t.disk_id),
        ),
        href("imagetransfers", t.id),
    )


def backup(e: Engine, b: Backup) -> types.Backup:
    return with_href(
        types.Backup(
            id=b.id,
            phase=types.BackupPhase(b.phase),
            description=b.description,
            from_checkpoint_id=b.from_checkpoint_id,
            to_checkpoint_id=b.to_checkpoint_id,
            creation_date=parse_iso(b.creation_date) if b.creation_date else None,
            modification_date=parse_iso(b.modified_date) if b.modified_date else None,
            vm=ref_vm(b.vm_id),
            host=ref_host(b.host_id) if b.host_id else None,
            snapshot=ref_snapshot(b.vm_id, b.snapshot_id) if b.snapshot_id else None,
        ),
        href("vms", b.vm_id, "backups", b.id),
    )


def checkpoint(e: Engine, c: Checkpoint) -> types.Checkpoint:
    return with_href(
        types.Checkpoint(
            id=c.id,
            parent_id=c.parent_id,
            creation_date=parse_iso(c.creation_date) if c.creation_date else None,
            state=types.CheckpointState(c.state),
            description=c.description,
            vm=ref_vm(c.vm_id),
        ),
        href("vms", c.vm_id, "checkpoints", c.id),
    )
