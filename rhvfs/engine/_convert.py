"""Convert ovirtsdk4 type objects into the frozen dataclasses of ``rhvfs.engine.types``.

Pure functions, no I/O: every field the engine may omit is tolerated (None or
the dataclass default). Enums keep the engine's lowercase spelling. Naive
datetimes (an engine bug, §2.4) are taken as UTC so callers only ever see
aware datetimes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import Enum
from typing import Any

from rhvfs.engine import types as t


def enum_value(value: Any) -> str | None:
    """``SomeEnum.X`` -> ``"x"``; strings pass through; None stays None."""
    if value is None:
        return None
    if isinstance(value, Enum):
        return str(value.value)
    return str(value)


def aware(value: datetime | None) -> datetime | None:
    """Return ``value`` with a time zone (UTC assumed when the engine sent none)."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def ref_id(ref: Any) -> str | None:
    """The ``id`` of a nested reference element, or None."""
    return None if ref is None else getattr(ref, "id", None)


def _text(value: str | None) -> str:
    return value or ""


def _bool(value: bool | None, default: bool) -> bool:
    return default if value is None else bool(value)


def datacenter(sdk: Any) -> t.DataCenter:
    return t.DataCenter(
        id=sdk.id, name=sdk.name, description=_text(sdk.description), status=enum_value(sdk.status)
    )


def cluster(sdk: Any) -> t.Cluster:
    return t.Cluster(
        id=sdk.id,
        name=sdk.name,
        datacenter_id=ref_id(sdk.data_center),
        description=_text(sdk.description),
    )


def host(sdk: Any) -> t.Host:
    return t.Host(
        id=sdk.id,
        name=sdk.name,
        address=_text(sdk.address),
        status=enum_value(sdk.status),
        cluster_id=ref_id(sdk.cluster),
    )


def storage_domain(sdk: Any) -> t.StorageDomain:
    dcs = tuple(dc.id for dc in (sdk.data_centers or ()) if dc.id)
    return t.StorageDomain(
        id=sdk.id,
        name=sdk.name,
        type=enum_value(sdk.type),
        storage_type=enum_value(sdk.storage.type) if sdk.storage is not None else None,
        available=sdk.available,
        used=sdk.used,
        committed=sdk.committed,
        status=enum_value(sdk.status) or enum_value(sdk.external_status),
        datacenter_ids=dcs,
    )


def tag(sdk: Any) -> t.Tag:
    return t.Tag(
        id=sdk.id, name=sdk.name, description=_text(sdk.description), parent_id=ref_id(sdk.parent)
    )


def vm(
    sdk: Any,
    *,
    tag_ids: tuple[str, ...] = (),
    attachments: tuple[t.DiskAttachment, ...] | None = None,
    nics: tuple[t.Nic, ...] | None = None,
) -> t.Vm:
    """``attachments``/``nics``: what a listing inlined (None: not fetched)."""
    topology = sdk.cpu.topology if sdk.cpu is not None else None
    return t.Vm(
        id=sdk.id,
        name=sdk.name,
        status=enum_value(sdk.status),
        cluster_id=ref_id(sdk.cluster),
        template_id=ref_id(sdk.template),
        host_id=ref_id(sdk.host),
        description=_text(sdk.description),
        comment=_text(sdk.comment),
        memory=sdk.memory,
        cpu_sockets=topology.sockets if topology is not None else None,
        cpu_cores=topology.cores if topology is not None else None,
        cpu_threads=topology.threads if topology is not None else None,
        os_type=sdk.os.type if sdk.os is not None else None,
        type=enum_value(sdk.type),
        creation_time=aware(sdk.creation_time),
        tag_ids=tag_ids,
        stop_time=aware(sdk.stop_time),
        disk_attachments=attachments,
        nics=nics,
    )


def template(
    sdk: Any,
    *,
    attachments: tuple[t.DiskAttachment, ...] | None = None,
    nics: tuple[t.Nic, ...] | None = None,
) -> t.Template:
    return t.Template(
        id=sdk.id,
        name=sdk.name,
        status=enum_value(sdk.status),
        cluster_id=ref_id(sdk.cluster),
        description=_text(sdk.description),
        memory=sdk.memory,
        creation_time=aware(sdk.creation_time),
        comment=_text(sdk.comment),
        disk_attachments=attachments,
        nics=nics,
    )


def disk(sdk: Any) -> t.Disk:
    sds = sdk.storage_domains or ()
    sd_id = sds[0].id if sds else ref_id(sdk.storage_domain)
    return t.Disk(
        id=sdk.id,
        alias=sdk.alias or sdk.name or sdk.id,
        provisioned_size=sdk.provisioned_size or 0,
        actual_size=sdk.actual_size,
        format=enum_value(sdk.format) or "raw",
        sparse=_bool(sdk.sparse, True),
        status=enum_value(sdk.status),
        backup=enum_value(sdk.backup),
        backup_mode=enum_value(sdk.backup_mode),
        image_id=sdk.image_id,
        storage_domain_id=sd_id,
        description=_text(sdk.description),
        content_type=enum_value(sdk.content_type),
        shareable=_bool(sdk.shareable, False),
        wipe_after_delete=_bool(sdk.wipe_after_delete, False),
    )


def disk_attachment(sdk: Any, full_disk: t.Disk | None = None) -> t.DiskAttachment:
    """``full_disk`` replaces the attachment's disk reference (which carries only an id)."""
    if full_disk is None:
        ref = sdk.disk
        full_disk = (
            disk(ref) if ref is not None else t.Disk(id=sdk.id, alias=sdk.id, provisioned_size=0)
        )
    return t.DiskAttachment(
        disk=full_disk,
        interface=enum_value(sdk.interface),
        bootable=_bool(sdk.bootable, False),
        active=_bool(sdk.active, True),
        read_only=_bool(sdk.read_only, False),
        pass_discard=_bool(sdk.pass_discard, False),
        logical_name=sdk.logical_name,
    )


def network(sdk: Any) -> t.Network:
    usages = tuple(str(u.value) for u in (sdk.usages or ()))
    return t.Network(id=sdk.id, name=sdk.name, datacenter_id=ref_id(sdk.data_center), usages=usages)


def vnic_profile(sdk: Any, *, network_names: dict[str, str] | None = None) -> t.VnicProfile:
    net_id = ref_id(sdk.network)
    net_name = None
    if sdk.network is not None:
        net_name = sdk.network.name or (network_names or {}).get(net_id or "")
    return t.VnicProfile(id=sdk.id, name=sdk.name, network_id=net_id, network_name=net_name)


def nic(sdk: Any, *, profiles: dict[str, t.VnicProfile] | None = None) -> t.Nic:
    profile_id = ref_id(sdk.vnic_profile)
    profile = (profiles or {}).get(profile_id or "")
    return t.Nic(
        id=sdk.id,
        name=sdk.name,
        interface=enum_value(sdk.interface),
        mac=sdk.mac.address if sdk.mac is not None else None,
        vnic_profile_id=profile_id,
        vnic_profile_name=profile.name if profile else None,
        network_name=profile.network_name if profile else None,
        linked=_bool(sdk.linked, True),
        plugged=_bool(sdk.plugged, True),
    )


def snapshot(sdk: Any, *, vm_id: str | None = None) -> t.Snapshot:
    return t.Snapshot(
        id=sdk.id,
        description=_text(sdk.description),
        status=enum_value(sdk.snapshot_status),
        type=enum_value(sdk.snapshot_type),
        date=aware(sdk.date),
        persist_memorystate=_bool(sdk.persist_memorystate, False),
        vm_id=ref_id(sdk.vm) or vm_id,
    )


def image_transfer(sdk: Any) -> t.ImageTransfer:
    # Real engines reference the target only as <image id=DISK/>; <disk> is a
    # simulator courtesy we accept but never require.
    disk_id = ref_id(sdk.image) or ref_id(sdk.disk)
    return t.ImageTransfer(
        id=sdk.id,
        phase=enum_value(sdk.phase),
        direction=enum_value(sdk.direction),
        format=enum_value(sdk.format),
        transfer_url=sdk.transfer_url,
        proxy_url=sdk.proxy_url,
        disk_id=disk_id,
        host_id=ref_id(sdk.host),
        inactivity_timeout=sdk.inactivity_timeout,
        transferred=sdk.transferred,
        active=sdk.active,
    )


def backup(sdk: Any, *, vm_id: str | None = None) -> t.Backup:
    return t.Backup(
        id=sdk.id,
        phase=enum_value(sdk.phase),
        vm_id=ref_id(sdk.vm) or vm_id,
        from_checkpoint_id=sdk.from_checkpoint_id,
        to_checkpoint_id=sdk.to_checkpoint_id,
        description=_text(sdk.description),
        creation_date=aware(sdk.creation_date),
        snapshot_id=ref_id(sdk.snapshot),
    )


def checkpoint(sdk: Any, *, vm_id: str | None = None) -> t.Checkpoint:
    return t.Checkpoint(
        id=sdk.id,
        parent_id=sdk.parent_id,
        state=enum_value(sdk.state),
        creation_date=aware(sdk.creation_date),
        description=_text(sdk.description),
        vm_id=ref_id(sdk.vm) or vm_id,
    )
